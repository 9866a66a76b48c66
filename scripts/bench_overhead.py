"""What trainkit costs over a hand-written torch loop: per step, at start-up, and for --help.

    python scripts/bench_overhead.py                 # all of it (about 5 minutes on 2 cores)
    python scripts/bench_overhead.py --repeats 3 --skip-startup

Per step: in one process, alternating runs of (1) a hand-written loop, (2) trainkit.Trainer
stripped (no logger, progress bar or checkpoint) and (3) trainkit.Trainer with its defaults (CSV +
TensorBoard loggers, progress output, checkpoint each epoch), on
  (a) a tiny MLP: Linear 32->32 layers, batch 64, 2000 steps, and
  (b) the recipe's DKT: 110 skills, batch 32, length 100, 200 steps.
Both sides build their optimizer inside the timed region and the trainkit module logs its loss
every step, as a recipe does. Timed as the process's CPU time, which a noisy machine disturbs
less than wall time; each round runs the three variants back to back (in rotated order) and the
ratio printed is the median over rounds of each round's ratio to its own hand-written run, so
slow drifts of the machine cancel.
Targets: MLP stripped <= 1.05x, defaults <= 1.10x; DKT defaults <= 1.03x.

Start-up: wall time from process start to the end of the first training step of the default
recipe, `trainkit fit` against a plain torch script doing the same (its model summary and sanity
check included; target: <= +0.3 s), and the same command composed in the caller's process (what
the console command's forked composition saves); and `trainkit --help` (target: <= 0.3 s).
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

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from trainkit import Callback, Trainer, TrainModule  # noqa: E402


# -- the per-step comparison ---------------------------------------------------------------------
# CPU time of this process: unlike wall time, it does not count the moments a busy (virtual)
# machine gives the core to someone else.
_clock = time.process_time
class MLP(TrainModule):
    def __init__(self, width: int = 32, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.ReLU()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def mlp_case(steps: int):
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g)) for _ in range(250)]

    def loss_fn(model, batch):
        x, y = batch
        return F.mse_loss(model(x), y)

    return MLP, batches, loss_fn, steps


def dkt_case(steps: int):
    from trainkit.recipes.knowledge_tracing.model import DKT
    from trainkit.recipes.knowledge_tracing.objective import next_step_targets

    g = torch.Generator().manual_seed(0)
    batches = [
        {
            "skills": torch.randint(0, 110, (32, 100), generator=g),
            "correct": torch.randint(0, 2, (32, 100), generator=g),
            "mask": torch.ones(32, 100, dtype=torch.bool),
        }
        for _ in range(50)
    ]

    class BenchDKT(DKT):
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    def loss_fn(model, batch):
        logits, targets, _ = next_step_targets(model(batch["skills"], batch["correct"]), batch)
        return F.binary_cross_entropy_with_logits(logits, targets)

    return (lambda: BenchDKT(num_skills=110, hidden_size=64)), batches, loss_fn, steps


def run_hand_written(make_model, batches, loss_fn, steps) -> float:
    torch.manual_seed(0)
    model = make_model()
    start = _clock()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    done = 0
    while done < steps:
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    return _clock() - start


def run_trainkit(make_model, batches, loss_fn, steps, defaults: bool, root: str) -> float:
    torch.manual_seed(0)
    model = make_model()
    start = _clock()
    trainer = Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=defaults,
        enable_progress_bar=defaults,
        enable_checkpointing=defaults,
        default_root_dir=tempfile.mkdtemp(dir=root),
    )
    trainer.fit(model, train_dataloaders=batches)
    return _clock() - start


def bench_steps(repeats: int) -> None:
    cases = {"MLP 32x32, batch 64, 2000 steps": mlp_case(2000), "DKT 110 skills, batch 32x100, 200 steps": dkt_case(200)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {repeats} alternating runs")
    with tempfile.TemporaryDirectory() as root:
        for name, (make_model, batches, loss_fn, steps) in cases.items():
            times: dict[str, list[float]] = {"hand-written": [], "trainkit stripped": [], "trainkit defaults": []}
            runs = {
                "hand-written": lambda: run_hand_written(make_model, batches, loss_fn, steps),
                "trainkit stripped": lambda: run_trainkit(make_model, batches, loss_fn, steps, False, root),
                "trainkit defaults": lambda: run_trainkit(make_model, batches, loss_fn, steps, True, root),
            }
            for rep in range(repeats + 1):  # the first round warms caches and imports; not counted
                order = list(runs)
                order = order[rep % 3 :] + order[: rep % 3]  # rotate: no variant always runs first
                for variant in order:
                    elapsed = runs[variant]()
                    if rep:
                        times[variant].append(elapsed)
            print(f"\n{name}")
            for variant, values in times.items():
                ratios = [v / h for v, h in zip(values, times["hand-written"])]
                print(f"  {variant:<18} {statistics.median(values) / steps * 1e6:9.1f} us/step   "
                      f"{statistics.median(ratios):6.3f}x  (rounds: {min(ratios):.3f}-{max(ratios):.3f})")


# -- start-up ------------------------------------------------------------------------------------
class FirstStepClock(Callback):
    """Prints the wall-clock time when the first training step ends (used by the start-up bench)."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 1 and batch_idx == 0:
            print(f"FIRST_STEP {time.time():.6f}", flush=True)


# The same work as `trainkit fit` up to its first step: the model summary and the sanity check
# (one validation batch at trainer.limit_val_batches=1, with its AUC) that trainkit, as Lightning,
# runs by default before training.
PLAIN_SCRIPT = """
import time, torch, torch.nn.functional as F
from trainkit.metrics import BinaryMetrics
from trainkit.recipes.knowledge_tracing.datamodule import KTDataModule
from trainkit.recipes.knowledge_tracing.model import DKT
from trainkit.recipes.knowledge_tracing.objective import next_step_targets
torch.manual_seed(0)
dm = KTDataModule(); dm.prepare_data(); dm.setup("fit")
model = DKT(num_skills=50, hidden_size=64, dropout=0.2)
print(model, sum(p.numel() for p in model.parameters()), "parameters")
model.eval()
with torch.inference_mode():
    auc = BinaryMetrics()
    for batch in dm.val_dataloader():
        logits, targets, _ = next_step_targets(model(batch["skills"], batch["correct"]), batch)
        F.binary_cross_entropy_with_logits(logits, targets); auc.update(torch.sigmoid(logits), targets)
        break
    auc.compute()
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
for batch in dm.train_dataloader():
    logits, targets, _ = next_step_targets(model(batch["skills"], batch["correct"]), batch)
    F.binary_cross_entropy_with_logits(logits, targets).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step(); opt.zero_grad(set_to_none=True)
    break
print(f"FIRST_STEP {time.time():.6f}", flush=True)
"""


def _time_to_first_step(cmd: list[str], env: dict[str, str]) -> float:
    start = time.time()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    stamp = next(line for line in out.splitlines() if line.startswith("FIRST_STEP"))
    return float(stamp.split()[1]) - start


def compile_bytecode() -> None:
    """trainkit's bytecode, compiled first as pip compiles it when it installs the package: where
    PYTHONDONTWRITEBYTECODE is set (this project's machine sets it), an editable checkout would
    compile every trainkit module from source at each start, and the plain script far fewer."""
    import compileall

    compileall.compile_dir(ROOT / "trainkit", quiet=1)


def bench_startup(repeats: int) -> None:
    compile_bytecode()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'scripts'}"}
    with tempfile.TemporaryDirectory() as tmp:
        trainkit_cmd = [
            sys.executable, "-m", "trainkit", "fit", "trainer.max_steps=1", "trainer.limit_val_batches=1",
            "+callbacks.first_step._target_=bench_overhead.FirstStepClock", f"hydra.run.dir={tmp}/run",
        ]
        # The same command composed in its own process, as a caller of trainkit.cli.main() does
        # (the console command composes in a forked child while it imports torch: trainkit.forked_compose).
        unforked_cmd = [sys.executable, "-c", "import sys; from trainkit.cli import main; sys.exit(main())",
                        *trainkit_cmd[3:]]
        # The first call of each warms the file cache and generates the cached dataset.
        subprocess.run(trainkit_cmd, cwd=ROOT, env=env, capture_output=True, check=True)
        plain, tk, unforked = [], [], []
        for i in range(repeats):
            plain.append(_time_to_first_step([sys.executable, "-c", PLAIN_SCRIPT], env))
            trainkit_cmd[-1] = f"hydra.run.dir={tmp}/run{i}"
            tk.append(_time_to_first_step(trainkit_cmd, env))
            unforked_cmd[-1] = f"hydra.run.dir={tmp}/unforked{i}"
            unforked.append(_time_to_first_step(unforked_cmd, env))
    p, t, u = statistics.median(plain), statistics.median(tk), statistics.median(unforked)
    print(f"\nprocess start -> end of first training step (default recipe, median of {repeats})")
    print(f"  plain torch script   {p:6.2f} s")
    print(f"  trainkit fit         {t:6.2f} s   ({t - p:+.2f} s)")
    print(f"  ... composed first   {u:6.2f} s   ({u - p:+.2f} s; main() in a caller's process: no forked composition)")

    helps = []
    for _ in range(max(5, repeats)):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "trainkit", "--help"], cwd=ROOT, capture_output=True, check=True)
        helps.append(time.perf_counter() - start)
    bare = []
    for _ in range(max(5, repeats)):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], capture_output=True, check=True)
        bare.append(time.perf_counter() - start)
    print(f"\ntrainkit --help      {statistics.median(helps):6.3f} s   (python -c pass: {statistics.median(bare):.3f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is the steadiest to measure)")
    parser.add_argument("--skip-steps", action="store_true")
    parser.add_argument("--skip-startup", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_steps:
        bench_steps(args.repeats)
    if not args.skip_startup:
        bench_startup(args.repeats)


if __name__ == "__main__":
    main()
