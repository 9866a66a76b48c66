"""Start-up: Hydra composes in a forked child while the command's own process imports torch, then
trains (trainkit.forked_compose)."""
from __future__ import annotations

import gc
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, SMALL_DATA
from tests.recipe_data import TINY_DATA
from trainkit import Callback
from trainkit.forked_compose import wanted


class RecordProcess(Callback):
    """At the start of training: this process's pid, the owner of the run folder's lock, whether
    this process composed the config (trainkit.compose is imported only where it does), and whether
    torch's objects were frozen out of the garbage collector's walk (trainkit.frozen_imports)."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_start(self, trainer, module) -> None:
        with open(os.path.join(trainer.default_root_dir, "trainkit.lock")) as f:
            lock = json.load(f)
        Path(self.out).write_text(json.dumps({"pid": os.getpid(), "lock_pid": lock["pid"],
                                              "composed_here": "trainkit.compose" in sys.modules,
                                              "frozen": gc.get_freeze_count() > 100_000, "collecting": gc.isenabled()}))


def test_the_command_trains_in_its_own_process_holding_the_lock_a_forked_child_composed_for(tmp_path):
    run, out = tmp_path / "run", tmp_path / "process.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainkit", "fit", *SMALL_DATA, "trainer.max_steps=1", "trainer.limit_val_batches=1",
         "+callbacks.rec._target_=tests.integration.test_forked_compose.RecordProcess", f"+callbacks.rec.out={out}",
         f"hydra.run.dir={run}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    seen = json.loads(out.read_text())
    assert seen == {"pid": proc.pid, "lock_pid": proc.pid, "composed_here": False, "frozen": True, "collecting": True}
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "config.yaml").is_file()
    assert not (run / "trainkit.lock").exists()  # released by the process that held it


class RecordWorker(Callback):
    """At the start of training, in each rank: its pid, its parent's, and one variable of its environment."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_start(self, trainer, module) -> None:
        Path(f"{self.out}.{trainer.global_rank}").write_text(json.dumps(
            {"pid": os.getpid(), "ppid": os.getppid(), "probe": os.environ.get("TK_PROBE")}))


def test_two_workers_fork_from_one_server_and_run_in_the_jobs_environment(tmp_path):
    """`hydra.job.env_set` is set where Hydra ran the job (the composing child); the command that
    launches it and the workers forked from its fork server (trainkit.launch.forkserver) get it too."""
    run, out = tmp_path / "run", tmp_path / "worker"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainkit", "fit", *SMALL_DATA, "trainer.devices=2", "trainer.max_steps=1",
         "trainer.limit_val_batches=1", "+hydra.job.env_set.TK_PROBE=from_env_set",
         "+callbacks.rec._target_=tests.integration.test_forked_compose.RecordWorker", f"+callbacks.rec.out={out}",
         f"hydra.run.dir={run}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    seen = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in (0, 1)]
    assert [w["probe"] for w in seen] == ["from_env_set", "from_env_set"]
    server = {w["ppid"] for w in seen}
    assert len(server) == 1 and proc.pid not in server  # both forked by one process, the command's server
    assert all(w["pid"] != proc.pid for w in seen)


def test_composes_in_place_for_hydra_flags_dry_runs_and_outside_launchers(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # as in a fresh `trainkit` process
    for var in ("RANK", "WORLD_SIZE", "SLURM_STEP_ID", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    assert wanted(["model.hidden_size=8", "~logger"], dry_run=False)
    assert not wanted(["model.hidden_size=8"], dry_run=True)
    for flags in (["--cfg", "job"], ["-m", "optimizer.lr=1e-3,3e-3"], ["--info"]):
        assert not wanted(flags, dry_run=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # a torchrun worker: every rank composes in place
    assert not wanted([], dry_run=False)


def test_a_signal_to_the_command_is_passed_on_to_the_child_that_runs_the_whole_command(tmp_path):
    """A cross-validation runs every fold in the composing child: SIGTERM sent to the command the
    user started reaches it, the fold stops with a checkpoint, and the command exits 128 + 15."""
    data = TINY_DATA["uci_dropout"](tmp_path / "data")
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainkit", "fit", "experiment=dropout_uci", *data, "datamodule.folds=3",
         "trainer.max_epochs=50", "+callbacks.pace._target_=tests.integration.chaos.Pace", f"hydra.run.dir={run}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pace, deadline = run / "fold0" / "pace.step", time.monotonic() + 120
    while not (pace.exists() and int(pace.read_text() or 0) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert re.search(r"stopped by SIGTERM at step \d+; checkpoint saved: ", stderr), stderr
    assert not (run / "fold1").exists()
