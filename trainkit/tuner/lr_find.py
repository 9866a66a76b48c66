"""LR range test (Smith 2015; fastai's and Lightning's `lr_find`).

    result = lr_find(trainer, module, datamodule=dm, min_lr=1e-6, max_lr=1.0, num_training=100)
    result.suggestion, result.override()          # 0.0042, "optimizer.lr=0.0042"

Trains `num_training` optimizer steps through the real Trainer with the learning rate of step i
set to min_lr * (max_lr / min_lr) ** (i / (num_training - 1)) just before the step (an exponential
ramp), recording the loss of each step: the mean of its micro-batches, computed before the update
at that LR, as fastai records it. The loss is smoothed with a bias-corrected exponential moving
average (beta 0.98). The test stops early when the smoothed loss exceeds `early_stop_threshold`
times its minimum or becomes NaN/Inf. The suggestion is the LR of the steepest descent of the
smoothed loss against log LR, skipping the first tenth of the steps (noise) and the last one. The
model, optimizer, precision and RNG state are restored afterwards.

Give it about 100 steps: with fewer, each LR gets fewer updates, the loss starts falling only at
higher LRs, and the suggestion moves up (DKT on small data: 0.014 after 40 steps, 0.24 after 30).
"""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from trainkit.engine.callback import Callback
from trainkit.errors import NonFiniteLossError
from trainkit.tuner.drive import kept_state, short_trainer, step_loss

log = logging.getLogger("trainkit")

SPARK = "▁▂▃▄▅▆▇█"


@dataclass
class LRFindResult:
    min_lr: float
    max_lr: float
    num_training: int
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # per step, as computed
    smoothed: list[float] = field(default_factory=list)
    diverged: bool = False  # stopped early: the loss blew up (or became NaN/Inf)
    suggestion: float | None = None
    suggestion_index: int | None = None

    def override(self) -> str:
        return f"optimizer.lr={self.suggestion:.3g}" if self.suggestion is not None else ""

    def to_csv(self, path: str) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "lr", "loss", "smoothed_loss", "suggested"])
            for i, (lr, loss, smooth) in enumerate(zip(self.lrs, self.losses, self.smoothed)):
                writer.writerow([i, repr(lr), repr(loss), repr(smooth), int(i == self.suggestion_index)])

    def sparkline(self, width: int = 60) -> str:
        """The smoothed loss over the LRs tried, one character per column (low to high LR)."""
        values = [v for v in self.smoothed if math.isfinite(v)]
        if not values:
            return ""
        picks = [values[min(len(values) - 1, round(i * (len(values) - 1) / max(1, width - 1)))]
                 for i in range(min(width, len(values)))]
        low, high = min(picks), max(picks)
        scale = (len(SPARK) - 1) / (high - low) if high > low else 0.0
        return "".join(SPARK[round((v - low) * scale)] for v in picks)

    def report(self) -> str:
        tried = f"{len(self.lrs)} steps, lr {self.lrs[0]:.2g} .. {self.lrs[-1]:.2g}" if self.lrs else "no steps"
        lines = [f"LR range test: {tried}" + (" (stopped: the loss diverged)" if self.diverged else ""),
                 f"  smoothed loss {self.sparkline()}  (low -> high LR)"]
        if self.suggestion is None:
            lines.append("  no suggestion: too few steps before the loss diverged; lower tuner.min_lr or raise "
                         "tuner.num_training")
        else:
            lines.append(f"  suggested learning rate: {self.suggestion:.3g} (steepest descent of the loss, step "
                         f"{self.suggestion_index}); use {self.override()}")
        return "\n".join(lines)

    def plot(self, path: str) -> bool:
        """lr_find.png when matplotlib is installed (`pip install trainkit[plot]`); False otherwise."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return False
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(self.lrs, self.losses, alpha=0.3, label="loss")
        ax.plot(self.lrs, self.smoothed, label="smoothed loss")
        if self.suggestion is not None:
            ax.axvline(self.suggestion, color="red", linestyle="--", label=f"suggestion {self.suggestion:.3g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return True


class _LRRamp(Callback):
    def __init__(self, result: LRFindResult, early_stop_threshold: float | None, beta: float) -> None:
        self.result, self.threshold, self.beta = result, early_stop_threshold, beta
        self._ratio = result.max_lr / result.min_lr
        self._window: list[float] = []
        self._lr = result.min_lr
        self._average = 0.0
        self._best = math.inf

    def lr_at(self, step: int) -> float:
        return self.result.min_lr * self._ratio ** (step / (self.result.num_training - 1))

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        self._lr = self.lr_at(trainer.global_step)
        for group in optimizer.param_groups:
            group["lr"] = self._lr

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._window.append(step_loss(outputs))
        if trainer.global_step == len(self.result.lrs):  # inside an accumulation window
            return
        self.record(sum(self._window) / len(self._window), trainer)
        self._window.clear()

    def record(self, loss: float, trainer: Any = None) -> None:
        r = self.result
        r.lrs.append(self._lr)
        r.losses.append(loss)
        self._average = self.beta * self._average + (1 - self.beta) * loss
        smooth = self._average / (1 - self.beta ** len(r.losses))
        r.smoothed.append(smooth)
        if not math.isfinite(smooth) or (
            self.threshold is not None and len(r.losses) > 1 and smooth > self.threshold * self._best
        ):
            r.diverged = True
            if trainer is not None:
                trainer.should_stop = True
        self._best = min(self._best, smooth)


def lr_find(
    trainer: Any,
    module: Any,
    train_dataloaders: Iterable | None = None,
    datamodule: Any = None,
    *,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    num_training: int = 100,
    early_stop_threshold: float | None = 4.0,
    beta: float = 0.98,
) -> LRFindResult:
    """`trainer` gives the settings (its strategy, precision, optimizer factory, accumulation,
    clipping, seed); it and `module` are left as they were."""
    if not 0 < min_lr < max_lr or num_training < 2:
        raise ValueError(f"lr_find needs 0 < min_lr < max_lr and num_training >= 2 "
                         f"(got {min_lr}, {max_lr}, {num_training})")
    result = LRFindResult(min_lr, max_lr, num_training)
    ramp = _LRRamp(result, early_stop_threshold, beta)
    with kept_state(trainer, module):
        short = short_trainer(trainer, [ramp], max_steps=num_training)
        try:
            short.fit(module, train_dataloaders=train_dataloaders, datamodule=datamodule)
        except NonFiniteLossError:  # the Trainer stops before backward on a NaN/Inf loss: diverged
            ramp._lr = ramp.lr_at(len(result.lrs))
            ramp.record(math.nan)
    result.suggestion_index = _steepest_descent(result.smoothed)
    if result.suggestion_index is not None:
        result.suggestion = result.lrs[result.suggestion_index]
    return result


def _steepest_descent(smoothed: list[float]) -> int | None:
    skip_begin, skip_end = len(smoothed) // 10, 1
    kept = smoothed[: len(smoothed) - skip_end]
    points = [(i, v) for i, v in enumerate(kept) if i >= skip_begin and math.isfinite(v)]
    if len(points) < 3:
        return None
    # Central differences (one-sided at the ends) over equally spaced log LRs, as numpy.gradient.
    slopes = []
    for k, (i, v) in enumerate(points):
        before = points[max(0, k - 1)][1]
        after = points[min(len(points) - 1, k + 1)][1]
        span = min(len(points) - 1, k + 1) - max(0, k - 1)
        slopes.append(((after - before) / span, i))
    return min(slopes)[1]
