"""W&B (offline) and MLflow (a real tracking server on loopback) loggers: a run stopped and resumed
is one external run whose steps continue; a sweep's trials are grouped; the config is the params."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.conftest import SMALL_DATA, metric_rows, run_cli
from trainkit.cli import main

# ~23 batches in the epoch; train metrics every 2 steps, a checkpoint every 6: a kill after batch
# 15 leaves step 14 logged after the checkpoint of step 12, so the resumed run logs step 14 again.
SHORT = [*SMALL_DATA, "trainer.max_epochs=1", "trainer.log_every_n_steps=2", "trainer.checkpoint_every_n_steps=6",
         "trainer.limit_val_batches=2"]


def stop_at(batch: int, sig: str) -> list[str]:
    return ["+callbacks.kill._target_=tests.integration.chaos.SignalAt", f"+callbacks.kill.batch={batch}",
            f"+callbacks.kill.signal={sig}"]


def csv_steps(run: Path, key: str) -> list[int]:
    return sorted(step for step, row in metric_rows(run).items() if row.get(key))


def test_mlflow_run_killed_and_resumed_is_one_run_with_continuous_steps(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    run = tmp_path / "run"
    args = [*SHORT, "logger=[csv,mlflow]", f"logger.mlflow.tracking_uri={mlflow_server}",
            "logger.mlflow.experiment_name=killed", "logger.mlflow.log_model=true"]
    killed = run_cli("fit", *args, *stop_at(15, "SIGKILL"), f"hydra.run.dir={run}", env={"OMP_NUM_THREADS": "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert main(["resume", str(run)]) == 0

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("killed")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # the resumed process continued the killed one's run
    mlflow_run = runs[0]
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.params["model.hidden_size"] == "64"  # the resolved config as parameters
    history = client.get_metric_history(mlflow_run.info.run_id, "train/loss")
    steps = [m.step for m in history]
    assert steps == csv_steps(run, "train/loss")  # every step of metrics.csv, once (step 14 not again)
    assert steps == sorted(set(steps)) and 14 in steps and steps[-1] > 15
    losses = {int(step): float(row["train/loss"]) for step, row in metric_rows(run).items() if row.get("train/loss")}
    assert {m.step: m.value for m in history} == pytest.approx(losses, rel=1e-5)
    assert [m.step for m in client.get_metric_history(mlflow_run.info.run_id, "val/auc")] == csv_steps(run, "val/auc")
    artifacts = {a.path for a in client.list_artifacts(mlflow_run.info.run_id)}
    assert {"config.yaml", "checkpoints"} <= artifacts
    kept = {p.name for p in (run / "checkpoints").iterdir() if p.name != "last"}
    assert {Path(a.path).name for a in client.list_artifacts(mlflow_run.info.run_id, "checkpoints")} == kept


def wandb_records(path: Path) -> list:
    """The records of a W&B run file (`run-<id>.wandb`: a LevelDB-style log of 32 KiB blocks, each
    record behind a 7-byte header: checksum, length, kind 1=full 2=first 3=middle 4=last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, block, pending, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (0, 1, 4):
            if kind:
                record = pb.Record()
                record.ParseFromString(pending)
                records.append(record)
            pending = b""
    return records


def finished_records(path: Path, timeout: float = 60) -> list:
    """The records once the run's `exit` record is there: W&B's service process writes the file
    after `finish()` returns, a moment later on a busy machine."""
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def wandb_history(path: Path) -> dict[int, dict[str, str]]:
    out = {}
    for record in finished_records(path):
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
            out.setdefault(record.history.step.num, {}).update({k: v for k, v in items.items() if not k.startswith("_")})
    return out


def test_wandb_offline_run_stopped_and_resumed_continues_the_same_run_id(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    args = [*SHORT, "logger=[csv,wandb]", "logger.wandb.project=trackers", f"hydra.run.dir={run}"]
    assert main(["fit", *args, *stop_at(15, "SIGTERM")]) == 128 + signal.SIGTERM  # saves at step 15, stops
    assert main(["fit", *args]) == 0  # trainer.resume=auto continues it

    run_id = json.loads((run / "wandb_run.json").read_text())["run_id"]
    files = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert [f.name for f in files] == [f"run-{run_id}.wandb"] * 2  # one W&B run, written by two processes
    first, second = wandb_history(files[0]), wandb_history(files[1])
    assert max(first) <= 15 < min(second)  # the second process continues where the first stopped
    steps = sorted(s for s, row in {**first, **second}.items() if "train/loss" in row)
    assert steps == csv_steps(run, "train/loss")
    rows = metric_rows(run)
    assert all(float(second[s]["train/loss"]) == float(rows[s]["train/loss"]) for s in second if "train/loss" in second[s])
    (header,) = [r.run for r in finished_records(files[1]) if r.WhichOneof("record_type") == "run"]
    assert header.run_id == run_id and header.project == "trackers"
    config = {item.key: json.loads(item.value_json) for item in header.config.update}
    assert config["model"]["hidden_size"] == 64  # the resolved config as the run's config


def test_a_sweeps_trials_are_grouped_in_mlflow_and_wandb(mlflow_server, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep = tmp_path / "sweep"
    code = main(["fit", "-m", *SMALL_DATA, "trainer.max_steps=2", "trainer.limit_val_batches=1",
                 "logger=[mlflow,wandb]", f"logger.mlflow.tracking_uri={mlflow_server}",
                 "logger.mlflow.experiment_name=sweep", "optimizer.lr=1e-3,3e-3", f"hydra.sweep.dir={sweep}"])
    assert code == 0
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.run_name == sweep.name and len(runs) == 3
    assert sorted(r.info.run_name for r in trials) == [f"{sweep.name}/0", f"{sweep.name}/1"]
    assert sorted(r.data.params["optimizer.lr"] for r in trials) == ["0.001", "0.003"]
    for trial in ("0", "1"):
        (file,) = (sweep / trial / "wandb").glob("offline-run-*/run-*.wandb")
        (header,) = [r.run for r in finished_records(file) if r.WhichOneof("record_type") == "run"]
        assert header.run_group == sweep.name and header.display_name == f"{sweep.name}/{trial}"


def test_a_missing_extra_is_one_clear_error(monkeypatch, tmp_path, capsys):
    from trainkit.loggers import tracking

    monkeypatch.setattr(tracking, "installed", lambda module: module != "mlflow")
    code = main(["fit", *SMALL_DATA, "logger=mlflow", "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 2
    assert 'pip install "trainkit[mlflow]"' in capsys.readouterr().err
