"""The fit loop: epochs of optimizer steps, validation inside them, and the ways a fit stops.

One optimizer step = `accumulate_grad_batches` micro-batches: each runs forward under the
precision's autocast, scales its loss by 1/k and runs backward (gradient sync skipped on all but
the last); then `optimization.optimizer_step`. At each step boundary the loop logs (every
`log_every_n_steps`), validates (at the val check points), runs the batch-end callbacks and reads
the stop vote (a signal on any rank stops every rank at the same step).
"""
from __future__ import annotations

import math
import os
import signal
from typing import TYPE_CHECKING, Iterable

import torch

from trainkit.engine import evaluation, loaders, optimization
from trainkit.engine.module import TrainModule
from trainkit.engine.rng import capture_rng, restore_rng
from trainkit.errors import ConfigError, Interrupted, NonFiniteLossError
from trainkit.signals import StopSignals, StopVote

if TYPE_CHECKING:
    from trainkit.engine.trainer import Trainer


class FitLoop:
    def __init__(self, trainer: Trainer, module: TrainModule, train_loader: Iterable, val_loader: Iterable | None,
                 signals: StopSignals) -> None:
        self.trainer, self.module = trainer, module
        self.train_loader, self.val_loader = train_loader, val_loader
        self.stop_vote = StopVote(signals, trainer.strategy.store)

    def run(self) -> None:
        trainer = self.trainer
        while not self._done():
            self._train_epoch()
            optimization.epoch_end_scheduler_step(trainer)
            trainer.state.epoch += 1
            trainer.state.batch_idx = 0

    def _done(self) -> bool:
        trainer, state = self.trainer, self.trainer.state
        return (
            state.should_stop
            or (trainer.max_steps > -1 and state.global_step >= trainer.max_steps)
            or (trainer.max_epochs is not None and state.epoch >= trainer.max_epochs)
        )

    def _train_epoch(self) -> None:
        trainer, module, loader = self.trainer, self.module, self.train_loader
        state, strategy, precision = trainer.state, trainer.strategy, trainer.precision
        module.train()
        trainer.metrics.training = True
        # Resuming mid-epoch: rebuild the epoch's data order from the RNG state it started with,
        # read past the batches already consumed (loading them, so samplers and DataLoader
        # workers stay in step), then continue from the RNG state of the checkpoint.
        resume, trainer._resume_position = trainer._resume_position, None
        skip = resume["batch_idx"] if resume else 0
        if resume:
            restore_rng(resume["epoch_rng"] if skip else resume["rng"])
        trainer._epoch_rng = capture_rng()
        for sampler in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(state.epoch)
        module.on_train_epoch_start()
        trainer._call("on_train_epoch_start")

        n = trainer.num_training_batches
        accum = trainer.accumulate_grad_batches
        val_points = self._val_check_points(n)
        training_step = strategy.training_step
        batch_end_hooks = trainer._batch_hooks["on_train_batch_end"]
        state.batch_idx = skip
        for batch_idx, batch in loaders.take(loader, n):
            if batch_idx < skip:
                continue
            if resume:
                restore_rng(resume["rng"])
                resume = None
            window_start = batch_idx - batch_idx % accum
            window = min(accum, n - window_start) if not math.isinf(n) else accum
            step_now = batch_idx + 1 == window_start + window
            batch = strategy.batch_to_device(precision.convert_input(batch))
            with strategy.no_backward_sync(trainer.model, enabled=not step_now):
                with precision.autocast():
                    out = training_step(module, batch, batch_idx)
                loss = out if isinstance(out, torch.Tensor) else out["loss"]
                if not torch.isfinite(loss):  # before backward: nothing of this step reaches the weights
                    self._non_finite(loss, batch_idx)
                precision.backward(loss / window if window > 1 else loss)
            state.batch_idx = batch_idx + 1
            # A step's order: update, log, validate, then batch-end callbacks (checkpoints among
            # them), so a checkpoint taken at step N holds everything step N produced.
            if step_now:
                optimization.optimizer_step(trainer)
                if state.global_step % trainer.log_every_n_steps == 0:
                    self._log_step()
                if batch_idx + 1 in val_points:
                    self._validate()
            for cb in batch_end_hooks:
                cb.on_train_batch_end(trainer, module, out, batch, batch_idx)
            if step_now:
                signum = self.stop_vote.poll(state.global_step)
                if signum is not None:
                    self._stop_for_signal(signum)
                if trainer.max_steps > -1 and state.global_step >= trainer.max_steps:
                    # Stopped mid-epoch: validate the final weights, so the run ends with the
                    # metrics of the model it saves.
                    if trainer._last_val_step != state.global_step and self.val_loader is not None \
                            and trainer.num_val_batches:
                        self._validate()
                    break
            if state.should_stop and step_now:
                break
        if resume:  # every batch of the epoch had been consumed before the checkpoint
            restore_rng(resume["rng"])

        module.on_train_epoch_end()
        trainer.log_metrics(trainer.metrics.read_epoch())
        trainer._call("on_train_epoch_end")

    def _log_step(self) -> None:
        trainer = self.trainer
        values = trainer.metrics.read_step()
        if trainer.precision.scaler is not None:  # 16-mixed: skipped updates are normal, and shown
            values["precision/skipped_steps"] = float(trainer.precision.skipped_steps)
            values["precision/loss_scale"] = trainer.precision.scaler.get_scale()
        trainer.log_metrics(values)

    def _val_check_points(self, n: int | float) -> set[int]:
        """Batch counts of this epoch after which validation runs."""
        trainer = self.trainer
        if self.val_loader is None or not trainer.num_val_batches:
            return set()
        if (trainer.state.epoch + 1) % trainer.check_val_every_n_epoch != 0:
            return set()
        interval = trainer.val_check_interval
        if math.isinf(n):
            if isinstance(interval, float):
                raise ConfigError("trainer.val_check_interval must be an int (batches) when the loader has no length")
            return set(range(interval, 10**12, interval))  # membership test only; never materialised
        if isinstance(interval, float):
            every = max(1, int(n * interval))
        else:
            every = max(1, min(interval, n))
        return set(range(every, n + 1, every)) | {n}

    def _validate(self) -> None:
        trainer = self.trainer
        trainer._last_val_step = trainer.state.global_step
        evaluation.evaluate(trainer, "validate", self.module, self.val_loader, trainer.num_val_batches)

    def _non_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        trainer = self.trainer
        last = os.path.realpath(os.path.join(trainer.checkpoint_dir, "last"))
        kept = f"the last checkpoint, {last}, is intact" if os.path.isdir(last) else "no checkpoint was saved"
        raise NonFiniteLossError(
            f"the loss is {float(loss)} at step {trainer.state.global_step + 1} (epoch {trainer.state.epoch}, batch "
            f"{batch_idx}); {kept}. Try a lower optimizer.lr, trainer.gradient_clip_val, precision=32, or "
            "trainer.detect_anomaly=true to find the operation that produced it"
        )

    def _stop_for_signal(self, signum: int) -> None:
        trainer = self.trainer
        cb = trainer.checkpoint_callback
        path = cb.save(trainer) if cb is not None else trainer.save_checkpoint()
        if path is None:  # this very step was saved already
            path = os.path.realpath(os.path.join(trainer.checkpoint_dir, "last"))
        raise Interrupted(
            signum,
            f"stopped by {signal.Signals(signum).name} at step {trainer.state.global_step}; checkpoint saved: {path}",
        )
