"""Weights & Biases: `trainkit fit logger=wandb logger.wandb.project=myproj` (pip install "trainkit[wandb]").

One W&B run per run folder, continued by every later process of that folder (the run id is in
`<run_dir>/wandb_run.json`, trainkit.loggers.tracking; W&B's own files go to `<run_dir>/wandb/`).
The resolved config is the run's config, metrics go at the steps of metrics.csv, checkpoints
become `model` artifacts with `log_model=true|all`, and the trials of a sweep share a W&B group
named after the sweep folder. `offline=true` (or WANDB_MODE=offline) writes the run to disk for
`wandb sync <run_dir>/wandb/offline-run-*` later; each process of the folder writes one such
folder, all with the same run id.
"""
from __future__ import annotations

import logging
import os
import secrets
from typing import Any

from trainkit.loggers.tracking import RunRecord, check_log_model, require, run_name, sweep_of, to_upload

log = logging.getLogger("trainkit")
RECORD = "wandb_run.json"


class WandbLogger:
    def __init__(
        self,
        project: str | None = None,
        name: str | None = None,
        save_dir: str = ".",
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        offline: bool = False,
        log_model: bool | str = False,
        id: str | None = None,  # noqa: A002 - Lightning's and W&B's name
        **init_kwargs: Any,  # anything else wandb.init takes (notes, job_type, settings, ...)
    ) -> None:
        require("wandb", "wandb")
        self.project = project
        self._name = name
        self.save_dir = save_dir
        self.entity = entity
        self.group = group
        self.tags = list(tags or [])
        self.offline = offline
        self.log_model = check_log_model(log_model)
        self._id = id
        self._init_kwargs = init_kwargs
        self._continue = True
        self._run = None
        self._record: RunRecord | None = None
        self._config: dict[str, Any] = {}

    # -- Lightning's names -------------------------------------------------------------------------
    @property
    def experiment(self) -> Any:
        """The wandb Run (Lightning's `logger.experiment`)."""
        self._open()
        return self._run

    @property
    def name(self) -> str | None:
        return self.project

    @property
    def version(self) -> str:
        self._open()
        return self._run.id

    def start_new_run(self) -> None:
        """The folder starts over (trainer.resume=none): a new W&B run, not the recorded one."""
        self._continue = False

    # -- the logger protocol (trainkit/loggers/__init__.py) ---------------------------------------------
    def log_hyperparams(self, params: dict[str, Any]) -> None:
        self._config.update(params)
        if self._run is not None:
            self._run.config.update(params, allow_val_change=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._open()
        new = self._record.new_steps(metrics, step)
        if new:
            self._run.log({k: float(v) for k, v in new.items()}, step=step)
            self._record.sent(new, step)

    def flush(self) -> None:
        if self._run is not None and self.log_model == "all":
            self._upload_checkpoints()  # the ones written since the last flush (one is about to be saved)

    def finalize(self, status: str) -> None:
        if self._run is None:
            if status != "success" or not self._config:
                return
            self._open()
        if self.log_model:
            self._upload_checkpoints()
        self._run.finish(exit_code=0 if status == "success" else 1)
        self._run = self._record = None  # a later fit() in this process continues the same run

    # -- the W&B run -------------------------------------------------------------------------------
    def _open(self) -> None:
        if self._run is not None:
            return
        import wandb

        record = RunRecord.load(os.path.join(self.save_dir, RECORD))
        where = {"project": self.project, "entity": self.entity}
        if self._id is not None:
            record.run_id, record.where = self._id, where
        if not (record.run_id and self._continue and record.where == where):
            record = RunRecord(record.path, secrets.token_hex(4), where)
        sweep = sweep_of(self.save_dir)
        os.makedirs(self.save_dir, exist_ok=True)
        self._run = wandb.init(
            project=self.project, entity=self.entity, name=self._name or run_name(self.save_dir),
            group=self.group or (os.path.basename(sweep) if sweep else None), tags=self.tags or None,
            dir=self.save_dir, id=record.run_id, resume="allow", config=self._config or None,
            mode="offline" if self.offline else None, reinit="create_new", **self._init_kwargs)
        record.save()
        self._record = record
        log.info("W&B: run %s%s", record.run_id, " (offline: wandb sync <run_dir>/wandb/offline-run-*)"
                 if self._run.settings._offline else f" {self._run.url or ''}")

    def _upload_checkpoints(self) -> None:
        import wandb

        for path in to_upload(self._record, self.save_dir):
            name = os.path.basename(path)
            artifact = wandb.Artifact(f"model-{self._run.id}", type="model", metadata={"checkpoint": name})
            artifact.add_dir(path)
            self._run.log_artifact(artifact, aliases=["latest", name.replace("=", "-")])
            self._record.uploaded.append(name)
            self._record.save()
