"""Data order that does not depend on the number of processes.

Training: each epoch shuffles one global permutation (seeded by the run's data seed and the
epoch), cuts it into global batches of `batch_size x world_size`, and gives each rank its slice.
The sequence of global batches is then the same on 1, 2 or 4 processes: `devices=2
datamodule.batch_size=16` trains on exactly the batches of `devices=1 datamodule.batch_size=32`.
Evaluation: each rank takes a contiguous shard, no sample duplicated or dropped, so metrics over
the gathered predictions equal the single-process ones.

`distribute_loader` puts these samplers into a plain `DataLoader` (map-style dataset with
shuffle=True/False); a loader with a sampler of the user's own is left alone in one process and
refused in several (it cannot be split without knowing what it does). A loader over an
IterableDataset is left alone too: such a dataset decides what each rank reads (as in Lightning,
it should split itself by `torch.distributed.get_rank()` and the DataLoader worker).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import (BatchSampler, DataLoader, DistributedSampler, IterableDataset, RandomSampler, Sampler,
                              SequentialSampler)

from trainkit.errors import UserError


class GlobalBatchSampler(Sampler[list[int]]):
    def __init__(self, size: int, batch_size: int, rank: int, world_size: int, shuffle: bool, seed: int,
                 drop_last: bool) -> None:
        self.size, self.batch_size, self.rank, self.world_size = size, batch_size, rank, world_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

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
        b, g = self.batch_size, self.batch_size * self.world_size
        full = self.size // g
        for start in range(0, full * g, g):
            yield order[start + self.rank * b : start + (self.rank + 1) * b]
        rest = self._remainder()
        if rest:
            share = rest // self.world_size
            start = full * g + self.rank * share
            yield order[start : start + share]


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
        loader.dataset,
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
