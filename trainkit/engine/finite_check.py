"""Stopping on a non-finite loss without a host sync per micro-batch.

`if not torch.isfinite(loss)` in the step waits for the device every micro-batch. Instead every
loss is added, on the device, into one float32 sum (NaN and inf propagate through a sum; one small
kernel, no sync), and the sum is read only where the loop reads the device anyway: at log steps,
before validation, before a checkpoint is written (so no checkpoint holds weights a non-finite
loss produced) and at the epoch end. The error then names the steps since the last read — one step
when `log_every_n_steps=1`.
"""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import torch

from trainkit.errors import NonFiniteLossError

if TYPE_CHECKING:
    from trainkit.engine.trainer import Trainer


class FiniteCheck:
    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self._sum: torch.Tensor | None = None
        self._checked_through = trainer.state.global_step  # every step up to here was finite

    def add(self, loss: torch.Tensor) -> None:
        if self._sum is None:
            self._sum = torch.zeros((), dtype=torch.float32, device=loss.device)
        self._sum.add_(loss.detach())

    def check(self) -> None:
        """Raise if a loss added since the last check was NaN or infinite (reads the device once)."""
        if self._sum is None:
            return
        value = float(self._sum)
        self._sum.zero_()
        state = self.trainer.state
        first, last = self._checked_through + 1, max(state.global_step, self._checked_through + 1)
        if math.isfinite(value):
            self._checked_through = state.global_step
            return
        where = f"step {last}" if first == last else f"a step from {first} to {last}"
        last_dir = os.path.realpath(os.path.join(self.trainer.checkpoint_dir, "last"))
        kept = f"the last checkpoint, {last_dir}, is intact" if os.path.isdir(last_dir) else "no checkpoint was saved"
        raise NonFiniteLossError(
            f"the loss is {value} at {where} (epoch {state.epoch}); {kept}. Try a lower optimizer.lr, "
            "trainer.gradient_clip_val, precision=32, trainer.log_every_n_steps=1 to name the exact step, or "
            "trainer.detect_anomaly=true to find the operation that produced it"
        )
