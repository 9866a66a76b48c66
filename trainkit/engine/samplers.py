"""Data order that does not depend on the number of processes.

Training: each epoch shuffles one global permutation (seeded by the run's data seed and the
epoch), cuts it into global batches of `batch_size x world_size`, and gives each rank its slice.
The sequence of global batches is then the same on 1, 2 or 4 processes: `devices=2
datamodule.batch_size=16` trains on exactly the batches of `devices=1 datamodule.batch_size=32`.
Evaluation: each rank takes a contiguous shard, no sample duplicated or dropped, so metrics over
the gathered predictions equal the single-process ones.

A resumed run starts the training sampler at the batch it stopped at (`start_at`): nothing before
it is loaded. So that this is exact with DataLoader workers too, each training batch carries its
place (epoch, number in the epoch) and a worker seeds its RNGs from the worker's base seed and that
place before loading it (`SeedPerBatch`): a batch's random augmentation is then the same whichever
worker loads it and whatever that worker loaded before.

`distribute_loader` puts these samplers into a plain `DataLoader` (map-style dataset with
shuffle=True/False); a loader with a sampler of the user's own is left alone in one process and
refused in several (it cannot be split without knowing what it does). A loader over an
IterableDataset is left alone too: such a dataset decides what each rank reads (as in Lightning,
it should split itself by `torch.distributed.get_rank()` and the DataLoader worker).
"""
from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import (BatchSampler, DataLoader, Dataset, DistributedSampler, IterableDataset, RandomSampler,
                              Sampler, SequentialSampler, get_worker_info)

from trainkit.errors import UserError


class BatchIndices(list):
    """One batch's sample indices, and its place in the run: `epoch`, `number` within the epoch."""

    def __init__(self, indices: list[int], epoch: int, number: int) -> None:
        super().__init__(indices)
        self.epoch, self.number = epoch, number


class GlobalBatchSampler(Sampler[list[int]]):
    def __init__(self, size: int, batch_size: int, rank: int, world_size: int, shuffle: bool, seed: int,
                 drop_last: bool) -> None:
        self.size, self.batch_size, self.rank, self.world_size = size, batch_size, rank, world_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0
        self._start = 0  # the batch the next iteration begins at (a resumed epoch), then 0 again

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def start_at(self, batch: int) -> None:
        """Begin the next iteration at batch `batch` of the epoch; `len` stays the epoch's."""
        self._start = batch

    def _remainder(self) -> int:
        """Samples of the last, partial global batch that are used: all of them in one process;
        in several, an even split (so every rank takes a step), or none with drop_last."""
        rest = self.size % (self.batch_size * self.world_size)
        if self.drop_last or rest < self.world_size:
            return 0
        return rest - rest % self.world_size

    def __len__(self) -> int:
        full = self.size // (self.batch_size * self.world_size)
        return full + (1 if self._remainder() else 0)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        first, self._start = self._start, 0
        b, g = self.batch_size, self.batch_size * self.world_size
        full = self.size // g
        for number in range(first, full):
            start = number * g
            yield BatchIndices(order[start + self.rank * b : start + (self.rank + 1) * b], self.epoch, number)
        rest = self._remainder()
        if rest and first <= full:
            share = rest // self.world_size
            start = full * g + self.rank * share
            yield BatchIndices(order[start : start + share], self.epoch, full)


class SeedPerBatch(Dataset):
    """The training dataset as DataLoader workers read it: before each batch, the worker seeds
    python's, numpy's and torch's RNGs from (its base seed, the batch's epoch and number). The
    base seed is the one torch gives the iterator (drawn from the run's RNG, or the loader's
    `generator`), so runs with the same seed see the same augmentations. In the main process
    (num_workers=0) nothing is seeded: the run's RNG state, saved in every checkpoint, covers it."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: Any) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: list) -> list:
        worker = get_worker_info()
        if worker is not None and isinstance(indices, BatchIndices):
            base = worker.seed - worker.id
            words = np.random.SeedSequence([base, indices.epoch, indices.number]).generate_state(2)
            seed = int(words[0]) << 32 | int(words[1])
            random.seed(seed)
            np.random.seed(words)
            torch.manual_seed(seed)
        own = getattr(self.dataset, "__getitems__", None)
        return own(list(indices)) if own else [self.dataset[i] for i in indices]

    def __getattr__(self, name: str) -> Any:  # the user's dataset's attributes, as if unwrapped
        try:
            dataset = self.__dict__["dataset"]
        except KeyError:  # (while unpickling in a worker, before __dict__ is filled)
            raise AttributeError(name) from None
        return getattr(dataset, name)


class ShardSampler(Sampler[int]):
    """Rank r's contiguous part of range(size): sizes differ by at most one, nothing repeated."""

    def __init__(self, size: int, rank: int, world_size: int) -> None:
        base, extra = divmod(size, world_size)
        self.start = rank * base + min(rank, extra)
        self.stop = self.start + base + (1 if rank < extra else 0)

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))


def distribute_loader(loader, rank: int, world_size: int, seed: int, train: bool, keep_order: bool = False):
    """The loader with world-size-invariant batches (training) or a shard (evaluation);
    `keep_order` turns shuffling off (overfit_batches: the same batches every epoch)."""
    if loader is None or isinstance(getattr(loader, "dataset", None), IterableDataset):
        return loader
    plain = (
        type(loader) is DataLoader
        and type(loader.batch_sampler) is BatchSampler
        and type(loader.sampler) in (RandomSampler, SequentialSampler)
    )
    shuffled = plain and isinstance(loader.sampler, RandomSampler)
    if world_size == 1 and not train and not (keep_order and shuffled):
        return loader
    if not plain:
        if world_size == 1 or isinstance(getattr(loader, "sampler", None), DistributedSampler):
            return loader  # the user's own order (a DistributedSampler: their own split)
        raise UserError(
            f"cannot split this {type(loader).__name__} across {world_size} processes: return a "
            "torch DataLoader over a map-style dataset (shuffle=True or False), or give it a DistributedSampler"
        )
    size = len(loader.dataset)
    if train:
        batches = GlobalBatchSampler(size, loader.batch_size, rank, world_size, shuffled and not keep_order, seed,
                                     loader.drop_last)
    else:
        batches = BatchSampler(ShardSampler(size, rank, world_size), loader.batch_size, drop_last=False)
    return DataLoader(
        SeedPerBatch(loader.dataset) if train and loader.num_workers > 0 else loader.dataset,
        batch_sampler=batches,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor if loader.num_workers > 0 else None,
        persistent_workers=loader.persistent_workers,
        pin_memory_device=loader.pin_memory_device,
    )
