"""The Trainer: fit / validate / test / predict loops over a TrainModule.

    trainer = Trainer(max_steps=100, logger=False, enable_checkpointing=False)
    trainer.fit(module, datamodule=dm)            # or train_dataloaders=..., val_dataloaders=...

One optimizer step = `accumulate_grad_batches` micro-batches: each runs forward under the
precision's autocast, scales its loss by 1/k and runs backward (gradient sync skipped on all but
the last); then clip, step, zero the grads, step a per-step scheduler. The loop never asks which
strategy or precision it has: it calls their methods.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import os
import secrets
import signal
import time
from typing import Any, Callable, Iterable

import torch

from trainkit.engine.callback import Callback, overrides
from trainkit.engine.data import DataModule
from trainkit.engine.metric_store import MetricStore
from trainkit.engine.module import TrainModule
from trainkit.engine.rng import capture_rng, restore_rng
from trainkit.engine.samplers import GlobalBatchSampler, distribute_loader
from trainkit.engine.seed import seed_everything, set_deterministic
from trainkit.engine.state import TrainState
from trainkit.errors import ConfigError, Interrupted, NonFiniteLossError, UserError
from trainkit.precision import Precision
from trainkit.signals import StopSignals, StopVote
from trainkit.strategies import make_strategy

log = logging.getLogger("trainkit")


class Trainer:
    def __init__(
        self,
        *,
        accelerator: str = "auto",
        strategy: str | Any = "auto",
        devices: int = 1,
        num_nodes: int = 1,
        precision: str | Precision = "32",
        max_epochs: int | None = None,
        max_steps: int = -1,
        limit_train_batches: int | float = 1.0,
        limit_val_batches: int | float = 1.0,
        limit_test_batches: int | float = 1.0,
        limit_predict_batches: int | float = 1.0,
        val_check_interval: int | float = 1.0,
        check_val_every_n_epoch: int = 1,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        seed: int | None = None,
        deterministic: bool = False,
        compile: bool = False,
        log_every_n_steps: int = 50,
        checkpoint_every_n_steps: int | None = None,
        resume: str | None = None,
        resume_strict: bool = True,
        init_from: str | None = None,
        detect_anomaly: bool = False,
        hparams: dict[str, Any] | None = None,
        callbacks: list[Callback] | None = None,
        logger: bool | Any | list[Any] = True,
        enable_checkpointing: bool = True,
        enable_progress_bar: bool = True,
        default_root_dir: str | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        if max_epochs is None and max_steps == -1:
            max_epochs = 1000  # as Lightning: a bound, so a forgotten limit does not run forever
        if accumulate_grad_batches < 1:
            raise ConfigError(f"trainer.accumulate_grad_batches={accumulate_grad_batches} must be >= 1")
        if gradient_clip_algorithm not in ("norm", "value"):
            raise ConfigError(f"gradient_clip_algorithm={gradient_clip_algorithm!r} must be 'norm' or 'value'")
        self.strategy = (
            make_strategy(strategy, accelerator, devices, num_nodes) if isinstance(strategy, str) else strategy
        )
        device_type = self.strategy.root_device.type
        self.precision = precision if isinstance(precision, Precision) else Precision(str(precision), device_type)
        self.max_epochs = max_epochs
        self.max_steps = max_steps
        self.limit_train_batches = limit_train_batches
        self.limit_val_batches = limit_val_batches
        self.limit_test_batches = limit_test_batches
        self.limit_predict_batches = limit_predict_batches
        self.val_check_interval = val_check_interval
        self.check_val_every_n_epoch = check_val_every_n_epoch
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.seed = seed
        self.deterministic = deterministic
        self.compile = compile
        self.log_every_n_steps = max(1, log_every_n_steps)
        self.resume = resume  # "auto", "none"/None, or a checkpoint path
        self.resume_strict = resume_strict
        self.init_from = init_from  # fine-tuning: a checkpoint's model weights, nothing else
        self.detect_anomaly = detect_anomaly
        # The settings that define this run (the CLI passes those of its config that exactness
        # depends on); saved in every checkpoint and compared when resuming.
        self.hparams = dict(hparams or {})
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.default_root_dir = default_root_dir or os.path.join(
            os.getcwd(), "trainkit_logs", time.strftime("%Y-%m-%d_%H-%M-%S") + "_" + secrets.token_hex(3)
        )

        self.state = TrainState()
        self.metrics = MetricStore()
        self.callbacks = _with_default_callbacks(
            list(callbacks or []), enable_progress_bar, enable_checkpointing, self.default_root_dir,
            checkpoint_every_n_steps,
        )
        self.loggers = _make_loggers(logger, self.default_root_dir) if self.is_global_zero else []

        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_scheduler: Any = None
        self.scheduler_interval = "step"
        self.scheduler_frequency = 1
        self.num_training_batches: int | float = 0
        self.num_val_batches: int | float = 0
        self.estimated_stepping_batches: int | float = 0
        self.model: torch.nn.Module | None = None  # the module as the strategy placed it
        self.train_dataloader: Iterable | None = None
        self._last_val_step = -1
        self._signals = StopSignals()
        self._resume_position: dict[str, Any] | None = None  # data position + RNG to restore
        self._epoch_rng: dict[str, Any] | None = None  # RNG state when this epoch's data began
        self._data_seed = 0  # seeds the training order (the same on every rank)

    # -- read-only views (Lightning names) ---------------------------------------------------
    @property
    def is_global_zero(self) -> bool:
        return self.strategy.is_global_zero

    @property
    def world_size(self) -> int:
        return self.strategy.world_size

    @property
    def global_step(self) -> int:
        return self.state.global_step

    @property
    def current_epoch(self) -> int:
        return self.state.epoch

    @property
    def callback_metrics(self) -> dict[str, float]:
        return self.metrics.callback_metrics

    @property
    def should_stop(self) -> bool:
        return self.state.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self.state.should_stop = value

    @property
    def log_dir(self) -> str:
        return self.default_root_dir

    @property
    def checkpoint_callback(self) -> Any:
        from trainkit.callbacks.model_checkpoint import ModelCheckpoint

        return next((cb for cb in self.callbacks if isinstance(cb, ModelCheckpoint)), None)

    @property
    def checkpoint_dir(self) -> str:
        cb = self.checkpoint_callback
        return cb.dirpath if cb is not None else os.path.join(self.default_root_dir, "checkpoints")

    # -- entry points --------------------------------------------------------------------------
    def fit(
        self,
        module: TrainModule,
        train_dataloaders: Iterable | None = None,
        val_dataloaders: Iterable | None = None,
        datamodule: DataModule | None = None,
    ) -> None:
        def run() -> None:
            if datamodule is not None:
                train_loader, val_loader = datamodule.train_dataloader(), datamodule.val_dataloader()
            else:
                train_loader, val_loader = train_dataloaders, val_dataloaders
            if train_loader is None:
                raise UserError("fit needs training data: pass train_dataloaders= or a datamodule")
            self._data_seed = self._shared_data_seed()
            train_loader = self._distribute(train_loader, train=True)
            val_loader = self._distribute(val_loader, train=False)
            self.train_dataloader = train_loader
            self.num_training_batches = _num_batches(train_loader, self.limit_train_batches)
            self.num_val_batches = _num_batches(val_loader, self.limit_val_batches) if val_loader is not None else 0
            self.estimated_stepping_batches = self._estimate_stepping_batches()
            self._configure_optimizers(module)
            self._restore()
            self._call("on_fit_start")
            self._stop_vote = StopVote(self._signals, getattr(self.strategy, "store", None))
            with self._signals, torch.autograd.set_detect_anomaly(self.detect_anomaly):
                self._fit_loop(module, train_loader, val_loader)
            self._call("on_fit_end")

        self._run(module, datamodule, "fit", run)

    def validate(
        self, module: TrainModule, dataloaders: Iterable | None = None, datamodule: DataModule | None = None
    ) -> list[dict[str, float]]:
        return self._run(module, datamodule, "validate", lambda: [self._eval_stage("validate", module, dataloaders, datamodule)])

    def test(
        self, module: TrainModule, dataloaders: Iterable | None = None, datamodule: DataModule | None = None
    ) -> list[dict[str, float]]:
        return self._run(module, datamodule, "test", lambda: [self._eval_stage("test", module, dataloaders, datamodule)])

    def predict(
        self, module: TrainModule, dataloaders: Iterable | None = None, datamodule: DataModule | None = None
    ) -> list[Any]:
        def run() -> list[Any]:
            loader = dataloaders if dataloaders is not None else datamodule.predict_dataloader()
            loader = self._distribute(loader, train=False)  # each rank predicts its own shard
            limit = _num_batches(loader, self.limit_predict_batches)
            self._check_lockstep("predict", min(_length(loader), limit))
            self._call("on_predict_start")
            outputs = []
            with torch.inference_mode():
                for batch_idx, batch in _take(loader, limit):
                    batch = self.strategy.batch_to_device(self.precision.convert_input(batch))
                    with self.precision.autocast():
                        out = module.predict_step(batch, batch_idx)
                    outputs.append(out)
                    self._call_batch("on_predict_batch_end", out, batch, batch_idx)
            self._call("on_predict_end")
            return outputs

        return self._run(module, datamodule, "predict", run)

    # -- shared set-up and tear-down -------------------------------------------------------------
    def _run(self, module: TrainModule, datamodule: DataModule | None, stage: str, body: Callable[[], Any]) -> Any:
        self.state.stage = stage
        object.__setattr__(module, "_trainer", self)
        self.metrics.reduce_sum = getattr(self.strategy, "all_reduce_sum", None)
        self.metrics.world_size = self.strategy.world_size
        if self.seed is not None:
            seed_everything(self.seed)
        set_deterministic(self.deterministic)
        if datamodule is not None:
            datamodule.prepare_data()
            datamodule.setup(stage)
        self.model = self.strategy.setup_module(self.precision.convert_module(module))
        if stage != "fit":
            self._load_weights_for_evaluation()
        if self.compile and getattr(module, "_compiled_call_impl", None) is None:
            module.compile()  # in place: the module keeps its identity and state_dict keys
        # Per-batch hooks are looked up once: a callback that does not override a hook costs
        # nothing inside the step.
        self._batch_hooks = {
            hook: [cb for cb in self.callbacks if overrides(cb, hook)]
            for hook in (
                "on_train_batch_end",
                "on_before_optimizer_step",
                "on_validation_batch_end",
                "on_test_batch_end",
                "on_predict_batch_end",
            )
        }
        self._module = module
        status = "failed"
        try:
            for cb in self.callbacks:
                cb.setup(self, module, stage)
            result = body()
            status = "success"
            return result
        except BaseException as exc:
            for cb in self.callbacks:
                cb.on_exception(self, module, exc)
            raise
        finally:
            for cb in self.callbacks:
                cb.teardown(self, module, stage)
            for lg in self.loggers:
                lg.finalize(status)
            self.strategy.teardown()

    def _call(self, hook: str) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, self._module)

    def _call_batch(self, hook: str, outputs: Any, batch: Any, batch_idx: int) -> None:
        for cb in self._batch_hooks[hook]:
            getattr(cb, hook)(self, self._module, outputs, batch, batch_idx)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Send floats to every logger (rank zero only), tagged with the epoch."""
        if not self.loggers or not metrics:
            return
        step = self.state.global_step if step is None else step
        row = {**metrics, "epoch": self.state.epoch}
        for lg in self.loggers:
            lg.log_metrics(row, step)

    # -- optimizers ----------------------------------------------------------------------------
    def _configure_optimizers(self, module: TrainModule) -> None:
        if type(module).configure_optimizers is not TrainModule.configure_optimizers:
            if self.optimizer_factory is not None:
                log.info("%s.configure_optimizers() builds the optimizer; the optimizer config is not used",
                         type(module).__name__)
            result = module.configure_optimizers()
        elif self.optimizer_factory is not None:
            optimizer = self.optimizer_factory(module.parameters())
            result = {"optimizer": optimizer}
            if self.scheduler_factory is not None:
                result["lr_scheduler"] = {"scheduler": self._build_scheduler(optimizer), "interval": "step"}
        else:
            raise UserError(
                f"{type(module).__name__} has no optimizer: define configure_optimizers() or pass Trainer(optimizer=...)"
            )
        if isinstance(result, torch.optim.Optimizer):
            result = {"optimizer": result}
        self.optimizer = result["optimizer"]
        sched = result.get("lr_scheduler")
        if isinstance(sched, dict):
            self.lr_scheduler = sched["scheduler"]
            self.scheduler_interval = sched.get("interval", "epoch")
            self.scheduler_frequency = sched.get("frequency", 1)
        else:
            self.lr_scheduler, self.scheduler_interval, self.scheduler_frequency = sched, "epoch", 1
        if self.scheduler_interval not in ("step", "epoch"):
            raise UserError(f"lr_scheduler interval={self.scheduler_interval!r} must be 'step' or 'epoch'")

    def _build_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        # Schedules such as warmup-cosine need the run's length; give it to those that ask.
        if "total_steps" in inspect.signature(self.scheduler_factory).parameters:
            if math.isinf(self.estimated_stepping_batches):
                raise ConfigError("this scheduler needs the run's length: set trainer.max_steps or trainer.max_epochs")
            return self.scheduler_factory(optimizer, total_steps=int(self.estimated_stepping_batches))
        return self.scheduler_factory(optimizer)

    def _estimate_stepping_batches(self) -> int | float:
        per_epoch = math.ceil(self.num_training_batches / self.accumulate_grad_batches)
        by_epochs = per_epoch * self.max_epochs if self.max_epochs is not None else math.inf
        return min(by_epochs, self.max_steps) if self.max_steps > -1 else by_epochs

    # -- fit -----------------------------------------------------------------------------------
    def _fit_done(self) -> bool:
        state = self.state
        return (
            state.should_stop
            or (self.max_steps > -1 and state.global_step >= self.max_steps)
            or (self.max_epochs is not None and state.epoch >= self.max_epochs)
        )

    def _fit_loop(self, module: TrainModule, train_loader: Iterable, val_loader: Iterable | None) -> None:
        while not self._fit_done():
            self._train_epoch(module, train_loader, val_loader)
            if self.lr_scheduler is not None and self.scheduler_interval == "epoch":
                if (self.state.epoch + 1) % self.scheduler_frequency == 0:
                    self.lr_scheduler.step()
            self.state.epoch += 1
            self.state.batch_idx = 0

    def _train_epoch(self, module: TrainModule, loader: Iterable, val_loader: Iterable | None) -> None:
        state, strategy, precision = self.state, self.strategy, self.precision
        module.train()
        self.metrics.training = True
        # Resuming mid-epoch: rebuild the epoch's data order from the RNG state it started with,
        # read past the batches already consumed (loading them, so samplers and DataLoader
        # workers stay in step), then continue from the RNG state of the checkpoint.
        resume, self._resume_position = self._resume_position, None
        skip = resume["batch_idx"] if resume else 0
        if resume:
            restore_rng(resume["epoch_rng"] if skip else resume["rng"])
        self._epoch_rng = capture_rng()
        for sampler in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(state.epoch)
        module.on_train_epoch_start()
        self._call("on_train_epoch_start")

        n = self.num_training_batches
        accum = self.accumulate_grad_batches
        val_points = self._val_check_points(n, val_loader)
        training_step = strategy.training_step
        batch_end_hooks = self._batch_hooks["on_train_batch_end"]
        state.batch_idx = skip
        for batch_idx, batch in _take(loader, n):
            if batch_idx < skip:
                continue
            if resume:
                restore_rng(resume["rng"])
                resume = None
            window_start = batch_idx - batch_idx % accum
            window = min(accum, n - window_start) if not math.isinf(n) else accum
            step_now = batch_idx + 1 == window_start + window
            batch = strategy.batch_to_device(precision.convert_input(batch))
            with strategy.no_backward_sync(self.model, enabled=not step_now):
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
                self._optimizer_step()
                if state.global_step % self.log_every_n_steps == 0:
                    self._log_step()
                if batch_idx + 1 in val_points:
                    self._validate_during_fit(module, val_loader)
            for cb in batch_end_hooks:
                cb.on_train_batch_end(self, module, out, batch, batch_idx)
            if step_now:
                signum = self._stop_vote.poll(state.global_step)
                if signum is not None:
                    self._stop_for_signal(module, signum)
                if self.max_steps > -1 and state.global_step >= self.max_steps:
                    # Stopped mid-epoch: validate the final weights, so the run ends with the
                    # metrics of the model it saves.
                    if self._last_val_step != state.global_step and val_loader is not None and self.num_val_batches:
                        self._validate_during_fit(module, val_loader)
                    break
            if state.should_stop and step_now:
                break
        if resume:  # every batch of the epoch had been consumed before the checkpoint
            restore_rng(resume["rng"])

        module.on_train_epoch_end()
        self.log_metrics(self.metrics.read_epoch())
        self._call("on_train_epoch_end")

    def _log_step(self) -> None:
        values = self.metrics.read_step()
        if self.precision.scaler is not None:  # 16-mixed: skipped updates are normal, and shown
            values["precision/skipped_steps"] = float(self.precision.skipped_steps)
            values["precision/loss_scale"] = self.precision.scaler.get_scale()
        self.log_metrics(values)

    def _optimizer_step(self) -> None:
        optimizer = self.optimizer
        if self.gradient_clip_val is not None and self.gradient_clip_val > 0:
            self.precision.unscale_gradients(optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            self.strategy.clip_gradients(params, self.gradient_clip_val, self.gradient_clip_algorithm)
        for cb in self._batch_hooks["on_before_optimizer_step"]:
            cb.on_before_optimizer_step(self, self._module, optimizer)
        stepped = self.precision.optimizer_step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        self.state.global_step += 1
        # A step the GradScaler skipped must not advance the schedule.
        if stepped and self.lr_scheduler is not None and self.scheduler_interval == "step":
            if self.state.global_step % self.scheduler_frequency == 0:
                self.lr_scheduler.step()

    def _val_check_points(self, n: int | float, val_loader: Iterable | None) -> set[int]:
        """Batch counts of this epoch after which validation runs."""
        if val_loader is None or not self.num_val_batches:
            return set()
        if (self.state.epoch + 1) % self.check_val_every_n_epoch != 0:
            return set()
        interval = self.val_check_interval
        if math.isinf(n):
            if isinstance(interval, float):
                raise ConfigError("trainer.val_check_interval must be an int (batches) when the loader has no length")
            return set(range(interval, 10**12, interval))  # membership test only; never materialised
        if isinstance(interval, float):
            every = max(1, int(n * interval))
        else:
            every = max(1, min(interval, n))
        return set(range(every, n + 1, every)) | {n}

    def _validate_during_fit(self, module: TrainModule, val_loader: Iterable) -> None:
        self._last_val_step = self.state.global_step
        self._evaluate("validate", module, val_loader, self.num_val_batches)

    def _shared_data_seed(self) -> int:
        """One seed for the data order on every rank: the run's seed, or rank 0's random draw."""
        if self.seed is not None:
            return self.seed
        draw = int(torch.randint(2**31 - 1, ()).item()) if self.is_global_zero else 0
        reduce = getattr(self.strategy, "all_reduce_sum", None)
        return int(reduce(torch.tensor(draw, dtype=torch.int64)).item()) if reduce is not None else draw

    def _distribute(self, loader: Iterable | None, train: bool) -> Iterable | None:
        return distribute_loader(loader, self.strategy.global_rank, self.strategy.world_size, self._data_seed, train)

    def _non_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        last = os.path.realpath(os.path.join(self.checkpoint_dir, "last"))
        kept = f"the last checkpoint, {last}, is intact" if os.path.isdir(last) else "no checkpoint was saved"
        raise NonFiniteLossError(
            f"the loss is {float(loss)} at step {self.state.global_step + 1} (epoch {self.state.epoch}, batch "
            f"{batch_idx}); {kept}. Try a lower optimizer.lr, trainer.gradient_clip_val, precision=32, or "
            "trainer.detect_anomaly=true to find the operation that produced it"
        )

    def _stop_for_signal(self, module: TrainModule, signum: int) -> None:
        cb = self.checkpoint_callback
        path = cb.save(self) if cb is not None else self.save_checkpoint()
        if path is None:  # this very step was saved already
            path = os.path.realpath(os.path.join(self.checkpoint_dir, "last"))
        raise Interrupted(
            signum,
            f"stopped by {signal.Signals(signum).name} at step {self.state.global_step}; checkpoint saved: {path}",
        )

    # -- checkpoints: the trainer's own state, saving, resuming ----------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything beyond model and optimizer that resume needs (plain types and tensors)."""
        return {
            "progress": dataclasses.asdict(self.state),
            "data_seed": self._data_seed,
            "last_val_step": self._last_val_step,
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "precision": self.precision.state_dict(),
            "callbacks": {key: cb.state_dict() for key, cb in self._keyed_callbacks()},
            "metrics": self.metrics.state_dict(),
            "settings": self._settings(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = TrainState(**state["progress"])
        self.state.should_stop = False
        self._last_val_step = state["last_val_step"]
        self._data_seed = state["data_seed"]
        batches = getattr(self.train_dataloader, "batch_sampler", None)
        if isinstance(batches, GlobalBatchSampler):
            batches.seed = self._data_seed
        if self.lr_scheduler is not None and state["lr_scheduler"] is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.precision.load_state_dict(state["precision"])
        saved = state["callbacks"]
        for key, cb in self._keyed_callbacks():
            if key in saved:
                cb.load_state_dict(saved[key])
        self.metrics.load_state_dict(state["metrics"])

    def _keyed_callbacks(self) -> list[tuple[str, Callback]]:
        seen: dict[str, int] = {}
        keyed = []
        for cb in self.callbacks:
            name = type(cb).__name__
            keyed.append((f"{name}#{seen.get(name, 0)}" if name in seen else name, cb))
            seen[name] = seen.get(name, 0) + 1
        return keyed

    def _settings(self) -> dict[str, Any]:
        """What must match for a resumed run to continue this one exactly. The number of
        processes is not among them: with the same global batch the data order is the same on
        any number (samplers.py) and DCP reshards model and optimizer."""
        batches = getattr(self.train_dataloader, "batch_sampler", None)
        per_process = getattr(batches, "batch_size", None) or getattr(self.train_dataloader, "batch_size", None)
        return {
            "global batch size": per_process * self.strategy.world_size if per_process else None,
            "train batches per epoch": self.num_training_batches,
            "trainer.accumulate_grad_batches": self.accumulate_grad_batches,
            **self.hparams,
        }

    def save_checkpoint(self, name: str | None = None) -> str:
        """Save a complete checkpoint in `checkpoint_dir` (named after epoch and step by default)."""
        from trainkit import checkpoint

        for lg in self.loggers:  # what was logged up to this step is on disk before the checkpoint
            lg.flush()
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        return checkpoint.save(
            self.checkpoint_dir,
            name or f"epoch={self.state.epoch}-step={self.state.global_step}",
            model=self.model,
            optimizer=self.optimizer,
            trainer_state=self.state_dict(),
            rank_state={"rng": capture_rng(), "epoch_rng": self._epoch_rng},
            rank=self.strategy.global_rank,
            is_global_zero=self.is_global_zero,
            barrier=self.strategy.barrier,
        )

    def _checkpoint_to_load(self) -> str | None:
        """The checkpoint `resume` names: None for none, the newest intact one for "auto"."""
        from trainkit import checkpoint

        if self.resume in (None, "none"):
            return None
        if self.resume == "auto":
            path, problems = checkpoint.find_resumable(self.checkpoint_dir)
            for problem in problems:
                log.warning("skipping a damaged checkpoint: %s", problem)
            if path is None and problems:
                raise UserError(f"trainer.resume=auto: no intact checkpoint in {self.checkpoint_dir} ("
                                + "; ".join(problems) + "); remove them, or set trainer.resume=none to start over")
            if path is None:
                log.info("trainer.resume=auto: no checkpoint in %s, starting fresh", self.checkpoint_dir)
            return path
        path = checkpoint.resolve(self.resume)
        problem = checkpoint.verify(path)
        if problem is not None:
            raise UserError(f"trainer.resume={self.resume}: {problem}")
        return path

    def _restore(self) -> None:
        from trainkit import checkpoint

        path = self._checkpoint_to_load()
        if path is None:
            if self.init_from:
                self._init_weights()
            return
        trainer_state, rank_state = checkpoint.load(path, self.model, self.optimizer, self.strategy.global_rank)
        saved, current = trainer_state["settings"], self._settings()
        differ = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
        if differ:
            listing = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in differ)
            if self.resume_strict:
                raise UserError(
                    f"cannot resume exactly from {path}: settings differ ({listing}); use the checkpoint's "
                    "settings, or set trainer.resume_strict=false to resume anyway (not an exact continuation)"
                )
            log.warning("resuming from %s although settings differ (%s): not an exact continuation", path, listing)
        self.load_state_dict(trainer_state)
        if rank_state is None:  # saved by fewer processes: this rank takes rank 0's RNG streams
            log.warning("%s has no RNG state for rank %d (saved by fewer processes): using rank 0's",
                        path, self.strategy.global_rank)
            rank_state = checkpoint.load_rank_state(path, 0)
        self._resume_position = {"batch_idx": self.state.batch_idx, **rank_state}
        log.info("resumed from %s: step %d, epoch %d, batch %d of the epoch", path, self.state.global_step,
                 self.state.epoch, self.state.batch_idx)

    def _init_weights(self) -> None:
        """Fine-tuning starts a new run from another run's weights: fresh optimizer, schedule,
        counters and data order. (A resumed fine-tuning run continues from its own checkpoint.)"""
        from trainkit import checkpoint

        path = checkpoint.resolve(self.init_from)
        problem = checkpoint.verify(path)
        if problem is not None:
            raise UserError(f"trainer.init_from={self.init_from}: {problem}")
        from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

        try:
            checkpoint.load_model_weights(path, self.model)
        except (Exception, CheckpointException) as exc:  # noqa: BLE001 - DCP names the mismatching key and shapes
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise UserError(f"trainer.init_from={path}: its weights do not fit this model ("
                            f"{lines[-1] if lines else type(exc).__name__}); use the model settings of the run "
                            "that saved it") from None
        log.info("initialized the model from %s (weights only: fresh optimizer, schedule and counters)", path)

    def _load_weights_for_evaluation(self) -> None:
        from trainkit import checkpoint

        path = self._checkpoint_to_load()
        if path is None:
            if self.resume == "auto":
                log.warning("trainer.resume=auto found no checkpoint: %s runs on the model's initial weights",
                            self.state.stage)
            return
        checkpoint.load_model_weights(path, self.model)
        log.info("loaded weights from %s", path)

    # -- evaluation ------------------------------------------------------------------------------
    def _eval_stage(
        self, stage: str, module: TrainModule, dataloaders: Iterable | None, datamodule: DataModule | None
    ) -> dict[str, float]:
        if dataloaders is None:
            if datamodule is None:
                raise UserError(f"{stage} needs data: pass dataloaders= or a datamodule")
            dataloaders = datamodule.val_dataloader() if stage == "validate" else datamodule.test_dataloader()
        if dataloaders is None:
            raise UserError(f"{stage}: the datamodule returned no {stage} dataloader")
        dataloaders = self._distribute(dataloaders, train=False)
        limit = self.limit_val_batches if stage == "validate" else self.limit_test_batches
        return self._evaluate(stage, module, dataloaders, _num_batches(dataloaders, limit))

    def _check_lockstep(self, stage: str, batches: int | float) -> None:
        """Under FSDP every forward is a collective: a rank with fewer batches would leave the others
        waiting. Refuse with the numbers instead (one small all-reduce before the loop)."""
        if not getattr(self.strategy, "forward_in_lockstep", False) or batches == math.inf:
            return
        total = int(self.strategy.all_reduce_sum(torch.tensor([float(batches)])).item())
        if total != batches * self.world_size:
            raise UserError(
                f"strategy=fsdp {stage}: this rank has {batches} batches, the {self.world_size} ranks {total} in all; "
                "FSDP needs as many on every rank (each forward gathers the weights from all of them). Run "
                f"{stage} with strategy=ddp (FSDP checkpoints load there too), or a batch size / data size that "
                "splits evenly over the ranks")

    def _evaluate(self, stage: str, module: TrainModule, loader: Iterable, limit: int | float) -> dict[str, float]:
        prefix = "validation" if stage == "validate" else "test"
        self._check_lockstep(stage, min(_length(loader), limit))
        step_fn = module.validation_step if stage == "validate" else module.test_step
        was_training = module.training
        module.eval()
        self.metrics.training = False
        getattr(module, f"on_{prefix}_epoch_start")()
        self._call(f"on_{prefix}_start")
        with torch.inference_mode():
            for batch_idx, batch in _take(loader, limit):
                batch = self.strategy.batch_to_device(self.precision.convert_input(batch))
                with self.precision.autocast():
                    out = step_fn(batch, batch_idx)
                self._call_batch(f"on_{prefix}_batch_end", out, batch, batch_idx)
            getattr(module, f"on_{prefix}_epoch_end")()
        values = self.metrics.read_epoch()
        self.log_metrics(values)
        self._call(f"on_{prefix}_end")
        module.train(was_training)
        self.metrics.training = was_training
        return values


def _length(loader: Iterable) -> int | float:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return math.inf


def _num_batches(loader: Iterable, limit: int | float) -> int | float:
    """How many batches of `loader` a loop takes: an int limit is a count, a float a fraction."""
    length = _length(loader)
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 0:
        raise ConfigError(f"limit_*_batches={limit!r} must be an int (batches) or a float in [0, 1] (fraction)")
    if isinstance(limit, int):
        return min(limit, length)
    if limit > 1.0:
        raise ConfigError(f"limit_*_batches={limit} is a float above 1.0: use an int for a count of batches")
    if math.isinf(length):
        if limit == 1.0:
            return math.inf
        raise ConfigError("a fractional limit_*_batches needs a loader with a length; use an int")
    # A positive fraction takes at least one batch: 0.1 of a 5-batch loader is 1, not 0.
    return max(1, int(length * limit)) if 0.0 < limit < 1.0 else int(length * limit)


def _take(loader: Iterable, limit: int | float) -> Iterable[tuple[int, Any]]:
    """The first `limit` batches. A loader read in full is read to its end, as a plain `for`
    loop would: samplers draw from their generator when they finish, and stopping one batch
    early would shift every later epoch's shuffle."""
    if limit == 0:
        return
    stop_early = limit < _length(loader)
    for batch_idx, batch in enumerate(loader):
        yield batch_idx, batch
        if stop_early and batch_idx + 1 >= limit:
            return


def _with_default_callbacks(
    callbacks: list[Callback], progress_bar: bool, checkpointing: bool, root_dir: str, every_n_steps: int | None
) -> list[Callback]:
    from trainkit.callbacks.model_checkpoint import ModelCheckpoint
    from trainkit.callbacks.progress import ProgressBar

    if progress_bar and not any(isinstance(cb, ProgressBar) for cb in callbacks):
        callbacks.insert(0, ProgressBar())
    if checkpointing and not any(isinstance(cb, ModelCheckpoint) for cb in callbacks):
        callbacks.append(ModelCheckpoint(dirpath=os.path.join(root_dir, "checkpoints"), every_n_train_steps=every_n_steps))
    # The progress bar first (its lines come before what other callbacks say about the same
    # event); checkpoints last (they see what every other callback decided, e.g. early stopping).
    return sorted(callbacks, key=lambda cb: 0 if isinstance(cb, ProgressBar) else 2 if isinstance(cb, ModelCheckpoint) else 1)


def _make_loggers(logger: bool | Any | list[Any], root_dir: str) -> list[Any]:
    if logger is False or logger is None:
        return []
    if logger is True:
        from trainkit.loggers.csv import CSVLogger
        from trainkit.loggers.tensorboard import TensorBoardLogger

        return [CSVLogger(save_dir=root_dir), TensorBoardLogger(save_dir=root_dir)]
    return list(logger) if isinstance(logger, (list, tuple)) else [logger]
