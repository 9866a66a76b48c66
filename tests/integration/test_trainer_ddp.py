"""A Lightning script, only its imports changed, under torchrun or in an srun step:
`Trainer(strategy="ddp", devices=2)` joins the process group its launcher's environment describes, trains as one process with the same
global batch does, and the processes leave with exit code 0."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from tests.integration.test_slurm import slurm_cluster  # noqa: F401 - the fixture

SCRIPT = '''
import sys
import torch
import trainkit as L
from torch.utils.data import DataLoader, TensorDataset


class Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Data(L.LightningDataModule):
    def __init__(self, batch_size):
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 4, generator=g)
        self.train = TensorDataset(x, x.sum(1, keepdim=True) + 0.1 * torch.randn(64, 1, generator=g))

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.batch_size)  # in order: the shards interleave


if __name__ == "__main__":
    out, devices = sys.argv[1], int(sys.argv[2])
    L.seed_everything(0)
    model = Regression()
    trainer = L.Trainer(strategy="ddp" if devices > 1 else "auto", devices=devices, accelerator="cpu",
                        max_steps=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=out)
    torch.save(model.state_dict(), f"{out}/init.pt")
    trainer.fit(model, Data(batch_size=8 // devices))  # the global batch is 8 either way
    if trainer.is_global_zero:
        torch.save(model.state_dict(), f"{out}/weights{devices}.pt")
'''


def _run(args: list[str], tmp_path) -> None:
    result = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(SCRIPT)
    return path


def _same_training(tmp_path) -> None:
    two, one = torch.load(tmp_path / "weights2.pt"), torch.load(tmp_path / "weights1.pt")
    init = torch.load(tmp_path / "init.pt")
    assert (two["layer.weight"] - init["layer.weight"]).abs().max() > 0.1  # it trained
    for key in one:
        # Not bit for bit: DDP averages two means of 4 samples where one process takes one mean of
        # 8, so the float32 sums round differently; the difference stays at float32 rounding.
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-6)


def test_lightning_script_under_torchrun_trains_as_one_process(script, tmp_path):
    _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(tmp_path), "2"],
         tmp_path)
    _run([str(script), str(tmp_path), "1"], tmp_path)
    _same_training(tmp_path)


@pytest.mark.slurm
def test_lightning_script_in_an_srun_step_trains_as_one_process(slurm_cluster, script, tmp_path):  # noqa: F811
    result = subprocess.run(["srun", "-N1", "-n2", "--export=ALL", sys.executable, str(script), str(tmp_path), "2"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=180,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    _run([str(script), str(tmp_path), "1"], tmp_path)
    _same_training(tmp_path)
