"""A training step reads nothing back from the device unless the user asked: the calls that wait
for a GPU (`Tensor.item`, `bool`, `float`, `int`, `tolist`, `numpy`) are counted on CPU per batch,
where they would cost the same on a GPU."""
from __future__ import annotations

import collections
import traceback

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainkit import Callback, Trainer, TrainModule

READS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy")


class Net(TrainModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.1), nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=0.01)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 5)}


class CountReads(Callback):
    """Counts the device reads of each training batch (its forward, backward, step, logging and
    the batch-end callbacks that run before this one's), by the file that made them."""

    def __init__(self, monkeypatch):
        self.active, self.per_batch = False, []
        for name in READS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, original))

    def _counting(self, name, original):
        def read(tensor, *args, **kwargs):
            caller = traceback.extract_stack(limit=2)[0].filename
            # torch.optim keeps its step counts on the host (unless capturable): never a GPU wait
            if self.active and "torch/optim/" not in caller:
                self.per_batch[-1][caller.rsplit("/", 1)[-1]] += 1
            return original(tensor, *args, **kwargs)
        return read

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.per_batch.append(collections.Counter())
        self.active = True

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.active = False


@pytest.mark.parametrize("precision", ["32", "16-mixed"])
def test_a_training_step_reads_the_device_only_at_log_steps(tmp_path, monkeypatch, precision):
    x = torch.randn(96, 4, generator=torch.Generator().manual_seed(0))
    reads = CountReads(monkeypatch)
    trainer = Trainer(accelerator="cpu", max_steps=24, log_every_n_steps=6, precision=precision,
                      gradient_clip_val=1.0, accumulate_grad_batches=2, num_sanity_val_steps=0,
                      default_root_dir=str(tmp_path), callbacks=[reads])
    trainer.fit(Net(), DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=2, shuffle=True))
    assert len(reads.per_batch) == 48
    for batch, counts in enumerate(reads.per_batch):
        # the GradScaler's own check, to skip the step (torch reads found_inf once per optimizer step)
        own = {"grad_scaler.py": 1} if precision == "16-mixed" and batch % 2 else {}
        logged = batch % 12 == 11  # the last micro-batch of every 6th optimizer step
        if logged:  # the non-finite check and the step's metrics: a few reads, once per logged step
            assert sum(counts.values()) - sum(own.values()) <= 5, (batch, counts)
        else:
            assert counts == collections.Counter(own), (batch, counts)
