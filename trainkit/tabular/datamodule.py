"""What the tabular datamodules share: stratified splits and folds, preprocessing fitted on the
training rows only, class balancing, and batches.

A subclass reads its files in `_load` and returns `Raw`: per row, the numeric features (NaN =
missing), the categorical values (strings), the class index, optionally a fixed test set (a
temporal split) and extra float arrays (the engagement recipe's day sequences). Everything after
that is here, so that every dataset of the recipe is split and scaled the same way.

Splits. The test rows are fixed by `seed` and `test_fraction` (stratified by class) or by the
subclass; the rest is the pool. `folds=None`: one stratified split of the pool, `valid_fraction`
of it for validation. `folds=k`: stratified k-fold over the pool, fold `fold` validates, the other
k-1 train. The test rows never depend on folds, fold or valid_fraction.

Preprocessing, fitted on the training rows of the current split or fold: numeric features
standardised with the training mean and standard deviation (missing values become the training
mean, i.e. 0); each categorical column's values get the indices 1..n in sorted order of the
values seen in training, 0 for a value training never saw; extra arrays are standardised per
feature (last axis) the same way.

A batch is a dict of tensors: numeric [B, Fn] float32, categorical [B, Fc] int64, label [B]
int64, weight [B] float32 (the loss weight of each row), and each extra array [B, ...] float32.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from trainkit.engine.data import DataModule
from trainkit.errors import ConfigError, DataError

log = logging.getLogger("trainkit")

BALANCE = ("class_weights", "sampler", "none")
_STAGE_SPLITS = {"fit": ("train", "valid"), "validate": ("valid",), "test": ("test",), "predict": ("test",)}


@dataclass
class Raw:
    """A dataset as read, one entry per row, before splitting and scaling."""

    numeric: np.ndarray  # [N, Fn] float64, NaN = missing
    categorical: np.ndarray  # [N, Fc] str
    labels: np.ndarray  # [N] int64, class indices
    source: Path  # named in error messages
    test_mask: np.ndarray | None = None  # [N] bool: a fixed test set (None: a stratified random one)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [N, ..., F] float


# -- splits ------------------------------------------------------------------------------------
def stratified_holdout(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) positions into labels: round(fraction * n_c) of each class c held out, chosen at random."""
    kept, held = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_held = int(round(fraction * len(members)))
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def stratified_folds(labels: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """The fold (0..folds-1) of each position: each class shuffled, then dealt round-robin, one
    count running over all classes, so that fold sizes differ by at most one and every class
    is spread evenly (to within one row per fold)."""
    order = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)])
    fold_of = np.empty(len(labels), dtype=np.int64)
    fold_of[order] = np.arange(len(labels)) % folds
    return fold_of


def split_rows(
    labels: np.ndarray,
    test_mask: np.ndarray | None,
    test_fraction: float,
    valid_fraction: float,
    folds: int | None,
    fold: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Row indices of train, valid and test (see the module docstring)."""
    everything = np.arange(len(labels))
    if test_mask is None:
        pool_pos, test_pos = stratified_holdout(labels, test_fraction, np.random.default_rng([seed, 0]))
        pool, test = everything[pool_pos], everything[test_pos]
    else:
        pool, test = everything[~test_mask], everything[test_mask]
    rng = np.random.default_rng([seed, 1])
    if folds is None:
        train_pos, valid_pos = stratified_holdout(labels[pool], valid_fraction, rng)
        return {"train": pool[train_pos], "valid": pool[valid_pos], "test": test}
    fold_of = stratified_folds(labels[pool], folds, rng)
    return {"train": pool[fold_of != fold], "valid": pool[fold_of == fold], "test": test}


# -- preprocessing -----------------------------------------------------------------------------
class Preprocessor:
    """Standardisation and category indices, fitted on the training rows only."""

    def __init__(self, raw: Raw, train: np.ndarray, max_categories: int, categorical_names: list[str]) -> None:
        self.mean, self.std = _moments(raw.numeric[train])
        self.vocab = [np.unique(raw.categorical[train, j]) for j in range(len(categorical_names))]
        if self.vocab:
            widest = max(range(len(self.vocab)), key=lambda j: len(self.vocab[j]))
            needed = len(self.vocab[widest]) + 1  # index 0 is "not seen in training"
            if needed > max_categories:
                raise DataError(
                    f"{raw.source}: column {categorical_names[widest]!r} has {needed - 1} distinct values in the "
                    f"training rows, but datamodule.max_categories={max_categories} leaves room for "
                    f"{max_categories - 1}; set datamodule.max_categories={needed} (enough for every column)"
                )
        self.extra = {name: _moments(array[train].reshape(-1, array.shape[-1])) for name, array in raw.extra.items()}

    def numeric(self, values: np.ndarray) -> np.ndarray:
        scaled = (values - self.mean) / self.std
        return np.nan_to_num(scaled, nan=0.0).astype(np.float32)

    def categorical(self, values: np.ndarray) -> np.ndarray:
        out = np.zeros(values.shape, dtype=np.int64)
        for j, vocab in enumerate(self.vocab):
            if len(vocab) == 0:
                continue
            pos = np.searchsorted(vocab, values[:, j])
            found = vocab[np.minimum(pos, len(vocab) - 1)] == values[:, j]
            out[:, j] = np.where(found, pos + 1, 0)
        return out

    def extra_array(self, name: str, values: np.ndarray) -> np.ndarray:
        mean, std = self.extra[name]
        return np.nan_to_num((values - mean) / std, nan=0.0).astype(np.float32)


def _moments(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation ignoring NaN; a constant or empty column gets 0 and 1."""
    if values.shape[0] == 0 or values.shape[-1] == 0:
        return np.zeros(values.shape[-1]), np.ones(values.shape[-1])
    counts = (~np.isnan(values)).sum(0)
    filled = np.where(np.isnan(values), 0.0, values)
    mean = filled.sum(0) / np.maximum(counts, 1)
    var = (np.where(np.isnan(values), 0.0, values - mean) ** 2).sum(0) / np.maximum(counts, 1)
    std = np.sqrt(var)
    return mean, np.where(std > 0, std, 1.0)


# -- balance -----------------------------------------------------------------------------------
def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """n / (num_classes * n_c) per class: every class carries the same total weight (0 for an absent class)."""
    counts = np.bincount(labels, minlength=num_classes)
    return np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)


def oversample(rows: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """rows with every class repeated up to the size of the largest: each row of a class of n_c
    appears floor(n_max / n_c) or that plus one times, the extras drawn at random."""
    counts = {c: int((labels == c).sum()) for c in np.unique(labels)}
    largest = max(counts.values())
    out = []
    for c, n in counts.items():
        members = rows[labels == c]
        repeats, rest = divmod(largest, n)
        out.append(np.concatenate([np.tile(members, repeats), rng.choice(members, rest, replace=False)]))
    return np.concatenate(out)


# -- batches -----------------------------------------------------------------------------------
class TensorRows:
    """Rows of equally long tensors; a whole batch is one indexing per tensor (`__getitems__`),
    not batch_size calls and a stack: tabular batches are cheap, the per-row overhead is not."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {name: t[i] for name, t in self.tensors.items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return {name: t[index] for name, t in self.tensors.items()}


def collate_rows(batch: Any) -> dict[str, torch.Tensor]:
    """A batch from `TensorRows.__getitems__` as it is; a list of rows stacked. Module-level so
    that DataLoader workers can pickle it."""
    if isinstance(batch, dict):
        return batch
    return {name: torch.stack([row[name] for row in batch]) for name in batch[0]}


# -- the datamodule ----------------------------------------------------------------------------
class TabularDataModule(DataModule):
    """A subclass sets `missing_path` (the hint when datamodule.path does not exist: the files
    expected there), `data_folder` and `source` (where to get the data, with its licence), and
    reads its files in `_load(folder) -> Raw`. The positive class (AUC, F1) is classes[0]."""

    missing_path: str
    data_folder: str  # the dataset's folder under data_dir ($TRAINKIT_DATA)
    source: str

    def __init__(
        self,
        path: str,
        numeric: list[str],
        categorical: list[str],
        classes: list[str],
        max_categories: int,
        test_fraction: float,
        valid_fraction: float,
        folds: int | None,
        fold: int | None,
        balance: str,
        batch_size: int,
        num_workers: int,
        seed: int,
    ) -> None:
        if balance not in BALANCE:
            raise ConfigError(f"datamodule.balance={balance!r}: choose one of {', '.join(BALANCE)}")
        if fold is None:  # the CLI runs every fold (trainkit/crossval.py); on its own: the first
            fold = 0
        if folds is None:
            if fold != 0:
                raise ConfigError(f"datamodule.fold={fold} needs datamodule.folds (e.g. datamodule.folds=5)")
            if not 0.0 < valid_fraction < 1.0:
                raise ConfigError(f"datamodule.valid_fraction={valid_fraction}: must be between 0 and 1")
        elif folds < 2 or not 0 <= fold < folds:
            raise ConfigError(
                f"datamodule.folds={folds} datamodule.fold={fold}: need folds >= 2 and 0 <= fold < folds"
            )
        if not 0.0 < test_fraction < 1.0:
            raise ConfigError(f"datamodule.test_fraction={test_fraction}: must be between 0 and 1")
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ConfigError(f"datamodule.classes={list(classes)}: need at least two distinct class names")
        if batch_size < 1:
            raise ConfigError(f"datamodule.batch_size={batch_size}: must be at least 1")
        self.path = path
        self.numeric = list(numeric)
        self.categorical = list(categorical)
        self.classes = list(classes)
        self.max_categories = max_categories
        self.test_fraction = test_fraction
        self.valid_fraction = valid_fraction
        self.folds = folds
        self.fold = fold
        self.balance = balance
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.rows: dict[str, np.ndarray] | None = None  # row indices of each split, after setup
        self.preprocessor: Preprocessor | None = None
        self._datasets: dict[str, TensorRows] = {}

    def prepare_data(self) -> None:
        self._folder()

    def setup(self, stage: str) -> None:
        if stage not in _STAGE_SPLITS:
            raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(_STAGE_SPLITS)}")
        if self._datasets:
            return
        # Every split is built whatever the stage: test and predict must scale with the statistics
        # of the same training rows that fit used.
        raw = self._load(self._folder())
        self.rows = split_rows(raw.labels, raw.test_mask, self.test_fraction, self.valid_fraction,
                               self.folds, self.fold, self.seed)
        for split, rows in self.rows.items():
            if len(rows) == 0:
                raise DataError(f"{raw.source}: the {split} split is empty; use more data or change the split")
        train = self.rows["train"]
        self.preprocessor = Preprocessor(raw, train, self.max_categories, self.categorical)
        weights = class_weights(raw.labels[train], len(self.classes))
        for split, rows in self.rows.items():
            if split == "train" and self.balance == "sampler":
                rows = oversample(rows, raw.labels[rows], np.random.default_rng([self.seed, 2]))
            weight = weights[raw.labels[rows]] if split == "train" and self.balance == "class_weights" else np.ones(len(rows))
            self._datasets[split] = self._tensors(raw, rows, weight)
        counts = {s: np.bincount(raw.labels[r], minlength=len(self.classes)).tolist() for s, r in self.rows.items()}
        log.info("%s: %s rows per class %s (balance=%s)", raw.source, ", ".join(f"{s} {c}" for s, c in counts.items()),
                 self.classes, self.balance)

    def _tensors(self, raw: Raw, rows: np.ndarray, weight: np.ndarray) -> TensorRows:
        p = self.preprocessor
        tensors = {
            "numeric": torch.from_numpy(p.numeric(raw.numeric[rows])),
            "categorical": torch.from_numpy(p.categorical(raw.categorical[rows])),
            "label": torch.from_numpy(raw.labels[rows].astype(np.int64)),
            "weight": torch.from_numpy(weight.astype(np.float32)),
        }
        for name, array in raw.extra.items():
            tensors[name] = torch.from_numpy(p.extra_array(name, array[rows]))
        return TensorRows(tensors)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self._datasets:
            raise RuntimeError(f"the {split} split is not loaded: call setup() first")
        return DataLoader(self._datasets[split], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, collate_fn=collate_rows,
                          pin_memory=torch.cuda.is_available())  # on a GPU: non_blocking copies overlap the step

    def _folder(self) -> Path:
        folder = Path(self.path).expanduser()
        if not folder.is_dir():
            raise DataError(
                f"datamodule.path={self.path}: no such folder; {self.missing_path}. Get the data: {self.source}. "
                f"Then set TRAINKIT_DATA (or data_dir=) to the folder that holds {self.data_folder}/, "
                f"or point datamodule.path at that folder"
            )
        return folder

    def _load(self, folder: Path) -> Raw:
        raise NotImplementedError

    def _class_index(self, values: list[str]) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.classes)}
        return np.array([index[v] for v in values], dtype=np.int64)
