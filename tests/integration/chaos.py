"""Faults on purpose, for the resume tests: a callback that sends a real signal to its own process."""
from __future__ import annotations

import os
import signal

from trainkit.engine.callback import Callback


class SignalAt(Callback):
    """After the `batch`-th training batch this process runs (1-based, micro-batches counted),
    send `signal` (a name such as SIGKILL or SIGTERM) to this process — only on rank `rank` and in
    the first attempt (a restarted worker group runs on). With `fresh_only`, only in a run that
    started without a checkpoint: `trainkit resume` of the stopped run (same config) runs on."""

    def __init__(self, batch: int, signal: str = "SIGKILL", rank: int = 0, fresh_only: bool = False) -> None:
        self.batch = batch
        self.signal = getattr(signal_module, signal)
        self.rank = rank
        self.seen = 0
        self.fresh_only, self.armed = fresh_only, True

    def setup(self, trainer, module, stage: str) -> None:
        if self.fresh_only:
            self.armed = not os.path.exists(os.path.join(trainer.checkpoint_dir, "last"))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        if self.seen == self.batch and trainer.strategy.global_rank == self.rank and first_attempt() and self.armed:
            os.kill(os.getpid(), self.signal)


class RaiseAt(Callback):
    """Raise an exception after the `batch`-th training batch, on rank `rank`."""

    def __init__(self, batch: int, rank: int = 0) -> None:
        self.batch, self.rank, self.seen = batch, rank, 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        if self.seen == self.batch and trainer.strategy.global_rank == self.rank:
            raise RuntimeError(f"injected failure on rank {self.rank}")


signal_module = signal


class PoisonAt(Callback):
    """Once `step` optimizer steps are done, turn every weight into NaN: the next loss is NaN."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            import torch

            with torch.no_grad():
                for p in module.parameters():
                    p.fill_(float("nan"))


def first_attempt() -> bool:
    """Not a restart by torch's elastic agent, nor a requeue by SLURM."""
    return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0" and os.environ.get("SLURM_RESTART_COUNT", "0") == "0"


class Pace(Callback):
    """In the first attempt, sleep `seconds` after each training batch and write the step reached to
    `<run_dir>/pace.step`, so a test can act (preempt, requeue, signal) while training is under way."""

    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if first_attempt():
            import time

            if trainer.strategy.global_rank == 0:
                with open(os.path.join(trainer.default_root_dir, "pace.step"), "w") as f:
                    f.write(str(trainer.global_step))
            time.sleep(self.seconds)
