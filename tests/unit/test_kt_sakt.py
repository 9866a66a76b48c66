"""SAKT, and what it shares with DKT (objective.py): batch format, padding, logs, predictions."""
from __future__ import annotations

import functools
import typing

import pytest
import torch
import torch.nn.functional as F

from trainkit.recipes.knowledge_tracing.baselines import per_skill_prior_auc
from trainkit.recipes.knowledge_tracing.datamodule import KTDataModule, collate_kt, make_windows
from trainkit.recipes.knowledge_tracing.kt_lines import KTSequence, read_kt_lines
from trainkit.recipes.knowledge_tracing.model import DKT
from trainkit.recipes.knowledge_tracing.sakt import SAKT
from trainkit.recipes.knowledge_tracing.simulator import SimulatorConfig, cached_dataset
from trainkit import Trainer
from trainkit.errors import ConfigError

ADAMW = functools.partial(torch.optim.AdamW, lr=3e-3, weight_decay=0.01)
MODELS = {"SAKT": lambda: SAKT(num_skills=12, hidden_size=16, num_heads=4, max_len=30),
          "DKT": lambda: DKT(num_skills=12, hidden_size=16)}


def _random_windows(lengths, num_skills=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [KTSequence(torch.randint(0, num_skills, (n,), generator=g).numpy(),
                       torch.randint(0, 2, (n,), generator=g).numpy()) for n in lengths]


def _tensors(batch):
    return batch["skills"], batch["correct"]


def _fit(model, datamodule, **kwargs):
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu",
                      optimizer=ADAMW, **kwargs)
    trainer.fit(model, datamodule=datamodule)
    return trainer


def test_constructor_annotations_match_the_config_types():
    assert typing.get_type_hints(SAKT.__init__) == {
        "num_skills": int | None, "hidden_size": int, "num_heads": int, "num_layers": int, "dropout": float,
        "max_len": int, "return": type(None),
    }


@pytest.mark.parametrize("num_layers", [1, 2])
def test_logits_predict_each_next_step(num_layers):
    model = SAKT(num_skills=12, hidden_size=16, num_layers=num_layers, max_len=30)
    assert model(*_tensors(collate_kt(_random_windows([7, 30, 2])))).shape == (3, 29)


@pytest.mark.parametrize("name", MODELS)
def test_padding_leaves_real_predictions_unchanged(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    windows = _random_windows([9, 25, 4])
    batch = collate_kt(windows)  # padded to 25 steps
    # Five more padded steps, and random ids on every padded step: they would change the real
    # predictions if anything attended to them.
    g = torch.Generator().manual_seed(1)
    mask = torch.cat([batch["mask"], torch.zeros(3, 5, dtype=torch.bool)], dim=1)
    noisy_skills = torch.where(mask, F.pad(batch["skills"], (0, 5)), torch.randint(0, 12, mask.shape, generator=g))
    noisy_correct = torch.where(mask, F.pad(batch["correct"], (0, 5)), torch.randint(0, 2, mask.shape, generator=g))
    with torch.no_grad():
        alone = [model(*_tensors(collate_kt([window])))[0] for window in windows]
        together = model(*_tensors(batch))
        noisy = model(noisy_skills, noisy_correct)
    for row, prediction in enumerate(alone):
        steps = len(prediction)
        torch.testing.assert_close(together[row, :steps], prediction, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(noisy[row, :steps], prediction, rtol=1e-5, atol=1e-6)


def test_a_prediction_never_sees_its_own_answer_or_later_steps():
    torch.manual_seed(0)
    model = MODELS["SAKT"]().eval()
    (window,) = _random_windows([20])
    batch = collate_kt([window])
    changed = {key: value.clone() for key, value in batch.items()}
    changed["correct"][0, 10:] = 1 - changed["correct"][0, 10:]  # answers from step 10 on
    changed["skills"][0, 11:] = (changed["skills"][0, 11:] + 1) % 12  # skills asked after step 10
    with torch.no_grad():
        before = model(*_tensors(batch))
        after = model(*_tensors(changed))
    # Entry t predicts step t+1 from steps 0..t: entries 0..9 (answers 1..10) are unaffected.
    torch.testing.assert_close(after[0, :10], before[0, :10])
    assert not torch.allclose(after[0, 10:], before[0, 10:])


def test_runs_under_cpu_bf16_autocast():
    model = MODELS["SAKT"]()
    batch = collate_kt(_random_windows([30, 12]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(*_tensors(batch))
    assert logits.dtype == torch.bfloat16
    logits.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_trains_a_few_steps_with_the_shared_logs_and_predictions():
    data = KTDataModule(num_students=60, num_skills=10, max_len=40, batch_size=8)
    model = SAKT(num_skills=10, hidden_size=16, max_len=40)
    trainer = _fit(model, data, max_steps=5, precision="bf16-mixed", log_every_n_steps=1)
    assert trainer.global_step == 5
    assert {"train/loss", "val/loss", "val/auc", "val/acc"} <= set(trainer.callback_metrics)
    assert {"test/loss", "test/auc", "test/acc"} == set(trainer.test(model, datamodule=data)[0])
    batch = trainer.predict(model, datamodule=data)[0]
    assert set(batch) == {"prob", "mask"}
    assert batch["prob"].shape == batch["mask"].shape and batch["prob"].dtype == torch.float32
    assert ((batch["prob"] > 0) & (batch["prob"] < 1)).all()


def test_beats_the_per_skill_prior_after_two_epochs():
    torch.manual_seed(0)
    data = KTDataModule(num_students=1000, num_skills=50, max_len=100)
    trainer = _fit(SAKT(num_skills=50, max_len=100), data, max_epochs=2, gradient_clip_val=1.0)
    folder = cached_dataset(SimulatorConfig(num_students=1000, num_skills=50, seed=0), None)
    floor = per_skill_prior_auc(read_kt_lines(folder / "train.txt"),
                                make_windows(read_kt_lines(folder / "valid.txt"), 100))
    assert trainer.callback_metrics["val/auc"] > floor + 0.03


def test_bad_sizes_are_config_errors():
    with pytest.raises(ConfigError, match="model.num_heads=3"):
        SAKT(num_skills=10, hidden_size=16, num_heads=3)
    model = SAKT(num_skills=10, max_len=20)
    with pytest.raises(ConfigError, match="model.max_len=20"):
        model(*_tensors(collate_kt(_random_windows([21], num_skills=10))))
