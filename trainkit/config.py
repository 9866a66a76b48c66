"""The structured config: dataclasses registered in Hydra's ConfigStore, and the checks that
run before any work starts.

Torch-free on purpose: `trainkit --help` and `trainkit fit --cfg job` compose configs without
importing torch. Two layers of checking:
  * Hydra/OmegaConf, while composing: unknown keys (struct mode) and the types of the typed
    nodes (`trainer`, `strategy`, `precision`);
  * `check_values` (torch-free), here: values in range; and in each worker trainkit.targets,
    which imports each `_target_` and matches every key of a `model`/`datamodule`/`optimizer`/...
    node against the parameters and annotations of the class or function it instantiates.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from trainkit.builtin import DATA_DIR
from trainkit.choices import ACCELERATORS, LAUNCHERS, PRECISIONS, STRATEGIES, precision_mode
from trainkit.errors import ConfigError



def _trainer_defaults() -> dict[str, Any]:
    """The keyword defaults of `Trainer.__init__`, read from its source: the schema below takes
    them without importing the engine (which imports torch; `--cfg job` must not)."""
    source = (Path(__file__).parent / "engine" / "trainer.py").read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            found = {}
            for arg, default in zip(node.args.kwonlyargs, node.args.kw_defaults):
                try:
                    found[arg.arg] = ast.literal_eval(default)
                except ValueError:  # no default, or one built at call time: not a config value
                    pass
            return found
    raise RuntimeError("trainkit/engine/trainer.py has no Trainer.__init__")


_TRAINER = _trainer_defaults()


# One source for each default. The Python API (`trainkit.Trainer`) defaults as Lightning does, in
# its signature; this schema only types the `trainer` node and takes those same defaults (so a
# project's trainer file that leaves a key out gets the library's value, never a third one); the
# CLI's own choices (resume=auto, gradient_clip_val=1.0, log_every_n_steps=20, seed=0, ...) are
# written once, visibly, in configs/trainer/default.yaml.
@dataclass
class TrainerConfig:
    accelerator: str = _TRAINER["accelerator"]
    devices: int = _TRAINER["devices"]
    num_nodes: int = _TRAINER["num_nodes"]
    max_epochs: Optional[int] = _TRAINER["max_epochs"]
    max_steps: int = _TRAINER["max_steps"]
    # int = a number of batches, float = a fraction of the loader (as in Lightning)
    limit_train_batches: Any = _TRAINER["limit_train_batches"]
    limit_val_batches: Any = _TRAINER["limit_val_batches"]
    limit_test_batches: Any = _TRAINER["limit_test_batches"]
    limit_predict_batches: Any = _TRAINER["limit_predict_batches"]
    val_check_interval: Any = _TRAINER["val_check_interval"]
    # null: validate every int val_check_interval batches counted over epochs
    check_val_every_n_epoch: Optional[int] = _TRAINER["check_val_every_n_epoch"]
    accumulate_grad_batches: int = _TRAINER["accumulate_grad_batches"]
    gradient_clip_val: Optional[float] = _TRAINER["gradient_clip_val"]
    gradient_clip_algorithm: str = _TRAINER["gradient_clip_algorithm"]
    seed: Optional[int] = _TRAINER["seed"]
    deterministic: bool = _TRAINER["deterministic"]
    compile: bool = _TRAINER["compile"]
    log_every_n_steps: int = _TRAINER["log_every_n_steps"]
    checkpoint_every_n_steps: Optional[int] = _TRAINER["checkpoint_every_n_steps"]
    max_restarts: int = 0  # the launcher's, not the Trainer's: restart the group this often after a worker dies
    resume: Optional[str] = _TRAINER["resume"]  # auto: <run_dir>/checkpoints/last if there is one; none; a path
    resume_strict: bool = _TRAINER["resume_strict"]  # refuse a resume that would not continue the run exactly
    init_from: Optional[str] = _TRAINER["init_from"]  # fine-tune: start from this checkpoint's model weights only
    detect_anomaly: bool = _TRAINER["detect_anomaly"]  # autograd anomaly mode: finds the op that made a NaN (slow)
    # a rank without progress this long ends the run naming it (x4 for a first step or a checkpoint); null: off
    hang_timeout_s: Optional[float] = _TRAINER["hang_timeout_s"]
    async_checkpoint: bool = _TRAINER["async_checkpoint"]  # write checkpoints while training goes on (DCP async_save)
    # Lightning's debugging and stopping arguments, with their meaning (Trainer docstring)
    fast_dev_run: Any = _TRAINER["fast_dev_run"]  # true or n: n batches of each loop once, no logs, no checkpoints
    # k batches (int) or a fraction: the same unshuffled batches for train and val
    overfit_batches: Any = _TRAINER["overfit_batches"]
    # val batches run before training to catch a broken validation_step; -1: all
    num_sanity_val_steps: int = _TRAINER["num_sanity_val_steps"]
    min_epochs: Optional[int] = _TRAINER["min_epochs"]  # early stopping / max_time cannot end the fit before these
    min_steps: Optional[int] = _TRAINER["min_steps"]
    max_time: Any = _TRAINER["max_time"]  # "DD:HH:MM:SS" or {hours: 12}: stop (as early stopping would) then
    # simple | advanced | pytorch, or {name: pytorch, wait: 1, warmup: 1, active: 3, memory_snapshot: false}:
    # a report when each command ends, saved with its traces in <run_dir>/profiler/
    profiler: Any = _TRAINER["profiler"]
    throughput: bool = _TRAINER["throughput"]  # samples/s, tokens/s, data wait, MFU, memory at each log step
    peak_flops: Optional[float] = _TRAINER["peak_flops"]  # FLOP/s of one device for MFU (null: the GPU table)
    grad_norm: Optional[str] = _TRAINER["grad_norm"]  # total | groups | null: gradient norm before clipping
    # true or {k: 6, window: 100, warmup: 20, max_skips: 20}: skip the step of a loss spike
    spike_guard: Any = _TRAINER["spike_guard"]
    benchmark: Optional[bool] = _TRAINER["benchmark"]  # torch.backends.cudnn.benchmark (null: leave it as it is)


@dataclass
class StrategyConfig:
    name: str = "auto"
    find_unused_parameters: bool = False  # ddp: only for models that skip parameters in some steps
    timeout_s: float = 1800.0  # a collective that waits longer than this fails (a stalled rank)
    wrap_modules: List[str] = field(default_factory=list)  # fsdp: classes sharded as their own units
    cpu_offload: bool = False  # fsdp: keep sharded parameters and optimizer state in CPU memory


@dataclass
class PrecisionConfig:
    mode: str = "32"
    init_scale: float = 65536.0  # 16-mixed: GradScaler's first loss scale
    growth_interval: int = 2000  # 16-mixed: steps without overflow before the scale doubles


@dataclass
class LauncherConfig:
    """Where the processes run. `local`: here (in place, or torch's elastic agent for several);
    `slurm`: one SLURM job of num_nodes x devices tasks, submitted through submitit."""
    name: str = "local"
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    timeout_min: int = 60
    mem_gb: Optional[float] = None
    cpus_per_task: Optional[int] = None
    gpus_per_node: Optional[int] = None
    constraint: Optional[str] = None
    exclude: Optional[str] = None
    additional_parameters: Dict[str, Any] = field(default_factory=dict)  # any other sbatch option
    setup: List[str] = field(default_factory=list)  # shell lines before the tasks start
    signal_delay_s: int = 90  # SIGUSR2 this long before the time limit: save, requeue
    max_num_timeout: int = 3  # requeues after hitting the time limit (preemptions are not counted)
    wait: bool = True  # follow the job until it ends (false: print its id and return)
    array_parallelism: int = 256  # sweeps: at most this many trial jobs at once
    job_name: Optional[str] = None


@dataclass
class TunerConfig:
    """`trainkit tune lr=true` / `batch_size=true` (bare tuner keys mean `tuner.<key>` for `tune`)."""
    lr: bool = False  # LR range test: exponential ramp min_lr -> max_lr over num_training steps
    batch_size: bool = False  # batch-size finder: doubling, then binary search after an out-of-memory
    min_lr: float = 1e-6
    max_lr: float = 1.0
    num_training: int = 100
    early_stop_threshold: Optional[float] = 4.0  # stop when the smoothed loss exceeds this x its minimum
    init_batch_size: Optional[int] = None  # null: datamodule.batch_size
    max_batch_size: int = 4096
    steps_per_trial: int = 5  # optimizer steps timed per batch size (the first is a warm-up)


@dataclass
class SweepConfig:
    """What a sweep ranks its trials by (sweep_summary.csv) and an Optuna search (hparams_search=...)
    optimizes: the best value of `metric` over the run's validations."""
    metric: Optional[str] = None  # null: the model_checkpoint callback's monitor, with its mode
    mode: str = "max"  # max | min
    # Set by the trainkit_optuna sweeper on each of its trials: the study that trial reports its
    # validation values to, so that Optuna's pruner can stop it early.
    optuna_storage: Optional[str] = None
    optuna_study: Optional[str] = None
    optuna_trial: Optional[int] = None
    optuna_pruner: Any = None


@dataclass
class RunConfig:
    command: str = "fit"
    run_dir: str = MISSING
    model: Any = MISSING
    datamodule: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    callbacks: Dict[str, Any] = field(default_factory=dict)
    logger: Dict[str, Any] = field(default_factory=dict)
    tuner: TunerConfig = field(default_factory=TunerConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    data_dir: str = DATA_DIR  # where the real-data recipes read their datasets (trainkit/builtin.py)
    # Written by the CLI (trainkit.project.record): the project root workers import from, the
    # config folders searched, and the file each group's option came from.
    project: Optional[Dict[str, Any]] = None


def register_configs() -> None:
    from trainkit.sweeps.optuna_sweeper import register_sweeper

    ConfigStore.instance().store(name="trainkit_schema", node=RunConfig)
    register_sweeper()  # hydra/sweeper=trainkit_optuna, used by the hparams_search group


# -- checks --------------------------------------------------------------------------------------
def _is_count_or_fraction(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return (isinstance(value, int) and value >= 0) or (isinstance(value, float) and 0.0 <= value <= 1.0)


def check_values(cfg: DictConfig) -> None:
    """Value checks that need no imports. Raises ConfigError naming the key and the fix."""
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if k != "run_dir")
    if missing:  # `???` in a config file: a value only the user can give (e.g. model.pretrained)
        raise ConfigError(f"no value for {', '.join(missing)} (??? in the config files, or a key that refers to "
                          "one): give each on the command line as key=value")
    t = cfg.trainer
    if t.accelerator not in ACCELERATORS:
        raise ConfigError(f"trainer.accelerator={t.accelerator!r} is not one of: {', '.join(ACCELERATORS)}")
    if cfg.strategy.name not in STRATEGIES:
        raise ConfigError(f"strategy={cfg.strategy.name!r} is not one of: {', '.join(STRATEGIES)}")
    if cfg.launcher.name not in LAUNCHERS:
        raise ConfigError(f"launcher={cfg.launcher.name!r} is not one of: {', '.join(LAUNCHERS)}")
    if precision_mode(cfg.precision.mode) is None:
        raise ConfigError(f"precision={cfg.precision.mode!r} is not one of: {', '.join(PRECISIONS)}")
    cfg.precision.mode = precision_mode(cfg.precision.mode)  # one spelling downstream: "32-true" is "32"
    for key in ("devices", "num_nodes", "accumulate_grad_batches", "check_val_every_n_epoch", "log_every_n_steps"):
        if t[key] is not None and t[key] < 1:
            raise ConfigError(f"trainer.{key}={t[key]} must be >= 1")
    if t.max_steps < -1 or t.max_steps == 0:
        raise ConfigError(f"trainer.max_steps={t.max_steps} must be a positive number of steps, or -1 for no limit")
    if t.max_epochs is not None and t.max_epochs < 1:
        raise ConfigError(f"trainer.max_epochs={t.max_epochs} must be >= 1 (or null)")
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches"):
        if not _is_count_or_fraction(t[key]):
            raise ConfigError(
                f"trainer.{key}={t[key]!r} must be an int (a number of batches) or a float in [0, 1] (a fraction)"
            )
    v = t.val_check_interval
    if not _is_count_or_fraction(v) or v == 0:
        raise ConfigError(
            f"trainer.val_check_interval={v!r} must be an int >= 1 (batches) or a float in (0, 1] (fraction of an epoch)"
        )
    if t.checkpoint_every_n_steps is not None and t.checkpoint_every_n_steps < 1:
        raise ConfigError(f"trainer.checkpoint_every_n_steps={t.checkpoint_every_n_steps} must be >= 1 (or null)")
    _check_lightning_arguments(t)
    if t.gradient_clip_algorithm not in ("norm", "value"):
        raise ConfigError(f"trainer.gradient_clip_algorithm={t.gradient_clip_algorithm!r} must be 'norm' or 'value'")
    if cfg.sweep.mode not in ("max", "min"):
        raise ConfigError(f"sweep.mode={cfg.sweep.mode!r} must be 'max' or 'min'")
    _check_tuner(cfg.tuner)
    _check_tracker_packages(cfg)
    if cfg.command == "tune" and not (cfg.tuner.lr or cfg.tuner.batch_size):
        raise ConfigError("trainkit tune needs something to tune: lr=true (learning rate) and/or batch_size=true")
    if cfg.command == "tune" and t.devices * t.num_nodes > 1:
        raise ConfigError(f"trainkit tune runs in one process, not trainer.devices={t.devices} x trainer.num_nodes="
                          f"{t.num_nodes}: the batch size it finds is per device; tune with one, then run with more")


def _check_tracker_packages(cfg: DictConfig) -> None:
    """logger=wandb / logger=mlflow need their optional extra: say so before anything is launched."""
    from trainkit.loggers.tracking import EXTRAS, require

    for node in (cfg.get("logger") or {}).values():
        extra = EXTRAS.get(str((node or {}).get("_target_")))
        if extra:
            require(extra, extra)


def _check_lightning_arguments(t: DictConfig) -> None:
    from trainkit.engine import arguments  # torch-free
    from trainkit.profiler import check_profiler

    try:
        arguments.fast_dev_run_batches(t.fast_dev_run)
        arguments.batches_or_fraction("overfit_batches", t.overfit_batches)
        arguments.sanity_steps(t.num_sanity_val_steps)
        arguments.count("min_epochs", t.min_epochs, optional=True)
        arguments.count("min_steps", t.min_steps, optional=True)
        arguments.duration_seconds(OmegaConf.to_container(t.max_time) if isinstance(t.max_time, DictConfig)
                                   else t.max_time)
    except ConfigError as exc:
        raise ConfigError(f"trainer.{exc}") from None
    profiler = OmegaConf.to_container(t.profiler) if isinstance(t.profiler, DictConfig) else t.profiler
    try:
        check_profiler(profiler)
    except ConfigError as exc:
        raise ConfigError(f"trainer.{exc}") from None
    if t.grad_norm not in (None, "total", "groups"):
        raise ConfigError(f"trainer.grad_norm={t.grad_norm!r} must be total, groups or null (off)")


def _check_tuner(tu: DictConfig) -> None:
    if not 0 < tu.min_lr < tu.max_lr:
        raise ConfigError(f"tuner.min_lr={tu.min_lr} and tuner.max_lr={tu.max_lr}: need 0 < min_lr < max_lr")
    if tu.num_training < 2:
        raise ConfigError(f"tuner.num_training={tu.num_training} must be >= 2 (steps of the LR range test)")
    if tu.early_stop_threshold is not None and tu.early_stop_threshold <= 1:
        raise ConfigError(f"tuner.early_stop_threshold={tu.early_stop_threshold} must be > 1 "
                          "(or null: never stop early)")
    if tu.init_batch_size is not None and not 1 <= tu.init_batch_size <= tu.max_batch_size:
        raise ConfigError(f"tuner.init_batch_size={tu.init_batch_size} must be between 1 and tuner.max_batch_size")
    if tu.max_batch_size < 1 or tu.steps_per_trial < 2:
        raise ConfigError("tuner.max_batch_size must be >= 1 and tuner.steps_per_trial >= 2 (one warm-up step)")
