"""`hydra/sweeper=trainkit_optuna`: an Optuna search as a Hydra sweeper, on a current Optuna.

    trainkit fit hparams_search=kt_dkt                          # configs/hparams_search/kt_dkt.yaml
    trainkit fit hparams_search=kt_dkt hydra.sweeper.n_trials=50 'optimizer.lr=tag(log, interval(1e-4, 3e-2))'

Why not Hydra's own hydra-optuna-sweeper: its newest release (1.3.0) requires optuna<3 (2.10, from
2021), so installing it downgrades a current Optuna; and it sees a trial only once the trial has
ended, so it cannot prune. This sweeper keeps its config shape (`params` in Hydra's override
grammar: `choice(...)`, `interval(a, b)`, `tag(log, interval(a, b))`, `range(a, b, step)`; and
`sampler`, `storage`, `study_name`, `n_trials`, `n_jobs`) and adds `pruner`.

Each trial is an ordinary job of Hydra's launcher: `<sweep dir>/<trial number>` is a normal run
directory; the basic launcher runs trials one after another, `hydra/launcher=joblib` `n_jobs` at a
time. The direction comes from `sweep.mode` and the value told to Optuna is the trial's best
`sweep.metric` (the task function's return value). Trials learn which Optuna trial they are from
`sweep.optuna_*` overrides (the pruner's config among them: Optuna does not store it with the
study); after each validation they report `sweep.metric` to the study and stop when the pruner
says so (trainkit/sweeps/results.py). The study lives in `storage`, by
default a journal file `<sweep dir>/optuna.journal` that every process can open: running the same
command with the same `hydra.sweep.dir` continues the study. A failed trial is told FAIL and the
search goes on.

Hydra instantiates sweepers only from the `hydra_plugins` package: hydra_plugins/trainkit_sweepers
names this class there. Optuna is imported when a search starts (`pip install trainkit[tune]`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from trainkit.errors import ConfigError

log = logging.getLogger("trainkit")

JOURNAL = "optuna.journal"


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.trainkit_sweepers.optuna_sweeper.TrainkitOptunaSweeper"
    _recursive_: bool = False  # sampler and pruner are built in sweep(), once optuna is known to be there
    sampler: Any = None  # e.g. {_target_: optuna.samplers.TPESampler, seed: 0}; null: TPE
    pruner: Any = None  # e.g. {_target_: optuna.pruners.MedianPruner}; null: no pruning
    storage: Optional[str] = None  # an Optuna storage URL or journal file; null: <sweep dir>/optuna.journal
    study_name: Optional[str] = None  # null: the sweep directory's name
    n_trials: int = 20
    n_jobs: int = 1  # trials asked for and launched together (run in parallel by hydra/launcher=joblib)
    params: Dict[str, str] = field(default_factory=dict)  # key: search space in Hydra's sweep grammar


def register_sweeper() -> None:
    ConfigStore.instance().store(group="hydra/sweeper", name="trainkit_optuna", node=OptunaSweeperConf,
                                 provider="trainkit")


def open_storage(storage: str) -> Any:
    """A URL (sqlite:///..., postgresql://...) as Optuna takes it; anything else is a journal file."""
    if "://" in storage:
        return storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(storage))


@dataclass
class _Param:
    name: str
    kind: str  # categorical | int | float
    choices: List[Any] = field(default_factory=list)
    low: float = 0.0
    high: float = 0.0
    step: Optional[float] = None
    log: bool = False

    def suggest(self, trial: Any) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


def parse_search_space(arguments: Sequence[str]) -> tuple[list[_Param], list[str]]:
    """Sweep overrides become Optuna distributions; the other overrides pass to every trial."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep, Transformer

    space, fixed = [], []
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        if not override.is_sweep_override():
            fixed.append(override.input_line)
            continue
        name, value = override.get_key_element(), override.value()
        log_scale = "log" in value.tags
        if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
            choices = list(override.sweep_iterator(transformer=Transformer.encode))
            space.append(_Param(name, "categorical", choices=choices))
        elif isinstance(value, RangeSweep):  # range(start, stop, step): stop excluded, as in Python
            count = math.ceil((value.stop - value.start) / value.step)
            last = value.start + (count - 1) * value.step
            is_int = all(isinstance(v, int) for v in (value.start, value.stop, value.step))
            space.append(_Param(name, "int" if is_int else "float", low=value.start, high=last, step=value.step))
        elif isinstance(value, IntervalSweep):
            is_int = isinstance(value.start, int) and isinstance(value.end, int)
            space.append(_Param(name, "int" if is_int else "float", low=value.start, high=value.end, log=log_scale))
        else:
            raise ConfigError(f"{override.input_line}: not a search space the Optuna sweeper understands")
    return space, fixed


def _quote(value: Any) -> str:
    return "'" + str(value).replace("'", "\\'") + "'"  # Hydra: a backslash escapes only a quote


def _override_value(value: Any) -> str:
    """A plain config value (dict, list, str, number, bool, None) in Hydra's override grammar."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value) if isinstance(value, (int, float)) else _quote(value)


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: Any = None, pruner: Any = None, storage: Optional[str] = None,
                 study_name: Optional[str] = None, n_trials: int = 20, n_jobs: int = 1,
                 params: Optional[DictConfig] = None) -> None:
        if n_trials < 1 or n_jobs < 1:
            raise ConfigError(f"hydra.sweeper.n_trials={n_trials} and hydra.sweeper.n_jobs={n_jobs} must be >= 1")
        self.sampler, self.pruner, self.storage, self.study_name = sampler, pruner, storage, study_name
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.params = dict(params or {})
        self.config: Optional[DictConfig] = None
        self.hydra_context: Any = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: List[str]) -> Any:
        from hydra.core.utils import JobStatus
        from hydra.utils import instantiate

        try:
            import optuna
            import optuna.storages.journal  # JournalFileBackend: optuna >= 4
        except ImportError:
            raise ConfigError("hparams_search needs optuna >= 4: pip install -e '.[tune]'") from None

        config = self.config
        metric, mode = config.sweep.metric, config.sweep.mode
        if not metric:
            raise ConfigError("hydra/sweeper=trainkit_optuna needs the metric to optimize: set sweep.metric "
                              "(e.g. sweep.metric=val/auc sweep.mode=max)")
        pruner = OmegaConf.to_container(self.pruner, resolve=True) if self.pruner is not None else None
        space, fixed = parse_search_space([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        if not space:
            raise ConfigError("the Optuna sweeper has nothing to search: give hydra.sweeper.params, or a sweep "
                              "override such as 'optimizer.lr=tag(log, interval(1e-4, 1e-2))'")
        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(config, sweep_dir / "multirun.yaml")
        storage = self.storage or str(sweep_dir / JOURNAL)
        study = optuna.create_study(
            storage=open_storage(storage),
            sampler=instantiate(self.sampler) if self.sampler is not None else None,
            pruner=instantiate(self.pruner) if self.pruner is not None else optuna.pruners.NopPruner(),
            study_name=self.study_name or sweep_dir.name,
            direction="maximize" if mode == "max" else "minimize",
            load_if_exists=True,
        )
        log.info("optuna: study %r in %s, %s %s over %s; %d trials", study.study_name, storage,
                 "maximizing" if mode == "max" else "minimizing", metric, ", ".join(p.name for p in space),
                 self.n_trials)
        job_idx = len(study.trials)  # a continued study: new trial directories after the old ones
        returns = []
        left = self.n_trials
        while left > 0:
            trials = [study.ask() for _ in range(min(self.n_jobs, left))]
            batch = []
            for trial in trials:
                chosen = [f"{p.name}={p.suggest(trial)}" for p in space]
                batch.append(tuple(fixed + chosen + [
                    f"sweep.optuna_storage={_quote(storage)}",
                    f"sweep.optuna_study={_quote(study.study_name)}",
                    f"sweep.optuna_trial={trial._trial_id}",  # the id in the storage (Trial(study, id) takes it)
                    f"sweep.optuna_pruner={_override_value(pruner)}",  # a study's pruner is not in its storage
                ]))
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=job_idx)
            job_idx += len(batch)
            stored = {t.number: t for t in study.get_trials(deepcopy=False)}  # read again: trials wrote to it
            for trial, ret in zip(trials, results):
                value = ret._return_value if ret.status == JobStatus.COMPLETED else None
                pruned_at = stored[trial.number].user_attrs.get("pruned_at_step")
                if pruned_at is not None:
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    outcome = f"pruned at step {pruned_at}"
                elif isinstance(value, (int, float)) and math.isfinite(value):
                    study.tell(trial, float(value))
                    outcome = f"{metric}={value:.4f}"
                else:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    outcome = "failed"
                log.info("optuna: trial %d %s", trial.number, outcome)
            returns.append(results)
            left -= len(batch)
        self._report_best(study, metric, sweep_dir)
        return returns

    @staticmethod
    def _report_best(study: Any, metric: str, sweep_dir: Path) -> None:
        import optuna

        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not done:
            log.warning("optuna: no trial completed")
            return
        best = study.best_trial
        OmegaConf.save(OmegaConf.create({"name": "optuna", "metric": metric, "best_trial": best.number,
                                         "best_value": best.value, "best_params": best.params}),
                       sweep_dir / "optimization_results.yaml")
        log.info("optuna: best trial %d: %s=%.4f with %s", best.number, metric, best.value,
                 " ".join(f"{k}={v}" for k, v in best.params.items()))
