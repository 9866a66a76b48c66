"""What a mid-epoch resume costs in data work: resume at batch 10,000 of a 20,000-batch epoch.

    python scripts/bench_resume.py                  # batch 32, map-style dataset, no workers
    python scripts/bench_resume.py --workers 2 --sample-us 20

One run trains to step 10,000 and saves; the same checkpoint is then resumed twice, timing
`trainer.fit` from its call to the start of the first batch it trains on:
  by index   the loader as trainkit distributes it (its own sampler starts at batch 10,000;
             nothing before it is read)
  re-read    the same data behind a sampler of the user's own, which trainkit cannot position:
             the 10,000 consumed batches are loaded again (what every resume did before)
`--sample-us` adds that much busy work to each sample read (decoding, augmentation).
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset, SequentialSampler  # noqa: E402

from trainkit import Callback, Trainer, TrainModule  # noqa: E402


class Samples(Dataset):
    def __init__(self, n: int, cost_s: float) -> None:
        self.x = torch.randn(n, 8, generator=torch.Generator().manual_seed(0))
        self.cost_s = cost_s

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        if self.cost_s:
            end = time.perf_counter() + self.cost_s
            while time.perf_counter() < end:
                pass
        return self.x[i], self.x[i].sum(0, keepdim=True)


class Linear(TrainModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class FirstBatch(Callback):
    def __init__(self):
        self.at = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.at is None:
            self.at = time.perf_counter()


class OwnOrder(SequentialSampler):
    """A sampler trainkit does not know (so it cannot jump in it)."""


def fit(root: Path, max_steps: int, loader, resume: str) -> float:
    first = FirstBatch()
    trainer = Trainer(accelerator="cpu", max_steps=max_steps, seed=0, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(root),
                      resume=resume, callbacks=[first], checkpoint_every_n_steps=None)
    start = time.perf_counter()
    trainer.fit(Linear(), train_dataloaders=loader)
    return first.at - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=20_000, help="batches in the epoch")
    parser.add_argument("--at", type=int, default=10_000, help="the batch to resume at")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--sample-us", type=float, default=0.0, help="busy work per sample read")
    args = parser.parse_args()
    logging.getLogger("trainkit").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    data = Samples(args.batches * args.batch_size, args.sample_us * 1e-6)

    def loader(own_order: bool) -> DataLoader:
        sampler = OwnOrder(data) if own_order else None
        return DataLoader(data, batch_size=args.batch_size, shuffle=not own_order, sampler=sampler,
                          num_workers=args.workers)

    print(f"torch {torch.__version__}; epoch of {args.batches} batches of {args.batch_size}, resume at batch "
          f"{args.at}, {args.workers} workers, {args.sample_us:g} us of work per sample")
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "saved"
        began = time.perf_counter()
        fit(saved, args.at, loader(own_order=False), "none")
        print(f"  trained {args.at} steps to make the checkpoint in {time.perf_counter() - began:.1f} s")
        for name, own_order in (("by index", False), ("re-read", True)):
            run = Path(tmp) / name.replace(" ", "-")
            shutil.copytree(saved, run, symlinks=True)
            seconds = fit(run, args.at + 1, loader(own_order), "auto")
            print(f"  {name:9s} fit() -> first resumed batch: {seconds:8.3f} s")


if __name__ == "__main__":
    main()
