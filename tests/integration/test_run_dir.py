"""`trainkit resume <run_dir>` and `trainkit resume <sweep_dir>`: a run continued from its own folder."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

from tests.conftest import ROOT, SMALL_DATA
from tests.integration.test_resume import BASE, assert_same_run, run_cli

SEVERAL = ["trainer.accumulate_grad_batches=2", "scheduler=cosine", "scheduler.warmup_steps=5", "optimizer.lr=0.005",
           "model.hidden_size=32"]
PACED = ["+callbacks.pace._target_=tests.integration.chaos.Pace", "+callbacks.pace.seconds=2"]
SHORT = [*SMALL_DATA, "trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2"]


def test_sigterm_mid_epoch_then_resume_from_the_folder_equals_an_uninterrupted_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("fit", *BASE, *SEVERAL, f"hydra.run.dir={a}").returncode == 0
    stop = ["+callbacks.kill._target_=tests.integration.chaos.SignalAt", "+callbacks.kill.batch=27",
            "+callbacks.kill.signal=SIGTERM", "+callbacks.kill.fresh_only=true"]
    result = run_cli("fit", *BASE, *SEVERAL, *stop, f"hydra.run.dir={b}")
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert f"resume with: trainkit resume {b}" in result.stderr

    result = run_cli("resume", str(b))  # nothing retyped
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout and "batch" in result.stdout
    assert_same_run(a, b)


def test_resume_refuses_what_breaks_exactness_and_extends_a_finished_run(tmp_path):
    run = tmp_path / "run"
    assert run_cli("fit", *SHORT, f"hydra.run.dir={run}").returncode == 0

    refused = run_cli("resume", str(run), "optimizer.lr=0.1")
    assert refused.returncode == 2 and "optimizer.lr: 0.003 -> 0.1" in refused.stderr, refused.stderr
    assert "trainer.resume_strict=false" in refused.stderr and "Traceback" not in refused.stderr
    group = run_cli("resume", str(run), "model=sakt")
    assert group.returncode == 2 and "model=sakt: choosing a group option composes a new config" in group.stderr
    unknown = run_cli("resume", str(run), "trainer.max_epoch=3")
    assert unknown.returncode == 2 and "trainer.max_epoch is not a config key" in unknown.stderr

    done = run_cli("resume", str(run))
    assert done.returncode == 0 and "completed already" in done.stdout, done.stderr
    longer = run_cli("resume", str(run), "trainer.max_epochs=2")
    assert longer.returncode == 0, longer.stderr
    assert "extending" in longer.stdout and "trainer.max_epochs 1 -> 2" in longer.stdout
    assert "resumed from" in longer.stdout and "epoch 2/2 done" in longer.stdout
    assert len(list(run.glob("config.*.yaml"))) == 1  # the config it ran with first, kept aside


def test_resume_of_a_sweep_reruns_only_the_trial_that_did_not_complete(tmp_path):
    sweep = tmp_path / "sweep"
    boom = ["+callbacks.boom._target_=tests.integration.chaos.RaiseAt", "+callbacks.boom.batch=2,1000"]
    result = run_cli("fit", "-m", *SHORT, *boom, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 1, result.stderr

    def status(trial):
        return json.loads((sweep / trial / "results.json").read_text())["status"]

    assert (status("0"), status("1")) == ("failed", "completed")
    untouched = (sweep / "1" / "results.json").stat().st_mtime_ns

    result = run_cli("resume", str(sweep), "~callbacks.boom")  # without the injected failure
    assert result.returncode == 0, result.stderr
    assert "resuming 1 of 2 trials" in result.stdout and result.stdout.count("run directory: ") == 2
    assert status("0") == "completed"
    assert (sweep / "1" / "results.json").stat().st_mtime_ns == untouched


def _stop_the_launcher(args: list[str], run, sig: int, after_step: int) -> tuple[int, str]:
    """Start `trainkit fit` on 2 processes, send `sig` to the launcher (the elastic agent's process)
    once rank 0 has passed `after_step` with a checkpoint on disk; its exit code and stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "trainkit", "fit", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    pace, deadline = run / "pace.step", time.monotonic() + 120
    while not ((run / "checkpoints" / "last").exists() and pace.exists() and int(pace.read_text() or 0) > after_step):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_sigterm_and_sigint_to_the_launcher_of_two_processes_are_stops_and_the_run_resumes_exactly(tmp_path):
    """The elastic agent itself gets the signal (FINDINGS: it forwards it, then raises): a stop said
    as one process says it, exit 128 + N, and `trainkit resume` continues the same run."""
    plain, run = tmp_path / "plain", tmp_path / "run"
    args = [*SMALL_DATA, "trainer.devices=2", "trainer.max_epochs=2", "trainer.checkpoint_every_n_steps=2",
            "trainer.log_every_n_steps=1"]
    assert run_cli("fit", *args, f"hydra.run.dir={plain}").returncode == 0  # 12 steps an epoch
    paced = [*args, "+callbacks.pace._target_=tests.integration.chaos.Pace", "+callbacks.pace.seconds=0.2",
             f"hydra.run.dir={run}", "trainer.resume=auto"]
    code, err = _stop_the_launcher(paced, run, signal.SIGTERM, 0)
    assert code == 128 + signal.SIGTERM, err
    first = int(re.search(r"trainkit: stopped by SIGTERM at step (\d+); checkpoint saved: (\S+)", err)[1])
    assert f"step={first}" in (run / "checkpoints" / "last").resolve().name
    assert f"resume with: trainkit resume {run}" in err and "training failed" not in err

    code, err = _stop_the_launcher(paced, run, signal.SIGINT, first)  # Ctrl-C to the resumed run
    assert code == 128 + signal.SIGINT, err
    second = int(re.search(r"trainkit: stopped by SIGINT at step (\d+); checkpoint saved: ", err)[1])
    assert first < second < 24 and f"resume with: trainkit resume {run}" in err

    result = run_cli("resume", str(run))
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout and f"step={second}" in result.stdout
    assert_same_run(plain, run)  # every logged loss as the same string, the final weights equal


def test_a_second_fit_on_a_folder_in_use_exits_2_naming_the_first_and_takes_over_once_it_was_killed(tmp_path):
    run = tmp_path / "run"
    args = [*SMALL_DATA, "trainer.max_steps=4", "trainer.limit_val_batches=1", f"hydra.run.dir={run}"]
    first = subprocess.Popen([sys.executable, "-m", "trainkit", "fit", *args, *PACED], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run / "pace.step").exists():  # training, with the folder locked
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        log = (run / "trainkit.log").read_text()
        second = run_cli("fit", *args)
        assert second.returncode == 2, second.stderr
        assert f"run folder {run} is in use by another run: pid {first.pid} on " in second.stderr
        assert "started 20" in second.stderr and "trainkit fit" in second.stderr and "log:" not in second.stderr
        assert (run / "trainkit.log").read_text().startswith(log) and "error" not in (run / "trainkit.log").read_text()
        first.kill()  # kill -9, and not reaped yet: a zombie holds its pid
        third = run_cli("fit", *args)
    finally:
        first.kill()
        first.wait()
    assert third.returncode == 0, third.stderr
    assert f"was locked by pid {first.pid} on " in third.stderr and "which is gone: taking the lock over" in third.stderr
    assert not (run / "trainkit.lock").exists()  # released at the end
