"""Sweeps and tuning through the real `trainkit` command: grids, several-process trials, an Optuna
search with and without pruning, failing trials, parallel trials (joblib), the summary table
rebuilt from files, and `trainkit tune`."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT, SMALL_DATA, run_cli

SHORT = [*SMALL_DATA, "debug=fast_dev_run", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]


def summary(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "sweep_summary.csv") as f:
        return list(csv.DictReader(f))


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def hparams_session(run: Path) -> dict:
    """The HParams plugin's session record in a run directory's own event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(run), size_guidance={"tensors": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    return {"hparams": {k: v.number_value if v.HasField("number_value") else v.string_value
                        for k, v in start.hparams.items()},
            "metrics": {m.name.tag for m in experiment.metric_infos}}


def test_grid_sweep_runs_every_trial_and_summarizes_them(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("fit", "-m", "model.hidden_size=16,32", "optimizer.lr=0.001,0.003", *SHORT,
                     f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    trials = [sweep / str(n) for n in range(4)]
    for trial in trials:
        assert (trial / "config.yaml").exists() and (trial / "metrics.csv").exists()
        assert results(trial)["status"] == "completed"
    rows = summary(sweep)
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3"]
    assert rows[3]["overrides"].startswith("model.hidden_size=32 optimizer.lr=0.003")
    for row, trial in zip(rows, trials):
        record = results(trial)
        assert row["status"] == "completed" and row["metric"] == "val/auc" and row["mode"] == "max"
        assert float(row["best"]) == record["best"]["value"] == record["metrics"]["val/auc"]  # one validation
        assert row["run_dir"] == str(trial)
    assert "best val/auc (max)" in result.stdout and "summary: " in result.stdout
    # TensorBoard's HParams view: each trial's own event files hold its settings and final metrics.
    session = hparams_session(trials[2])
    assert session["hparams"]["model.hidden_size"] == 32 and session["hparams"]["optimizer.lr"] == pytest.approx(0.001)
    assert {"val/auc", "val/loss", "train/loss"} <= session["metrics"]

    # The table again, from the files alone.
    original = (sweep / "sweep_summary.csv").read_text()
    (sweep / "sweep_summary.csv").unlink()
    rebuilt = run_cli("sweep-summary", str(sweep))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (sweep / "sweep_summary.csv").read_text() == original
    assert "best val/auc (max)" in rebuilt.stdout
    # A trial still running (or killed) has no results.json yet: its best so far from metrics.csv.
    (trials[1] / "results.json").unlink()
    assert run_cli("sweep-summary", str(sweep)).returncode == 0
    row = summary(sweep)[1]
    assert row["status"] == "unfinished" and float(row["best"]) == float(rows[1]["best"]) and row["step"] == "2"


def test_a_sweep_of_several_process_trials_makes_one_directory_per_trial(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("fit", "-m", "trainer.devices=2", "optimizer.lr=0.001,0.003", *SHORT, f"hydra.sweep.dir={sweep}",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]  # no outputs/ or multirun/ of a worker
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml", "sweep_summary.csv"]
    for trial in ("0", "1"):
        record = results(sweep / trial)  # rank 0's final metrics reached the parent
        assert record["status"] == "completed" and 0.0 < record["metrics"]["val/auc"] < 1.0
    assert [r["status"] for r in summary(sweep)] == ["completed", "completed"]


def test_optuna_search_optimizes_the_best_val_auc_of_each_trial(tmp_path):
    optuna = pytest.importorskip("optuna")
    from trainkit.sweeps.optuna_sweeper import open_storage

    sweep = tmp_path / "search"
    result = run_cli("fit", "hparams_search=kt_dkt", "hydra.sweeper.n_trials=3", *SHORT, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    rows = summary(sweep)
    assert [r["status"] for r in rows] == ["completed"] * 3
    study = optuna.load_study(study_name="search", storage=open_storage(str(sweep / "optuna.journal")))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for trial, row in zip(study.trials, rows):
        assert trial.value == float(row["best"])  # the value Optuna got is the trial's best val/auc
        assert all(f"{name}={value}" in row["overrides"] for name, value in trial.params.items())
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == study.best_value and best.best_trial == study.best_trial.number
    assert "optuna: best trial" in result.stdout


def test_optuna_pruner_stops_trials_early(tmp_path):
    optuna = pytest.importorskip("optuna")
    from trainkit.sweeps.optuna_sweeper import open_storage

    sweep = tmp_path / "search"
    # A pruner no trial can satisfy: each stops at its first validation instead of running 3 epochs.
    result = run_cli("fit", "hparams_search=kt_dkt", "hydra.sweeper.n_trials=2", *SHORT, "trainer.max_epochs=3",
                     "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
                     "~hydra.sweeper.pruner.n_startup_trials", "+hydra.sweeper.pruner.lower=0.99",
                     f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="search", storage=open_storage(str(sweep / "optuna.journal")))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2
    for trial, row in zip(study.trials, summary(sweep)):
        assert row["status"] == "pruned" and trial.intermediate_values == {2: float(row["best"])}
        steps = [int(r["step"]) for r in csv.DictReader(open(sweep / row["trial"] / "metrics.csv"))]
        assert max(steps) == 2  # 1 epoch of 2 steps, not 3


def test_a_failing_trial_does_not_stop_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("fit", "-m", "optimizer.lr=0.001,-1,0.003", *SHORT, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 1
    assert "1 of 3 trials failed" in result.stderr
    assert "training failed: ValueError: Invalid learning rate: -1" in result.stderr
    rows = summary(sweep)
    assert [r["status"] for r in rows] == ["completed", "failed", "completed"]
    assert "Invalid learning rate: -1" in rows[1]["error"] and rows[1]["best"] == ""
    assert "Traceback" in (sweep / "1" / "trainkit.log").read_text()
    assert results(sweep / "1")["exit_code"] == 1


def test_parallel_trials_with_the_joblib_launcher_report_failures(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    result = run_cli("fit", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optimizer.lr=0.001,-1",
                     *SHORT, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 1 and "1 of 2 trials failed" in result.stderr
    rows = summary(sweep)  # the failure was recorded in the worker process that ran the trial
    assert [r["status"] for r in rows] == ["completed", "failed"] and "Invalid learning rate" in rows[1]["error"]


def test_sweep_summary_of_a_folder_without_trials_exits_2(tmp_path):
    result = run_cli("sweep-summary", str(tmp_path))
    assert result.returncode == 2 and "is not a sweep directory" in result.stderr


def test_tune_finds_a_learning_rate_and_a_batch_size(tmp_path):
    run = tmp_path / "tune"
    result = run_cli("tune", "lr=true", "batch_size=true", "num_training=12", "max_batch_size=32",
                     "steps_per_trial=2", *SMALL_DATA, f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "suggested learning rate:" in out and "batch-size finder:" in out
    record = results(run)
    lr, batch = record["metrics"]["tuner/lr"], int(record["metrics"]["tuner/batch_size"])
    assert f"use: trainkit fit datamodule.batch_size={batch} optimizer.lr={lr:.3g}" in out
    assert 1e-6 <= lr <= 1.0 and 16 <= batch <= 32
    assert len(list(csv.DictReader(open(run / "lr_find.csv")))) <= 12
    assert [int(r["batch_size"]) for r in csv.DictReader(open(run / "batch_size_find.csv"))][0] == 16


def test_tune_needs_something_to_tune_and_one_process(tmp_path):
    result = run_cli("tune", *SMALL_DATA, f"hydra.run.dir={tmp_path / 'a'}")
    assert result.returncode == 2 and "lr=true" in result.stderr
    result = run_cli("tune", "lr=true", "trainer.devices=2", *SMALL_DATA, f"hydra.run.dir={tmp_path / 'b'}")
    assert result.returncode == 2 and "one process" in result.stderr


def test_help_lists_tune_and_sweep_summary():
    out = run_cli("--help").stdout
    assert "tune " in out and "sweep-summary" in out and "hparams_search" in out
    head = (ROOT / "configs" / "hparams_search" / "kt_dkt.yaml").read_text().splitlines()[:2]
    assert head == ["# @package _global_", head[1]] and head[1].startswith("# trainkit fit hparams_search=kt_dkt")
