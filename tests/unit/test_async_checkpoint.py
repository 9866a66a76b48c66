"""trainer.async_checkpoint: training goes on while a checkpoint is written; the folder is
published (manifest, rename, `last`) only once the write is complete; a second save waits for
the first; what is written is the state at the step of the save."""
from __future__ import annotations

import os
import time

import torch
from torch.utils.data import DataLoader

from tests.unit.test_data_position import Augmented, Net
from trainkit import Trainer, checkpoint
from trainkit.callbacks import ModelCheckpoint


def fit(root, async_checkpoint, monkeypatch=None, seen=None):
    torch.manual_seed(0)
    module = Net()
    keep_all = ModelCheckpoint(every_n_train_steps=4, save_top_k=-1)
    trainer = Trainer(accelerator="cpu", max_steps=12, seed=0, logger=False, enable_progress_bar=False,
                      num_sanity_val_steps=0, default_root_dir=str(root), callbacks=[keep_all],
                      async_checkpoint=async_checkpoint)
    if monkeypatch is not None:
        ckpts = root / "checkpoints"
        write_manifest, save_async = checkpoint._write_manifest, checkpoint.save_async

        def slow_manifest(folder):  # in DCP's writer thread, once the shards are written
            time.sleep(0.3)  # a slow disk: the training steps go on meanwhile
            last = os.path.realpath(ckpts / "last") if os.path.lexists(ckpts / "last") else None
            seen.append(("publish", os.path.basename(folder), trainer.global_step, last))
            write_manifest(folder)

        def save_started(directory, name, **kwargs):
            unfinished = [p for p in os.listdir(directory) if p.startswith(".tmp-")]
            seen.append(("save", name, trainer.global_step, unfinished))
            return save_async(directory, name, **kwargs)

        monkeypatch.setattr(checkpoint, "_write_manifest", slow_manifest)
        monkeypatch.setattr(checkpoint, "save_async", save_started)
    trainer.fit(module, train_dataloaders=DataLoader(Augmented(), batch_size=8, shuffle=True))
    return trainer


def test_an_async_checkpoint_is_published_when_complete_while_training_goes_on(tmp_path, monkeypatch):
    seen = []
    fit(tmp_path / "sync", False)
    fit(tmp_path / "async", True, monkeypatch, seen)
    saves = [e for e in seen if e[0] == "save"]
    publishes = {e[1].removeprefix(".tmp-"): e for e in seen if e[0] == "publish"}
    assert [e[1] for e in saves] == ["epoch=0-step=4", "epoch=0-step=8", "epoch=0-step=12"]
    assert all(e[3] == [] for e in saves)  # each save began after the one before was published
    _, _, step_at_publish, last_then = publishes["epoch=0-step=4"]
    assert step_at_publish > 4  # the steps after the save ran while it was written
    assert last_then is None  # ... and `last` had not moved yet
    assert publishes["epoch=0-step=8"][3].endswith("epoch=0-step=4")
    ckpts = tmp_path / "async" / "checkpoints"
    assert (ckpts / "last").resolve().name == "epoch=0-step=12"
    for name in ("epoch=0-step=4", "epoch=0-step=8", "epoch=0-step=12"):
        assert checkpoint.verify(str(ckpts / name)) is None
        a, b = Net(), Net()
        checkpoint.load_model_weights(str(ckpts / name), a)
        checkpoint.load_model_weights(str(tmp_path / "sync" / "checkpoints" / name), b)
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values())), name
