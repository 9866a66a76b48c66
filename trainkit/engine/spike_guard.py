"""Skipping the optimizer step of a loss spike: `trainer.spike_guard=true` or `{k: 6, window: 100, ...}`.

A step's loss (the mean of its micro-batches) is a spike when it is more than `k` robust deviations
(1.4826 x the median absolute deviation, which equals the standard deviation for normal noise)
above the median of the last `window` step losses that were not spikes. Once `warmup` losses are
known, a spike on any process skips the step on every process: each rank decides on its own loss
and one all-reduced flag makes the decision the same everywhere (the gradients were averaged: the
step is the same on every rank). A skipped step zeroes the gradients, does not advance the
schedulers, and counts as a step (as a step the GradScaler skips). `spike_guard/skipped_steps` is
logged at log steps; more than `max_skips` skipped steps stop the run with an error (exit code 1),
as a non-finite loss does. The history and the count are saved in checkpoints: a resumed run
decides as the original would.

Cost: the loss is read on the host and one small all-reduce is made at every step (off by default).
Automatic optimization only.
"""
from __future__ import annotations

import logging
import os
import statistics
from collections import deque
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch

from trainkit.errors import ConfigError, LossSpikeError

if TYPE_CHECKING:
    from trainkit.engine.trainer import Trainer

log = logging.getLogger("trainkit")


@dataclass
class SpikeGuard:
    k: float = 6.0  # robust deviations above the running median that make a spike
    window: int = 100  # recent step losses the median and deviation come from
    warmup: int = 20  # losses seen before the guard decides anything
    max_skips: int = 20  # skipped steps the run survives; one more stops it

    def __post_init__(self) -> None:
        if not (self.k > 0 and self.window >= 3 and 3 <= self.warmup <= self.window and self.max_skips >= 0):
            raise ConfigError(f"spike_guard={self}: need k > 0, window >= 3, 3 <= warmup <= window, max_skips >= 0")
        self.history: deque[float] = deque(maxlen=self.window)
        self.skipped = 0
        self._loss: torch.Tensor | None = None

    def add(self, loss: torch.Tensor) -> None:
        """A micro-batch's share of the step's loss (already divided by the micro-batches)."""
        loss = loss.detach().float()
        self._loss = loss if self._loss is None else self._loss + loss

    def should_skip(self, trainer: Trainer) -> bool:
        """Whether every rank skips this step (a collective: all ranks call it at each step)."""
        loss, self._loss = self._loss, None
        value = float(loss) if loss is not None else float("nan")
        spike, why = False, ""
        if len(self.history) >= self.warmup and value == value:
            median = statistics.median(self.history)
            deviation = 1.4826 * statistics.median(abs(x - median) for x in self.history)
            deviation = max(deviation, 1e-6 * abs(median), 1e-12)  # constant losses: any real rise is a spike
            spike = value > median + self.k * deviation
            if spike:
                why = f"loss {value:.6g} is {(value - median) / deviation:.1f} deviations above the median {median:.6g}"
        flag = torch.tensor([1.0 if spike else 0.0])
        if trainer.world_size > 1:
            spike = float(trainer.strategy.all_reduce_sum(flag)[0]) > 0
        step = trainer.state.global_step + 1
        if not spike:
            if value == value:  # a NaN is the finite check's to report
                self.history.append(value)
            return False
        self.skipped += 1
        if trainer.is_global_zero:
            log.warning("step %d: %s: optimizer step skipped (%d so far, spike_guard.max_skips=%d)", step,
                        why or "a spike on another rank", self.skipped, self.max_skips)
        if self.skipped > self.max_skips:
            last = os.path.realpath(os.path.join(trainer.checkpoint_dir, "last"))
            kept = f"the last checkpoint, {last}, is intact" if os.path.isdir(last) else "no checkpoint was saved"
            raise LossSpikeError(
                f"{self.skipped} loss spikes skipped by step {step}, more than spike_guard.max_skips="
                f"{self.max_skips}; {kept}. Try a lower optimizer.lr, trainer.gradient_clip_val, or a larger "
                "spike_guard.k")
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = deque(state["history"], maxlen=self.window)
        self.skipped = state["skipped"]


def make_spike_guard(value: Any) -> SpikeGuard | None:
    """None/False: off; True: the defaults; a dict of SpikeGuard's fields; or a SpikeGuard."""
    if value is None or value is False:
        return None
    if value is True:
        return SpikeGuard()
    if isinstance(value, SpikeGuard):
        return value
    if isinstance(value, dict):
        known = {f.name for f in fields(SpikeGuard)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ConfigError(f"spike_guard: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return SpikeGuard(**value)
    raise ConfigError(f"spike_guard={value!r} must be true, a dict of {{k, window, warmup, max_skips}}, or null")
