"""The real `trainkit` command: what a user types, in a fresh process, checked from outside."""
from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, SMALL_DATA, run_cli


def test_help_and_cfg_job_do_not_import_torch():
    code = (
        "import sys, contextlib, io\n"
        "from trainkit.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    assert main(['--help']) == 0\n"
        "    try:\n"
        "        main(['fit', '--cfg', 'job'])\n"
        "    except SystemExit as e:\n"
        "        assert not e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "text = out.getvalue()\n"
        "assert 'precision' in text and 'bf16-mixed' in text and 'hidden_size: 64' in text\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_fit_then_test_and_predict_from_its_checkpoint(tmp_path):
    run = tmp_path / "run"
    result = run_cli("fit", *SMALL_DATA, "trainer.max_epochs=2", "trainer.log_every_n_steps=5", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count(f"run directory: {run}") == 2  # printed at start and end
    assert "final validation:" in out and "val/auc=" in out and "val/acc=" in out and "val/loss=" in out
    assert "epoch 1/2 done" in out  # no TTY: plain progress lines

    assert "${" not in (run / "config.yaml").read_text()  # fully resolved
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert list(rows[0])[:2] == ["step", "epoch"]
    assert {"train/loss", "val/loss", "val/auc", "val/acc", "lr-AdamW"} <= set(rows[0])
    assert list(run.glob("events.out.tfevents.*"))
    assert "final validation" in (run / "trainkit.log").read_text()
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last" in ckpts and any("step=" in n for n in ckpts)
    state = torch.load(run / "checkpoints" / "last" / "trainer.pt", weights_only=True)
    assert state["progress"]["global_step"] > 0

    last = run / "checkpoints" / "last"
    result = run_cli("test", *SMALL_DATA, f"trainer.resume={last}", f"hydra.run.dir={tmp_path / 'test'}")
    assert result.returncode == 0, result.stderr
    assert "test/auc=" in result.stdout and f"loaded weights from {last.resolve()}" in result.stdout

    named = last.resolve()  # a checkpoint named epoch=<E>-step=<N>-...: the `=` needs no quoting
    result = run_cli("predict", *SMALL_DATA, f"trainer.resume={named}", f"hydra.run.dir={tmp_path / 'predict'}")
    assert result.returncode == 0, result.stderr
    predictions = torch.load(tmp_path / "predict" / "predictions.pt", weights_only=True)
    assert predictions and predictions[0]["prob"].shape == predictions[0]["mask"].shape

    result = run_cli("export", str(last), str(tmp_path / "weights.pt"))
    assert result.returncode == 0, result.stderr
    weights = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert {"embed.weight", "lstm.weight_ih_l0", "head.weight"} <= set(weights)


BAD_INPUT = [
    (["model=nope"], "model=nope is not an option", "knowledge_tracing"),
    (["trainer.max_epochs=abc"], "trainer.max_epochs", "Integer"),
    (["trainer.fo=1"], "trainer.fo is not a config key", "--cfg job"),
    (["model.hidden_size=abc"], "model.hidden_size", "expected int"),
    (["+model.hidden_sze=8"], "did you mean model.hidden_size", ""),
    (["datamodule.path=/no/such/folder"], "/no/such/folder", "kt_lines"),
    (["trainer.limit_train_batches=2.5"], "trainer.limit_train_batches", "int"),
    (["precision=fp8"], "precision=fp8 is not an option", "bf16-mixed"),
]


@pytest.mark.parametrize("overrides,must_say,fix", BAD_INPUT, ids=[b[0][0] for b in BAD_INPUT])
def test_bad_input_exits_2_with_one_short_message(overrides, must_say, fix, tmp_path):
    result = run_cli("fit", *overrides, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert must_say in result.stderr and fix in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) <= 2


def test_missing_checkpoint_exits_2(tmp_path):
    result = run_cli("test", *SMALL_DATA, "trainer.resume=/no/such/last", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "trainer.resume=/no/such/last: /no/such/last does not exist" in result.stderr


def test_export_of_a_damaged_checkpoint_exits_2(tmp_path):
    bad = tmp_path / "step=3"
    bad.mkdir()
    result = run_cli("export", str(bad), str(tmp_path / "w.pt"))
    assert result.returncode == 2 and "has no MANIFEST.json" in result.stderr


def test_a_crash_in_training_exits_1_and_says_where(tmp_path):
    run = tmp_path / "run"
    result = run_cli("fit", *SMALL_DATA, "optimizer.lr=-1", f"hydra.run.dir={run}")
    assert result.returncode == 1
    assert "training failed: ValueError: Invalid learning rate" in result.stderr
    assert "(at trainkit/" in result.stderr and "Traceback" not in result.stderr
    assert "Traceback" in (run / "trainkit.log").read_text()  # the whole story stays in the run dir


def test_unknown_command_exits_2():
    result = run_cli("train")
    assert result.returncode == 2 and "choose one of: fit, validate, test, predict, tune, export" in result.stderr


def test_two_runs_in_the_same_second_get_different_directories():
    dirs = [run_cli("fit", "--cfg", "hydra", "--resolve", "-p", "hydra.run.dir").stdout.strip() for _ in range(2)]
    assert dirs[0] != dirs[1] and all(d.startswith("outputs/knowledge_tracing/") for d in dirs)


def test_multirun_makes_one_run_directory_per_trial(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("fit", "-m", "optimizer.lr=0.001,0.003", *SMALL_DATA, "debug=fast_dev_run",
                     f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    for trial in ("0", "1"):
        assert (sweep / trial / "config.yaml").exists() and (sweep / trial / "metrics.csv").exists()
    assert "lr: 0.003" in (sweep / "1" / "config.yaml").read_text()


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    run = tmp_path / "run"
    result = run_cli("fit", "trainer.devices=2", "--dry-run", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr
    assert "would run 2 process(es) on this machine, as worker processes of torch's elastic agent" in result.stdout
    assert "devices: 2" in result.stdout and not run.exists()
