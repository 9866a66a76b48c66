"""Kill a run at any moment, resume it with trainer.resume=auto: the continuation is the same run,
bit for bit. Real processes, real signals (SIGKILL, SIGTERM), real DataLoader workers."""
from __future__ import annotations

import signal

import pytest
import torch

from tests.conftest import SMALL_DATA, final_weights, train_losses
from tests.conftest import run_cli as _run_cli
from trainkit import checkpoint


def run_cli(*args: str):
    # One thread: CPU kernels that split a sum over threads can round differently from one
    # process to the next when the machine is busy; exactness is claimed for deterministic kernels.
    return _run_cli(*args, env={"OMP_NUM_THREADS": "1"})

# ~23 batches an epoch; a checkpoint every 4 steps, so kills land mid-epoch between checkpoints.
BASE = [*SMALL_DATA, "trainer.max_epochs=3", "trainer.log_every_n_steps=1", "trainer.checkpoint_every_n_steps=4"]
CASES = {
    # kill after micro-batch 11 of epoch 1 (23 + 11): between the two halves of an accumulated
    # step, resuming from step 16 at batch 8 of the epoch (the first epoch's 23 make 12 steps)
    "fp32-accumulate-cosine-workers": (["trainer.accumulate_grad_batches=2", "scheduler=cosine",
                                        "scheduler.warmup_steps=5", "datamodule.num_workers=2"], 34),
    "bf16-mixed": (["precision=bf16-mixed"], 30),
    "16-mixed": (["precision=16-mixed"], 37),
}


def assert_same_run(a, b):
    losses_a, losses_b = train_losses(a), train_losses(b)
    assert losses_a == losses_b  # every logged step, before and after the kill, as exact strings
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


@pytest.mark.parametrize("case", list(CASES))
def test_sigkill_mid_epoch_then_resume_is_exact(case, tmp_path):
    extra, kill_after = CASES[case]
    a, b = tmp_path / "a", tmp_path / "b"
    result = run_cli("fit", *BASE, *extra, f"hydra.run.dir={a}")
    assert result.returncode == 0, result.stderr

    killer = ["+callbacks.kill._target_=tests.integration.chaos.SignalAt", f"+callbacks.kill.batch={kill_after}"]
    result = run_cli("fit", *BASE, *extra, *killer, f"hydra.run.dir={b}")
    assert result.returncode == -signal.SIGKILL, result.stderr
    steps_before = max(train_losses(b))

    result = run_cli("fit", *BASE, *extra, f"hydra.run.dir={b}")  # trainer.resume=auto is the default
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout and "batch" in result.stdout
    assert "the sampler starts there, nothing before it is read" in result.stdout  # skipped by index
    resumed_at = checkpoint.step_of(result.stdout.split("resumed from ")[1].split(":")[0])
    assert 0 < resumed_at <= steps_before
    assert_same_run(a, b)


def test_sigterm_saves_at_the_step_boundary_and_resume_is_exact(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("fit", *BASE, f"hydra.run.dir={a}").returncode == 0
    stop = ["+callbacks.kill._target_=tests.integration.chaos.SignalAt", "+callbacks.kill.batch=27",
            "+callbacks.kill.signal=SIGTERM"]
    result = run_cli("fit", *BASE, *stop, f"hydra.run.dir={b}")
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert "stopped by SIGTERM at step 27; checkpoint saved:" in result.stderr
    assert f"resume with: trainkit resume {b}" in result.stderr
    assert (b / "checkpoints" / "last").resolve().name.endswith("step=27")
    assert run_cli("fit", *BASE, f"hydra.run.dir={b}").returncode == 0
    assert_same_run(a, b)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_kill_during_a_save_keeps_the_previous_checkpoint(tmp_path, mode):
    # async: the kill comes from DCP's writer thread while the training steps go on
    run, extra = tmp_path / "run", ["trainer.async_checkpoint=true"] if mode == "async" else []
    driver = (
        "import os, sys, trainkit.checkpoint as c\n"
        "orig, calls = c._write_manifest, []\n"
        "def dying(root):\n"
        "    calls.append(root)\n"
        "    if len(calls) == 3: os.kill(os.getpid(), 9)  # state written, manifest not yet\n"
        "    orig(root)\n"
        "c._write_manifest = dying\n"
        "from trainkit.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    result = subprocess.run([sys.executable, "-c", driver, "fit", *BASE, *extra, f"hydra.run.dir={run}"], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == -signal.SIGKILL
    ckpts = run / "checkpoints"
    assert (ckpts / "last").resolve().name == "epoch=0-step=8"  # the second save, complete
    assert checkpoint.verify(str((ckpts / "last").resolve())) is None
    assert any(p.name.startswith(".tmp-") for p in ckpts.iterdir())  # the third, never published
    result = run_cli("fit", *BASE, *extra, f"hydra.run.dir={run}")
    assert result.returncode == 0 and "resumed from" in result.stdout, result.stderr
    assert not any(p.name.startswith(".tmp-") for p in ckpts.iterdir())


def test_damaged_checkpoints_fall_back_then_exit_2_when_none_is_intact(tmp_path):
    run = tmp_path / "run"
    keep_two = ["trainer.max_epochs=2", "callbacks.model_checkpoint.save_top_k=2"]
    assert run_cli("fit", *BASE, *keep_two, f"hydra.run.dir={run}").returncode == 0
    ckpts = run / "checkpoints"
    newest = (ckpts / "last").resolve()
    others = sorted((p for p in ckpts.iterdir() if p.name != "last" and not p.name.startswith(".") and p != newest),
                    key=lambda p: checkpoint.step_of(str(p)))
    assert others, "the run should keep an older (best) checkpoint beside the newest"
    trainer_file = newest / "trainer.pt"
    trainer_file.write_bytes(trainer_file.read_bytes()[:-10])  # truncated

    result = run_cli("validate", *SMALL_DATA, f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr
    assert f"skipping a damaged checkpoint: {trainer_file} has" in result.stdout
    assert f"loaded weights from {others[-1]}" in result.stdout

    for folder in others:
        data = next((folder / "state").glob("*.distcp"))
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF  # one flipped byte
        data.write_bytes(bytes(raw))
    result = run_cli("fit", *BASE, f"hydra.run.dir={run}")
    assert result.returncode == 2
    assert "no intact checkpoint" in result.stderr and "does not match its checksum" in result.stderr
    assert str(trainer_file) in result.stderr


def test_resume_with_a_different_batch_size_is_refused(tmp_path):
    run = tmp_path / "run"
    assert run_cli("fit", *BASE, "trainer.max_epochs=1", f"hydra.run.dir={run}").returncode == 0
    result = run_cli("fit", *BASE, "datamodule.batch_size=8", f"hydra.run.dir={run}")
    assert result.returncode == 2
    assert "global batch size: 16 -> 8" in result.stderr and "trainer.resume_strict=false" in result.stderr
    result = run_cli("fit", *BASE, "datamodule.batch_size=8", "trainer.resume_strict=false", f"hydra.run.dir={run}")
    assert result.returncode == 0 and "not an exact continuation" in result.stdout


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_checkpoints(tmp_path):
    run = tmp_path / "run"
    result = run_cli("fit", *BASE, "+callbacks.poison._target_=tests.integration.chaos.PoisonAt",
                     "+callbacks.poison.step=10", f"hydra.run.dir={run}")
    assert result.returncode == 1
    assert "the loss is nan at step 11" in result.stderr
    assert "epoch=0-step=8" in result.stderr  # names the last good checkpoint, which loads
    assert checkpoint.verify(str((run / "checkpoints" / "last").resolve())) is None


def test_a_second_ctrl_c_stops_at_once_without_saving(tmp_path):
    run = tmp_path / "run"
    twice = [f"+callbacks.{name}._target_=tests.integration.chaos.SignalAt" for name in ("c1", "c2")]
    twice += ["+callbacks.c1.batch=6", "+callbacks.c1.signal=SIGINT", "+callbacks.c2.batch=6", "+callbacks.c2.signal=SIGINT"]
    result = run_cli("fit", *BASE, *twice, f"hydra.run.dir={run}")
    assert result.returncode == 130, result.stderr
    assert "received SIGINT" in result.stderr and "interrupted" in result.stderr
    assert (run / "checkpoints" / "last").resolve().name == "epoch=0-step=4"  # nothing saved at step 6


def test_init_from_fine_tunes_from_another_runs_weights_only(tmp_path):
    source, tuned = tmp_path / "source", tmp_path / "tuned"
    assert run_cli("fit", *SMALL_DATA, "trainer.max_steps=5", f"hydra.run.dir={source}").returncode == 0
    last = source / "checkpoints" / "last"
    # SGD with lr 0 leaves the weights where they started: exactly the source's final weights.
    result = run_cli("fit", *SMALL_DATA, "optimizer=sgd", "optimizer.lr=0.0", "trainer.max_steps=3",
                     f"trainer.init_from={last}", f"hydra.run.dir={tuned}")
    assert result.returncode == 0, result.stderr
    assert "initialized the model from" in result.stdout
    assert "-step=3" in (tuned / "checkpoints" / "last").resolve().name  # a new run: 3 steps, not 5 + 3
    wa, wb = final_weights(source), final_weights(tuned)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    wrong = run_cli("fit", *SMALL_DATA, "model.hidden_size=8", "trainer.max_steps=1", f"trainer.init_from={last}",
                    f"hydra.run.dir={tmp_path / 'wrong'}")
    assert wrong.returncode == 2 and "do not fit this model" in wrong.stderr, wrong.stderr
