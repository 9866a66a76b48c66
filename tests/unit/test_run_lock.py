"""One writer per run folder (trainkit.run_lock): who may take a lock, and what a refusal says.
Two real `trainkit fit` on one folder: tests/integration/test_run_dir.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from trainkit import run_lock
from trainkit.errors import RunDirLocked


@pytest.fixture(autouse=True)
def no_slurm(monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT", "SLURMD_NODENAME"):
        monkeypatch.delenv(name, raising=False)


def _owner(run_dir, **fields) -> dict:
    lock = run_dir / run_lock.LOCK
    data = {**json.loads(lock.read_text()), **fields}
    lock.write_text(json.dumps(data))
    return data


def _finished() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: its pid names no process
    return proc.pid


def test_a_held_folder_refuses_a_second_writer_naming_the_owner_and_release_frees_it(tmp_path):
    lock = run_lock.acquire(str(tmp_path))
    assert run_lock.held(str(tmp_path)) is lock
    with pytest.raises(RunDirLocked) as refused:
        run_lock.acquire(str(tmp_path))
    message = str(refused.value)
    assert f"run folder {tmp_path} is in use by another run: pid {os.getpid()} on {run_lock._host()}" in message
    assert "started 20" in message and f"kill -TERM {os.getpid()}" in message
    assert f"remove {tmp_path / run_lock.LOCK}" in message
    lock.release()
    assert not (tmp_path / run_lock.LOCK).exists() and run_lock.held(str(tmp_path)) is None
    run_lock.acquire(str(tmp_path)).release()


def test_a_lock_whose_processes_are_gone_is_taken_over_with_a_line(tmp_path, capsys):
    run_lock.acquire(str(tmp_path))
    dead = _finished()
    _owner(tmp_path, pid=dead, pids=[[dead, 1]], token="theirs")
    lock = run_lock.acquire(str(tmp_path))
    said = f"was locked by pid {dead} on {run_lock._host()}"
    assert said in capsys.readouterr().err and said in (tmp_path / "trainkit.log").read_text()
    assert json.loads((tmp_path / run_lock.LOCK).read_text())["token"] == lock.token
    lock.release()


def test_a_new_process_with_the_owners_pid_is_not_the_owner_and_a_worker_keeps_the_folder(tmp_path):
    run_lock.acquire(str(tmp_path))
    _owner(tmp_path, pids=[[os.getpid(), 1]], token="theirs")  # this pid, but it started at another time
    run_lock.acquire(str(tmp_path)).release()

    lock = run_lock.acquire(str(tmp_path))
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.add_processes([worker.pid])
        entry = [p for p in json.loads((tmp_path / run_lock.LOCK).read_text())["pids"] if p[0] == worker.pid]
        dead = _finished()
        _owner(tmp_path, pid=dead, pids=[[dead, -1], *entry], token="theirs")  # a killed launcher, a live worker
        with pytest.raises(RunDirLocked):
            run_lock.acquire(str(tmp_path))
    finally:
        worker.kill()
        worker.wait()
    run_lock.acquire(str(tmp_path)).release()


def test_an_owner_on_another_host_counts_as_live_and_an_unreadable_lock_as_stale(tmp_path):
    run_lock.acquire(str(tmp_path))
    _owner(tmp_path, host="gpu-node-7", token="theirs")
    with pytest.raises(RunDirLocked, match=r"pid \d+ on gpu-node-7, started .*kill -TERM \d+ on gpu-node-7"):
        run_lock.acquire(str(tmp_path))
    (tmp_path / run_lock.LOCK).write_text("{not json")
    run_lock.acquire(str(tmp_path)).release()


def test_a_slurm_job_takes_over_its_own_lock_on_a_requeue_but_not_a_second_command_in_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    first = run_lock.acquire(str(tmp_path))
    with pytest.raises(RunDirLocked, match="SLURM job 4242"):  # the same job, the same start: a second command
        run_lock.acquire(str(tmp_path))
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued: the old processes may look alive from here
    again = run_lock.acquire(str(tmp_path))
    assert json.loads((tmp_path / run_lock.LOCK).read_text())["restart"] == 1
    first.release()  # not its lock any more: nothing removed
    assert (tmp_path / run_lock.LOCK).exists()
    again.release()


def test_the_submitting_command_hands_its_lock_to_the_job(tmp_path, monkeypatch):
    submitter = run_lock.acquire(str(tmp_path))
    submitter.hand_to_job("77")
    submitter.release()  # the job holds it now
    owner = json.loads((tmp_path / run_lock.LOCK).read_text())
    assert (owner["job"], owner["pids"]) == ("77", [])
    monkeypatch.setattr(run_lock, "_job_state", lambda job: "PENDING")
    with pytest.raises(RunDirLocked, match="scancel 77"):
        run_lock.acquire(str(tmp_path))
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    task = run_lock.acquire(str(tmp_path), inherit=submitter.token)  # the job's rank 0
    submitter.hand_to_job("77")  # a late hand-over never writes over what the job holds
    assert json.loads((tmp_path / run_lock.LOCK).read_text())["token"] == task.token
    task.release()
    assert not (tmp_path / run_lock.LOCK).exists()
    monkeypatch.delenv("SLURM_JOB_ID")
    run_lock.acquire(str(tmp_path)).hand_to_job("79")
    monkeypatch.setattr(run_lock, "_job_state", lambda job: "CANCELLED")  # scancelled before it started
    run_lock.acquire(str(tmp_path)).release()
    assert not (tmp_path / run_lock.LOCK).exists()
