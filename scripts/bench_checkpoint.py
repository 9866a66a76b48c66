"""What a checkpoint costs: save and load time, as multiples of one training step.

    python scripts/bench_checkpoint.py            # DKT (the default recipe) and the 162M-parameter GPT
    python scripts/bench_checkpoint.py --device cuda

The goal is that checkpointing every few hundred steps costs under 1% of training time: the
script prints the save time as a fraction of N steps for N = 100, 300, 1000. A save here is the
whole thing trainkit does: DCP write of model + optimizer, trainer and RNG state, fsync, sha256
manifest, atomic rename, `last` moved. Load = manifest verification + DCP read + set_state_dict.

Then the training step's stall during a save, sync against async (trainer.async_checkpoint):
the time of the step that saves beyond a plain step, and for async also what the steps taken
while the shards are written lose to the writer thread, and how long the write takes.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from trainkit import checkpoint  # noqa: E402
from trainkit.engine.rng import capture_rng  # noqa: E402


class GPT(nn.Module):
    """A GPT-2-small-shaped decoder (12 layers, width 768, 50257-token vocabulary, head not tied to
    the embedding): 162M parameters."""

    def __init__(self, vocab: int = 50257, width: int = 768, layers: int = 12, heads: int = 12, context: int = 256):
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(context, width)
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx):
        t = idx.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=idx.device)
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        return self.head(self.blocks(x, mask=mask, is_causal=True))


def dkt_case(device: str = "cpu"):
    from trainkit.recipes.knowledge_tracing.model import DKT

    model = DKT(num_skills=110, hidden_size=64).to(device)
    batch = {"skills": torch.randint(0, 110, (32, 100), device=device),
             "correct": torch.randint(0, 2, (32, 100), device=device),
             "mask": torch.ones(32, 100, dtype=torch.bool, device=device)}

    def step_loss():
        hidden = model.lstm(model.embed(batch["skills"] + 110 * batch["correct"]))[0]
        logits = model.head(hidden)[:, :-1].gather(-1, batch["skills"][:, 1:, None]).squeeze(-1)
        return F.binary_cross_entropy_with_logits(logits, batch["correct"][:, 1:].float())

    return model, step_loss


def gpt_case(device: str = "cpu"):
    model = GPT().to(device)
    idx = torch.randint(0, 50257, (4, 128), device=device)

    def step_loss():
        logits = model(idx[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))

    return model, step_loss


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(name: str, case, repeats: int, device: str) -> None:
    model, step_loss = case(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    params = sum(p.numel() for p in model.parameters())

    def train_step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        step_loss().backward()
        optimizer.step()
        _sync(device)
        return time.perf_counter() - start

    step = statistics.median([train_step() for _ in range(4)][1:])  # the first allocates optimizer state
    trainer_state = {"progress": {"global_step": 1000}, "lr_scheduler": None}
    saves, loads = [], []
    with tempfile.TemporaryDirectory(dir=ROOT) as root:
        for i in range(repeats):
            start = time.perf_counter()
            path = checkpoint.save(root, f"epoch=0-step={i}", model=model, optimizers=[optimizer],
                                   trainer_state=trainer_state, rank_state={"rng": capture_rng()})
            saves.append(time.perf_counter() - start)
            start = time.perf_counter()
            assert checkpoint.verify(path) is None
            checkpoint.load(path, model, [optimizer])
            loads.append(time.perf_counter() - start)
            size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
            checkpoint.remove(path)
    save, load = statistics.median(saves), statistics.median(loads)
    print(f"\n{name}: {params / 1e6:.1f}M parameters, checkpoint {size / 2**20:.1f} MiB, one training step {step * 1e3:.1f} ms")
    print(f"  save {save * 1e3:8.1f} ms = {save / step:6.2f} steps   load {load * 1e3:8.1f} ms = {load / step:6.2f} steps")
    print("  save as a share of training time, saving every N steps: " +
          ", ".join(f"N={n}: {save / (save + n * step):.2%}" for n in (100, 300, 1000)))
    stall(model, optimizer, train_step, trainer_state, repeats, device)


def stall(model, optimizer, train_step, trainer_state, repeats: int, device: str) -> None:
    """The save step's time beyond a plain step, sync and async; async: the write's own time and
    what the steps taken meanwhile lose."""
    step = statistics.median([train_step() for _ in range(3)])
    rows: dict[str, list[tuple[float, float, float, int]]] = {"sync": [], "async": []}
    with tempfile.TemporaryDirectory(dir=ROOT) as root:
        for i in range(repeats):
            for mode in ("sync", "async"):
                name = f"epoch=0-step={mode}{i}"
                start = time.perf_counter()
                if mode == "sync":
                    checkpoint.save(root, name, model=model, optimizers=[optimizer], trainer_state=trainer_state,
                                    rank_state={"rng": capture_rng()})
                else:
                    pending = checkpoint.save_async(root, name, model=model, optimizers=[optimizer],
                                                    trainer_state=trainer_state, rank_state={"rng": capture_rng()})
                train_step()
                save_step = time.perf_counter() - start
                steps, lost = 0, 0.0
                if mode == "async":
                    while not pending.done():
                        lost += train_step() - step
                        steps += 1
                    pending.wait()
                written = time.perf_counter() - start
                rows[mode].append((save_step - step, lost, written, steps))
                checkpoint.remove(os.path.join(root, name))
    for mode, runs in rows.items():
        stall_s = statistics.median(r[0] for r in runs)
        line = f"  {mode:5s} save: the saving step takes {stall_s * 1e3:8.1f} ms more than a step ({stall_s / step:5.2f} steps)"
        if mode == "async":
            lost = statistics.median(r[1] for r in runs)
            line += (f"; published {statistics.median(r[2] for r in runs) * 1e3:.0f} ms after the save began, "
                     f"{statistics.median(r[3] for r in runs):.0f} steps trained meanwhile lost {lost * 1e3:.1f} ms")
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-gpt", action="store_true")
    parser.add_argument("--skip-dkt", action="store_true")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}; medians of {args.repeats}")
    if not args.skip_dkt:
        measure("DKT (110 skills, hidden 64, batch 32x100)", dkt_case, args.repeats, args.device)
    if not args.skip_gpt:
        measure("GPT (12 x 768, vocab 50257, batch 4x128)", gpt_case, args.repeats, args.device)


if __name__ == "__main__":
    main()
