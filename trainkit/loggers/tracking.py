"""What the W&B and MLflow loggers share: the external run's record in the run folder, the steps
it already holds, the sweep it belongs to, the config as flat parameters, the checkpoints to upload.

`<run_dir>/<tracker>_run.json` names the external run this folder logs to (and the last step sent
there). Whatever process writes to the folder next — `trainer.resume=auto`, `trainkit resume`, a
restart of the elastic agent, a SLURM requeue — opens the same external run, and does not send again
the steps it already holds: a resumed run repeats the steps after its checkpoint, identically when
the resume is exact, so the external history stays one continuous line without doubled points.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from trainkit.errors import ConfigError

# The loggers whose package is an optional extra of the same name (checked before a run is launched).
EXTRAS = {"trainkit.loggers.MLFlowLogger": "mlflow", "trainkit.loggers.mlflow.MLFlowLogger": "mlflow",
          "trainkit.loggers.WandbLogger": "wandb", "trainkit.loggers.wandb.WandbLogger": "wandb"}
LOG_MODEL = (False, True, "all")  # no checkpoints; the kept ones at the end; each one when it is written


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None  # without importing it


def require(module: str, extra: str) -> None:
    """A clear error when the optional package of a logger is missing, before any work starts."""
    if not installed(module):
        raise ConfigError(f'logger={extra} needs the {module} package, which is not installed: '
                          f'pip install "trainkit[{extra}]"')


def check_log_model(value: Any) -> bool | str:
    if value not in LOG_MODEL or isinstance(value, int) and not isinstance(value, bool):
        raise ConfigError(f"log_model={value!r}: choose false, true (the kept checkpoints at the end) or 'all' "
                          "(each checkpoint when it is written)")
    return value


@dataclass
class RunRecord:
    """`<run_dir>/<tracker>_run.json`: which external run this folder logs to, and how far it got."""
    path: str
    run_id: str | None = None
    where: dict[str, Any] = field(default_factory=dict)  # tracking URI and experiment, or W&B project
    last_step: int = -1
    keys_at_last_step: list[str] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)  # checkpoint folders sent as artifacts

    @classmethod
    def load(cls, path: str) -> RunRecord:
        try:
            with open(path) as f:
                saved = json.load(f)
        except FileNotFoundError:
            return cls(path)
        except ValueError:  # a torn write cannot happen (atomic), but an edited file can
            raise ConfigError(f"{path} is not valid JSON; remove it to log to a new external run") from None
        return cls(path, saved.get("run_id"), saved.get("where") or {}, saved.get("last_step", -1),
                   saved.get("keys_at_last_step") or [], saved.get("uploaded") or [])

    def save(self) -> None:
        state = {k: v for k, v in asdict(self).items() if k != "path"}
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, self.path)

    def new_steps(self, metrics: dict[str, float], step: int) -> dict[str, float]:
        """The part of `metrics` the external run does not hold yet (a resumed run logs the steps
        after its checkpoint again)."""
        if step < self.last_step:
            return {}
        if step == self.last_step:
            return {k: v for k, v in metrics.items() if k not in self.keys_at_last_step}
        return dict(metrics)

    def sent(self, metrics: dict[str, float], step: int) -> None:
        if step > self.last_step:
            self.last_step, self.keys_at_last_step = step, sorted(metrics)
        else:
            self.keys_at_last_step = sorted({*self.keys_at_last_step, *metrics})
        self.save()


def sweep_of(run_dir: str) -> str | None:
    """The sweep folder a run belongs to: a multirun's (Hydra's multirun.yaml, trainkit's table)
    or a cross-validation's (`<run>/fold<k>`); None for a run of its own."""
    parent = os.path.dirname(os.path.abspath(run_dir))
    if any(os.path.isfile(os.path.join(parent, name)) for name in ("multirun.yaml", "sweep_summary.csv")):
        return parent
    if re.fullmatch(r"fold\d+", os.path.basename(os.path.abspath(run_dir))) and os.path.isdir(
            os.path.join(parent, ".hydra")):
        return parent
    return None


def run_name(run_dir: str) -> str:
    """`<date>_<time>_<id>`, or `<sweep>/<trial>` for a trial of a sweep."""
    run_dir = os.path.abspath(run_dir)
    sweep = sweep_of(run_dir)
    if sweep is None:
        return os.path.basename(run_dir)
    return f"{os.path.basename(sweep)}/{os.path.relpath(run_dir, sweep)}"


def flat_params(params: dict[str, Any]) -> dict[str, str]:
    """`{"model": {"hidden_size": 64}}` -> `{"model.hidden_size": "64"}`: the settings of a run as
    the flat key/value strings trackers show in their tables."""
    flat: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            flat[prefix] = "null" if node is None else str(node)

    walk("", params)
    return flat


def kept_checkpoints(save_dir: str) -> list[str]:
    """The complete checkpoint folders in `<save_dir>/checkpoints`, oldest step first."""
    directory = os.path.join(save_dir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    found = [os.path.join(directory, n) for n in os.listdir(directory)
             if not n.startswith(".") and n != "last" and os.path.isfile(os.path.join(directory, n, "MANIFEST.json"))]
    return sorted(found, key=lambda p: int(m[1]) if (m := re.search(r"step=(\d+)", p)) else -1)


def to_upload(record: RunRecord, save_dir: str) -> list[str]:
    """Checkpoint folders not yet sent as artifacts (the record remembers those that were)."""
    return [p for p in kept_checkpoints(save_dir) if os.path.basename(p) not in record.uploaded]
