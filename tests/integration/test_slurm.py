"""`launcher=slurm` and `srun trainkit fit` on a real SLURM cluster (scripts/slurm-local-cluster.sh:
slurmctld, two slurmd nodes n1 and n2 on localhost, slurmdbd for sacct). `.ci/run` starts it; when
it is not running these tests try to start it (as root), and skip, loudly, only when that fails.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import warnings

import pytest

from tests.conftest import ROOT, SMALL_DATA, metric_rows, train_losses
from tests.conftest import run_cli as _run_cli

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # steady sums, and the jobs share two cores
BASE = [*SMALL_DATA, "trainer.max_epochs=1", "trainer.limit_train_batches=8", "trainer.log_every_n_steps=1",
        "model.dropout=0.0"]  # no dropout: its masks come from each process's own RNG
PACE = ["+callbacks.pace._target_=tests.integration.chaos.Pace", "+callbacks.pace.seconds=0.4"]


def run_cli(*args: str, timeout: float = 300, env: dict | None = None):
    return _run_cli(*args, timeout=timeout, env={**ONE_THREAD, **(env or {})})


def _cluster_ready() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=30).stdout
    states = dict(line.split() for line in out.splitlines() if line.strip())
    return {"n1", "n2"} <= states.keys() and all(s in ("idle", "mixed", "allocated") for s in states.values())


@pytest.fixture(scope="module")
def slurm_cluster():
    if not _cluster_ready():
        reason = "the local SLURM cluster is not running"
        if os.geteuid() == 0:
            start = subprocess.run(["bash", str(ROOT / "scripts" / "slurm-local-cluster.sh")], capture_output=True,
                                   text=True, timeout=600)
            reason = f"scripts/slurm-local-cluster.sh failed: {(start.stdout + start.stderr)[-500:]}"
        else:
            reason += " and starting it needs root (sudo bash scripts/slurm-local-cluster.sh)"
        if not _cluster_ready():
            message = f"SLURM TESTS SKIPPED: {reason}"
            warnings.warn(message)
            print(f"\n*** {message} ***\n", file=sys.stderr)
            pytest.skip(message)
    yield


pytestmark = [pytest.mark.slurm]


def _no_jobs_left():
    out = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "trainkit" in line]


@pytest.fixture(scope="module")
def local_two_processes(tmp_path_factory):
    """The reference: the same run with the local launcher, two processes of 16 (global batch 32)."""
    run = tmp_path_factory.mktemp("local") / "run"
    result = run_cli("fit", *BASE, "trainer.devices=2", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr
    return train_losses(run)


@pytest.mark.parametrize("nodes,tasks", [(2, 1), (1, 2)])
def test_a_slurm_job_trains_like_the_local_launcher(slurm_cluster, local_two_processes, tmp_path, nodes, tasks):
    run = tmp_path / "run"
    result = run_cli("fit", *BASE, "launcher=slurm", f"trainer.num_nodes={nodes}", f"trainer.devices={tasks}",
                     f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "submitted SLURM job" in result.stdout
    # sacct lags: a short job can pass RUNNING between two polls, and may still read RUNNING at the end
    assert re.search(r"SLURM job \d+: (RUNNING|COMPLETING|COMPLETED)", result.stdout), result.stdout
    assert "final validation" in result.stdout  # rank 0's log lines were streamed
    assert train_losses(run) == local_two_processes  # the same global batches, the same sums: bit for bit
    assert (run / "slurm").is_dir() and (run / "config.yaml").exists()


def test_preemption_requeues_resumes_and_continues_exactly(slurm_cluster, tmp_path):
    common = [*BASE, "trainer.limit_train_batches=20"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert run_cli("fit", *common, f"hydra.run.dir={reference}").returncode == 0
    follower = subprocess.Popen(
        [sys.executable, "-m", "trainkit", "fit", *common, *PACE, "launcher=slurm", "launcher.partition=debug",
         f"hydra.run.dir={run}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **ONE_THREAD, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 180
        while not (run / "pace.step").exists() or int((run / "pace.step").read_text() or 0) < 6:
            assert time.monotonic() < deadline and follower.poll() is None, "the job did not start training"
            time.sleep(0.5)
        # A job in the higher-priority partition needs every CPU of both nodes: ours is preempted.
        subprocess.run(["sbatch", "-p", "urgent", "-N2", "--ntasks-per-node=2", "-o", os.devnull, "-J", "urgent",
                        "--wrap", "sleep 1"], check=True, capture_output=True)
        out, _ = follower.communicate(timeout=300)
    finally:
        follower.kill()
    assert follower.returncode == 0, out
    assert "requeued job" in out and "(requeue 1, preemption)" in out
    log = (run / "trainkit.log").read_text()
    assert "resumed from" in log
    assert (run / "slurm" / "requeues.jsonl").read_text().count("\n") == 1
    assert train_losses(run) == train_losses(reference)  # steps before and after the requeue, bit for bit


def test_srun_inside_a_hand_written_sbatch_script_runs_as_workers(slurm_cluster, local_two_processes, tmp_path):
    script = tmp_path / "train.sbatch"
    script.write_text(f"""#!/bin/bash
#SBATCH --job-name=trainkit-srun-test
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --output={tmp_path}/job.out
export OMP_NUM_THREADS=1 PYTHONPATH={ROOT}
srun {sys.executable} -m trainkit fit {' '.join(BASE)} trainer.num_nodes=2
""")
    job = subprocess.run(["sbatch", "--parsable", "--wait", str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    out = (tmp_path / "job.out").read_text()
    assert job.returncode == 0, out
    runs = list((tmp_path / "outputs" / "knowledge_tracing").iterdir())
    assert len(runs) == 1, runs  # each task composed its own folder name; rank 0's is the run's
    assert "submitted SLURM job" not in out and "starting 2 worker processes" not in out  # no second launch
    assert train_losses(runs[0]) == local_two_processes


def test_a_failing_job_names_the_rank_the_error_and_the_log(slurm_cluster, tmp_path):
    run = tmp_path / "run"
    result = run_cli("fit", *BASE, "launcher=slurm", "trainer.num_nodes=2",
                     "+callbacks.boom._target_=tests.integration.chaos.RaiseAt", "+callbacks.boom.batch=2",
                     "+callbacks.boom.rank=1", f"hydra.run.dir={run}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rank 1 (on n2) failed: RuntimeError: injected failure on rank 1" in result.stderr
    assert "_1_log.err" in result.stderr  # the failing rank's own log, with its last lines
    bad = run_cli("fit", *BASE, "launcher=slurm", "datamodule=kt_lines", "datamodule.path=/no/such/folder",
                  f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "/no/such/folder" in bad.stderr and "trainkit.log" in bad.stderr


def test_a_job_whose_task_count_is_not_nodes_times_devices_exits_2_naming_both(slurm_cluster, tmp_path):
    run = tmp_path / "run"  # 2 nodes x 2 devices asked; the job gets 3 tasks (2 + 1)
    result = run_cli("fit", *BASE, "launcher=slurm", "trainer.num_nodes=2", "trainer.devices=2",
                     "+launcher.additional_parameters.ntasks=3", f"hydra.run.dir={run}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "started 3 task(s) on 2 node(s)" in result.stderr and "SLURM_NTASKS=3" in result.stderr
    assert "trainer.num_nodes=2 x trainer.devices=2 = 4 task(s)" in result.stderr
    assert not (run / "checkpoints").exists() and not (run / "trainkit.lock").exists()  # nothing ran, nothing held


def test_a_rejected_submission_shows_slurms_message(slurm_cluster, tmp_path):
    result = run_cli("fit", "launcher=slurm", "launcher.partition=nope", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert "SLURM rejected the job: " in result.stderr and "invalid partition specified: nope" in result.stderr


def test_no_wait_prints_the_job_and_returns(slurm_cluster, tmp_path):
    run = tmp_path / "run"
    result = run_cli("fit", *BASE, "launcher=slurm", "launcher.wait=false", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.split("job ")[1].split()[0]
    assert f"scancel {job_id}" in result.stdout and str(run) in result.stdout
    deadline = time.monotonic() + 120
    while subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline
        time.sleep(1)
    assert metric_rows(run)  # the job ran to its end on its own


def test_dry_run_prints_the_sbatch_script_and_submits_nothing(tmp_path):
    run = tmp_path / "run"
    result = run_cli("fit", "launcher=slurm", "trainer.num_nodes=2", "trainer.devices=4", "launcher.partition=gpu",
                     "launcher.setup=[module load cuda]", "--dry-run", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --partition=gpu",
                 "#SBATCH --signal=USR2@90", "module load cuda", "node 1: ranks 4, 5, 6, 7"):
        assert line in result.stdout
    assert not run.exists()


def test_without_sbatch_the_error_says_slurm_was_not_found(tmp_path):
    bare_path = os.path.dirname(sys.executable)  # python, but no SLURM commands
    result = run_cli("fit", "launcher=slurm", f"hydra.run.dir={tmp_path / 'run'}", env={"PATH": bare_path})
    assert result.returncode == 2
    assert "SLURM was not found" in result.stderr and "launcher=local" in result.stderr


def test_a_sweep_submits_one_job_per_trial_and_summarizes_them(slurm_cluster, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("fit", "-m", *BASE, "optimizer.lr=0.001,0.003", "launcher=slurm", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("submitted SLURM job") == 2 and "following 2 SLURM jobs" in result.stdout
    rows = (sweep / "sweep_summary.csv").read_text().splitlines()
    assert len(rows) == 3 and all("completed" in row for row in rows[1:]), rows
    assert train_losses(sweep / "0") != train_losses(sweep / "1")  # two trials, two learning rates
