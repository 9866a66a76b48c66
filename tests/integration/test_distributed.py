"""Several real processes on CPU (gloo), started by trainkit's local launcher or by torchrun."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT, SMALL_DATA, final_weights, metric_rows, train_losses
from tests.conftest import run_cli as _run_cli
from trainkit.heartbeat import PHASES

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # two processes on two cores; and steadier sums
# No dropout: its masks come from each process's RNG, the one thing that cannot be split the same
# way over 1 and 2 processes.
BASE = ["datamodule.num_students=300", "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
        "trainer.limit_train_batches=10", "model.dropout=0.0"]


def run_cli(*args: str):
    return _run_cli(*args, env=ONE_THREAD)


def losses(run) -> dict[int, float]:
    return {step: float(loss) for step, loss in train_losses(run).items()}


def assert_close_runs(a, b):
    la, lb = losses(a), losses(b)
    assert la.keys() == lb.keys() and len(la) >= 10
    for step in la:
        assert abs(la[step] - lb[step]) <= 1e-4 * abs(la[step]), (step, la[step], lb[step])
    wa, wb = final_weights(a), final_weights(b)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-5)


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli("fit", *BASE, "datamodule.batch_size=32", f"hydra.run.dir={one}").returncode == 0
    result = run_cli("fit", *BASE, "trainer.devices=2", "datamodule.batch_size=16", f"hydra.run.dir={two}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("starting 2 worker processes") == 1
    assert_close_runs(one, two)
    # validation over the gathered predictions of both ranks: the same AUC as one process
    last = max(s for s, r in metric_rows(one).items() if r.get("val/auc"))
    assert abs(float(metric_rows(one)[last]["val/auc"]) - float(metric_rows(two)[last]["val/auc"])) < 1e-4


def test_gradient_accumulation_under_ddp_equals_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    accumulate = "trainer.accumulate_grad_batches=2"
    assert run_cli("fit", *BASE, accumulate, "datamodule.batch_size=32", "trainer.limit_train_batches=20",
                   f"hydra.run.dir={one}").returncode == 0
    result = run_cli("fit", *BASE, accumulate, "trainer.devices=2", "datamodule.batch_size=16",
                     "trainer.limit_train_batches=20", f"hydra.run.dir={two}")
    assert result.returncode == 0, result.stderr
    assert_close_runs(one, two)


# Two processes saving every 3 steps, and that run uninterrupted: what every restarted run must equal.
TWO_SAVING = [*BASE, "trainer.devices=2", "datamodule.batch_size=16", "trainer.checkpoint_every_n_steps=3"]


@pytest.fixture(scope="module")
def plain_two_saving(tmp_path_factory):
    plain = tmp_path_factory.mktemp("plain") / "run"
    assert run_cli("fit", *TWO_SAVING, f"hydra.run.dir={plain}").returncode == 0
    return plain


def test_a_killed_worker_is_restarted_and_the_run_continues_exactly(tmp_path, plain_two_saving):
    plain, restarted = plain_two_saving, tmp_path / "restarted"
    kill = ["+callbacks.kill._target_=tests.integration.chaos.SignalAt", "+callbacks.kill.batch=7",
            "+callbacks.kill.rank=1", "trainer.max_restarts=1"]
    result = run_cli("fit", *TWO_SAVING, *kill, f"hydra.run.dir={restarted}")
    assert result.returncode == 0, result.stderr
    log = (restarted / "trainkit.log").read_text()
    assert "resumed from" in log and "step=6" in log
    assert "restart 1 of 1: worker rank 1 was killed by SIGKILL; the new group resumes from" in log
    assert losses(plain) == losses(restarted)
    wa, wb = final_weights(plain), final_weights(restarted)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_stopped_worker_is_named_with_its_stack_and_the_restarted_group_finishes_exactly(tmp_path, plain_two_saving):
    run, timeout = tmp_path / "run", 4
    args = [*TWO_SAVING, "logger=csv", f"trainer.hang_timeout_s={timeout}", "trainer.max_restarts=1",
            "+callbacks.pace._target_=tests.integration.chaos.Pace", f"hydra.run.dir={run}"]
    proc = subprocess.Popen([sys.executable, "-m", "trainkit", "fit", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, **ONE_THREAD, "PYTHONUNBUFFERED": "1"})
    try:
        rank1, deadline = run / ".heartbeat" / "rank1.json", time.monotonic() + 120
        while True:  # rank 1's own heartbeat says its pid and when it is well into training
            assert proc.poll() is None and time.monotonic() < deadline
            with contextlib.suppress(OSError, ValueError):
                record = json.loads(rank1.read_text())
                if record["step"] >= 4:
                    break
            time.sleep(0.05)
        os.kill(record["pid"], signal.SIGSTOP)
        stopped, log = time.monotonic(), run / "trainkit.log"
        while "restart 1 of 1" not in log.read_text():
            assert time.monotonic() - stopped < timeout + 8, "the stall was not noticed in time"
            time.sleep(0.1)
        _, err = proc.communicate(timeout=240)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a failed test leaves no stopped worker behind
    assert proc.returncode == 0, err
    text = log.read_text()
    note = re.search(rf"restart 1 of 1: rank 1 \(host \S+, pid {record['pid']}\) made no progress for \d+ s "
                     rf"\(trainer.hang_timeout_s={timeout}\): last at step \d+ in phase (\w+); its process does not run", text)
    assert note and note[1] in PHASES, text[-3000:]
    stack = text.split(f"Python stack of rank 1 (pid {record['pid']}, phase {note[1]}):")[1].split("Python stack of rank 0")[0]
    assert "trainkit/engine/fit_loop.py" in stack and "in _train_epoch" in stack
    assert losses(plain_two_saving) == losses(run)
    wa, wb = final_weights(plain_two_saving), final_weights(run)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_worker_that_raises_ends_the_run_naming_its_rank(tmp_path):
    run = tmp_path / "run"
    start = time.monotonic()
    result = run_cli("fit", *BASE, "trainer.devices=2", "datamodule.batch_size=16",
                     "+callbacks.boom._target_=tests.integration.chaos.RaiseAt", "+callbacks.boom.batch=3",
                     "+callbacks.boom.rank=1", f"hydra.run.dir={run}")
    assert result.returncode == 1
    assert "worker rank 1 failed with exit code 1: RuntimeError: injected failure on rank 1" in result.stderr
    assert "Traceback" not in result.stderr  # one line says it; the traceback is in the run's log
    assert time.monotonic() - start < 60
    # no worker of this run, and not its fork server, is left behind
    deadline = time.monotonic() + 10
    while _orphans(str(run / "config.yaml")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _orphans(str(run / "config.yaml"))


def _orphans(config_path: str) -> list[str]:
    """Processes outside this test process's tree that run `config_path` or are a fork server (a
    worker forked from one shows the server's command line)."""
    table = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        table[int(pid)] = (ppid, cmdline)

    def ours(pid: int) -> bool:
        while pid > 1:
            if pid == os.getpid():
                return True
            pid = table.get(pid, (0,))[0]
        return False

    return [str(pid) for pid, (_, cmdline) in table.items()
            if not ours(pid) and ("multiprocessing.forkserver" in cmdline or config_path in cmdline)]


def test_torchrun_workers_run_as_workers_in_one_run_directory(tmp_path):
    outputs = tmp_path / "outputs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "trainkit",
           "fit", *SMALL_DATA, "trainer.devices=2", "trainer.max_epochs=1", "trainer.limit_train_batches=4",
           f"hydra.run.dir={outputs}/run_${{now:%H-%M-%S}}_${{run_id:}}"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, **ONE_THREAD})
    assert result.returncode == 0, result.stderr
    runs = list(outputs.iterdir())
    assert len(runs) == 1, runs  # each rank composed its own name; only rank 0's is kept
    assert (runs[0] / "metrics.csv").exists() and (runs[0] / "config.yaml").exists()
    assert "starting 2 worker processes" not in result.stdout  # no second spawn


FSDP = ["strategy=fsdp", "strategy.wrap_modules=[LSTM]"]


def test_fsdp_trains_like_one_process_and_its_sharded_checkpoint_reads_back_whole(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli("fit", *BASE, "datamodule.batch_size=32", f"hydra.run.dir={one}").returncode == 0
    result = run_cli("fit", *BASE, *FSDP, "trainer.devices=2", "datamodule.batch_size=16", f"hydra.run.dir={two}")
    assert result.returncode == 0, result.stderr
    shards = list((two / "checkpoints" / "last" / "state").glob("*.distcp"))
    assert len(shards) == 2  # one file per rank
    assert_close_runs(one, two)  # final weights exported in this single process: DCP reshards


def test_a_checkpoint_resumes_on_another_number_of_processes(tmp_path):
    reference = tmp_path / "reference"
    common = [*BASE, "trainer.checkpoint_every_n_steps=3", "datamodule.num_workers=1"]
    one = ["datamodule.batch_size=32"]
    two = [*FSDP, "trainer.devices=2", "datamodule.batch_size=16"]
    assert run_cli("fit", *common, *one, f"hydra.run.dir={reference}").returncode == 0
    for first, then in ((two, one), (one, two)):
        run = tmp_path / f"run{len(first)}"
        assert run_cli("fit", *common, *first, "trainer.max_steps=7", f"hydra.run.dir={run}").returncode == 0
        result = run_cli("fit", *common, *then, f"hydra.run.dir={run}")
        assert result.returncode == 0, result.stderr
        log = (run / "trainkit.log").read_text()
        assert "resumed from" in log and "the sampler starts there, nothing before it is read" in log
        la, lb = losses(reference), losses(run)
        assert la.keys() == lb.keys()
        for step in la:
            assert abs(la[step] - lb[step]) <= 1e-4 * abs(la[step]), (first, step, la[step], lb[step])


def test_async_checkpoints_of_two_processes_are_whole_and_resume_exactly(tmp_path):
    from trainkit import checkpoint

    reference, run = tmp_path / "reference", tmp_path / "run"
    two = [*BASE, "trainer.devices=2", "datamodule.batch_size=16", "trainer.checkpoint_every_n_steps=3"]
    assert run_cli("fit", *two, f"hydra.run.dir={reference}").returncode == 0
    # Each rank writes its shards in DCP's writer thread while training goes on; rank 0 publishes.
    result = run_cli("fit", *two, "trainer.async_checkpoint=true", "trainer.max_steps=7", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr
    ckpts = run / "checkpoints"
    saved = [p for p in ckpts.iterdir() if p.is_dir() and not p.is_symlink()]
    assert saved and not any(p.name.startswith(".tmp-") for p in ckpts.iterdir())
    for path in saved:
        assert checkpoint.verify(str(path)) is None, path
        assert {"rank0.pt", "rank1.pt"} <= {f.name for f in path.iterdir()}
    assert "step=7" in (ckpts / "last").resolve().name
    result = run_cli("fit", *two, "trainer.async_checkpoint=true", f"hydra.run.dir={run}")
    assert result.returncode == 0 and "resumed from" in (run / "trainkit.log").read_text(), result.stderr
    assert losses(reference) == losses(run)


def test_fsdp_refuses_evaluation_shards_of_unequal_length_instead_of_hanging(tmp_path):
    from tests.recipe_data import tiny_corpus

    corpus = tiny_corpus(tmp_path / "text")
    result = run_cli("predict", "model=tiny_gpt", "datamodule=text", f"datamodule.path={corpus}", "model.block_size=32",
                     "strategy=fsdp", "trainer.devices=2", "trainer.resume=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr  # one prompt: one batch for two ranks
    assert "strategy=fsdp predict: this rank has 0 batches, the 2 ranks 1 in all" in result.stderr


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step_and_resume_is_exact(tmp_path):
    plain, stopped = tmp_path / "plain", tmp_path / "stopped"
    common = [*BASE, "trainer.devices=2", "datamodule.batch_size=16"]
    assert run_cli("fit", *common, f"hydra.run.dir={plain}").returncode == 0
    # SIGTERM reaches rank 1 alone (after its 5th batch): the ranks agree through a sum every 4 steps.
    signal_rank_1 = ["+callbacks.stop._target_=tests.integration.chaos.SignalAt", "+callbacks.stop.batch=5",
                     "+callbacks.stop.rank=1", "+callbacks.stop.signal=SIGTERM", "+callbacks.stop.fresh_only=true"]
    result = run_cli("fit", *common, *signal_rank_1, f"hydra.run.dir={stopped}")
    assert result.returncode == 143, result.stderr
    assert "stopped by SIGTERM at step 12; checkpoint saved:" in result.stderr and f"resume with: trainkit resume {stopped}" in result.stderr
    # Seen at step 5, sent in the sum started at step 8, read by every rank at step 12 (trainkit.signals.StopVote).
    assert "-step=12" in (stopped / "checkpoints" / "last").resolve().name
    assert run_cli("resume", str(stopped)).returncode == 0  # from its folder: its own config, 2 processes
    assert losses(plain) == losses(stopped)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_manual_optimization_gan_on_two_processes_trains_like_one_and_resumes_on_one(tmp_path, strategy):
    from tests.unit.test_optimization import GAN, gan_loader
    from trainkit import Trainer, checkpoint

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "tests.integration.gan_ddp", str(tmp_path), "12", strategy]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, **ONE_THREAD})
    assert result.returncode == 0, result.stderr[-3000:]
    last = tmp_path / "checkpoints" / "last"
    assert last.resolve().name == "epoch=0-step=12"  # 6 batches, two optimizer steps each

    def one_process(max_steps, root, resume="none"):
        torch.manual_seed(0)
        module = GAN(noise_from_rng=False)
        Trainer(accelerator="cpu", max_steps=max_steps, seed=0, logger=False, enable_progress_bar=False,
                default_root_dir=str(root), resume=resume).fit(module, train_dataloaders=gan_loader(batch_size=8))
        return module.state_dict()

    two = GAN(noise_from_rng=False)
    checkpoint.load_model_weights(str(last), two)  # read whole in this process (DCP reshards FSDP's shards)
    for name, value in one_process(12, tmp_path / "alone").items():  # averaged gradients: one global batch
        torch.testing.assert_close(two.state_dict()[name], value, rtol=1e-4, atol=1e-5)
    if strategy == "ddp":
        ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
        assert ranks[0]["global_step"] == ranks[1]["global_step"] == 12
        assert all(torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]) for k in ranks[0]["state"])
    # both optimizers' states and both schedules come back from the 2-process checkpoint in one process
    resumed = one_process(20, tmp_path, resume="auto")
    for name, value in one_process(20, tmp_path / "alone20").items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_single_file_checkpoint_of_two_processes_is_whole_and_plain(tmp_path, strategy):
    from tests.unit.test_lightning_callbacks import Base
    from trainkit import checkpoint

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "tests.integration.checkpoint_file_ddp", str(tmp_path), strategy]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, **ONE_THREAD})
    assert result.returncode == 0, result.stderr[-3000:]
    file = tmp_path / "files" / "epoch=0-step=4.ckpt"
    contents = torch.load(file, weights_only=True)
    assert contents["hyper_parameters"] == {"hidden": 4, "lr": 0.3} and contents["global_step"] == 4
    assert set(contents["state_dict"]) == {"net.weight", "net.bias"}  # whole, without wrapper prefixes
    if strategy == "fsdp":  # gathered from both shards: the same as the folder's weights read whole
        folder = checkpoint.read_model_weights(str(tmp_path / "checkpoints" / "last"))
        for name, value in folder.items():
            assert torch.equal(contents["state_dict"][name], value), name
    else:  # the EMA's averaged weights, the same on both ranks, are the file's weights
        ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
        for name, value in contents["state_dict"].items():
            assert torch.equal(ranks[0]["average"][name], value) and torch.equal(ranks[1]["average"][name], value)
        # and, as in Lightning, on_train_end leaves the averaged weights in the module
        assert torch.equal(ranks[0]["current"]["net.weight"], contents["state_dict"]["net.weight"])
    loaded = Base.load_from_checkpoint(str(file))
    assert torch.equal(loaded.net.weight, contents["state_dict"]["net.weight"])
