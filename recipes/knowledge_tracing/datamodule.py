"""Knowledge-tracing data as padded batches, from three file formats or the simulator.

    KTDataModule            kt_lines: train.txt, valid.txt, test.txt (kt_lines.py)
    PyKTDataModule          pyKT's train_valid_sequences.csv and test_sequences.csv (kt_csv.py)
    InteractionsDataModule  one CSV row per answer, split by student here (kt_csv.py)

With path None each reads the simulator's cached dataset, written in its own format. All three
share `KTSequenceData`: skill ids remapped to 0..n-1 over all splits, sequences cut into windows
of at most max_len steps, the same batches.

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

from .kt_csv import read_interactions_csv, read_pykt_csv
from .kt_lines import KTSequence, read_kt_lines
from .simulator import (
    INTERACTIONS_FILE,
    PYKT_TEST,
    PYKT_TRAIN_VALID,
    SPLITS,
    SimulatorConfig,
    cached_dataset,
)
from trainkit.engine.data import DataModule
from trainkit.errors import ConfigError, DataError

_STAGE_SPLITS = {"fit": ("train", "valid"), "validate": ("valid",), "test": ("test",), "predict": ("test",)}


class KTSequenceData(DataModule):
    """What the formats share. A format sets `data_format` (the simulator's writer to use),
    `missing_path` (the error's hint when datamodule.path does not exist), optionally `min_len`,
    and reads its files in `_read_raw`.

    With path None, num_students, seed and num_skills configure the simulator; with a path,
    num_students and seed are ignored (InteractionsDataModule also splits its students by seed).
    """

    data_format: str
    missing_path: str
    min_len = 2  # the shortest window kept: a first step, and a next one to predict

    def __init__(
        self,
        path: str | None,
        num_skills: int,
        max_len: int,
        batch_size: int,
        num_workers: int,
        num_students: int,
        seed: int,
        cache_dir: str | None,
    ) -> None:
        if max_len < self.min_len:
            raise ConfigError(
                f"datamodule.max_len={max_len}: must be at least {self.min_len}, the shortest window "
                f"this format keeps (a window needs a next step to predict)"
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
        self._source()

    def setup(self, stage: str) -> None:
        if stage not in _STAGE_SPLITS:
            raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(_STAGE_SPLITS)}")
        # All splits are read even when the stage needs one: the id remapping is over their
        # union, so that a skill gets the same index at fit, test and predict time.
        if self._sequences is None:
            source = self._source()
            self._sequences = remap_skills(self._read_raw(source), self.num_skills, source)
        for split in _STAGE_SPLITS[stage]:
            self._windows[split] = make_windows(self._sequences[split], self.max_len, self.min_len)

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

    def _source(self) -> Path:
        """datamodule.path, checked; or with path None the simulated dataset's folder."""
        if self.path is None:
            simulator = SimulatorConfig(num_students=self.num_students, num_skills=self.num_skills, seed=self.seed)
            return cached_dataset(simulator, self.cache_dir, self.data_format)
        source = Path(self.path).expanduser()
        if not source.exists():
            raise DataError(
                f"datamodule.path={self.path}: {self.missing_path} "
                f"(or leave path unset to use the simulated dataset)"
            )
        return source

    def _read_raw(self, source: Path) -> dict[str, list[KTSequence]]:
        """The train, valid and test sequences with the file's skill ids."""
        raise NotImplementedError


class KTDataModule(KTSequenceData):
    """Reads `<path>/{train,valid,test}.txt` in the kt_lines format."""

    data_format = "kt_lines"
    missing_path = "no such folder; it must hold train.txt, valid.txt and test.txt in the kt_lines format"

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
        super().__init__(path, num_skills, max_len, batch_size, num_workers, num_students, seed, cache_dir)

    def _read_raw(self, source: Path) -> dict[str, list[KTSequence]]:
        return {split: read_kt_lines(source / f"{split}.txt") for split in SPLITS}


class PyKTDataModule(KTSequenceData):
    """Reads pyKT's `<path>/train_valid_sequences.csv` (folds 0-4) and `<path>/test_sequences.csv`
    (or train_valid.csv and test.csv, the same rows before pyKT's windowing). Fold `fold` is the
    validation split, the other folds train. Windows shorter than 3 steps are dropped, as pyKT
    does; max_len defaults to pyKT's 200.
    """

    data_format = "kt_pykt"
    missing_path = f"no such folder; it must hold pyKT's {PYKT_TRAIN_VALID} and {PYKT_TEST}"
    min_len = 3

    def __init__(
        self,
        path: str | None = None,
        fold: int = 0,
        num_skills: int = 50,
        max_len: int = 200,
        batch_size: int = 32,
        num_workers: int = 0,
        num_students: int = 4000,
        seed: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(path, num_skills, max_len, batch_size, num_workers, num_students, seed, cache_dir)
        self.fold = fold

    def _read_raw(self, source: Path) -> dict[str, list[KTSequence]]:
        train_valid_file = _first_existing(source, PYKT_TRAIN_VALID, "train_valid.csv")
        train_valid = read_pykt_csv(train_valid_file)
        folds = sorted({fold for fold, _ in train_valid})
        if self.fold not in folds:
            raise DataError(
                f"{train_valid_file}: datamodule.fold={self.fold} is not a fold of this file; "
                f"choose one of {', '.join(map(str, folds))}"
            )
        return {
            "train": [sequence for fold, sequence in train_valid if fold != self.fold],
            "valid": [sequence for fold, sequence in train_valid if fold == self.fold],
            "test": [sequence for _, sequence in read_pykt_csv(_first_existing(source, PYKT_TEST, "test.csv"))],
        }


class InteractionsDataModule(KTSequenceData):
    """Reads one CSV file of answers (`path`), one row each, in the columns that user_col,
    skill_col, correct_col and order_col (None: file order) name; groups them per student and
    splits the students 80/10/10 into train/valid/test, shuffled by `seed`. Skill ids may be
    any strings.
    """

    data_format = "kt_interactions"
    missing_path = "no such file; it must be a CSV file with one row per answer"

    def __init__(
        self,
        path: str | None = None,
        user_col: str = "user_id",
        skill_col: str = "skill_id",
        correct_col: str = "correct",
        order_col: str | None = "order_id",
        num_skills: int = 50,
        max_len: int = 100,
        batch_size: int = 32,
        num_workers: int = 0,
        num_students: int = 4000,
        seed: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(path, num_skills, max_len, batch_size, num_workers, num_students, seed, cache_dir)
        self.user_col = user_col
        self.skill_col = skill_col
        self.correct_col = correct_col
        self.order_col = order_col

    def _read_raw(self, source: Path) -> dict[str, list[KTSequence]]:
        csv_file = source / INTERACTIONS_FILE if self.path is None else source
        students = read_interactions_csv(csv_file, self.user_col, self.skill_col, self.correct_col, self.order_col)
        return random_split(students, self.seed)


def _first_existing(folder: Path, *names: str) -> Path:
    """The first of the files that exists in folder; DataError naming them all when none does."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder}: no {' or '.join(names)}; check datamodule.path")


def random_split(students: list[KTSequence], seed: int) -> dict[str, list[KTSequence]]:
    """80/10/10 train/valid/test in a seeded random order: the same split on every run."""
    order = np.random.default_rng(seed).permutation(len(students))
    n_train, n_valid = int(0.8 * len(students)), int(0.1 * len(students))
    shuffled = [students[i] for i in order]
    return {
        "train": shuffled[:n_train],
        "valid": shuffled[n_train : n_train + n_valid],
        "test": shuffled[n_train + n_valid :],
    }


def remap_skills(raw: dict[str, list[KTSequence]], num_skills: int, source: Path) -> dict[str, list[KTSequence]]:
    """The splits with skill ids (integers or strings) remapped to 0..n-1 over their sorted union;
    DataError when num_skills is smaller than n."""
    vocab = np.unique(np.concatenate([skills for seqs in raw.values() for skills, _ in seqs]))
    if len(vocab) > num_skills:
        raise DataError(
            f"{source}: the data has {len(vocab)} distinct skill ids but datamodule.num_skills="
            f"{num_skills}; set datamodule.num_skills={len(vocab)}"
        )
    return {split: [(np.searchsorted(vocab, s), c) for s, c in seqs] for split, seqs in raw.items()}


def make_windows(sequences: list[KTSequence], max_len: int, min_len: int = 2) -> list[KTSequence]:
    """Cut each sequence into consecutive windows of at most max_len steps, in order.

    Every interaction lands in exactly one window; a window shorter than min_len is dropped (a
    window of 1 step has no next step to predict).
    """
    windows = []
    for skills, correct in sequences:
        for start in range(0, len(skills), max_len):
            if len(skills) - start >= min_len:
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
