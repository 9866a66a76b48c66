"""The Trainer: what it is built with, and fit / validate / test / predict over a TrainModule.

    trainer = Trainer(max_steps=100, logger=False, enable_checkpointing=False)
    trainer.fit(module, datamodule=dm)            # or train_dataloaders=..., val_dataloaders=...

The work lives beside it, one concern a file: fit_loop.py (epochs, steps, stops), evaluation.py
(validate / test / predict loops), optimization.py (optimizers, schedulers, the optimizer step),
trainer_state.py (state_dict, checkpoints, resume), loaders.py (batch counts, data sharding).
They call the strategy and the precision through their methods and never ask which kind they have.
"""
from __future__ import annotations

import logging
import os
import secrets
import time
from typing import Any, Callable, Iterable

import torch

from trainkit import storage
from trainkit.choices import precision_mode
from trainkit.engine import arguments, evaluation, loaders, optimization, trainer_state
from trainkit.engine.callback import Callback
from trainkit.engine.data import DataModule
from trainkit.engine.finite_check import FiniteCheck
from trainkit.engine.grad_norm import GradNorms, check_mode
from trainkit.engine.fit_loop import FitLoop
from trainkit.engine.hparams import logged_hparams
from trainkit.engine.hooks import Hooks
from trainkit.engine.metric_store import MetricStore
from trainkit.engine.module import TrainModule
from trainkit.engine.optimizers import SchedulerConfig
from trainkit.engine.spike_guard import make_spike_guard
from trainkit.engine.seed import seed_everything, set_deterministic
from trainkit.engine.state import TrainState
from trainkit.errors import ConfigError, UserError
from trainkit.heartbeat import Heartbeat
from trainkit.launch.env import from_environ
from trainkit.precision import Precision
from trainkit.profiler import make_profiler
from trainkit.signals import StopSignals
from trainkit.strategies import Strategy, make_strategy

log = logging.getLogger("trainkit")


class Trainer:
    def __init__(
        self,
        *,
        accelerator: str = "auto",
        strategy: str | Strategy = "auto",
        devices: int | str = 1,
        num_nodes: int = 1,
        precision: str | Precision = "32",
        max_epochs: int | None = None,
        max_steps: int = -1,
        limit_train_batches: int | float = 1.0,
        limit_val_batches: int | float = 1.0,
        limit_test_batches: int | float = 1.0,
        limit_predict_batches: int | float = 1.0,
        val_check_interval: int | float = 1.0,
        check_val_every_n_epoch: int | None = 1,
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
        hang_timeout_s: float | None = None,
        async_checkpoint: bool = False,
        hparams: dict[str, Any] | None = None,
        fast_dev_run: bool | int = False,
        overfit_batches: int | float = 0.0,
        num_sanity_val_steps: int = 2,
        min_epochs: int | None = None,
        min_steps: int | None = None,
        max_time: str | dict | Any = None,
        benchmark: bool | None = None,
        enable_model_summary: bool = True,
        profiler: str | Any = None,
        throughput: bool = True,
        peak_flops: float | None = None,
        grad_norm: str | None = "total",
        spike_guard: bool | dict | Any = None,
        reload_dataloaders_every_n_epochs: int = 0,
        sync_batchnorm: bool = False,
        inference_mode: bool = True,
        use_distributed_sampler: bool = True,
        callbacks: list[Callback] | Callback | None = None,
        logger: bool | Any | list[Any] = True,
        enable_checkpointing: bool = True,
        enable_progress_bar: bool = True,
        default_root_dir: str | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        self.max_time = arguments.duration_seconds(max_time)
        if max_epochs == -1:
            max_epochs = None  # Lightning's "no epoch limit"
        elif max_epochs is None and max_steps == -1 and self.max_time is None:
            max_epochs = 1000  # as Lightning: a bound, so a forgotten limit does not run forever
        devices = arguments.devices_count(devices)
        if accumulate_grad_batches < 1:
            raise ConfigError(f"trainer.accumulate_grad_batches={accumulate_grad_batches} must be >= 1")
        if gradient_clip_algorithm not in ("norm", "value"):
            raise ConfigError(f"gradient_clip_algorithm={gradient_clip_algorithm!r} must be 'norm' or 'value'")
        # From strings, as Lightning: the ranks are those of the launcher that started this process
        # (torchrun, an srun step), and the strategy joins their process group.
        self.strategy: Strategy = (
            make_strategy(strategy, accelerator, devices, num_nodes, from_environ(),
                          precision_mode=_precision_mode(precision)) if isinstance(strategy, str)
            else strategy
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
        # None (Lightning): validate every int `val_check_interval` batches counted over epochs
        self.check_val_every_n_epoch = arguments.count("check_val_every_n_epoch", check_val_every_n_epoch, minimum=1,
                                                       optional=True)
        if check_val_every_n_epoch is None and not isinstance(val_check_interval, int):
            raise ConfigError(f"val_check_interval={val_check_interval!r} must be an int (batches) when "
                              "check_val_every_n_epoch=None")
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
        # A rank without progress this long (x heartbeat.SLOW for a first step or a checkpoint) ends
        # the fit naming it, its phase and its stack (trainkit.heartbeat); None: not watched.
        self.hang_timeout_s = hang_timeout_s
        self.heartbeat = Heartbeat()
        self.async_checkpoint = async_checkpoint  # checkpoints written while training goes on (checkpoint.save_async)
        self._pending_save: Any = None  # the async checkpoint being written (trainer_state.finish_saves)
        self._lightning_arguments(fast_dev_run, overfit_batches, num_sanity_val_steps, min_epochs, min_steps,
                                  reload_dataloaders_every_n_epochs)
        self.inference_mode = arguments.flag("inference_mode", inference_mode)
        self.use_distributed_sampler = arguments.flag("use_distributed_sampler", use_distributed_sampler)
        self.enable_model_summary = arguments.flag("enable_model_summary", enable_model_summary)
        self.sync_batchnorm = arguments.flag("sync_batchnorm", sync_batchnorm)
        if self.sync_batchnorm and self.world_size > 1 and self.strategy.root_device.type != "cuda":
            raise ConfigError("sync_batchnorm=True needs CUDA devices (torch's SyncBatchNorm synchronises on GPUs "
                              "only); set it to False on CPU")
        self.benchmark = benchmark
        if benchmark is not None:  # as Lightning: None keeps the session's setting
            torch.backends.cudnn.benchmark = arguments.flag("benchmark", benchmark)
        self.profiler = make_profiler(profiler)
        self.grad_norms = GradNorms(check_mode(grad_norm))
        self.spike_guard = make_spike_guard(spike_guard)
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
            _callback_list(callbacks), enable_progress_bar, enable_checkpointing, self.default_root_dir,
            checkpoint_every_n_steps, self.enable_model_summary, arguments.flag("throughput", throughput), peak_flops,
        )
        # fast_dev_run logs nothing (and ModelCheckpoint saves nothing), as in Lightning
        self.loggers = _make_loggers(logger, self.default_root_dir) if self.is_global_zero and not self.fast_dev_run else []
        self.datamodule: DataModule | None = None
        self._fit_val_dataloaders: Any = None  # what fit was given: validate() without loaders reuses it
        self._module: TrainModule | None = None  # the module as the user gave it
        self.hooks = Hooks(self, self.callbacks, None, None)  # rebuilt for each run's module
        self.finite_check = FiniteCheck(self)

        self.optimizers: list[torch.optim.Optimizer] = []
        self.lr_scheduler_configs: list[SchedulerConfig] = []
        self._step_through: list[Any] = []  # what module.optimizers() hands out (optimization.py)
        self._unsynced: set[int] = set()  # optimizers with gradients of a manual backward not yet averaged
        # The module overrides configure_gradient_clipping / optimizer_step / optimizer_zero_grad.
        self._clips_itself = self._steps_itself = self._zeroes_itself = False
        self._stepped = True  # whether the last automatic step went through (the GradScaler may skip it)
        self.num_training_batches: int | float = 0
        self.num_val_batches: list[int | float] = []  # per val loader, as in Lightning
        self.estimated_stepping_batches: int | float = 0
        self.model: torch.nn.Module | None = None  # the module as the strategy placed it
        self.train_dataloader: Iterable | None = None
        self._last_val_step = -1
        self._signals = StopSignals()
        self._resume_position: dict[str, Any] | None = None  # data position + RNG to restore
        self._epoch_rng: dict[str, Any] | None = None  # RNG state when this epoch's data began
        self._data_position: Any = None  # the training loader's place in its epoch (data_position.py)
        self._data_seed = 0  # seeds the training order (the same on every rank)

    # -- read-only views (Lightning names) ---------------------------------------------------
    @property
    def is_global_zero(self) -> bool:
        return self.strategy.is_global_zero

    @property
    def world_size(self) -> int:
        return self.strategy.world_size

    @property
    def global_rank(self) -> int:
        return self.strategy.global_rank

    @property
    def local_rank(self) -> int:
        return self.strategy.local_rank

    @property
    def global_step(self) -> int:
        return self.state.global_step

    @property
    def current_epoch(self) -> int:
        return self.state.epoch

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The first optimizer (the only one in automatic optimization), or None."""
        return self.optimizers[0] if self.optimizers else None

    @property
    def lightning_module(self) -> TrainModule | None:
        return self._module

    @property
    def logger(self) -> Any:
        """The first logger (Lightning's `trainer.logger`); None without loggers."""
        return self.loggers[0] if self.loggers else None

    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        """The latest value of every logged metric, as 0-d tensors (as Lightning gives them)."""
        return self.metrics.callback_metrics

    @property
    def logged_metrics(self) -> dict[str, torch.Tensor]:
        """What was last sent to the loggers, as 0-d tensors."""
        return self.metrics.logged_metrics

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        return self.metrics.progress_bar_values()

    @property
    def should_stop(self) -> bool:
        return self.state.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self.state.should_stop = value

    @property
    def sanity_checking(self) -> bool:
        """True while fit runs its sanity check (`num_sanity_val_steps` val batches before training)."""
        return self.state.stage == "sanity_check"

    @property
    def log_dir(self) -> str:
        return self.default_root_dir

    @property
    def checkpoint_callback(self) -> Any:
        from trainkit.callbacks.model_checkpoint import ModelCheckpoint

        return next((cb for cb in self.callbacks if isinstance(cb, ModelCheckpoint)), None)

    @property
    def throughput_monitor(self) -> Any:
        from trainkit.callbacks.throughput import ThroughputMonitor

        return next((cb for cb in self.callbacks if isinstance(cb, ThroughputMonitor)), None)

    @property
    def checkpoint_dir(self) -> str:
        cb = self.checkpoint_callback
        return cb.dirpath if cb is not None else os.path.join(self.default_root_dir, "checkpoints")

    # -- entry points (Lightning's signatures) ---------------------------------------------------
    def fit(
        self,
        model: TrainModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: DataModule | None = None,
        ckpt_path: str | None = None,
    ) -> None:
        """Train `model`. A DataModule may come second, as in `trainer.fit(model, dm)`.
        `ckpt_path` resumes from that checkpoint ("last", or a path) in place of `resume`."""
        if isinstance(train_dataloaders, DataModule):
            train_dataloaders, datamodule = None, train_dataloaders
        self._fit_val_dataloaders = val_dataloaders

        def run() -> None:
            def source() -> tuple[Any, Any]:
                return (loaders.requested("train_dataloader", train_dataloaders, datamodule, model),
                        loaders.requested("val_dataloader", val_dataloaders, datamodule, model))

            self._data_seed = loaders.shared_data_seed(self.seed, self.strategy)
            loop = FitLoop(self, model, source, self._signals)  # asks `source` for the loaders
            self.estimated_stepping_batches = optimization.estimate_stepping_batches(self)
            optimization.configure_optimizers(self, model)
            trainer_state.restore(self, ckpt_path)
            self.finite_check = FiniteCheck(self)
            self._call("on_fit_start")
            with self._signals, torch.autograd.set_detect_anomaly(self.detect_anomaly):
                try:
                    loop.run()
                finally:  # an async checkpoint still being written is published before fit returns
                    trainer_state.finish_saves(self)
            self._call("on_fit_end")

        with self.heartbeat.watching(self, self.hang_timeout_s):
            self._run(model, datamodule, "fit", run)

    def validate(self, model: TrainModule | None = None, dataloaders: Any = None, ckpt_path: str | None = None,
                 verbose: bool = True, datamodule: DataModule | None = None) -> list[dict[str, float]]:
        """One dict of metrics per val loader. `model=None` after `fit` takes the fitted module (and
        its data); `ckpt_path`: "best", "last" or a path (None: what `resume` names, else the
        current weights)."""
        return self._evaluate("validate", model, dataloaders, ckpt_path, datamodule)

    def test(self, model: TrainModule | None = None, dataloaders: Any = None, ckpt_path: str | None = None,
             verbose: bool = True, datamodule: DataModule | None = None) -> list[dict[str, float]]:
        """One dict of metrics per test loader; the arguments as `validate`'s."""
        return self._evaluate("test", model, dataloaders, ckpt_path, datamodule)

    def predict(self, model: TrainModule | None = None, dataloaders: Any = None, datamodule: DataModule | None = None,
                return_predictions: bool | None = None, ckpt_path: str | None = None) -> list[Any]:
        """Each batch's `predict_step` output (each rank: those of its shard)."""
        model, dataloaders, datamodule = self._eval_args("predict", model, dataloaders, datamodule)
        return self._run(model, datamodule, "predict",
                         lambda: evaluation.predict(self, model, dataloaders, datamodule), ckpt_path)

    def _evaluate(self, stage: str, model: TrainModule | None, dataloaders: Any, ckpt_path: str | None,
                  datamodule: DataModule | None) -> list[dict[str, float]]:
        model, dataloaders, datamodule = self._eval_args(stage, model, dataloaders, datamodule)
        return self._run(model, datamodule, stage,
                         lambda: evaluation.run_stage(self, stage, model, dataloaders, datamodule), ckpt_path)

    def _eval_args(self, stage: str, model: TrainModule | None, dataloaders: Any,
                   datamodule: DataModule | None) -> tuple[TrainModule, Any, DataModule | None]:
        if isinstance(dataloaders, DataModule):
            dataloaders, datamodule = None, dataloaders
        if model is None:
            if self._module is None:
                raise UserError(f"trainer.{stage}() without a model needs a fit first; pass the model")
            model = self._module
            if dataloaders is None and datamodule is None:  # the data fit used
                datamodule = self.datamodule
                if stage == "validate":
                    dataloaders = self._fit_val_dataloaders
        return model, dataloaders, datamodule

    def save_checkpoint(self, filepath: str | None = None, weights_only: bool = False) -> str:
        """A checkpoint folder for exact resume (in `checkpoint_dir`, named after epoch and step by
        default), or one `.ckpt` file of weights and hyper-parameters for a path ending in .ckpt,
        .pt or .pth (trainkit.checkpoint). Every rank calls it."""
        return trainer_state.save_checkpoint(self, filepath, weights_only)

    def state_dict(self) -> dict[str, Any]:
        """Everything beyond model and optimizer that resume needs (trainer_state.py)."""
        return trainer_state.state_dict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        trainer_state.load_state_dict(self, state)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Send floats to every logger (rank zero only), tagged with the epoch."""
        if not metrics:
            return
        self.metrics.logged_metrics.update({k: torch.tensor(v, dtype=torch.float64) for k, v in metrics.items()})
        if not self.loggers:
            return
        step = self.state.global_step if step is None else step
        row = {**metrics, "epoch": self.state.epoch}
        with storage.logging_step(step, self.checkpoint_dir):
            for lg in self.loggers:
                lg.log_metrics(row, step)

    # -- shared set-up and tear-down, in Lightning's order ----------------------------------------
    def _run(self, module: TrainModule, datamodule: DataModule | None, stage: str, body: Callable[[], Any],
             ckpt_path: str | None = None) -> Any:
        self.state.stage = stage
        object.__setattr__(module, "_trainer", self)
        self.datamodule = datamodule
        if datamodule is not None:
            datamodule.trainer = self
        # In one process the metric store skips the reduction (and its packing) altogether.
        self.metrics.reduce_sum = self.strategy.all_reduce_sum if self.strategy.world_size > 1 else None
        self.metrics.world_size, self.metrics.rank = self.strategy.world_size, self.strategy.global_rank
        if self.seed is not None:
            seed_everything(self.seed)
        set_deterministic(self.deterministic)
        placed = module is self._module and self.model is not None  # validate() after fit(): as it is
        self._module = module
        self.hooks = Hooks(self, self.callbacks, module, datamodule)
        status = "failed"
        if self.profiler is not None:
            self.profiler.start(stage, self.default_root_dir, self.strategy.global_rank)
        try:
            if datamodule is not None:
                datamodule.prepare_data()
            module.prepare_data()
            self._call("setup", stage)
            if not placed:
                module.configure_model()
                if self.sync_batchnorm and self.world_size > 1:
                    torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)  # in place: the module keeps its identity
                self.model = self.strategy.setup_module(self.precision.convert_module(module))
                if self.compile and getattr(module, "_compiled_call_impl", None) is None:
                    module.compile()  # in place: the module keeps its identity and state_dict keys
            if stage != "fit":
                trainer_state.load_weights_for_evaluation(self, ckpt_path)
            self._log_hyperparams(module, datamodule)
            result = body()
            status = "success"
            return result
        except BaseException as exc:
            self._call("on_exception", exc)
            raise
        finally:
            self._call("teardown", stage)
            with storage.logging_step(self.state.global_step, self.checkpoint_dir, failing=status != "success"):
                for lg in self.loggers:
                    lg.finalize(status)
            if self.profiler is not None:
                report = self.profiler.stop()
                if self.is_global_zero:
                    print(report, flush=True)
            self.strategy.teardown()

    def _log_hyperparams(self, module: TrainModule, datamodule: DataModule | None) -> None:
        values = logged_hparams(module, datamodule)
        if values:
            for lg in self.loggers:
                lg.log_hyperparams(values)

    def _call(self, hook: str, *args: Any) -> None:
        """Call `hook` on the callbacks and the module (engine/hooks.py: who, in which order)."""
        for fn in self.hooks.targets(hook):
            fn(*args)

    def _lightning_arguments(self, fast_dev_run: Any, overfit_batches: Any, num_sanity_val_steps: Any,
                             min_epochs: Any, min_steps: Any, reload_every: Any) -> None:
        """The debugging and stopping arguments, with Lightning's meaning. fast_dev_run=n runs n
        batches of every loop once (one epoch, at most n steps, no sanity check, no loggers, no
        checkpoints); overfit_batches=k trains and validates on the first k batches (a count or
        a fraction), unshuffled, every epoch."""
        n = arguments.fast_dev_run_batches(fast_dev_run)
        self.fast_dev_run: bool | int = True if n == 1 else n
        self.overfit_batches = arguments.batches_or_fraction("overfit_batches", overfit_batches)
        self.num_sanity_val_steps = arguments.sanity_steps(num_sanity_val_steps)
        self.min_epochs = arguments.count("min_epochs", min_epochs, optional=True)
        self.min_steps = arguments.count("min_steps", min_steps, optional=True)
        self.reload_dataloaders_every_n_epochs = arguments.count("reload_dataloaders_every_n_epochs", reload_every)
        if self.overfit_batches:
            self.limit_train_batches = self.limit_val_batches = self.overfit_batches
        if n:
            if not self.overfit_batches:
                self.limit_train_batches = self.limit_val_batches = n
            self.limit_test_batches = self.limit_predict_batches = n
            self.max_steps, self.max_epochs, self.num_sanity_val_steps = n, 1, 0
            self.val_check_interval, self.check_val_every_n_epoch = 1.0, 1
            log.info("fast_dev_run: %d batch(es) of each loop; logging and checkpointing are off", n)


def _precision_mode(precision: str | Precision) -> str:
    """What FSDP's mixed-precision policy follows; an unknown name is refused by Precision itself."""
    return precision.mode if isinstance(precision, Precision) else precision_mode(precision) or "32"


def _callback_list(callbacks: Any) -> list[Callback]:
    """A callback alone or a list of them (Lightning takes both)."""
    given = arguments.as_list(callbacks)
    for cb in given:
        if not isinstance(cb, Callback):
            raise ConfigError(f"callbacks: {cb!r} is not a Callback (subclass trainkit.Callback)")
    return given


def _with_default_callbacks(
    callbacks: list[Callback], progress_bar: bool, checkpointing: bool, root_dir: str, every_n_steps: int | None,
    model_summary: bool, throughput: bool, peak_flops: float | None,
) -> list[Callback]:
    from trainkit.callbacks.model_checkpoint import ModelCheckpoint
    from trainkit.callbacks.model_summary import ModelSummary
    from trainkit.callbacks.progress import ProgressBar
    from trainkit.callbacks.throughput import ThroughputMonitor

    if throughput and not any(isinstance(cb, ThroughputMonitor) for cb in callbacks):
        callbacks.append(ThroughputMonitor(peak_flops=peak_flops))

    if model_summary and not any(isinstance(cb, ModelSummary) for cb in callbacks):
        callbacks.insert(0, ModelSummary())
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
