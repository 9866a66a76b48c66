"""Knowledge-tracing data as padded batches: kt_lines files, or the simulator's when no path is given.

A batch is a dict of [B, T] tensors, padded to its longest window:
    skills   LongTensor, skill ids remapped to 0..num_skills-1 (0 on padding)
    correct  LongTensor, 1 = correct (0 on padding)
    mask     BoolTensor, True on real steps
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from recipes.knowledge_tracing.kt_lines import KTSequence, read_kt_lines
from recipes.knowledge_tracing.simulator import SPLITS, SimulatorConfig, cached_dataset
from trainkit.engine.data import DataModule
from trainkit.errors import ConfigError, DataError

_STAGE_SPLITS = {"fit": ("train", "valid"), "validate": ("valid",), "test": ("test",), "predict": ("test",)}


class KTDataModule(DataModule):
    """Reads `<path>/{train,valid,test}.txt`; with path None, the simulator's cached dataset, for
    which num_students and seed (ignored when path is set) and num_skills configure the simulator."""

    def __init__(
        self,
        path: str | None = None,
        num_skills: int = 50,
        max_len: int = 100,
        batch_size: int = 32,
        num_workers: int = 0,
        num_students: int = 4000,
        seed: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        if max_len < 2:
            raise ConfigError(
                f"datamodule.max_len={max_len}: must be at least 2 (a window needs a next step to predict)"
            )
        if batch_size < 1:
            raise ConfigError(f"datamodule.batch_size={batch_size}: must be at least 1")
        self.path = path
        self.num_skills = num_skills
        self.max_len = max_len
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.num_students = num_students
        self.seed = seed
        self.cache_dir = cache_dir
        self._sequences: dict[str, list[KTSequence]] | None = None
        self._windows: dict[str, list[KTSequence]] = {}

    def prepare_data(self) -> None:
        self._data_dir()

    def setup(self, stage: str) -> None:
        if stage not in _STAGE_SPLITS:
            raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(_STAGE_SPLITS)}")
        # All three files are read even when the stage needs one: the id remapping is over their
        # union, so that a skill gets the same index at fit, test and predict time.
        if self._sequences is None:
            self._sequences = self._read_splits()
        for split in _STAGE_SPLITS[stage]:
            self._windows[split] = make_windows(self._sequences[split], self.max_len)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self._windows:
            raise RuntimeError(f"the {split} split is not loaded: call setup() with a stage that needs it first")
        return DataLoader(
            self._windows[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_kt,
        )

    def _data_dir(self) -> Path:
        if self.path is None:
            simulator = SimulatorConfig(num_students=self.num_students, num_skills=self.num_skills, seed=self.seed)
            return cached_dataset(simulator, self.cache_dir)
        data_dir = Path(self.path).expanduser()
        if not data_dir.is_dir():
            raise DataError(
                f"datamodule.path={self.path}: no such folder; it must hold train.txt, valid.txt and test.txt "
                f"in the kt_lines format (or leave path unset to use the simulated dataset)"
            )
        return data_dir

    def _read_splits(self) -> dict[str, list[KTSequence]]:
        """The three splits, skill ids remapped to 0..n-1 over the sorted union of ids."""
        data_dir = self._data_dir()
        raw = {split: read_kt_lines(data_dir / f"{split}.txt") for split in SPLITS}
        vocab = np.unique(np.concatenate([skills for seqs in raw.values() for skills, _ in seqs]))
        if len(vocab) > self.num_skills:
            raise DataError(
                f"{data_dir}: the data has {len(vocab)} distinct skill ids but datamodule.num_skills="
                f"{self.num_skills}; set datamodule.num_skills={len(vocab)}"
            )
        return {split: [(np.searchsorted(vocab, s), c) for s, c in seqs] for split, seqs in raw.items()}


def make_windows(sequences: list[KTSequence], max_len: int) -> list[KTSequence]:
    """Cut each sequence into consecutive windows of at most max_len steps, in order.

    Every interaction lands in exactly one window; a window of 1 step is dropped, as it has no
    next step to predict.
    """
    windows = []
    for skills, correct in sequences:
        for start in range(0, len(skills), max_len):
            if len(skills) - start >= 2:
                windows.append((skills[start : start + max_len], correct[start : start + max_len]))
    return windows


def collate_kt(batch: list[KTSequence]) -> dict[str, torch.Tensor]:
    """Pad a list of windows to the longest; module-level so DataLoader workers can pickle it."""
    longest = max(len(skills) for skills, _ in batch)
    skills = torch.zeros(len(batch), longest, dtype=torch.long)
    correct = torch.zeros(len(batch), longest, dtype=torch.long)
    mask = torch.zeros(len(batch), longest, dtype=torch.bool)
    for row, (s, c) in enumerate(batch):
        skills[row, : len(s)] = torch.from_numpy(np.asarray(s, dtype=np.int64))
        correct[row, : len(c)] = torch.from_numpy(np.asarray(c, dtype=np.int64))
        mask[row, : len(s)] = True
    return {"skills": skills, "correct": correct, "mask": mask}
