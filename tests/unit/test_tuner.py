"""The tuners on the DKT recipe with small data: real Trainer steps, and the state left as found."""
from __future__ import annotations

import csv
import functools

import pytest
import torch

from trainkit.recipes.knowledge_tracing.datamodule import KTDataModule
from trainkit.recipes.knowledge_tracing.model import DKT
from trainkit.engine.trainer import Trainer
from trainkit.tuner import tuner_overrides
from trainkit.tuner.batch_size_find import batch_size_find
from trainkit.tuner.lr_find import lr_find


def _trained(tmp_path, model_class=DKT, clip=1.0):
    """A DKT after 3 real steps (SMALL_DATA: 300 students, batch 16): its optimizer has state."""
    torch.manual_seed(0)
    datamodule = KTDataModule(num_students=300, batch_size=16)
    model = model_class(num_skills=50, hidden_size=32)
    trainer = Trainer(max_steps=3, limit_val_batches=0, seed=0, gradient_clip_val=clip, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, default_root_dir=str(tmp_path),
                      optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    trainer.fit(model, datamodule=datamodule)
    return trainer, model, datamodule


def _snapshot(trainer, model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            _clone(trainer.optimizer.state_dict()), torch.get_rng_state())


def _clone(obj):
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    return obj


def _assert_same(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_lr_find_suggests_a_tried_lr_and_leaves_model_and_optimizer_as_they_were(tmp_path):
    trainer, model, datamodule = _trained(tmp_path)
    assert trainer.optimizer.state  # AdamW moments of the 3 steps: something that could be disturbed
    before = _snapshot(trainer, model)

    result = lr_find(trainer, model, datamodule=datamodule, min_lr=1e-5, max_lr=0.5, num_training=30)

    assert len(result.lrs) == len(result.losses) == len(result.smoothed) <= 30
    assert result.lrs[0] == pytest.approx(1e-5) and all(b > a for a, b in zip(result.lrs, result.lrs[1:]))
    assert result.suggestion is not None and 1e-5 <= result.suggestion <= 0.5
    assert result.suggestion in result.lrs and result.override() == f"optimizer.lr={result.suggestion:.3g}"
    _assert_same(before[0], model.state_dict(), "model")
    _assert_same(before[1], trainer.optimizer.state_dict(), "optimizer")
    assert torch.equal(before[2], torch.get_rng_state())
    assert model.trainer is trainer  # still linked to its own trainer

    result.to_csv(str(tmp_path / "lr_find.csv"))
    rows = list(csv.DictReader(open(tmp_path / "lr_find.csv")))
    assert len(rows) == len(result.lrs) and sum(int(r["suggested"]) for r in rows) == 1
    assert len(result.sparkline()) == len(result.lrs)


def test_lr_find_stops_early_when_the_loss_diverges(tmp_path):
    trainer, model, datamodule = _trained(tmp_path, clip=None)
    result = lr_find(trainer, model, datamodule=datamodule, min_lr=1e-3, max_lr=1e4, num_training=60)
    assert result.diverged and len(result.lrs) < 60
    assert result.suggestion is None or result.suggestion < result.lrs[-1]


def test_batch_size_find_terminates_and_reports_each_size(tmp_path):
    trainer, model, datamodule = _trained(tmp_path)
    before = _snapshot(trainer, model)
    result = batch_size_find(trainer, model, datamodule, init_batch_size=8, max_batch_size=64, steps_per_trial=2)
    sizes = [t.batch_size for t in result.trials]
    assert sizes[0] == 8 and sizes == [8 * 2**i for i in range(len(sizes))] and sizes[-1] <= 64
    assert all(t.fits and t.samples_per_s > 0 for t in result.trials)
    assert result.batch_size in sizes and result.largest_fit == sizes[-1] and result.reason
    assert datamodule.batch_size == 16  # put back
    _assert_same(before[0], model.state_dict(), "model")
    _assert_same(before[1], trainer.optimizer.state_dict(), "optimizer")
    report = result.report()
    assert all(str(s) in report for s in sizes) and result.override() in report


class _SmallMemoryDKT(DKT):
    """A DKT on a pretend device that runs out of memory above 40 sequences per batch."""

    def training_step(self, batch, batch_idx):
        if batch["skills"].shape[0] > 40:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().training_step(batch, batch_idx)


def test_batch_size_find_binary_searches_after_out_of_memory(tmp_path):
    trainer, model, datamodule = _trained(tmp_path, model_class=_SmallMemoryDKT)
    result = batch_size_find(trainer, model, datamodule, init_batch_size=8, max_batch_size=1024, steps_per_trial=2,
                             stop_on_plateau=False)
    tried = [(t.batch_size, t.fits) for t in result.trials]
    assert tried[:4] == [(8, True), (16, True), (32, True), (64, False)]
    assert all(fits == (size <= 40) for size, fits in tried)
    assert result.reason == "out of memory at 64" and result.largest_fit == result.batch_size
    assert 36 <= result.batch_size <= 40  # within 1/8 of the true limit, from below


def test_bare_tuner_keys_mean_the_tuner_node():
    assert tuner_overrides(["lr=true", "batch_size=true", "min_lr=1e-5", "optimizer.lr=3e-3", "-m"]) == [
        "tuner.lr=true", "tuner.batch_size=true", "tuner.min_lr=1e-5", "optimizer.lr=3e-3", "-m"]
