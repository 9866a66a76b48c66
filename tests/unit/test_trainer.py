"""The Trainer's loops, against hand-written torch and against their own contracts."""
from __future__ import annotations

import copy
import csv
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainkit import Callback, Trainer, TrainModule
from trainkit.callbacks import EarlyStopping, ModelCheckpoint
from trainkit.engine.seed import seed_everything
from trainkit.loggers import CSVLogger


class Regressor(TrainModule):
    """Linear 32 -> 32 -> 1 with an MSE loss: small enough to check every number."""

    def __init__(self, lr: float = 0.05):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
        self.lr = lr
        self.val_calls = 0

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", F.mse_loss(self(x), y), batch_size=len(x))

    def on_validation_epoch_end(self):
        self.val_calls += 1

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/loss", F.mse_loss(self(x), y), batch_size=len(x))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def make_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 32, generator=g)
    y = x[:, :4].sum(dim=1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def quiet_trainer(**kwargs) -> Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("enable_progress_bar", False)
    kwargs.setdefault("num_sanity_val_steps", 0)  # these tests count validations; the sanity check adds one
    return Trainer(accelerator="cpu", **kwargs)


def test_parity_with_a_hand_written_loop_is_bit_exact():
    steps, seed = 40, 7
    data = make_data()

    # The hand-written loop shuffles as trainkit documents: one permutation per epoch from a
    # generator seeded with seed + epoch, cut into batches (trainkit.engine.samplers).
    seed_everything(3)
    ref = Regressor()
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    done, epoch = 0, 0
    while done < steps:
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed + epoch))
        for start in range(0, len(data), 16):
            x, y = data[order[start : start + 16]]
            ref_opt.zero_grad(set_to_none=True)
            F.mse_loss(ref(x), y).backward()
            ref_opt.step()
            done += 1
            if done == steps:
                break
        epoch += 1

    seed_everything(3)
    module = Regressor()
    module.configure_optimizers = lambda: torch.optim.Adam(module.parameters(), lr=1e-2)
    quiet_trainer(max_steps=steps, seed=seed).fit(module, train_dataloaders=DataLoader(data, batch_size=16, shuffle=True))

    for (name, a), b in zip(ref.state_dict().items(), module.state_dict().values()):
        assert torch.equal(a, b), name


def test_an_unshuffled_loader_keeps_its_order_and_its_last_partial_batch():
    seen = []

    class Record(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append(batch[0][:, 0].clone())

    data = make_data(n=40)
    quiet_trainer(max_epochs=1, callbacks=[Record()]).fit(Regressor(), train_dataloaders=DataLoader(data, batch_size=16))
    assert [len(b) for b in seen] == [16, 16, 8]
    assert torch.equal(torch.cat(seen), data.tensors[0][:, 0])


def test_gradient_accumulation_equals_one_larger_batch():
    data = make_data(n=128)
    seed_everything(0)
    big = Regressor()
    small = copy.deepcopy(big)
    # 4 optimizer steps: batches of 32 vs 4 micro-batches of 8.
    quiet_trainer(max_steps=4).fit(big, train_dataloaders=DataLoader(data, batch_size=32))
    quiet_trainer(max_steps=4, accumulate_grad_batches=4).fit(small, train_dataloaders=DataLoader(data, batch_size=8))
    for a, b in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(big.net[0].weight, Regressor().net[0].weight)


def test_partial_last_accumulation_window_is_averaged_over_its_own_batches():
    # 5 batches with k=2: windows of 2, 2 and 1; the lone last batch must not be halved.
    data = make_data(n=40)
    seed_everything(0)
    a = Regressor()
    b = copy.deepcopy(a)
    quiet_trainer(max_epochs=1, accumulate_grad_batches=2).fit(a, train_dataloaders=DataLoader(data, batch_size=8))
    # The same three updates by hand: batches (0,1), (2,3), (4).
    batches = list(DataLoader(data, batch_size=16))[:2] + [list(DataLoader(data, batch_size=8))[4]]
    opt = torch.optim.SGD(b.parameters(), lr=b.lr)
    for x, y in batches:
        opt.zero_grad()
        F.mse_loss(b(x), y).backward()
        opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["32", "bf16-mixed", "16-mixed", "bf16-true"])
def test_every_precision_trains(precision):
    seed_everything(0)
    module = Regressor(lr=0.02)
    loader = DataLoader(make_data(), batch_size=32)
    trainer = quiet_trainer(max_epochs=6, precision=precision)
    before = trainer.validate(module, dataloaders=loader)[0]["val/loss"]
    trainer.fit(module, train_dataloaders=loader)
    after = trainer.validate(module, dataloaders=loader)[0]["val/loss"]
    assert math.isfinite(after) and after < 0.7 * before, (before, after)
    expected = torch.bfloat16 if precision == "bf16-true" else torch.float32
    assert module.net[0].weight.dtype == expected


def test_16_mixed_skips_a_step_with_inf_gradients_and_lowers_the_scale():
    class Poisoned(Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):
            if trainer.global_step == 1:
                module.net[0].weight.grad[0, 0] = float("inf")

    seed_everything(0)
    module = Regressor()
    trainer = quiet_trainer(max_steps=3, precision="16-mixed", callbacks=[Poisoned()])
    snapshots = []

    class Snapshot(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            snapshots.append(module.net[0].weight.detach().clone())

    trainer.callbacks.append(Snapshot())
    trainer.fit(module, train_dataloaders=DataLoader(make_data(), batch_size=32))
    assert trainer.precision.skipped_steps == 1
    assert torch.equal(snapshots[0], snapshots[1])  # the poisoned step changed nothing
    assert not torch.equal(snapshots[1], snapshots[2])
    assert trainer.precision.scaler.get_scale() < 2.0**16


def test_limits_max_steps_and_val_check_interval():
    module = Regressor()
    loader = DataLoader(make_data(), batch_size=16)  # 16 batches per epoch
    trainer = quiet_trainer(max_epochs=2, limit_train_batches=8, limit_val_batches=2, val_check_interval=0.5)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    assert trainer.global_step == 16
    assert module.val_calls == 4  # twice per epoch

    module = Regressor()
    trainer = quiet_trainer(max_steps=5, limit_val_batches=1)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    assert trainer.global_step == 5 and trainer.current_epoch == 1
    assert module.val_calls == 1  # stopped mid-epoch: the final weights are validated once
    assert "val/loss" in trainer.callback_metrics


def test_schedulers_step_per_step_and_per_epoch():
    loader = DataLoader(make_data(n=64), batch_size=16)  # 4 batches per epoch
    for interval, expected in (("step", 0.5**8), ("epoch", 0.5**2)):
        module = Regressor(lr=1.0)

        def configure(module=module, interval=interval):
            opt = torch.optim.SGD(module.parameters(), lr=1.0)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval}}

        module.configure_optimizers = configure
        trainer = quiet_trainer(max_epochs=2)
        trainer.fit(module, train_dataloaders=loader)
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected)


def test_optimizer_and_scheduler_factories_from_config():
    from functools import partial

    from trainkit.schedulers import warmup_cosine

    class NoOptim(Regressor):
        configure_optimizers = TrainModule.configure_optimizers

    module = NoOptim()
    trainer = quiet_trainer(
        max_epochs=2,
        optimizer=partial(torch.optim.AdamW, lr=0.1),
        scheduler=partial(warmup_cosine, warmup_steps=2, min_lr_ratio=0.1),
    )
    trainer.fit(module, train_dataloaders=DataLoader(make_data(n=64), batch_size=16))
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert trainer.estimated_stepping_batches == 8
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)  # cosine reached its floor


def test_gradient_clipping_bounds_the_norm_seen_by_the_optimizer():
    before, used = [], []

    def norm(params):
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))

    class Probe(Callback):
        # As Lightning: on_before_optimizer_step sees the gradients before clipping.
        def on_before_optimizer_step(self, trainer, module, optimizer):
            before.append(norm(module.parameters()))

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            used.append(norm([p for group in self.param_groups for p in group["params"]]))
            return super().step(closure)

    class Clipped(Regressor):
        def configure_optimizers(self):
            return Recording(self.parameters(), lr=self.lr)

    quiet_trainer(max_steps=5, gradient_clip_val=0.01, callbacks=[Probe()]).fit(
        Clipped(lr=0.01), train_dataloaders=DataLoader(make_data(), batch_size=32)
    )
    assert len(used) == 5 and max(used) <= 0.01 + 1e-6
    assert min(before) > 0.01  # the clipping had something to do

def test_early_stopping_and_checkpoints(tmp_path):
    from trainkit import checkpoint

    loader = DataLoader(make_data(n=64), batch_size=16)
    module = Regressor(lr=0.0)  # never improves: early stopping must end the run
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="val/loss", mode="min", save_top_k=2)
    trainer = quiet_trainer(max_epochs=50, callbacks=[EarlyStopping(monitor="val/loss", patience=2), ckpt])
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    assert trainer.current_epoch == 3  # best at epoch 0, then two epochs without improvement
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    # the best two (ties keep the earliest) and the newest; `last` points at the newest
    v = f"{trainer.callback_metrics['val/loss']:.4f}"  # the same every epoch: lr=0
    assert names == [f"epoch=0-step=4-val_loss={v}", f"epoch=1-step=8-val_loss={v}",
                     f"epoch=2-step=12-val_loss={v}", "last"], names
    assert (tmp_path / "ckpt" / "last").resolve().name == f"epoch=2-step=12-val_loss={v}"
    assert ckpt.best_model_path.endswith(f"epoch=0-step=4-val_loss={v}")
    state = torch.load(tmp_path / "ckpt" / "last" / "trainer.pt", weights_only=True)
    assert state["progress"]["global_step"] == trainer.global_step == 12
    fresh = Regressor()
    checkpoint.load_model_weights(str(tmp_path / "ckpt" / "last"), fresh)
    for name, value in module.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value)


def test_csv_logger_merges_a_step_into_one_row_at_full_precision(tmp_path):
    logger = CSVLogger(save_dir=str(tmp_path))
    loader = DataLoader(make_data(n=64), batch_size=16)
    module = Regressor()
    trainer = quiet_trainer(max_epochs=2, logger=[logger], log_every_n_steps=2)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert list(rows[0])[:2] == ["step", "epoch"]
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8]
    assert rows[1]["val/loss"] and rows[1]["train/loss"]  # step 4: training and validation share a row
    assert float(rows[-1]["val/loss"]) == trainer.callback_metrics["val/loss"]  # no rounding


def test_log_needs_a_scalar():
    class Bad(Regressor):
        def training_step(self, batch, batch_idx):
            self.log("oops", torch.ones(3))
            return super().training_step(batch, batch_idx)

    with pytest.raises(ValueError, match="needs a scalar"):
        quiet_trainer(max_steps=1).fit(Bad(), train_dataloaders=DataLoader(make_data(), batch_size=8))


def test_seed_and_deterministic_make_runs_repeat_exactly():
    def run():
        module = Regressor()
        loader = DataLoader(make_data(), batch_size=16, shuffle=True)
        quiet_trainer(max_steps=20, seed=5, deterministic=True).fit(module, train_dataloaders=loader)
        assert torch.are_deterministic_algorithms_enabled()
        return module

    seed_everything(1)
    a = run()
    seed_everything(1)
    b = run()
    quiet_trainer(max_steps=1).fit(Regressor(), train_dataloaders=DataLoader(make_data(), batch_size=16))
    assert not torch.are_deterministic_algorithms_enabled()  # the next run's setting wins
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
