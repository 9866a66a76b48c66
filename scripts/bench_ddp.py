"""trainkit `trainer.devices=2` against a hand-written torchrun DDP script, on the DKT recipe.

    python scripts/bench_ddp.py                  # about 3 minutes on 2 cores
    python scripts/bench_ddp.py --steps 300 --repeats 5

Both train the default simulated dataset with 2 processes (gloo on CPU, one thread each),
batch 16 per process, the same model and optimizer. Printed: samples/s between the end of the
first step and the end of the last (medians over alternating repeats), the ratio, and the time
from launch to the end of the first step. Targets: >= 0.97x the hand-written throughput and
<= +0.5 s start-up.
"""
from __future__ import annotations

import argparse
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

steps = int(sys.argv[1])
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
        logits = ddp(batch["skills"], batch["correct"])  # forward through DDP: gradient hooks armed
        mask = batch["mask"][:, 1:]
        loss = F.binary_cross_entropy_with_logits(logits[mask], batch["correct"][:, 1:][mask].float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); opt.zero_grad(set_to_none=True)
        done += 1
        if rank == 0 and done in (1, steps):
            print(f"STEP {done} {time.time():.6f}", flush=True)
        if done == steps:
            break
    epoch += 1
dist.destroy_process_group()
os._exit(0)
'''


def _stamps(output: str) -> dict[int, float]:
    return {int(line.split()[1]): float(line.split()[2]) for line in output.splitlines() if line.startswith("STEP ")}


def run_hand_written(steps: int, env: dict[str, str]) -> tuple[float, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(HAND_WRITTEN)
    start = time.time()
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          f.name, str(steps)], cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    stamps = _stamps(out)
    return stamps[1] - start, (steps - 1) * 32 / (stamps[steps] - stamps[1])


def run_trainkit(steps: int, env: dict[str, str], run_dir: str) -> tuple[float, float]:
    start = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "trainkit", "fit", "trainer.devices=2", "datamodule.batch_size=16",
         f"trainer.max_steps={steps}", "trainer.limit_val_batches=0", "callbacks=none", "logger=none",
         "+callbacks.clock._target_=bench_ddp.StepClock", f"+callbacks.clock.last={steps}", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    stamps = _stamps(out)
    return stamps[1] - start, (steps - 1) * 32 / (stamps[steps] - stamps[1])


class StepClock(Callback):
    """Prints the wall time at the end of step 1 and of step `last` (rank 0)."""

    def __init__(self, last: int) -> None:
        self.last = last

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.is_global_zero and trainer.global_step in (1, self.last):
            print(f"STEP {trainer.global_step} {time.time():.6f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'scripts'}"}
    hand, tk = [], []
    with tempfile.TemporaryDirectory() as tmp:
        run_trainkit(5, env, f"{tmp}/warm")  # generates the cached dataset, warms the file cache
        for i in range(args.repeats):
            hand.append(run_hand_written(args.steps, env))
            tk.append(run_trainkit(args.steps, env, f"{tmp}/run{i}"))
    h_start, h_rate = (statistics.median(x) for x in zip(*hand))
    t_start, t_rate = (statistics.median(x) for x in zip(*tk))
    print(f"DKT, 2 processes x batch 16 (gloo, 1 thread each), {args.steps} steps, median of {args.repeats}")
    print(f"  hand-written torchrun DDP  {h_rate:8.1f} samples/s   launch -> first step {h_start:5.2f} s")
    print(f"  trainkit devices=2         {t_rate:8.1f} samples/s   launch -> first step {t_start:5.2f} s")
    print(f"  throughput ratio {t_rate / h_rate:.3f}x   start-up {t_start - h_start:+.2f} s")


if __name__ == "__main__":
    main()
