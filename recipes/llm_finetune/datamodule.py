"""Text for fine-tuning a causal LM with its own tokenizer: plain-text folders and JSONL files.

    trainkit fit experiment=llm_finetune model.pretrained=~/models/gpt2                     # the OpenStax books
    trainkit fit experiment=llm_finetune model.pretrained=~/models/gpt2 datamodule.path=~/dialogues.jsonl

Sources: `datamodule.path` is a file or a folder of files (sorted by name): `.txt` / `.txt.gz` (one
document each) and `.jsonl` (one record a line: `{"text": ...}` is a document; `{"prompt": ...,
"response": ...}` a pair whose loss is on the response only; the field names are settings).

Tokens: every document is `tokenizer(text)` (with the tokenizer's own special tokens, e.g. a
BOS) followed by its EOS token; a pair is `tokenizer(prompt) + tokenizer(response, no special
tokens) + EOS`, the prompt's tokens never a target. Each file is tokenized once: the tokens and
the mask of scored tokens are cached under `<cache_dir>/llm_finetune/` by a key of the file's
bytes, the fields and the tokenizer's whole definition (a changed file or tokenizer is tokenized
again; the split fractions and block size can change without it).

Split: a text file is cut by tokens, in reading order (its first 1 - val_fraction - test_fraction
trains, then validation, then test), as the tiny GPT recipe cuts its books; a JSONL file by
records (its last records validate and test), so no pair is cut in two.

Training: the training parts of all files, in order, are one stream, cut into `num_blocks` fixed
blocks of block_size + 1 tokens (stride block_size: input and targets one token later; documents
packed back to back, an EOS between them). Block i is a fixed function of i: trainkit's sampler
orders the blocks per epoch from the run's seed, the same on any number of processes, and a
resumed run skips exactly the batches already consumed (as for the tiny GPT).

Validation and test: consecutive windows of each file's part (the last one shorter, padded with
target -1): every scored token but a part's first is predicted once, so `val/loss` is the mean
over the whole split.

A batch is a dict of LongTensor [B, T]: `input`, and `target` = the next token, -1 where it is not
scored (a prompt, padding).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .pretrained import load_tokenizer, tokenizer_fingerprint
from trainkit.engine.data import DataModule
from trainkit.errors import ConfigError, DataError
from trainkit.lm_metrics import IGNORE

log = logging.getLogger("trainkit")

TEXT_SUFFIXES = (".txt", ".txt.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}
CACHE_FORMAT = 1  # bump when what is cached changes


class LMDataModule(DataModule):
    def __init__(
        self,
        path: str,
        tokenizer: str,
        block_size: int = 256,
        batch_size: int = 8,
        val_fraction: float = 0.01,
        test_fraction: float = 0.01,
        text_field: str = "text",
        prompt_field: str = "prompt",
        response_field: str = "response",
        cache_dir: str | None = None,
        num_workers: int = 0,
        prompt: str | list[str] = "The ",
        max_new_tokens: int = 100,
        num_samples: int = 1,
    ) -> None:
        for key, value in (("block_size", block_size), ("batch_size", batch_size), ("num_samples", num_samples)):
            if value < 1:
                raise ConfigError(f"datamodule.{key}={value}: must be at least 1")
        if max_new_tokens < 1:
            raise ConfigError(f"datamodule.max_new_tokens={max_new_tokens}: must be at least 1")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ConfigError(
                f"datamodule.val_fraction={val_fraction}, datamodule.test_fraction={test_fraction}: each must "
                "be in [0, 1) and their sum below 1 (the rest of every file trains)"
            )
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or any(not p for p in prompts):
            raise ConfigError("datamodule.prompt must be a non-empty string or a list of them")
        self.path, self.tokenizer_name = path, tokenizer
        self.block_size, self.batch_size = block_size, batch_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.fields = {"text": text_field, "prompt": prompt_field, "response": response_field}
        self.cache_dir = cache_dir
        self.num_workers = num_workers
        self.prompts, self.max_new_tokens, self.num_samples = prompts, max_new_tokens, num_samples
        self.datasets: dict[str, Dataset] = {}

    def setup(self, stage: str) -> None:
        if stage not in _SPLITS:
            raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(_SPLITS)}")
        tokenizer = load_tokenizer(self.tokenizer_name)
        if stage == "predict":  # generation reads no data
            self.datasets["predict"] = Prompts(self.prompts, self.num_samples, self.max_new_tokens, tokenizer)
            return
        sources = [tokenized(file, tokenizer, self.fields, self._cache_dir()) for file in source_files(self.path)]
        parts = split_sources(sources, self.val_fraction, self.test_fraction)
        for split in _SPLITS[stage]:
            if split == "train":
                self.datasets["train"] = PackedBlocks(parts["train"], self.block_size)
                if len(self.datasets["train"]) < self.batch_size:
                    raise DataError(
                        f"{self.path}: {len(self.datasets['train'])} training blocks of datamodule.block_size="
                        f"{self.block_size} tokens, fewer than datamodule.batch_size={self.batch_size}; lower "
                        "either, or add text"
                    )
            elif getattr(self, f"{split}_fraction") > 0:
                self.datasets[split] = EvalWindows(parts[split], self.block_size)
                if len(self.datasets[split]) == 0:
                    raise DataError(f"{self.path}: the {split} split has no scored tokens; raise "
                                    f"datamodule.{split}_fraction")

    def _cache_dir(self) -> Path:
        root = self.cache_dir or os.environ.get("TRAINKIT_CACHE") or Path.home() / ".cache" / "trainkit"
        return Path(root).expanduser() / "llm_finetune"

    def train_dataloader(self) -> DataLoader:
        # drop_last: every step sees batch_size full blocks (one shape, the same tokens per process)
        # pin_memory: on a GPU, page-locked batches whose copy (non_blocking) overlaps the step
        return DataLoader(self._dataset("train"), batch_size=self.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.num_workers, collate_fn=collate_windows,
                          pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader | None:
        return None if self.val_fraction == 0 else self._eval_loader("val")

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


# -- reading and tokenizing ----------------------------------------------------------------------
def source_files(path: str) -> list[Path]:
    source = Path(path).expanduser()
    fix = ("point datamodule.path at a .txt / .txt.gz / .jsonl file or a folder of them (the example: "
           "<data_dir>/openstax_text, plain text of OpenStax textbooks, CC BY 4.0)")
    if not source.exists():
        raise DataError(f"datamodule.path={path} ({source.resolve()}): no such file or folder; {fix}")
    files = [source] if source.is_file() else sorted(f for f in source.iterdir() if f.is_file())
    files = [f for f in files if f.name.endswith(TEXT_SUFFIXES + JSONL_SUFFIXES)]
    if not files:
        raise DataError(f"datamodule.path={path}: no .txt, .txt.gz or .jsonl file there; {fix}")
    return files


def _read(file: Path) -> bytes:
    try:
        return gzip.decompress(file.read_bytes()) if file.name.endswith(".gz") else file.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{file}: cannot be read ({exc})") from None


def records(file: Path, data: bytes, fields: dict[str, str]) -> list[tuple[str, str] | str]:
    """A text file's one document, or a JSONL file's records: a text, or a (prompt, response) pair."""
    text = data.decode("utf-8", errors="replace")
    if file.name.endswith(TEXT_SUFFIXES):
        return [text]
    found: list[tuple[str, str] | str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{file}:{number}: not a JSON object ({exc})") from None
        if isinstance(record, dict) and isinstance(record.get(fields["prompt"]), str) \
                and isinstance(record.get(fields["response"]), str):
            found.append((record[fields["prompt"]], record[fields["response"]]))
        elif isinstance(record, dict) and isinstance(record.get(fields["text"]), str):
            found.append(record[fields["text"]])
        else:
            raise DataError(f"{file}:{number}: a record needs a string \"{fields['text']}\", or \"{fields['prompt']}\" "
                            f"and \"{fields['response']}\" (datamodule.text_field / prompt_field / response_field)")
    return found


def encode_record(record: tuple[str, str] | str, tokenizer: Any) -> tuple[list[int], list[bool]]:
    """Token ids and whether each is scored as a target (False on a prompt's tokens)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if isinstance(record, str):
        ids = tokenizer(record, add_special_tokens=True, verbose=False)["input_ids"] + eos
        return ids, [True] * len(ids)
    prompt = tokenizer(record[0], add_special_tokens=True, verbose=False)["input_ids"]
    response = tokenizer(record[1], add_special_tokens=False, verbose=False)["input_ids"] + eos
    return prompt + response, [False] * len(prompt) + [True] * len(response)


class Source:
    """One file's tokens, the mask of scored tokens, and where each record starts."""

    def __init__(self, name: str, tokens: np.ndarray, scored: np.ndarray, starts: np.ndarray, is_text: bool) -> None:
        self.name, self.tokens, self.scored, self.starts, self.is_text = name, tokens, scored, starts, is_text


def tokenized(file: Path, tokenizer: Any, fields: dict[str, str], cache_dir: Path) -> Source:
    data = _read(file)
    key = hashlib.sha256()
    for part in (str(CACHE_FORMAT), json.dumps(fields, sort_keys=True), tokenizer_fingerprint(tokenizer)):
        key.update(part.encode())
        key.update(b"\0")
    key.update(data)
    cached = cache_dir / f"{file.name}.{key.hexdigest()[:20]}.npz"
    is_text = file.name.endswith(TEXT_SUFFIXES)
    if cached.is_file():
        with np.load(cached) as saved:
            return Source(file.name, saved["tokens"], saved["scored"], saved["starts"], is_text)
    ids: list[int] = []
    scored: list[bool] = []
    starts = []
    for record in records(file, data, fields):
        starts.append(len(ids))
        record_ids, record_scored = encode_record(record, tokenizer)
        ids += record_ids
        scored += record_scored
    if not ids:
        raise DataError(f"{file}: no text (an empty file)")
    source = Source(file.name, np.asarray(ids, dtype=np.int32), np.asarray(scored, dtype=bool),
                    np.asarray(starts, dtype=np.int64), is_text)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp.npz")  # processes tokenizing at once each rename theirs
    np.savez(tmp, tokens=source.tokens, scored=source.scored, starts=source.starts)
    os.replace(tmp, cached)
    log.info("tokenized %s: %d tokens (cached in %s)", file, len(ids), cached)
    return source


Part = tuple[np.ndarray, np.ndarray]  # tokens, scored


def split_sources(sources: list[Source], val_fraction: float, test_fraction: float) -> dict[str, list[Part]]:
    """Each file's train / val / test parts: a text file cut by tokens, a JSONL file by records."""
    parts: dict[str, list[Part]] = {"train": [], "val": [], "test": []}
    for s in sources:
        n = len(s.tokens)
        if s.is_text:
            cut_val, cut_test = n - round(n * val_fraction) - round(n * test_fraction), n - round(n * test_fraction)
        else:
            records_n = len(s.starts)
            first_val = records_n - round(records_n * val_fraction) - round(records_n * test_fraction)
            first_test = records_n - round(records_n * test_fraction)
            bounds = np.append(s.starts, n)
            cut_val, cut_test = int(bounds[first_val]), int(bounds[first_test])
        for split, (a, b) in (("train", (0, cut_val)), ("val", (cut_val, cut_test)), ("test", (cut_test, n))):
            parts[split].append((s.tokens[a:b], s.scored[a:b]))
    return parts


# -- datasets ------------------------------------------------------------------------------------
def _window(tokens: np.ndarray, scored: np.ndarray) -> dict[str, torch.Tensor]:
    ids = torch.from_numpy(tokens.astype(np.int64))
    target = torch.where(torch.from_numpy(scored[1:]), ids[1:], torch.tensor(IGNORE))
    return {"input": ids[:-1], "target": target}


class PackedBlocks(Dataset):
    """The training parts as one stream, in fixed blocks of block_size + 1 tokens (stride block_size)."""

    def __init__(self, parts: list[Part], block_size: int) -> None:
        self.block_size = block_size
        self.tokens = np.concatenate([p[0] for p in parts])
        self.scored = np.concatenate([p[1] for p in parts])
        self.num_blocks = max(0, (len(self.tokens) - 1) // block_size)

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < self.num_blocks:
            raise IndexError(i)
        start = i * self.block_size
        end = start + self.block_size + 1
        return _window(self.tokens[start:end], self.scored[start:end])


class EvalWindows(Dataset):
    """Consecutive windows of each part, stride block_size; windows without a scored target are left out."""

    def __init__(self, parts: list[Part], block_size: int) -> None:
        self.parts = parts
        self.index = [(p, start) for p, (tokens, scored) in enumerate(parts)
                      for start in range(0, len(tokens) - 1, block_size)
                      if scored[start + 1 : start + block_size + 1].any()]
        self.block_size = block_size

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        p, start = self.index[i]
        tokens, scored = self.parts[p]
        end = start + self.block_size + 1
        return _window(tokens[start:end], scored[start:end])


class Prompts(Dataset):
    """Every prompt num_samples times, tokenized as a document starts (the tokenizer's special tokens)."""

    def __init__(self, prompts: list[str], num_samples: int, max_new_tokens: int, tokenizer: Any) -> None:
        self.items = [(prompt, sample) for prompt in prompts for sample in range(num_samples)]
        self.max_new_tokens = max_new_tokens
        self.encoded = {p: tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        prompt, sample = self.items[i]
        return {"prompt": prompt, "sample": sample, "max_new_tokens": self.max_new_tokens,
                "prompt_tokens": torch.tensor([self.encoded[prompt]], dtype=torch.long)}


def collate_windows(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack windows, padding shorter ones (input 0, target -1); module-level so workers can pickle it."""
    longest = max(len(item["input"]) for item in batch)
    inputs = torch.zeros(len(batch), longest, dtype=torch.long)
    targets = torch.full((len(batch), longest), IGNORE, dtype=torch.long)
    for row, item in enumerate(batch):
        inputs[row, : len(item["input"])] = item["input"]
        targets[row, : len(item["target"])] = item["target"]
    return {"input": inputs, "target": targets}


def collate_prompt(batch: list[dict[str, Any]]) -> dict[str, Any]:
    (item,) = batch  # one sample per batch: prompts differ in length
    return item
