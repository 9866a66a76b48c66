"""Where the training loader stands in its epoch, and how a resumed run gets back there.

A run resumed at batch k of an epoch must train next on the batch the interrupted run would
have. By kind of loader, tried in this order:

- trainkit's own sampler (samplers.GlobalBatchSampler: every DataLoader over a map-style dataset
  that trainkit distributes) begins the epoch at batch k: nothing before it is loaded, so the
  cost does not grow with k (the epoch's permutation is drawn as always);
- a loader with its own `state_dict()` / `load_state_dict()` (torchdata's StatefulDataLoader, or
  any such) has its state saved in each checkpoint (per rank) and given back;
- any other (a sampler of the user's own, an IterableDataset) is read again from the epoch's
  start up to batch k, with a line saying so and about how long it takes; exact when it yields
  the same sequence again, as a seeded one does.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Iterable, Iterator

from trainkit.engine.samplers import GlobalBatchSampler

log = logging.getLogger("trainkit")


def _stateful(loader: Any) -> bool:
    return callable(getattr(loader, "state_dict", None)) and callable(getattr(loader, "load_state_dict", None))


class DataPosition:
    def __init__(self, loader: Iterable, read_ahead: bool) -> None:
        """`read_ahead`: the loop fetches one batch beyond the one it trains on (a loader without
        a length, loaders.with_last), so a stateful loader's position is the one before that fetch."""
        self.loader = loader
        batches = getattr(loader, "batch_sampler", None)
        self.sampler = batches if isinstance(batches, GlobalBatchSampler) else None
        self.stateful = self.sampler is None and _stateful(loader)
        self.read_ahead = read_ahead
        self._before_fetch: Any = None

    def seek(self, skip: int, saved: Any, epoch: int) -> int:
        """Position the loader at batch `skip` of this epoch before it is iterated; return the
        index of the first batch it will yield (`skip`, or 0 when the loop must read past them)."""
        if skip == 0:
            return 0
        if self.sampler is not None:
            self.sampler.start_at(skip)
            log.info("resuming at batch %d of epoch %d: the sampler starts there, nothing before it is read", skip, epoch)
            return skip
        if self.stateful and saved is not None:
            self.loader.load_state_dict(saved)  # type: ignore[attr-defined]
            log.info("resuming at batch %d of epoch %d: %s.load_state_dict() from the checkpoint", skip, epoch,
                     type(self.loader).__name__)
            return skip
        return 0

    def iterate(self, batches: Iterator) -> Iterator:
        """The loader's batches; a stateful loader read ahead has its state noted before each fetch."""
        if not (self.stateful and self.read_ahead):
            return batches
        return self._noting(batches)

    def _noting(self, batches: Iterator) -> Iterator:
        while True:
            self._before_fetch = self.loader.state_dict()  # type: ignore[attr-defined]
            try:
                batch = next(batches)
            except StopIteration:
                return
            yield batch

    def state_dict(self) -> Any:
        """What a checkpoint keeps of this rank's loader: its own state when it has one, else None
        (trainkit's sampler needs only the batch count, which the trainer state holds)."""
        if not self.stateful:
            return None
        if self.read_ahead and self._before_fetch is not None:
            return self._before_fetch
        return self.loader.state_dict()  # type: ignore[attr-defined]


def replaying(batches: Iterable[tuple[int, Any, bool]], skip: int, epoch: int, loader: Any) -> Iterator:
    """`batches`, with a line once the first of the `skip` batches to read again has come: what
    happens, and about how long it will take at that pace."""
    started = time.perf_counter()
    for item in batches:
        if item[0] == 0:
            each = time.perf_counter() - started
            log.info("resuming at batch %d of epoch %d: this %s cannot be positioned by index (no trainkit sampler, "
                     "no state_dict()), so the %d batches already trained on are read again; about %s", skip, epoch,
                     type(loader).__name__, skip, _duration(each * skip))
        yield item


def _duration(seconds: float) -> str:
    if math.isinf(seconds) or seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"
