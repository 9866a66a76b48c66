"""The fit loop: epochs of optimizer steps, validation inside them, and the ways a fit stops.

One optimizer step = `accumulate_grad_batches` micro-batches: each runs forward under the
precision's autocast, scales its loss by 1/k and runs backward (gradient sync skipped on all but
the last); then `optimization.optimizer_step`. At each step boundary the loop logs (every
`log_every_n_steps`), validates (at the val check points), runs the batch-end callbacks and reads
the stop vote (a signal on any rank stops every rank at the same step; so does `max_time`).
Hooks run in Lightning's order (engine/hooks.py), except that a validation inside an epoch comes
before the batch-end hooks of its step (README, "Coming from Lightning"). A non-finite loss is
noted on the device and raised at the next point where the loop reads the device anyway
(finite_check.py), so the step has no host sync the user did not ask for.

A training loader without a length (an IterableDataset) runs until it is exhausted (the epoch's
end, found by reading one batch ahead) or until max_steps; it validates every int
`val_check_interval` batches. Resuming mid-epoch rebuilds the epoch's start (the same RNG state,
`set_epoch`), then positions the loader at the batch it stopped at (data_position.py: by index in
trainkit's sampler, or the loader's own state_dict), or else reads the batches already trained on
again: exact when the loader yields the same sequence again, as a seeded stream does. A stream
that cannot be replayed (a live queue) does not continue exactly.

`should_stop` (early stopping, max_time) ends the fit only once `min_epochs` and `min_steps` are
met, as in Lightning.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch

from trainkit.engine import data_position, evaluation, loaders, optimization, trainer_state
from trainkit.engine.module import TrainModule, positional_arity
from trainkit.engine.rng import capture_rng, restore_rng
from trainkit.errors import ConfigError, Interrupted, UserError
from trainkit.signals import StopSignals, StopVote

if TYPE_CHECKING:
    from trainkit.engine.trainer import Trainer

log = logging.getLogger("trainkit")


class FitLoop:
    def __init__(self, trainer: Trainer, module: TrainModule, source: Callable[[], tuple[Any, Any]],
                 signals: StopSignals) -> None:
        """`source()` gives (train loader, val loaders): called now, and again every
        `reload_dataloaders_every_n_epochs` epochs."""
        self.trainer, self.module, self.source = trainer, module, source
        self.stop_vote = StopVote(signals, trainer.strategy)
        self.time_vote = None  # max_time: the same agreement as a signal, so every rank stops at one step
        self._loaded_epoch = trainer.state.epoch
        self.setup_data()
        # batches trained before this epoch, for check_val_every_n_epoch=None (a loader without a
        # length that ends, resumed: counted from the resumed epoch on)
        n = trainer.num_training_batches
        self._batches_before_epoch = 0 if math.isinf(n) else trainer.state.epoch * n

    def setup_data(self) -> None:
        trainer = self.trainer
        train_loader, val_loaders = self.source()
        if train_loader is None:
            raise UserError("fit needs training data: pass train_dataloaders=, a datamodule, or define "
                            "train_dataloader() on the module")
        self.train_loader = loaders.distribute(train_loader, trainer, train=True)
        trainer.train_dataloader = self.train_loader
        trainer.num_training_batches = loaders.num_batches(self.train_loader, trainer.limit_train_batches)
        trainer._data_position = data_position.DataPosition(self.train_loader,
                                                            read_ahead=math.isinf(trainer.num_training_batches))
        self.val_loaders, trainer.num_val_batches = loaders.prepare_eval(trainer, val_loaders,
                                                                         trainer.limit_val_batches)
        if math.isinf(trainer.num_training_batches) and isinstance(trainer.val_check_interval, float) \
                and trainer.val_check_interval != 1.0 and sum(trainer.num_val_batches):
            raise ConfigError(f"trainer.val_check_interval={trainer.val_check_interval} is a fraction of an epoch, but "
                              "the training loader has no length (an IterableDataset): use an int (validate "
                              "every N training batches)")

    def run(self) -> None:
        trainer = self.trainer
        trainer.heartbeat.begin(trainer.state.global_step)
        if trainer._resume_position is None:  # as Lightning: a resumed run goes straight on
            evaluation.sanity_check(trainer, self.module, self.val_loaders, trainer.num_val_batches)
        if trainer.max_time is not None:
            self.time_vote = StopVote(_Deadline(trainer), trainer.strategy)
        train_epoch = self._train_epoch
        if trainer.profiler is not None:
            train_epoch = trainer.profiler.wrap("run_training_epoch", train_epoch)
        trainer._call("on_train_start")
        while not self._done():
            self._reload_if_due()
            if train_epoch():
                optimization.epoch_schedulers(trainer, plateau=True)  # after the epoch's end hooks, as Lightning
            self._batches_before_epoch += trainer.state.batch_idx
            trainer.state.epoch += 1
            trainer.state.batch_idx = 0
            trainer.state.epoch_ending = False
        for vote in (self.stop_vote, self.time_vote):
            if vote is not None:
                vote.close()
        trainer._call("on_train_end")

    def _reload_if_due(self) -> None:
        every, epoch = self.trainer.reload_dataloaders_every_n_epochs, self.trainer.state.epoch
        if every and epoch - self._loaded_epoch >= every:
            self._loaded_epoch = epoch
            self.setup_data()

    def _can_stop_early(self) -> bool:
        trainer, state = self.trainer, self.trainer.state
        return state.epoch >= (trainer.min_epochs or 0) and state.global_step >= (trainer.min_steps or 0)

    def _done(self) -> bool:
        trainer, state = self.trainer, self.trainer.state
        return (
            (state.should_stop and self._can_stop_early())
            or (trainer.max_steps > -1 and state.global_step >= trainer.max_steps)
            or (trainer.max_epochs is not None and state.epoch >= trainer.max_epochs)
        )

    def _train_epoch(self) -> bool:
        """One epoch (or what is left of it); True when it ran to its end."""
        trainer, module, loader = self.trainer, self.module, self.train_loader
        state, strategy, precision, hooks = trainer.state, trainer.strategy, trainer.precision, trainer.hooks
        metrics = trainer.metrics
        module.train()
        metrics.training = True
        # Resuming mid-epoch: rebuild the epoch's start from the RNG state it began with (hooks,
        # the loader's iterator and its workers' base seed draw from it), position the loader at
        # the batch it stopped at (or read past the batches already consumed), then continue from
        # the RNG state of the checkpoint.
        resume, trainer._resume_position = trainer._resume_position, None
        skip = resume["batch_idx"] if resume else 0
        if resume:
            restore_rng(resume["epoch_rng"] if skip else resume["rng"])
        trainer._epoch_rng = capture_rng()
        for sampler in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None),
                        getattr(loader, "dataset", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(state.epoch)
        trainer._call("on_train_epoch_start")

        n = trainer.num_training_batches
        accum = trainer.accumulate_grad_batches
        val_every, val_offset, val_at_end = self._val_schedule()
        training_step, backward, step = strategy.training_step, precision.backward, optimization.optimizer_step
        position = trainer._data_position
        if skip >= n:  # the checkpoint was taken at the epoch's end: nothing of it is left
            start, iterator = skip, iter(())
        else:
            start = position.seek(skip, resume.get("loader") if resume else None, state.epoch)
            iterator = position.iterate(iter(loader))
        if resume and start:
            restore_rng(resume["rng"])
            resume = None
        batches = loaders.with_last(loader, n, start, iterator)
        if skip and not start:
            batches = data_position.replaying(batches, skip, state.epoch, loader)
        monitor = trainer.throughput_monitor
        if monitor is not None:  # times the waits for data
            batches = monitor.timed(batches)
        if trainer.profiler is not None:
            profile = trainer.profiler
            training_step, backward = profile.wrap("training_step", training_step), profile.wrap("backward", backward)
            step, batches = profile.wrap("optimizer_step", step), profile.iterate("train_dataloader_next", batches)
        manual, every = not module.automatic_optimization, trainer.log_every_n_steps
        with_batch_idx = positional_arity(module.training_step) >= 2
        # The per-batch hooks, looked up once: one nobody overrides is skipped at no cost.
        batch_start, batch_end = hooks.targets("on_train_batch_start"), hooks.targets("on_train_batch_end")
        before_backward, after_backward = hooks.targets("on_before_backward"), hooks.targets("on_after_backward")
        finite, guard = trainer.finite_check, trainer.spike_guard
        beat = trainer.heartbeat.mark  # what the loop is doing, for the hang watch (trainkit.heartbeat)
        transfer = hooks.batch_transfer()  # None unless the module or DataModule overrides those hooks
        state.batch_idx = skip
        completed = start >= n  # positioned past the epoch's last batch: it had ended
        metrics.step_default = True  # self.log in the batch loop: per step by default (Lightning)
        for batch_idx, batch, is_last in batches:
            completed = is_last
            if batch_idx < skip:
                if resume and batch_idx + 1 == skip and not math.isinf(n):  # before batch `skip` is read
                    restore_rng(resume["rng"])
                    resume = None
                continue
            beat("forward")
            if resume:
                restore_rng(resume["rng"])
                resume = None
            window_start = batch_idx - batch_idx % accum
            window = min(accum, n - window_start) if not math.isinf(n) else accum
            step_now = batch_idx + 1 == window_start + window or is_last
            batch = strategy.batch_to_device(precision.convert_input(batch)) if transfer is None else transfer(batch, 0)
            if batch_start and any(fn(batch, batch_idx) == -1 for fn in batch_start):
                break  # as Lightning: -1 from on_train_batch_start ends the epoch here
            args = (batch, batch_idx) if with_batch_idx else (batch,)
            if manual:  # training_step steps the optimizers: called directly, not through DDP's forward
                steps_before = state.global_step
                with precision.autocast():
                    out = module.training_step(*args)
            else:
                with strategy.no_backward_sync(trainer.model, enabled=not step_now):
                    with precision.autocast():
                        out = training_step(module, *args)
                    if out is not None:  # None skips the batch: no backward, and no step at its end
                        loss = out if isinstance(out, torch.Tensor) else out["loss"]
                        finite.add(loss)  # checked where the loop reads the device anyway: no sync here
                        loss = loss / window if window > 1 else loss
                        if guard is not None:
                            guard.add(loss)
                        for fn in before_backward:
                            fn(loss)
                        beat("backward")
                        backward(loss)
                        for fn in after_backward:
                            fn()
            state.batch_idx = batch_idx + 1
            # A step's order: update, log, validate, then batch-end callbacks (checkpoints among
            # them), so a checkpoint taken at step N holds everything step N produced.
            if step_now and (manual or out is not None):
                if manual:  # log when the batch's optimizer steps passed a multiple of log_every_n_steps
                    log_now = state.global_step // every != steps_before // every
                else:
                    beat("optimizer")
                    step(trainer, batch_idx, is_last)
                    log_now = state.global_step % every == 0
                if log_now:
                    beat("collective")
                    finite.check()
                    self._log_step()
                if val_every and ((val_offset + batch_idx + 1) % val_every == 0 or (val_at_end and is_last)):
                    self._validate()
                optimization.plateau_step(trainer, batch_idx)
            if batch_end:
                outputs = {"loss": out.detach()} if isinstance(out, torch.Tensor) else out
                for fn in batch_end:
                    fn(outputs, batch, batch_idx)
            if step_now:
                beat("collective")
                signum = self.stop_vote.poll()
                if signum is not None:
                    self._stop_for_signal(signum)
                if self.time_vote is not None and self.time_vote.poll() is not None \
                        and not state.should_stop:
                    log.info("max_time reached at step %d: stopping", state.global_step)
                    state.should_stop = True
                if trainer.max_steps > -1 and state.global_step >= trainer.max_steps:
                    # Stopped mid-epoch: validate the final weights, so the run ends with the
                    # metrics of the model it saves.
                    if trainer._last_val_step != state.global_step and sum(trainer.num_val_batches):
                        self._validate()
                    break
            if state.should_stop and step_now and self._can_stop_early():
                break
            beat("data")
        if resume:  # every batch of the epoch had been consumed before the checkpoint
            restore_rng(resume["rng"])
        metrics.step_default = False
        finite.check()

        if not state.epoch_ending:  # (else they ran before the checkpoint this run resumed from)
            state.epoch_ending = completed  # an epoch cut short (max_steps) runs them again at its real end
            # Lightning's order: the other callbacks, the module, then the monitoring callbacks
            # (checkpoints, early stopping), which see what the module logged at its epoch end.
            values = metrics.read_epoch()
            for fn in hooks.targets("on_train_epoch_end", monitoring=False):
                fn()
            values.update(metrics.read_epoch())
            trainer.log_metrics(values)
            for fn in hooks.targets("on_train_epoch_end", monitoring=True):
                fn()
        return completed

    def _log_step(self) -> None:
        trainer = self.trainer
        values = trainer.metrics.read_step()
        values.update(trainer.grad_norms.read())
        if trainer.precision.scaler is not None:  # 16-mixed: skipped updates are normal, and shown
            values["precision/skipped_steps"] = float(trainer.precision.skipped_steps)
            values["precision/loss_scale"] = trainer.precision.loss_scale
        if trainer.spike_guard is not None:
            values["spike_guard/skipped_steps"] = float(trainer.spike_guard.skipped)
        trainer.log_metrics(values)

    def _val_schedule(self) -> tuple[int | float, int, bool]:
        """(every, offset, at_end): validate after batch b of this epoch when (offset + b + 1) is a
        multiple of `every` (0: not in this epoch; infinity: never by count), and after its last
        batch when `at_end`. Arithmetic, not a set of batch counts: a loader without a length has
        no last count to list them up to."""
        trainer = self.trainer
        every_n_epochs, n, interval = trainer.check_val_every_n_epoch, trainer.num_training_batches, \
            trainer.val_check_interval
        if not sum(trainer.num_val_batches):
            return 0, 0, False
        if every_n_epochs is None:  # Lightning: batches counted over epochs; an endless loader's end still counts
            return max(1, interval), self._batches_before_epoch, math.isinf(n)
        if (trainer.state.epoch + 1) % every_n_epochs != 0:
            return 0, 0, False
        if isinstance(interval, float):  # (setup_data refused fractions other than 1.0 for an endless loader)
            return (math.inf if math.isinf(n) else max(1, int(n * interval))), 0, True
        return max(1, interval if math.isinf(n) else min(interval, n)), 0, True

    def _validate(self) -> None:
        trainer = self.trainer
        trainer.finite_check.check()
        trainer._last_val_step = trainer.state.global_step
        evaluate = evaluation.evaluate
        if trainer.profiler is not None:
            evaluate = trainer.profiler.wrap("run_validation", evaluate)
        evaluate(trainer, "validate", self.module, self.val_loaders, trainer.num_val_batches)

    def _stop_for_signal(self, signum: int) -> None:
        trainer = self.trainer
        cb = trainer.checkpoint_callback
        path = cb.save(trainer) if cb is not None else trainer.save_checkpoint()
        trainer_state.finish_saves(trainer)  # (an async one: complete before the process stops)
        if path is None:  # this very step was saved already
            path = os.path.realpath(os.path.join(trainer.checkpoint_dir, "last"))
        raise Interrupted(
            signum,
            f"stopped by {signal.Signals(signum).name} at step {trainer.state.global_step}; checkpoint saved: {path}",
        )


class _Deadline:
    """max_time as a StopVote source: `received` is set once the fit has run that long (time of
    earlier runs of a resumed fit included: the trainer state carries it)."""

    def __init__(self, trainer: Trainer) -> None:
        self.state, self.limit = trainer.state, trainer.max_time
        self.began = time.monotonic() - trainer.state.fit_seconds

    @property
    def received(self) -> int | None:
        self.state.fit_seconds = time.monotonic() - self.began
        return 1 if self.state.fit_seconds >= self.limit else None
