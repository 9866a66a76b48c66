"""Batch-size finder: the largest per-device batch that fits, and the samples/s of each size.

    result = batch_size_find(trainer, module, datamodule=dm)     # sets and restores dm.batch_size
    result.batch_size, result.override()                         # 256, "datamodule.batch_size=256"

Each size trains `steps_per_trial` optimizer steps through the real Trainer (so the strategy,
precision, accumulation and compile settings are the run's own); the first step is a warm-up and
the others are timed (samples = the leading dimension of each batch's first tensor).

  1. Start at `init_batch_size` (default: the datamodule's batch size); halve until a size fits.
  2. Double while the size fits and is at most `max_batch_size` and the training set holds it.
     On CPU (or `stop_on_plateau=True`) also stop once doubling gains less than 5% samples/s:
     there the limit is throughput, not memory.
  3. After an out-of-memory error, binary-search between the largest size that fit and the
     smallest that did not, until they are within 1/8 of each other.

The suggestion: after an out-of-memory error (or at `max_batch_size` or the training set's size)
the largest size that fits; on a throughput plateau the smallest size within 5% of the best
samples/s (a larger batch would change the optimisation for nothing). The module, optimizer,
precision, RNG state and `datamodule.batch_size` are restored afterwards.
"""
from __future__ import annotations

import csv
import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from trainkit.engine.callback import Callback
from trainkit.errors import ConfigError, UserError
from trainkit.tuner.drive import kept_state, short_trainer

log = logging.getLogger("trainkit")

PLATEAU_GAIN = 0.05


@dataclass
class BatchSizeTrial:
    batch_size: int
    fits: bool
    samples_per_s: float | None = None


@dataclass
class BatchSizeResult:
    batch_size: int  # the suggestion
    largest_fit: int  # the largest size tried that fitted
    reason: str  # why the search stopped
    trials: list[BatchSizeTrial] = field(default_factory=list)

    def override(self) -> str:
        return f"datamodule.batch_size={self.batch_size}"

    def to_csv(self, path: str) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["batch_size", "fits", "samples_per_s", "suggested"])
            for t in self.trials:
                rate = "" if t.samples_per_s is None else repr(t.samples_per_s)
                writer.writerow([t.batch_size, int(t.fits), rate, int(t.batch_size == self.batch_size and t.fits)])

    def report(self) -> str:
        lines = ["batch-size finder:", "  batch size    samples/s"]
        for t in self.trials:
            rate = f"{t.samples_per_s:12.1f}" if t.samples_per_s is not None else "out of memory".rjust(12)
            lines.append(f"  {t.batch_size:>10}  {rate}")
        lines.append(f"  stopped: {self.reason}")
        lines.append(f"  largest batch that fits: {self.largest_fit}; suggested: {self.batch_size}; "
                     f"use {self.override()}")
        return "\n".join(lines)


class _Timer(Callback):
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []
        self.samples: list[int] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter())
        self.samples.append(_batch_len(batch))

    def rate(self) -> float:
        """Samples per second over every batch after the first (the warm-up)."""
        if len(self.times) < 2 or self.times[-1] <= self.times[0]:
            return float("nan")
        return sum(self.samples[1:]) / (self.times[-1] - self.times[0])


def batch_size_find(
    trainer: Any,
    module: Any,
    datamodule: Any,
    *,
    init_batch_size: int | None = None,
    max_batch_size: int = 4096,
    steps_per_trial: int = 5,
    stop_on_plateau: bool | None = None,
) -> BatchSizeResult:
    if not hasattr(datamodule, "batch_size"):
        raise ConfigError(f"the batch-size finder sets datamodule.batch_size, which {type(datamodule).__name__} "
                          "does not have")
    device = trainer.strategy.root_device
    plateau = device.type == "cpu" if stop_on_plateau is None else stop_on_plateau
    original = datamodule.batch_size
    datamodule.prepare_data()
    datamodule.setup("fit")
    available = _dataset_len(datamodule)
    trials: list[BatchSizeTrial] = []

    def attempt(size: int) -> BatchSizeTrial:
        datamodule.batch_size = size
        timer = _Timer(device)
        short = short_trainer(trainer, [timer], max_steps=steps_per_trial)
        try:
            short.fit(module, datamodule=datamodule)
            trial = BatchSizeTrial(size, True, timer.rate())
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one
            if not _out_of_memory(exc):
                raise
            trial = BatchSizeTrial(size, False)
        finally:
            del short
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        log.info("batch size %d: %s", size, f"{trial.samples_per_s:.1f} samples/s" if trial.fits else "out of memory")
        trials.append(trial)
        return trial

    def too_big() -> int | None:
        return min((t.batch_size for t in trials if not t.fits), default=None)

    try:
        with kept_state(trainer, module):
            size = min(init_batch_size or original, max_batch_size, available or max_batch_size)
            while not attempt(size).fits:
                if size == 1:
                    raise UserError("the batch-size finder: even a batch of 1 does not fit in memory")
                size //= 2
            best = trials[-1]
            while True:
                if size >= max_batch_size:
                    reason = f"tuner.max_batch_size={max_batch_size}"
                    break
                if available is not None and size >= available:
                    reason = f"the training set has {available} samples"
                    break
                following = min(size * 2, max_batch_size, available or max_batch_size)
                if too_big() is not None and following >= too_big():
                    reason = f"out of memory at {too_big()}"
                    break
                trial = attempt(following)
                if not trial.fits:
                    reason = f"out of memory at {trial.batch_size}"
                    break
                gain = trial.samples_per_s / best.samples_per_s - 1 if best.samples_per_s else float("inf")
                size, best = trial.batch_size, trial if trial.samples_per_s > best.samples_per_s else best
                if plateau and not gain >= PLATEAU_GAIN:
                    reason = f"doubling gained {gain:+.0%} samples/s (< {PLATEAU_GAIN:.0%})"
                    break
            if reason.startswith("out of memory"):
                low, high = size, too_big()
                while high - low > max(1, low // 8):
                    middle = (low + high) // 2
                    if attempt(middle).fits:
                        low = middle
                    else:
                        high = middle
    finally:
        datamodule.batch_size = original
    largest = max(t.batch_size for t in trials if t.fits)
    if plateau and reason.startswith("doubling"):
        top = max(t.samples_per_s for t in trials if t.fits)
        suggestion = min(t.batch_size for t in trials if t.fits and t.samples_per_s >= top * (1 - PLATEAU_GAIN))
    else:
        suggestion = largest
    return BatchSizeResult(suggestion, largest, reason, trials)


def _out_of_memory(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    text = str(exc)
    return isinstance(exc, oom) or "out of memory" in text or "can't allocate memory" in text


def _dataset_len(datamodule: Any) -> int | None:
    try:
        return len(datamodule.train_dataloader().dataset)
    except (TypeError, AttributeError):
        return None


def _batch_len(batch: Any) -> int:
    """The leading dimension of the batch's first tensor (a dict, list or tuple of tensors)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else []
    for value in values:
        n = _batch_len(value)
        if n:
            return n
    return 0
