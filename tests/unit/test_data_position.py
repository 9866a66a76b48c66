"""A run resumed mid-epoch continues with the batch it stopped at, without reading the batches
before it: by index in trainkit's sampler (DataLoader workers' random augmentation included),
through a loader's own state_dict, and else by reading them again with a line saying so."""
from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from trainkit import Trainer, TrainModule


class Augmented(Dataset):
    """Each read draws from python's, numpy's and torch's RNGs (as random augmentation does) and
    counts itself (in this process: with num_workers=0)."""

    def __init__(self, n: int = 96) -> None:
        self.x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
        self.reads: list[int] = []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        self.reads.append(i)
        noise = torch.randn(4) * 0.1 + random.random() + float(np.random.rand())
        x = self.x[i] + noise
        return x, x.sum(0, keepdim=True)


class Net(TrainModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))  # the main RNG too
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append(x)
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def fit(root, max_steps, loader, resume="none"):
    torch.manual_seed(0)
    module = Net()
    trainer = Trainer(accelerator="cpu", max_steps=max_steps, seed=0, logger=False, enable_progress_bar=False,
                      num_sanity_val_steps=0, default_root_dir=str(root), resume=resume)
    trainer.fit(module, train_dataloaders=loader)
    return module


@pytest.mark.parametrize("workers", [0, 2])
def test_a_mid_epoch_resume_starts_at_its_batch_and_is_exact(tmp_path, workers, caplog):
    def loader(data):
        return DataLoader(data, batch_size=8, shuffle=True, num_workers=workers)

    # 12 batches an epoch: stop at step 17 (batch 5 of epoch 1), go on to 22
    full = fit(tmp_path / "full", 22, loader(Augmented()))
    fit(tmp_path / "part", 17, loader(Augmented()))
    data = Augmented()
    with caplog.at_level(logging.INFO, logger="trainkit"):
        resumed = fit(tmp_path / "part", 22, loader(data), resume="auto")
    assert "resuming at batch 5 of epoch 1: the sampler starts there, nothing before it is read" in caplog.text
    if not workers:  # read in this process: only the 5 batches trained on
        assert len(data.reads) == 5 * 8
    assert len(resumed.seen) == 5
    for a, b in zip(full.seen[17:], resumed.seen):
        assert torch.equal(a, b)  # the same samples, the same augmentation
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


class Stateful:
    """A loader that holds its own position, as torchdata's StatefulDataLoader does; `sized=False`
    has no length (the loop reads it one batch ahead)."""

    def __init__(self, sized: bool, n: int = 10) -> None:
        self.batches = [t for t in torch.randn(n, 4, 4, generator=torch.Generator().manual_seed(1))]
        self.sized, self.next, self.reads, self.loaded = sized, 0, [], []

    def __len__(self) -> int:
        if not self.sized:
            raise TypeError("no length")
        return len(self.batches)

    def __iter__(self):
        while self.next < len(self.batches):
            self.next += 1
            self.reads.append(self.next - 1)
            x = self.batches[self.next - 1]
            yield x, x.sum(1, keepdim=True)
        self.next = 0

    def state_dict(self):
        return {"next": self.next}

    def load_state_dict(self, state):
        self.loaded.append(state)
        self.next = state["next"]


@pytest.mark.parametrize("sized", [True, False])
def test_a_loader_with_its_own_state_gets_it_back(tmp_path, sized):
    full = fit(tmp_path / "full", 8, Stateful(sized))
    fit(tmp_path / "part", 3, Stateful(sized))
    loader = Stateful(sized)
    resumed = fit(tmp_path / "part", 8, loader, resume="auto")
    assert loader.loaded == [{"next": 3}]  # saved after the 3rd batch (not the one read ahead)
    assert loader.reads[:5] == [3, 4, 5, 6, 7]
    for a, b in zip(full.seen[3:], resumed.seen):
        assert torch.equal(a, b)
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


class OwnOrder(SequentialSampler):
    """A sampler of the user's own: trainkit cannot jump in it."""


def test_a_loader_trainkit_cannot_position_is_read_again_with_a_line(tmp_path, caplog):
    def loader(data):
        return DataLoader(data, batch_size=8, sampler=OwnOrder(data))

    full = fit(tmp_path / "full", 9, loader(Augmented()))
    fit(tmp_path / "part", 4, loader(Augmented()))
    data = Augmented()
    with caplog.at_level(logging.INFO, logger="trainkit"):
        resumed = fit(tmp_path / "part", 9, loader(data), resume="auto")
    assert "resuming at batch 4 of epoch 0: this DataLoader cannot be positioned by index" in caplog.text
    assert "the 4 batches already trained on are read again; about" in caplog.text
    assert len(data.reads) == 9 * 8
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
