"""The external run's record in a run folder: which steps a continued run still sends, which sweep it is in."""
from __future__ import annotations

import pytest

from trainkit.errors import ConfigError
from trainkit.loggers.tracking import RunRecord, check_log_model, flat_params, run_name, sweep_of


def test_a_continued_run_sends_only_the_steps_the_external_run_lacks(tmp_path):
    record = RunRecord(str(tmp_path / "x_run.json"), "abc")
    record.sent({"train/loss": 1.0, "epoch": 0}, 14)
    again = RunRecord.load(record.path)  # the next process of the folder (after a kill at step 15)
    assert again.run_id == "abc" and again.last_step == 14
    assert again.new_steps({"train/loss": 1.0, "epoch": 0}, 12) == {}
    assert again.new_steps({"train/loss": 1.0, "val/auc": 0.7, "epoch": 0}, 14) == {"val/auc": 0.7}
    assert again.new_steps({"train/loss": 0.9}, 16) == {"train/loss": 0.9}


def test_sweep_trials_and_folds_know_their_group(tmp_path):
    (tmp_path / "sweep" / "3").mkdir(parents=True)
    (tmp_path / "sweep" / "multirun.yaml").write_text("{}")
    (tmp_path / "cv" / ".hydra").mkdir(parents=True)
    assert sweep_of(str(tmp_path / "sweep" / "3")) == str(tmp_path / "sweep")
    assert run_name(str(tmp_path / "sweep" / "3")) == "sweep/3"
    assert sweep_of(str(tmp_path / "cv" / "fold2")) == str(tmp_path / "cv")
    assert sweep_of(str(tmp_path / "cv")) is None and run_name(str(tmp_path / "cv")) == "cv"


def test_config_as_flat_params_and_log_model_choices():
    assert flat_params({"model": {"hidden_size": 64, "drop": None}, "tags": [1, 2], "empty": {}}) == {
        "model.hidden_size": "64", "model.drop": "null", "tags": "[1, 2]", "empty": "{}"}
    assert check_log_model("all") == "all" and check_log_model(True) is True
    with pytest.raises(ConfigError, match="log_model=1"):
        check_log_model(1)


def test_mlflow_calls_a_run_stopped_by_a_signal_killed_and_a_crash_failed():
    from trainkit.errors import Interrupted
    from trainkit.loggers.mlflow import _status

    assert _status("success") == "FINISHED"
    for exc, expected in ((Interrupted(15, "stopped by SIGTERM"), "KILLED"), (RuntimeError("bug"), "FAILED")):
        try:
            try:
                raise exc
            finally:  # the Trainer finalizes its loggers here, while the exception propagates
                assert _status("failed") == expected
        except type(exc):
            pass
