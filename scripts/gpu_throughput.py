"""Tokens/s of trainkit's Trainer against a hand-written torch loop, on the tiny GPT recipe's model.

    python scripts/gpu_throughput.py                                   # one GPU: the 86M shape, compiled
    python scripts/gpu_throughput.py --device cpu --shape tiny --steps 4 --warmup 2 --no-compile   # dry run

Both train the same model (recipes/tiny_gpt, `--shape 86m` is the README's GPT-2-small override
set: 12 layers, width 768, 12 heads, context 1024, dropout 0.1) on the same random byte windows
with the same AdamW, clipping at 1.0, a loss read every 50 steps, pinned batches copied with
non_blocking. The hand loop runs bf16 autocast; trainkit runs each `--precision` given. Time is
taken over `--steps` steps after `--warmup` (compilation happens there), the device synchronised
at both ends only. The ratio trainkit / hand is the figure to watch (target >= 0.97).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from trainkit import Callback, Trainer  # noqa: E402
from trainkit.recipes.tiny_gpt.datamodule import collate_windows  # noqa: E402
from trainkit.recipes.tiny_gpt.model import TinyGPT  # noqa: E402

SHAPES = {
    "86m": {"num_layers": 12, "hidden_size": 768, "num_heads": 12, "block_size": 1024, "dropout": 0.1},
    "tiny": {"num_layers": 2, "hidden_size": 64, "num_heads": 2, "block_size": 64, "dropout": 0.1},
}
LOG_EVERY = 50


class Windows(Dataset):
    """Random bytes cut into windows of block_size + 1 (the recipe's training items)."""

    def __init__(self, count: int, block_size: int) -> None:
        self.tokens = torch.randint(0, 256, (count, block_size + 1), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i):
        return {"input": self.tokens[i, :-1], "target": self.tokens[i, 1:]}


def optimizer(params):
    return torch.optim.AdamW(params, lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def loader(args) -> DataLoader:
    shape = SHAPES[args.shape]
    data = Windows((args.warmup + args.steps) * args.batch_size, shape["block_size"])
    return DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True, collate_fn=collate_windows,
                      pin_memory=args.device == "cuda", num_workers=2 if args.device == "cuda" else 0)


def hand_loop(args) -> float:
    torch.manual_seed(0)
    model = TinyGPT(**SHAPES[args.shape]).to(args.device)
    opt = optimizer(model.parameters())
    step_fn = torch.compile(model) if args.compile else model
    start = None
    for step, batch in enumerate(loader(args)):
        if step == args.warmup:
            sync(args.device)
            start = time.perf_counter()
        x = batch["input"].to(args.device, non_blocking=True)
        y = batch["target"].to(args.device, non_blocking=True)
        with torch.autocast(args.device, dtype=torch.bfloat16):
            logits = step_fn(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % LOG_EVERY == 0:
            loss.item()
    sync(args.device)
    return time.perf_counter() - start


class Clock(Callback):
    def __init__(self, warmup: int, device: str) -> None:
        self.warmup, self.device = warmup, device
        self.start = self.end = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, module):
        sync(self.device)
        self.end = time.perf_counter()


def trainkit_loop(args, precision: str) -> float:
    torch.manual_seed(0)
    clock = Clock(args.warmup, args.device)
    trainer = Trainer(accelerator="gpu" if args.device == "cuda" else "cpu", precision=precision,
                      compile=args.compile, max_steps=args.warmup + args.steps, gradient_clip_val=1.0,
                      log_every_n_steps=LOG_EVERY, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      default_root_dir=args.root, optimizer=optimizer, callbacks=[clock])
    trainer.fit(TinyGPT(**SHAPES[args.shape]), train_dataloaders=loader(args))
    return clock.end - clock.start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--shape", default="86m", choices=list(SHAPES))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--precision", nargs="+", default=["bf16-mixed", "16-mixed"])
    parser.add_argument("--root", default=str(ROOT / "outputs" / "gpu_throughput"))
    args = parser.parse_args()
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    tokens = args.steps * args.batch_size * SHAPES[args.shape]["block_size"]
    params = TinyGPT(**SHAPES[args.shape]).num_parameters()
    print(f"torch {torch.__version__}, {args.device}, {params / 1e6:.1f}M parameters, batch {args.batch_size} x "
          f"{SHAPES[args.shape]['block_size']}, {args.steps} timed steps after {args.warmup}, compile={args.compile}")
    hand = tokens / hand_loop(args)
    print(f"  hand-written bf16 loop   {hand:12,.0f} tokens/s")
    for precision in args.precision:
        ours = tokens / trainkit_loop(args, precision)
        print(f"  trainkit {precision:15s} {ours:12,.0f} tokens/s   ratio {ours / hand:.3f} (target >= 0.97)")


if __name__ == "__main__":
    main()
