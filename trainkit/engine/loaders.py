"""How many batches a loop takes from a loader, and which share of the data each rank reads.

Evaluation may have several loaders (a list, or a dict in its order, as Lightning takes them):
`as_list` gives them in the order their `dataloader_idx` numbers them. A loader without a length
(an IterableDataset) counts as infinitely long: `with_last` reads it one batch ahead to know
where its epoch ends.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import torch

from trainkit.engine.samplers import distribute_loader
from trainkit.errors import ConfigError
from trainkit.strategies.base import Strategy

if TYPE_CHECKING:
    from trainkit.engine.trainer import Trainer


def length(loader: Iterable) -> int | float:
    """`len(loader)`, or infinity for a loader without a length (an IterableDataset)."""
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return math.inf


def num_batches(loader: Iterable, limit: int | float) -> int | float:
    """How many batches of `loader` a loop takes: an int limit is a count, a float a fraction."""
    size = length(loader)
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 0:
        raise ConfigError(f"limit_*_batches={limit!r} must be an int (batches) or a float in [0, 1] (fraction)")
    if isinstance(limit, int):
        return min(limit, size)
    if limit > 1.0:
        raise ConfigError(f"limit_*_batches={limit} is a float above 1.0: use an int for a count of batches")
    if math.isinf(size):
        if limit == 1.0:
            return math.inf
        raise ConfigError("a fractional limit_*_batches needs a loader with a length; use an int")
    # A positive fraction takes at least one batch: 0.1 of a 5-batch loader is 1, not 0.
    return max(1, int(size * limit)) if 0.0 < limit < 1.0 else int(size * limit)


def take(loader: Iterable, limit: int | float, start: int = 0, batches: Iterator | None = None
         ) -> Iterable[tuple[int, Any]]:
    """The first `limit` batches, numbered from `start` (a loader positioned mid-epoch yields
    batch `start` first), read from `batches` when given (an iterator of `loader` made already).
    A loader read in full is read to its end, as a plain `for` loop would: samplers draw from
    their generator when they finish, and stopping one batch early would shift every later
    epoch's shuffle."""
    if limit == 0 or start >= limit:
        return
    stop_early = limit < length(loader)
    for batch_idx, batch in enumerate(loader if batches is None else batches, start):
        yield batch_idx, batch
        if stop_early and batch_idx + 1 >= limit:
            return


def with_last(loader: Iterable, limit: int | float, start: int = 0, batches: Iterator | None = None
              ) -> Iterator[tuple[int, Any, bool]]:
    """`take`, each batch flagged True when it is the last of the epoch."""
    taken = take(loader, limit, start, batches)
    if not math.isinf(limit):
        for batch_idx, batch in taken:
            yield batch_idx, batch, batch_idx + 1 >= limit
        return
    pending = next(taken, None)
    while pending is not None:
        following = next(taken, None)
        yield pending[0], pending[1], following is None
        pending = following


def requested(hook: str, given: Any, datamodule: Any, module: Any) -> Any:
    """The loaders of a stage in Lightning's order: those passed in, else the datamodule's
    `<hook>()`, else the module's own `<hook>()` when it defines one; None when there are none."""
    if given is not None:
        return given
    owner = datamodule if datamodule is not None else module
    fn = getattr(owner, hook, None)
    return fn() if callable(fn) else None


def as_list(loaders: Any) -> list:
    """One loader, a list or tuple of them, or a dict (in its order), as a list; None is none."""
    if loaders is None:
        return []
    if isinstance(loaders, dict):
        return list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return list(loaders)
    return [loaders]


def distribute(loader: Iterable | None, trainer: Trainer, train: bool) -> Iterable | None:
    """The loader with this rank's share of the data (samplers.py says how it is cut); the user's
    own loader untouched with use_distributed_sampler=False. Under overfit_batches the batches
    keep their order (the same ones every epoch)."""
    if not trainer.use_distributed_sampler:
        return loader
    strategy = trainer.strategy
    return distribute_loader(loader, strategy.global_rank, strategy.world_size, trainer._data_seed, train,
                             keep_order=bool(trainer.overfit_batches))


def prepare_eval(trainer: Trainer, loaders: Any, limit: int | float) -> tuple[list, list]:
    """Evaluation loaders, each sharded for this rank, and the batches each loop takes of them."""
    shards = [distribute(loader, trainer, train=False) for loader in as_list(loaders)]
    return shards, [num_batches(loader, limit) for loader in shards]


def shared_data_seed(seed: int | None, strategy: Strategy) -> int:
    """One seed for the data order on every rank: the run's seed, or rank 0's random draw."""
    if seed is not None:
        return seed
    draw = int(torch.randint(2**31 - 1, ()).item()) if strategy.is_global_zero else 0
    if strategy.world_size == 1:
        return draw
    return int(strategy.all_reduce_sum(torch.tensor(draw, dtype=torch.int64)).item())
