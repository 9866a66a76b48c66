"""MLflow: `trainkit fit logger=mlflow logger.mlflow.tracking_uri=http://host:5000` (pip install "trainkit[mlflow]").

One MLflow run per run folder, continued by every later process of that folder (the run id is in
`<run_dir>/mlflow_run.json`, trainkit.loggers.tracking). The resolved config goes in as the run's
parameters (flat keys, `model.hidden_size`) and as the artifact `config.yaml`; metrics at the
steps of metrics.csv; checkpoints as artifacts with `log_model=true|all`. The trials of a sweep
are nested under one parent run named after the sweep folder (its id in `<sweep_dir>/mlflow_run.json`).

MLflow keeps the first value of a parameter: a resumed run that changes one (`trainer.max_steps`)
says so in its log, and the run's `config.yaml` artifact is the newest config.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import Any

from trainkit.loggers.tracking import (
    RunRecord,
    check_log_model,
    flat_params,
    require,
    run_name,
    sweep_of,
    to_upload,
)

log = logging.getLogger("trainkit")
RECORD = "mlflow_run.json"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter's value


class MLFlowLogger:
    def __init__(
        self,
        experiment_name: str = "trainkit",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, Any] | None = None,
        save_dir: str = ".",
        log_model: bool | str = False,
        run_id: str | None = None,
    ) -> None:
        require("mlflow", "mlflow")
        self.experiment_name = experiment_name
        self._run_name = run_name
        self.tracking_uri = tracking_uri
        self.tags = dict(tags or {})
        self.save_dir = save_dir
        self.log_model = check_log_model(log_model)
        self._run_id = run_id  # an existing MLflow run to log to (Lightning's argument)
        self._continue = True
        self._client = None
        self._record: RunRecord | None = None
        self._params: dict[str, str] = {}

    # -- Lightning's names -------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        self._open()
        return self._record.run_id

    @property
    def experiment(self) -> Any:
        """The MlflowClient (Lightning's `logger.experiment`)."""
        self._open()
        return self._client

    @property
    def name(self) -> str:
        return self.experiment_name

    @property
    def version(self) -> str:
        return self.run_id

    def start_new_run(self) -> None:
        """The folder starts over (trainer.resume=none): a new MLflow run, not the recorded one."""
        self._continue = False

    # -- the logger protocol (trainkit/loggers/__init__.py) ---------------------------------------------
    def log_hyperparams(self, params: dict[str, Any]) -> None:
        self._params.update(flat_params(params))
        if self._client is not None:
            self._send_params()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        self._open()
        new = self._record.new_steps(metrics, step)
        if not new:
            return
        now = int(time.time() * 1000)
        self._client.log_batch(self._record.run_id, metrics=[Metric(_key(k), float(v), now, step) for k, v in new.items()])
        self._record.sent(new, step)

    def flush(self) -> None:
        if self._client is not None and self.log_model == "all":
            self._upload_checkpoints()  # the ones written since the last flush (one is about to be saved)

    def finalize(self, status: str) -> None:
        if self._client is None:
            if status != "success" or not self._params:
                return
            self._open()  # a run that logged no metric still gets its parameters
        if self.log_model:
            self._upload_checkpoints()
        self._client.set_terminated(self._record.run_id, _status(status))
        parent = self._record.where.get("parent_run_id")
        if parent:  # the sweep's parent shows the time of its last trial
            self._client.set_terminated(parent, "FINISHED")
        self._client = self._record = None  # a later fit() in this process continues the same run

    # -- the MLflow run ----------------------------------------------------------------------------
    def _open(self) -> None:
        if self._client is not None:
            return
        import mlflow
        from mlflow import MlflowClient

        uri = self.tracking_uri or mlflow.get_tracking_uri()
        self._client = MlflowClient(uri)
        record = RunRecord.load(os.path.join(self.save_dir, RECORD))
        if self._run_id is not None:
            record.run_id, record.where = self._run_id, {"tracking_uri": uri}
        if record.run_id and self._continue and record.where.get("tracking_uri") == uri:
            self._client.update_run(record.run_id, status="RUNNING")
            log.info("MLflow: continuing run %s (%s)", record.run_id, uri)
        else:
            if record.run_id and self._continue:
                log.info("MLflow: a new run: the recorded run %s is at %s, not %s", record.run_id,
                         record.where.get("tracking_uri"), uri)
            record = RunRecord(record.path)
            experiment_id = self._experiment_id()
            tags = {"trainkit.run_dir": os.path.abspath(self.save_dir), **{k: str(v) for k, v in self.tags.items()}}
            parent = self._sweep_parent(experiment_id)
            if parent:
                tags["mlflow.parentRunId"] = parent
            run = self._client.create_run(experiment_id, run_name=self._run_name or run_name(self.save_dir), tags=tags)
            record.run_id = run.info.run_id
            record.where = {"tracking_uri": uri, "experiment_id": experiment_id, "parent_run_id": parent}
            record.save()
            log.info("MLflow: run %s in experiment %r (%s)", record.run_id, self.experiment_name, uri)
        self._record = record
        self._send_params()
        config = os.path.join(self.save_dir, "config.yaml")
        if os.path.isfile(config):
            self._client.log_artifact(record.run_id, config)

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self._client.get_experiment_by_name(self.experiment_name)
        if found is not None:
            return found.experiment_id
        try:
            return self._client.create_experiment(self.experiment_name)
        except MlflowException:  # a parallel trial created it first
            return self._client.get_experiment_by_name(self.experiment_name).experiment_id

    def _sweep_parent(self, experiment_id: str) -> str | None:
        """The parent run of this run's sweep, made by the first trial to get there (under a lock:
        trials may start at the same moment)."""
        sweep = sweep_of(self.save_dir)
        if sweep is None:
            return None
        import fcntl

        with open(os.path.join(sweep, ".mlflow_run.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            record = RunRecord.load(os.path.join(sweep, RECORD))
            if record.run_id and record.where.get("tracking_uri") == self._client.tracking_uri:
                self._client.update_run(record.run_id, status="RUNNING")
                return record.run_id
            run = self._client.create_run(experiment_id, run_name=os.path.basename(sweep),
                                          tags={"trainkit.sweep_dir": sweep})
            record = RunRecord(record.path, run.info.run_id, {"tracking_uri": self._client.tracking_uri})
            record.save()
            return record.run_id

    def _send_params(self) -> None:
        """Parameters not yet in the run; MLflow refuses to change one, so a changed value is said, not sent."""
        from mlflow.entities import Param

        if not self._params:
            return
        have = self._client.get_run(self._record.run_id).data.params
        new, changed = [], []
        for key, value in self._params.items():
            key, value = _key(key), value[:MAX_PARAM_LENGTH]
            if key not in have:
                new.append(Param(key, value))
            elif have[key] != value:
                changed.append(f"{key}={value} (MLflow keeps {have[key]})")
        if new:
            self._client.log_batch(self._record.run_id, params=new)
        if changed:
            log.info("MLflow: parameters changed since the run began: %s; config.yaml among its artifacts is the "
                     "current config", ", ".join(changed))
        self._params = {}

    def _upload_checkpoints(self) -> None:
        for path in to_upload(self._record, self.save_dir):
            name = os.path.basename(path)
            self._client.log_artifacts(self._record.run_id, path, artifact_path=f"checkpoints/{name}")
            self._record.uploaded.append(name)
            self._record.save()


def _status(status: str) -> str:
    """MLflow's word for how the command ended: a run stopped by a signal (saved, to be resumed) is KILLED."""
    from trainkit.errors import Interrupted

    if status == "success":
        return "FINISHED"
    return "KILLED" if isinstance(sys.exc_info()[1], Interrupted) else "FAILED"  # finalize runs while it propagates


def _key(name: str) -> str:
    """A metric or parameter name MLflow takes: only letters, digits, `_ - . / : space`."""
    key = re.sub(r"[^/\w.\- :]", "_", name).strip("/")
    return key.replace("//", "/")[:250] or "_"

