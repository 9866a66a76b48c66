"""Knowledge-tracing data as padded batches, from four file formats or the simulator.

    KTDataModule            kt_lines: train.txt, valid.txt, test.txt (kt_lines.py); kt_akt: the
                            same files in AKT's 4-line format, with question ids
    PyKTDataModule          pyKT's train_valid_sequences.csv and test_sequences.csv (kt_csv.py)
    InteractionsDataModule  one CSV row per answer, split by student here (kt_csv.py)

With path None each reads the simulator's cached dataset, written in its own format. All share
`KTSequenceData`: skill (and question) ids remapped to 0..n-1 over all splits, num_skills and
num_questions taken from the data unless given (then checked), sequences cut into windows of at
most max_len steps, the same batches.

A batch is a dict of tensors, padded to its longest window:
    skills     [B, T] LongTensor, skill ids remapped to 0..num_skills-1 (0 on padding)
    correct    [B, T] LongTensor, 1 = correct (0 on padding)
    mask       [B, T] BoolTensor, True on real steps
    questions  [B, T] LongTensor, question ids 0..num_questions-1 (only when the data has them)
    first      [B, T] LongTensor, the first step of each step's question (only when some
               question has several concepts: pyKT's expanded steps; first[t] == t otherwise)
    student    [B] LongTensor, the window's student (an index into `student_ids`)
    last       [B] BoolTensor, True on each student's last window
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from .kt_csv import read_interactions_csv, read_pykt_csv
from .kt_lines import KTSequence, read_kt_lines
from .simulator import (
    INTERACTIONS_FILE,
    PYKT_FOLDS,
    PYKT_TEST,
    PYKT_TRAIN_VALID,
    QUESTION_COLUMN,
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

    num_skills / num_questions None: the data's counts (after setup). With path None,
    num_students, seed, num_skills and questions_per_skill configure the simulator; with a path,
    num_students, seed and questions_per_skill are ignored (InteractionsDataModule also splits its
    students by seed).
    """

    data_format: str
    missing_path: str
    min_len = 2  # the shortest window kept: a first step, and a next one to predict

    def __init__(
        self,
        path: str | None,
        num_skills: int | None,
        num_questions: int | None,
        max_len: int,
        batch_size: int,
        num_workers: int,
        num_students: int,
        seed: int,
        cache_dir: str | None,
        questions_per_skill: int,
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
        self.num_questions = num_questions
        self.max_len = max_len
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.num_students = num_students
        self.seed = seed
        self.cache_dir = cache_dir
        self.questions_per_skill = questions_per_skill
        self.student_ids: list[str] = []  # a batch's `student` indexes this
        self._student_index: dict[str, int] = {}
        self.skill_ids: list[str] = []  # the data's id of each skill index
        self.multi_concept = False  # some question has several concepts (set by setup)
        self._sequences: dict[str, list[KTSequence]] | None = None
        self._windows: dict[str, list[tuple[int, bool, KTSequence]]] = {}

    def prepare_data(self) -> None:
        self._source()

    def setup(self, stage: str) -> None:
        if stage not in _STAGE_SPLITS:
            raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(_STAGE_SPLITS)}")
        # All splits are read even when the stage needs one: the id remapping is over their
        # union, so that a skill gets the same index at fit, test and predict time.
        if self._sequences is None:
            source = self._source()
            raw = self._read_raw(source)
            self.num_skills, skill_ids = remap_ids(raw, "skills", self.num_skills, source)
            self.num_questions, _ = remap_ids(raw, "questions", self.num_questions, source)
            self.skill_ids = [str(k) for k in skill_ids]
            self.multi_concept = any(seq.first is not None and (seq.first != np.arange(len(seq))).any()
                                     for seqs in raw.values() for seq in seqs)
            index = dict.fromkeys(seq.student for split in SPLITS for seq in raw[split])
            self.student_ids = list(index)
            self._student_index = {student: i for i, student in enumerate(index)}
            self._sequences = raw
        for split in _STAGE_SPLITS[stage]:
            windows = make_windows(self._sequences[split], self.max_len, self.min_len)
            # A student's windows are consecutive (pyKT's rows too): the last is before another student's.
            self._windows[split] = [
                (self._student_index[w.student], i + 1 == len(windows) or windows[i + 1].student != w.student, w)
                for i, w in enumerate(windows)
            ]

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
            collate_fn=functools.partial(collate_kt, questions=self.num_questions > 0, first=self.multi_concept),
            pin_memory=torch.cuda.is_available(),  # on a GPU: the copy (non_blocking) overlaps the step
        )

    def _source(self) -> Path:
        """datamodule.path, checked; or with path None the simulated dataset's folder."""
        if self.path is None:
            simulator = SimulatorConfig(num_students=self.num_students, num_skills=self.num_skills or 50, seed=self.seed,
                                        questions_per_skill=self.questions_per_skill)
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
    """Reads `<path>/{train,valid,test}.txt` in the kt_lines format, or with `questions` in AKT's
    4-line format (question ids on the line after the length)."""

    missing_path = "no such folder; it must hold train.txt, valid.txt and test.txt in the kt_lines format"

    def __init__(
        self,
        path: str | None = None,
        questions: bool = False,
        num_skills: int | None = None,
        num_questions: int | None = None,
        max_len: int = 100,
        batch_size: int = 32,
        num_workers: int = 0,
        num_students: int = 4000,
        seed: int = 0,
        cache_dir: str | None = None,
        questions_per_skill: int = 0,
    ) -> None:
        if questions and path is None and questions_per_skill == 0:
            raise ConfigError("datamodule.questions=true on the simulator needs question ids: set "
                              "datamodule.questions_per_skill (e.g. 20)")
        super().__init__(path, num_skills, num_questions, max_len, batch_size, num_workers, num_students, seed,
                         cache_dir, questions_per_skill)
        self.questions = questions
        self.data_format = "kt_akt" if questions else "kt_lines"

    def _read_raw(self, source: Path) -> dict[str, list[KTSequence]]:
        raw = {split: read_kt_lines(source / f"{split}.txt", self.questions) for split in SPLITS}
        for split, sequences in raw.items():
            for seq in sequences:
                seq.student = f"{split}:{seq.student}"  # the files number their records alike
        return raw


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
        fold: int | None = 0,
        folds: int = PYKT_FOLDS,
        test_each_fold: bool = False,
        num_skills: int | None = None,
        num_questions: int | None = None,
        max_len: int = 200,
        batch_size: int = 32,
        num_workers: int = 0,
        num_students: int = 4000,
        seed: int = 0,
        cache_dir: str | None = None,
        questions_per_skill: int = 0,
    ) -> None:
        # fold=None (every fold, one run each) and test_each_fold are the cross-validation's
        # (trainkit/crossval.py): each run it starts has its fold set.
        super().__init__(path, num_skills, num_questions, max_len, batch_size, num_workers, num_students, seed,
                         cache_dir, questions_per_skill)
        self.fold = fold
        self.folds = folds
        self.test_each_fold = test_each_fold

    def _read_raw(self, source: Path) -> dict[str, list[KTSequence]]:
        if self.fold is None:
            raise ConfigError(f"datamodule.fold=null runs every fold: start it with `trainkit fit` (it sets the fold "
                              f"of each run), or choose one fold, 0..{self.folds - 1}")
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
        question_col: str | None = None,
        num_skills: int | None = None,
        num_questions: int | None = None,
        max_len: int = 100,
        batch_size: int = 32,
        num_workers: int = 0,
        num_students: int = 4000,
        seed: int = 0,
        cache_dir: str | None = None,
        questions_per_skill: int = 0,
    ) -> None:
        super().__init__(path, num_skills, num_questions, max_len, batch_size, num_workers, num_students, seed,
                         cache_dir, questions_per_skill)
        self.user_col = user_col
        self.skill_col = skill_col
        self.correct_col = correct_col
        self.order_col = order_col
        # The simulator's file names its question column: with questions, read it unless told otherwise.
        self.question_col = QUESTION_COLUMN if path is None and questions_per_skill and question_col is None else question_col

    def _read_raw(self, source: Path) -> dict[str, list[KTSequence]]:
        csv_file = source / INTERACTIONS_FILE if self.path is None else source
        students = read_interactions_csv(csv_file, self.user_col, self.skill_col, self.correct_col, self.order_col,
                                         self.question_col)
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


def remap_ids(raw: dict[str, list[KTSequence]], field: str, expected: int | None,
              source: Path) -> tuple[int, np.ndarray]:
    """Remap the splits' skill ids (field "skills") or question ids ("questions"), integers or
    strings, in place to 0..n-1 over their sorted union; return the size (`expected`, else n) and
    the data's ids in index order. Questions: size 0 when the data has none, and
    num_questions=0 drops them. DataError when `expected` (datamodule.num_<field>) is smaller than
    n, or when only some sequences have question ids."""
    arrays = [getattr(seq, field) for seqs in raw.values() for seq in seqs]
    key = f"datamodule.num_{field}"
    if field == "questions" and expected == 0:
        for seqs in raw.values():
            for seq in seqs:
                seq.questions = None
        return 0, np.array([])
    if all(a is None for a in arrays):
        if expected:
            raise DataError(f"{source}: the data has no question ids but {key}={expected}; set {key}=null "
                            f"(a model then uses skill ids only)")
        return 0, np.array([])
    if any(a is None for a in arrays):
        raise DataError(f"{source}: some sequences have question ids and some have none; give every one its questions")
    vocab = np.unique(np.concatenate(arrays))
    if expected is not None and len(vocab) > expected:
        raise DataError(
            f"{source}: the data has {len(vocab)} distinct {field[:-1]} ids but {key}={expected}; "
            f"set {key}={len(vocab)} (or null: the data's count)"
        )
    for seqs in raw.values():
        for seq in seqs:
            setattr(seq, field, np.searchsorted(vocab, getattr(seq, field)))
    return (len(vocab) if expected is None else expected), vocab


def make_windows(sequences: list[KTSequence], max_len: int, min_len: int = 2) -> list[KTSequence]:
    """Cut each sequence into consecutive windows of at most max_len steps, in order.

    Every interaction lands in exactly one window; a window shorter than min_len is dropped (a
    window of 1 step has no next step to predict).
    """
    windows = []
    for seq in sequences:
        for start in range(0, len(seq), max_len):
            if len(seq) - start >= min_len:
                windows.append(seq.window(start, start + max_len))
    return windows


def collate_kt(batch: list, questions: bool = False, first: bool = False) -> dict[str, torch.Tensor]:
    """Pad windows to the longest; module-level so DataLoader workers can pickle it. The items
    are windows, or (student index, is last window, window) as the datamodules give them."""
    items = [item if isinstance(item, tuple) else (0, True, item) for item in batch]
    longest = max(len(window) for _, _, window in items)
    fields = ["skills", "correct", *(["questions"] if questions else []), *(["first"] if first else [])]
    out = {name: torch.zeros(len(items), longest, dtype=torch.long) for name in fields}
    out["mask"] = torch.zeros(len(items), longest, dtype=torch.bool)
    for row, (_, _, window) in enumerate(items):
        n = len(window)
        for name in fields:
            values = getattr(window, name)
            if name == "first" and values is None:
                values = np.arange(n)
            out[name][row, :n] = torch.from_numpy(np.asarray(values, dtype=np.int64))
        out["mask"][row, :n] = True
        if first:
            out["first"][row, n:] = torch.arange(n, longest)  # padding: a question of its own
    out["student"] = torch.tensor([student for student, _, _ in items], dtype=torch.long)
    out["last"] = torch.tensor([last for _, last, _ in items], dtype=torch.bool)
    return out
