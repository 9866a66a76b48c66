"""What a checkpoint costs: save and load time, as multiples of one training step.

    python scripts/bench_checkpoint.py            # DKT (the default recipe) and a ~100M-parameter GPT

The goal is that checkpointing every few hundred steps costs under 1% of training time: the
script prints the save time as a fraction of N steps for N = 100, 300, 1000. A save here is the
whole thing trainkit does: DCP write of model + optimizer, trainer and RNG state, fsync, sha256
manifest, atomic rename, `last` moved. Load = manifest verification + DCP read + set_state_dict.
"""
from __future__ import annotations

import argparse
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
    """A GPT-2-small-shaped decoder (12 layers, width 768, 50257-token vocabulary): ~124M parameters."""

    def __init__(self, vocab: int = 50257, width: int = 768, layers: int = 12, heads: int = 12, context: int = 256):
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(context, width)
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx):
        t = idx.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        x = self.tok(idx) + self.pos(torch.arange(t))
        return self.head(self.blocks(x, mask=mask, is_causal=True))


def dkt_case():
    from trainkit.recipes.knowledge_tracing.model import DKT

    model = DKT(num_skills=110, hidden_size=64)
    batch = {"skills": torch.randint(0, 110, (32, 100)), "correct": torch.randint(0, 2, (32, 100)),
             "mask": torch.ones(32, 100, dtype=torch.bool)}

    def step_loss():
        hidden = model.lstm(model.embed(batch["skills"] + 110 * batch["correct"]))[0]
        logits = model.head(hidden)[:, :-1].gather(-1, batch["skills"][:, 1:, None]).squeeze(-1)
        return F.binary_cross_entropy_with_logits(logits, batch["correct"][:, 1:].float())

    return model, step_loss


def gpt_case():
    model = GPT()
    idx = torch.randint(0, 50257, (4, 128))

    def step_loss():
        logits = model(idx[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))

    return model, step_loss


def measure(name: str, case, repeats: int) -> None:
    model, step_loss = case()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    params = sum(p.numel() for p in model.parameters())
    step_times = []
    for i in range(4):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        step_loss().backward()
        optimizer.step()
        if i:  # the first step allocates optimizer state
            step_times.append(time.perf_counter() - start)
    step = statistics.median(step_times)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-gpt", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.repeats}")
    measure("DKT (110 skills, hidden 64, batch 32x100)", dkt_case, args.repeats)
    if not args.skip_gpt:
        measure("GPT (12 x 768, vocab 50257, batch 4x128)", gpt_case, args.repeats)


if __name__ == "__main__":
    main()
