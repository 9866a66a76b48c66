"""Plain text as byte tokens for the tiny GPT: a folder of .txt / .txt.gz files, or one file.

    trainkit fit experiment=tiny_gpt                               # the OpenStax books (the default path)
    trainkit fit experiment=tiny_gpt datamodule.path=~/my_texts    # your folder of .txt / .txt.gz files

Split: every file (a book) is cut at fixed fractions, in reading order: the first
1 - val_fraction - test_fraction of its bytes train, the next val_fraction validate, the last
test_fraction test. The same split on every run, every file represented in every split, no
training window reaching into held-out text (windows never cross a file or split boundary).

Training samples: `num_windows_per_epoch` windows of block_size + 1 tokens (input and the targets
one token later). Window i starts in the i-th of as many equal strata of all possible starts, at
an offset drawn once from `seed`: the windows cover the training text about once per epoch (by
default num_windows_per_epoch = training tokens / block_size), and window i is a fixed function of
i. Which windows a step trains on is then trainkit's business: its sampler shuffles the indices
per epoch from the run's seed, the same on any number of processes, and a resumed run skips the
batches already consumed — data order and resume need no state here.

Validation and test: consecutive, non-overlapping windows of each book's part (the last one
shorter, padded): every token but a part's first is predicted exactly once, so `val/loss` is the
mean over the whole split.

Prediction: `prompt` (a string or a list) x `num_samples` continuations of `max_new_tokens` bytes,
one per batch.

A batch (collate_windows) is a dict of LongTensor [B, T]: `input`, and `target` = the next token
(-1 on padding). The prediction batch is `prompt_tokens` [1, T] with its prompt and settings.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .tokenizer import encode
from trainkit.engine.data import DataModule
from trainkit.errors import ConfigError, DataError

SUFFIXES = (".txt", ".txt.gz")
_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}


class TextDataModule(DataModule):
    def __init__(
        self,
        path: str,
        block_size: int = 128,
        batch_size: int = 16,
        val_fraction: float = 0.01,
        test_fraction: float = 0.01,
        num_windows_per_epoch: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        prompt: str | list[str] = "The ",
        max_new_tokens: int = 200,
        num_samples: int = 1,
    ) -> None:
        for key, value in (("block_size", block_size), ("batch_size", batch_size), ("num_samples", num_samples)):
            if value < 1:
                raise ConfigError(f"datamodule.{key}={value}: must be at least 1")
        if max_new_tokens < 0:
            raise ConfigError(f"datamodule.max_new_tokens={max_new_tokens}: must be >= 0")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ConfigError(
                f"datamodule.val_fraction={val_fraction}, datamodule.test_fraction={test_fraction}: each must "
                "be in [0, 1) and their sum below 1 (the rest of every file trains)"
            )
        if num_windows_per_epoch is not None and num_windows_per_epoch < 1:
            raise ConfigError(f"datamodule.num_windows_per_epoch={num_windows_per_epoch}: must be >= 1, or null")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or any(not p for p in prompts):
            raise ConfigError('datamodule.prompt must be a non-empty string or list of strings (e.g. "\\n" to start a paragraph)')
        self.path = path
        self.block_size, self.batch_size = block_size, batch_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.num_windows_per_epoch, self.seed, self.num_workers = num_windows_per_epoch, seed, num_workers
        self.prompts, self.max_new_tokens, self.num_samples = prompts, max_new_tokens, num_samples
        self.datasets: dict[str, Dataset] = {}

    def setup(self, stage: str) -> None:
        if stage not in _SPLITS:
            raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(_SPLITS)}")
        if stage == "predict":  # needs no text: generation works wherever the checkpoint is
            self.datasets["predict"] = Prompts(self.prompts, self.num_samples, self.max_new_tokens)
            return
        parts = split_books(read_corpus(self.path), self.val_fraction, self.test_fraction)
        for split in _SPLITS[stage]:
            if split == "train":
                self.datasets["train"] = TrainWindows(parts["train"], self.block_size, self.num_windows_per_epoch, self.seed)
                if len(self.datasets["train"]) < self.batch_size:
                    raise DataError(
                        f"{self.path}: {len(self.datasets['train'])} training windows, fewer than "
                        f"datamodule.batch_size={self.batch_size}; lower the batch size or set datamodule.num_windows_per_epoch"
                    )
            elif getattr(self, f"{split}_fraction") > 0:
                self.datasets[split] = EvalWindows(parts[split], self.block_size)
                if len(self.datasets[split]) == 0:
                    raise DataError(
                        f"{self.path}: the {split} split has no tokens to predict; raise datamodule.{split}_fraction"
                    )

    def train_dataloader(self) -> DataLoader:
        # drop_last: every batch has the same shape (one compile, no short last step); the few
        # windows it leaves out change from epoch to epoch with the shuffle.
        # pin_memory: on a GPU, page-locked batches whose copy (non_blocking) overlaps the step
        return DataLoader(self._dataset("train"), batch_size=self.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.num_workers, collate_fn=collate_windows,
                          pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader | None:
        if self.val_fraction == 0:
            return None  # no validation
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        if self.test_fraction == 0:
            raise ConfigError("datamodule.test_fraction=0: there is no test split; set it above 0 (e.g. 0.02)")
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset("predict"), batch_size=1, shuffle=False, collate_fn=collate_prompt)

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(self._dataset(split), batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, collate_fn=collate_windows,
                          pin_memory=torch.cuda.is_available())

    def _dataset(self, split: str) -> Dataset:
        if split not in self.datasets:
            raise RuntimeError(f"the {split} split is not loaded: call setup() with a stage that needs it first")
        return self.datasets[split]


# -- reading and splitting ----------------------------------------------------------------------
def corpus_files(path: str) -> list[Path]:
    """The .txt / .txt.gz files at path (a folder: its files, sorted by name; or one file)."""
    source = Path(path).expanduser()
    fix = ("point datamodule.path at a folder of .txt / .txt.gz files or at one such file. The default is "
           "<data_dir>/openstax_text (data_dir: $TRAINKIT_DATA, else ~/.cache/trainkit/data): plain text of "
           "OpenStax textbooks, CC BY 4.0, from https://openstax.org (any books' text works; see the recipe's README)")
    if not source.exists():
        raise DataError(f"datamodule.path={path} ({source.resolve()}): no such file or folder; {fix}")
    if source.is_file():
        return [source]
    files = sorted(f for f in source.iterdir() if f.is_file() and f.name.endswith(SUFFIXES))
    if not files:
        raise DataError(f"datamodule.path={path}: the folder has no .txt or .txt.gz files; {fix}")
    return files


def read_corpus(path: str) -> list[tuple[str, np.ndarray]]:
    """(file name, its bytes as uint8 tokens) for every file at path; DataError if they are all empty."""
    books = []
    for file in corpus_files(path):
        try:
            data = gzip.decompress(file.read_bytes()) if file.name.endswith(".gz") else file.read_bytes()
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{file}: cannot be read as {'gzip' if file.name.endswith('.gz') else 'text'} ({exc})") from None
        books.append((file.name, np.frombuffer(data, dtype=np.uint8)))
    if sum(len(tokens) for _, tokens in books) == 0:
        raise DataError(f"datamodule.path={path}: the corpus is empty (every file has 0 bytes)")
    return books


def split_books(books: list[tuple[str, np.ndarray]], val_fraction: float, test_fraction: float) -> dict[str, list[np.ndarray]]:
    """Each book's train / val / test parts: its first bytes, then the last val_fraction +
    test_fraction of it (val before test), as consecutive slices."""
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for _, tokens in books:
        n = len(tokens)
        n_val, n_test = round(n * val_fraction), round(n * test_fraction)
        cut_val, cut_test = n - n_val - n_test, n - n_test
        parts["train"].append(tokens[:cut_val])
        parts["val"].append(tokens[cut_val:cut_test])
        parts["test"].append(tokens[cut_test:])
    return parts


# -- datasets ------------------------------------------------------------------------------------
def _window(tokens: np.ndarray) -> dict[str, torch.Tensor]:
    window = torch.from_numpy(tokens.astype(np.int64))
    return {"input": window[:-1], "target": window[1:]}


class TrainWindows(Dataset):
    """num_windows windows of block_size + 1 tokens, each inside one part; window i is fixed by
    (parts, block_size, num_windows, seed). See the module docstring."""

    def __init__(self, parts: list[np.ndarray], block_size: int, num_windows: int | None, seed: int) -> None:
        self.block_size = block_size
        starts_per_part = np.array([max(0, len(p) - block_size) for p in parts], dtype=np.int64)
        total = int(starts_per_part.sum())  # every position a window can start at
        if total == 0:
            longest = max((len(p) for p in parts), default=0)
            raise DataError(
                f"no training window fits: the longest training text has {longest} tokens and a window needs "
                f"block_size + 1 = {block_size + 1}; lower model.block_size or add text"
            )
        self.tokens = np.concatenate(parts)
        if num_windows is None:
            num_windows = max(1, sum(len(p) for p in parts) // block_size)
        # Stratified starts: u_i in [0, 1) drawn once; window i starts at (i + u_i) / n of the way
        # through all possible starts.
        u = np.random.default_rng(seed).random(num_windows)
        virtual = np.minimum(((np.arange(num_windows) + u) * (total / num_windows)).astype(np.int64), total - 1)
        first_start = np.concatenate([[0], np.cumsum(starts_per_part)])  # in the virtual numbering
        part_offset = np.concatenate([[0], np.cumsum([len(p) for p in parts])])  # in self.tokens
        part = np.searchsorted(first_start, virtual, side="right") - 1
        self.starts = part_offset[part] + (virtual - first_start[part])

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        start = int(self.starts[i])
        return _window(self.tokens[start : start + self.block_size + 1])


class EvalWindows(Dataset):
    """Consecutive windows of each part, stride block_size: the targets of all windows are every
    token of every part except its first, each once."""

    def __init__(self, parts: list[np.ndarray], block_size: int) -> None:
        self.block_size = block_size
        self.parts = parts
        self.index = [(p, start) for p, part in enumerate(parts) for start in range(0, len(part) - 1, block_size)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        p, start = self.index[i]
        return _window(self.parts[p][start : start + self.block_size + 1])


class Prompts(Dataset):
    """Every prompt num_samples times, in that order."""

    def __init__(self, prompts: list[str], num_samples: int, max_new_tokens: int) -> None:
        self.items = [(prompt, sample) for prompt in prompts for sample in range(num_samples)]
        self.max_new_tokens = max_new_tokens

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        prompt, sample = self.items[i]
        return {"prompt": prompt, "sample": sample, "max_new_tokens": self.max_new_tokens,
                "prompt_tokens": torch.tensor([encode(prompt)], dtype=torch.long)}


def collate_windows(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack windows, padding shorter ones (input 0, target -1); module-level so workers can pickle it."""
    longest = max(len(item["input"]) for item in batch)
    inputs = torch.zeros(len(batch), longest, dtype=torch.long)
    targets = torch.full((len(batch), longest), -1, dtype=torch.long)
    for row, item in enumerate(batch):
        inputs[row, : len(item["input"])] = item["input"]
        targets[row, : len(item["target"])] = item["target"]
    return {"input": inputs, "target": targets}


def collate_prompt(batch: list[dict[str, Any]]) -> dict[str, Any]:
    (item,) = batch  # one sample per batch: prompts differ in length
    return item
