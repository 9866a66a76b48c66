"""Each run's `results.json`: how the run ended and the numbers a sweep compares.

    {"status": "completed", "command": "fit", "step": 120, "epoch": 4,
     "metrics": {"val/acc": 0.72, "val/auc": 0.75, "val/loss": 0.55},    # the final validation
     "best": {"metric": "val/auc", "mode": "max", "value": 0.76, "step": 96}}

Rank 0 writes it when the command returns: status "completed", or "pruned" when Optuna's pruner
stopped the trial. A run that raised gets {"status": "failed", "exit_code": 1, "error": "..."}
("interrupted" when a signal stopped it), written by the CLI in the process that ran it (also a
joblib worker). The parent of a multi-process run takes the final metrics from it, a Hydra
sweeper the value to optimize (`task_return`), and `trainkit sweep-summary` everything.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

from omegaconf import OmegaConf

from trainkit.engine.callback import Callback
from trainkit.errors import ConfigError

log = logging.getLogger("trainkit")

RESULTS = "results.json"


def sweep_metric(cfg: Any) -> tuple[str | None, str]:
    """(metric, mode) a sweep ranks this run by: `sweep.metric`, else the checkpoint's monitor."""
    sweep = cfg.get("sweep") or {}
    if sweep.get("metric"):
        return str(sweep["metric"]), str(sweep.get("mode") or "max")
    for node in (cfg.get("callbacks") or {}).values():
        if node and str(node.get("_target_", "")).endswith("ModelCheckpoint") and node.get("monitor"):
            return str(node["monitor"]), str(node.get("mode") or "min")
    return None, "max"


def read_results(run_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(run_dir, RESULTS)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_results(run_dir: str, record: dict[str, Any]) -> None:
    """Atomically: a reader (a summary of a running sweep) never sees half a file."""
    path = os.path.join(run_dir, RESULTS)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, allow_nan=True)
    os.replace(tmp, path)


def clear_results(run_dir: str) -> None:
    try:
        os.remove(os.path.join(run_dir, RESULTS))
    except FileNotFoundError:
        pass


def record_failure(run_dir: str | None, exit_code: int, message: str, status: str = "failed") -> None:
    """A run that raised: status "failed", or "interrupted" when a signal stopped it."""
    if run_dir and os.path.isdir(run_dir):
        previous = read_results(run_dir) or {}
        write_results(run_dir, {**previous, "status": status, "exit_code": exit_code, "error": message})


def task_return(cfg: Any, metrics: dict[str, float]) -> Any:
    """What the Hydra task function returns: with `sweep.metric` set, the run's best value of it
    (a float, what Hydra's Optuna sweepers optimize); otherwise the final metrics."""
    metric = (cfg.get("sweep") or {}).get("metric")
    if not metric:
        return metrics
    record = read_results(cfg.run_dir) or {}
    best = record.get("best") or {}
    value = best.get("value") if best.get("metric") == metric else None
    if value is None:
        value = (record.get("metrics") or metrics).get(metric)
    return None if value is None else float(value)


class TrialRecord(Callback):
    """Follows `metric` over the validations of `fit`: its best value and step, for
    results.json. In an Optuna trial (`sweep.optuna_*` set by the sweeper) it also reports each
    value to the study and stops the run when the study's pruner says so."""

    def __init__(self, metric: str | None, mode: str, required: bool = False,
                 optuna: dict[str, Any] | None = None) -> None:
        self.metric, self.mode, self.required = metric, mode, required
        self.best: float | None = None
        self.best_step: int | None = None
        self.pruned_at: int | None = None
        self._optuna = optuna
        self._trial = None

    @classmethod
    def from_config(cls, cfg: Any) -> TrialRecord:
        metric, mode = sweep_metric(cfg)
        s = cfg.sweep
        optuna = None
        if s.optuna_trial is not None:
            pruner = OmegaConf.to_container(s.optuna_pruner) if s.optuna_pruner is not None else None
            optuna = {"storage": s.optuna_storage, "study": s.optuna_study, "trial_id": int(s.optuna_trial),
                      "pruner": pruner}
        return cls(metric, mode, required=bool(s.metric), optuna=optuna)

    def setup(self, trainer, module, stage: str) -> None:
        if self._optuna is not None and self._trial is None and stage == "fit" and trainer.is_global_zero:
            import optuna

            from trainkit.sweeps.optuna_sweeper import open_storage

            from hydra.utils import instantiate

            spec = self._optuna["pruner"]
            pruner = instantiate(spec) if spec else optuna.pruners.NopPruner()
            study = optuna.load_study(study_name=self._optuna["study"], storage=open_storage(self._optuna["storage"]),
                                      pruner=pruner)
            self._trial = optuna.Trial(study, self._optuna["trial_id"])

    def on_validation_end(self, trainer, module) -> None:
        if trainer.state.stage != "fit" or self.metric is None:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            if self.required:
                raise ConfigError(f"sweep.metric={self.metric!r} was not logged; logged: "
                                  f"{', '.join(sorted(trainer.callback_metrics)) or 'nothing'}")
            return
        value, step = float(value), trainer.global_step
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if math.isfinite(value) and better:
            self.best, self.best_step = value, step
        if self._optuna is not None:
            self._report(trainer, value, step)

    def _report(self, trainer, value: float, step: int) -> None:
        prune = False
        if self._trial is not None:  # rank 0
            self._trial.report(value, step)
            prune = self._trial.should_prune()
        if trainer.world_size > 1:  # every rank stops at the same step
            import torch

            prune = bool(trainer.strategy.all_reduce_sum(torch.tensor(float(prune))).item() > 0)
        if prune:
            self.pruned_at = step
            trainer.should_stop = True
            if self._trial is not None:
                self._trial.set_user_attr("pruned_at_step", step)
            log.info("optuna: the pruner stopped this trial at step %d (%s=%.4f)", step, self.metric, value)

    def result(self, command: str, metrics: dict[str, float], trainer: Any) -> dict[str, Any]:
        best = None
        if self.metric is not None and self.best is not None:
            best = {"metric": self.metric, "mode": self.mode, "value": self.best, "step": self.best_step}
        return {
            "status": "pruned" if self.pruned_at is not None else "completed",
            "command": command,
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "metrics": {k: float(v) for k, v in metrics.items()},
            "best": best,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step = state["best"], state["best_step"]
