"""A user's project, written into a folder outside the repository: its own package (a tiny regressor
and its data), its own config options beside trainkit's, and one option that replaces a built-in."""
from __future__ import annotations

from pathlib import Path

from tests.conftest import ROOT

FILES = {
    "mypkg/__init__.py": "",
    "mypkg/model.py": '''
import torch.nn.functional as F
from torch import nn

from trainkit import TrainModule


class TinyRegressor(TrainModule):
    def __init__(self, in_features: int = 8, hidden: int = 16, fail: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.fail = fail

    def forward(self, x):
        return self.net(x).squeeze(-1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.fail:
            raise ValueError("the project's own bug")
        loss = F.mse_loss(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", F.mse_loss(self(x), y), batch_size=len(y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/loss", F.mse_loss(self(x), y), batch_size=len(y))
''',
    "mypkg/data.py": '''
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainkit import DataModule


class RandomRegression(DataModule):
    def __init__(self, n: int = 256, in_features: int = 8, batch_size: int = 16, seed: int = 0) -> None:
        self.n, self.in_features, self.batch_size, self.seed = n, in_features, batch_size, seed

    def setup(self, stage: str) -> None:
        g = torch.Generator().manual_seed(self.seed)
        x = torch.randn(self.n, self.in_features, generator=g)
        y = x @ torch.randn(self.in_features, generator=g) + 0.1 * torch.randn(self.n, generator=g)
        cut = self.n * 3 // 4
        self.train, self.val = TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=self.batch_size)

    test_dataloader = val_dataloader
''',
    "configs/model/tiny.yaml": "_target_: mypkg.model.TinyRegressor\nin_features: ${datamodule.in_features}\nhidden: 16\n",
    "configs/model/broken.yaml": "_target_: mypkg.nothing_here.Model\n",
    "configs/datamodule/tiny.yaml": "_target_: mypkg.data.RandomRegression\nn: 256\nin_features: 8\nbatch_size: 16\n",
    "configs/experiment/tiny.yaml": '''# @package _global_
defaults:
  - override /model: tiny
  - override /datamodule: tiny
callbacks:
  model_checkpoint: {monitor: val/loss, mode: min}
  early_stopping: {monitor: val/loss, mode: min}
trainer:
  max_epochs: 2
  log_every_n_steps: 1
''',
    # Same name as a built-in option: the project's wins (metrics.csv only, no TensorBoard files).
    "configs/logger/default.yaml": "defaults:\n  - csv\n",
}


def write_project(root: Path) -> Path:
    for rel, text in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.lstrip("\n"))
    (root / "work").mkdir()  # runs start below the project root: trainkit walks up to find it
    return root


def project_env() -> dict[str, str]:
    """trainkit from this checkout; nothing of the project on PYTHONPATH (trainkit must find it)."""
    return {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

