"""trainkit `trainer.devices=2` against a hand-written torchrun DDP script, on the DKT recipe.

    python scripts/bench_ddp.py                  # about 3 minutes on 2 cores
    python scripts/bench_ddp.py --steps 801 --repeats 7
    python scripts/bench_ddp.py trainer.hang_timeout_s=null     # the same, trainkit with an override

Both train the default simulated dataset with 2 processes (gloo on CPU, one thread each),
batch 16 per process, the same model, loss and optimizer. The loss is the recipe's: the mean over
every real next step of the *global* batch, so each process starts an all-reduce of its count of
real steps before its forward pass and divides by the sum after it (what makes `devices=2` train
exactly as one process; a script taking each process's own mean would skip that collective and
do other math).

Throughput is timed in windows of WINDOW steps on rank 0 (after the first step) and taken as the
median window: a moment the machine gives a core to another program slows one window, not the
figure. Each repeat runs the two back to back (alternating which goes first); printed are
samples/s (medians over repeats), the median of the repeats' ratios, and the time from launch to
the end of the first step. Targets: >= 0.97x the hand-written throughput and <= +0.3 s start-up.
"""
from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainkit.engine.callback import Callback  # noqa: E402  (no torch: this process only launches)

HAND_WRITTEN = r'''
import os, sys, time
import torch, torch.distributed as dist, torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler
from trainkit.recipes.knowledge_tracing.datamodule import KTDataModule, collate_kt
from trainkit.recipes.knowledge_tracing.model import DKT

steps, WINDOW = int(sys.argv[1]), int(sys.argv[2])
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
dm = KTDataModule(batch_size=16); dm.prepare_data(); dm.setup("fit")
dataset = dm.train_dataloader().dataset
loader = DataLoader(dataset, batch_size=16, sampler=DistributedSampler(dataset, seed=0), collate_fn=collate_kt)
model = DKT(num_skills=50, hidden_size=64, dropout=0.2)
ddp = DDP(model)
opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
done, epoch = 0, 0
while done < steps:
    loader.sampler.set_epoch(epoch)
    for batch in loader:
        mask = batch["mask"][:, 1:]
        count = mask.sum(dtype=torch.float32)
        exchange = dist.all_reduce(count, async_op=True)  # the global count, while the forward runs
        logits = ddp(batch["skills"], batch["correct"])  # forward through DDP: gradient hooks armed
        exchange.wait()
        loss = F.binary_cross_entropy_with_logits(logits[mask], batch["correct"][:, 1:][mask].float(),
                                                  reduction="sum") * (dist.get_world_size() / count)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); opt.zero_grad(set_to_none=True)
        done += 1
        if rank == 0 and (done == 1 or (done - 1) % WINDOW == 0):
            print(f"STEP {done} {time.time():.6f} {time.thread_time():.6f}", flush=True)
        if done == steps:
            break
    epoch += 1
dist.destroy_process_group()
os._exit(0)
'''


WINDOW = 20  # steps per timed window


def _stamps(output: str) -> dict[int, tuple[float, float]]:
    """step -> (wall time, CPU time of rank 0's training thread) at its end."""
    return {int(line.split()[1]): (float(line.split()[2]), float(line.split()[3]))
            for line in output.splitlines() if line.startswith("STEP ")}


def _rates(stamps: dict[int, tuple[float, float]]) -> tuple[float, float, float]:
    """(wall time at the end of step 1, median samples/s over the windows, the training thread's
    CPU ms per step: its own work, which neither waits in collectives nor a busy machine inflate)."""
    ends = sorted(stamps)
    windows = [(b - a, stamps[b][0] - stamps[a][0], stamps[b][1] - stamps[a][1]) for a, b in zip(ends[:-1], ends[1:])]
    windows = [w for w in windows if w[0] == WINDOW]
    return (stamps[1][0], statistics.median(WINDOW * 32 / wall for _, wall, _ in windows),
            statistics.median(cpu / WINDOW * 1e3 for _, _, cpu in windows))


def run_hand_written(steps: int, env: dict[str, str]) -> tuple[float, float, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(HAND_WRITTEN)
    start = time.time()
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          f.name, str(steps), str(WINDOW)], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout
    os.unlink(f.name)
    first, rate, cpu = _rates(_stamps(out))
    return first - start, rate, cpu


def run_trainkit(steps: int, env: dict[str, str], run_dir: str, extra: list[str] = ()) -> tuple[float, float, float]:
    start = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "trainkit", "fit", "trainer.devices=2", "datamodule.batch_size=16",
         f"trainer.max_steps={steps}", "trainer.limit_val_batches=0", "callbacks=none", "logger=none",
         "+callbacks.clock._target_=bench_ddp.StepClock", f"+callbacks.clock.window={WINDOW}",
         f"hydra.run.dir={run_dir}", *extra], cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    first, rate, cpu = _rates(_stamps(out))
    return first - start, rate, cpu


class StepClock(Callback):
    """Prints the wall time at the end of step 1 and of every `window`-th step after it (rank 0)."""

    def __init__(self, window: int) -> None:
        self.window = window

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.is_global_zero and (trainer.global_step - 1) % self.window == 0:
            print(f"STEP {trainer.global_step} {time.time():.6f} {time.thread_time():.6f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=401)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="added to the trainkit command (to find what costs)")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'scripts'}"}
    hand, tk = [], []
    compileall.compile_dir(ROOT / "trainkit", quiet=1)  # as an installed trainkit has it (bench_overhead.compile_bytecode)
    with tempfile.TemporaryDirectory() as tmp:
        run_trainkit(WINDOW + 1, env, f"{tmp}/warm")  # generates the cached dataset, warms the file cache
        for i in range(args.repeats):
            pair = [lambda: hand.append(run_hand_written(args.steps, env)),
                    lambda: tk.append(run_trainkit(args.steps, env, f"{tmp}/run{i}", args.overrides))]
            for run in pair[i % 2:] + pair[: i % 2]:  # alternate which runs first
                run()
    h_start, h_rate, h_cpu = (statistics.median(x) for x in zip(*hand))
    t_start, t_rate, t_cpu = (statistics.median(x) for x in zip(*tk))
    ratio = statistics.median(t[1] / h[1] for h, t in zip(hand, tk))
    print(f"DKT, 2 processes x batch 16 (gloo, 1 thread each), {args.steps} steps, median of {args.repeats}")
    print(f"  hand-written torchrun DDP  {h_rate:8.1f} samples/s   launch -> first step {h_start:5.2f} s   {h_cpu:6.2f} ms CPU/step")
    print(f"  trainkit devices=2         {t_rate:8.1f} samples/s   launch -> first step {t_start:5.2f} s   {t_cpu:6.2f} ms CPU/step")
    print(f"  CPU per step of rank 0's training thread {t_cpu / h_cpu:.3f}x the hand-written one")
    print(f"  throughput ratio {ratio:.3f}x (repeats {min(t[1] / h[1] for h, t in zip(hand, tk)):.3f}-"
          f"{max(t[1] / h[1] for h, t in zip(hand, tk)):.3f})   start-up {t_start - h_start:+.2f} s"
          + (f"   overrides: {' '.join(args.overrides)}" if args.overrides else ""))


if __name__ == "__main__":
    main()
