"""Data as Lightning 2.x users pass it: several evaluation loaders, loaders without a length
(IterableDataset), `DataModule.from_datasets`, `trainer.datamodule`."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler, TensorDataset

from trainkit import Callback, DataModule, Trainer, TrainModule
from trainkit.errors import ConfigError, UserError


def dataset(n: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x.sum(dim=1, keepdim=True))


class Tiny(TrainModule):
    """Records every evaluation call as (dataloader_idx, batch_idx, batch size)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 1)
        self.calls: list[tuple] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.calls.append(("train", batch_idx))
        loss = F.mse_loss(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        self.calls.append(("val", dataloader_idx, batch_idx, len(x)))
        self.log("val/loss", F.mse_loss(self(x), y), batch_size=len(x))

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        self.calls.append(("test", dataloader_idx, batch_idx))
        self.log("test/loss", F.mse_loss(self(x), y), batch_size=len(x))

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def quiet(**kwargs) -> Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("enable_progress_bar", False)
    kwargs.setdefault("num_sanity_val_steps", 0)
    return Trainer(accelerator="cpu", **kwargs)


def loss_of(module: Tiny, ds: TensorDataset) -> float:
    with torch.no_grad():
        x, y = ds.tensors
        return F.mse_loss(module(x), y).item()


# -- several evaluation loaders ------------------------------------------------------------------
def test_two_val_loaders_pass_dataloader_idx_and_suffix_the_metric_names():
    a, b = dataset(12, seed=1), dataset(8, seed=2)
    module = Tiny()
    trainer = quiet(max_epochs=1, limit_train_batches=2)
    trainer.fit(module, DataLoader(dataset(16), batch_size=4), [DataLoader(a, batch_size=4), DataLoader(b, batch_size=4)])
    vals = [c for c in module.calls if c[0] == "val"]
    assert [(c[1], c[2]) for c in vals] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    metrics = trainer.callback_metrics
    assert "val/loss" not in metrics
    assert float(metrics["val/loss/dataloader_idx_0"]) == pytest.approx(loss_of(module, a), rel=1e-5)
    assert float(metrics["val/loss/dataloader_idx_1"]) == pytest.approx(loss_of(module, b), rel=1e-5)

    results = trainer.validate(module, [DataLoader(a, batch_size=4), DataLoader(b, batch_size=4)])
    assert [sorted(r) for r in results] == [["val/loss/dataloader_idx_0"], ["val/loss/dataloader_idx_1"]]
    assert results[1]["val/loss/dataloader_idx_1"] == pytest.approx(loss_of(module, b), rel=1e-5)


def test_one_val_loader_keeps_plain_names_and_the_step_gets_no_dataloader_idx():
    class NoIdx(Tiny):
        def validation_step(self, batch, batch_idx):  # the Lightning signature for one loader
            self.log("val/loss", F.mse_loss(self(batch[0]), batch[1]))

    trainer = quiet(max_epochs=1)
    results = trainer.validate(NoIdx(), DataLoader(dataset(8), batch_size=4))
    assert list(results[0]) == ["val/loss"]


def test_several_loaders_need_a_step_that_takes_dataloader_idx():
    class NoIdx(Tiny):
        def validation_step(self, batch, batch_idx):
            pass

    loaders = [DataLoader(dataset(4), batch_size=2)] * 2
    with pytest.raises(UserError, match="dataloader_idx"):
        quiet().validate(NoIdx(), loaders)


def test_a_dict_of_test_loaders_numbers_them_in_order_and_limits_each():
    module = Tiny()
    loaders = {"small": DataLoader(dataset(6), batch_size=2), "large": DataLoader(dataset(20), batch_size=2)}
    results = quiet(limit_test_batches=2).test(module, loaders)
    assert [c for c in module.calls if c[0] == "test"] == [("test", 0, 0), ("test", 0, 1), ("test", 1, 0), ("test", 1, 1)]
    assert len(results) == 2 and "test/loss/dataloader_idx_1" in results[1]


def test_predict_with_two_loaders_returns_one_list_per_loader():
    module = Tiny()
    out = quiet().predict(module, [DataLoader(dataset(6), batch_size=4), DataLoader(dataset(3), batch_size=4)])
    assert [len(o) for o in out] == [2, 1]
    assert out[0][1].shape == (2, 1) and out[1][0].shape == (3, 1)
    single = quiet().predict(module, DataLoader(dataset(6), batch_size=4))
    assert len(single) == 2 and isinstance(single[0], torch.Tensor)


def test_a_datamodule_with_two_val_loaders_and_the_sanity_check_per_loader():
    dm = DataModule.from_datasets(dataset(16), val_dataset=[dataset(12), dataset(12, seed=3)], batch_size=4)
    module = Tiny()
    trainer = quiet(max_epochs=1, limit_train_batches=1, num_sanity_val_steps=1)
    trainer.fit(module, datamodule=dm)
    assert trainer.datamodule is dm
    vals = [(c[1], c[2]) for c in module.calls if c[0] == "val"]
    assert vals[:2] == [(0, 0), (1, 0)]  # the sanity check: one batch of each loader
    assert vals[2:] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


# -- DataModule.from_datasets --------------------------------------------------------------------
def test_from_datasets_builds_the_loaders_lightning_builds():
    train, val, test, pred = dataset(10), dataset(6), dataset(5), dataset(3)
    dm = DataModule.from_datasets(train, val, test, pred, batch_size=4, drop_last=True)
    assert isinstance(dm.train_dataloader().sampler, RandomSampler)
    for loader in (dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        assert isinstance(loader.sampler, SequentialSampler) and loader.batch_size == 4 and loader.drop_last
    assert len(dm.val_dataloader()) == 1  # 6 samples, batches of 4, the partial one dropped
    named = DataModule.from_datasets(val_dataset={"a": val, "b": test})
    assert list(named.val_dataloader()) == ["a", "b"] and named.val_dataloader()["b"].batch_size == 1
    with pytest.raises(UserError, match="train"):
        named.train_dataloader()


def test_from_datasets_passes_constructor_arguments_to_a_subclass():
    class Sized(DataModule):
        def __init__(self, batch_size: int = 1, note: str = ""):
            super().__init__()
            self.batch_size, self.note = batch_size, note

    dm = Sized.from_datasets(dataset(8), batch_size=2, note="x")
    assert (dm.batch_size, dm.note) == (2, "x")
    assert dm.train_dataloader().batch_size == 2


# -- loaders without a length --------------------------------------------------------------------
class Stream(IterableDataset):
    """An endless stream (or `n` items) of fresh samples, the same for the same seed."""

    def __init__(self, n: int | None = None, seed: int = 0):
        self.n, self.seed = n, seed

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        i = 0
        while self.n is None or i < self.n:
            x = torch.randn(4, generator=g)
            yield x, x.sum(dim=0, keepdim=True)
            i += 1


def test_an_endless_iterable_trains_validates_every_int_interval_and_stops_at_max_steps():
    module = Tiny()
    trainer = quiet(max_steps=7, val_check_interval=3)
    trainer.fit(module, DataLoader(Stream(), batch_size=4), DataLoader(dataset(4), batch_size=4))
    assert trainer.global_step == 7
    trains = [c for c in module.calls if c[0] == "train"]
    assert len(trains) == 7
    # validation after batches 3 and 6, then once more on the final weights at step 7
    order = ["v" if c[0] == "val" else "t" for c in module.calls]
    assert "".join(order) == "tttvtttvtv"
    assert trainer.num_training_batches == float("inf")
    assert trainer.estimated_stepping_batches == 7


def test_an_endless_iterable_refuses_a_fractional_val_check_interval():
    with pytest.raises(ConfigError, match="val_check_interval"):
        quiet(max_steps=3, val_check_interval=0.5).fit(
            Tiny(), DataLoader(Stream(), batch_size=4), DataLoader(dataset(4), batch_size=4))


def test_a_finite_iterable_of_unknown_length_ends_its_epoch_when_exhausted():
    module = Tiny()
    trainer = quiet(max_epochs=2)
    trainer.fit(module, DataLoader(Stream(n=10), batch_size=4), DataLoader(dataset(4), batch_size=4))
    assert trainer.global_step == 6  # 3 batches per epoch (4 + 4 + 2 samples)
    order = "".join("v" if c[0] == "val" else "t" for c in module.calls)
    assert order == "tttvtttv"  # validation at the end of each epoch
    assert trainer.estimated_stepping_batches == float("inf")


def test_an_iterable_run_resumes_exactly_by_replaying_its_epoch(tmp_path):
    def run(root, max_steps, resume=None):
        torch.manual_seed(0)
        module = Tiny()
        trainer = Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                          num_sanity_val_steps=0, default_root_dir=str(root), resume=resume)
        trainer.fit(module, DataLoader(Stream(), batch_size=4))
        return module, trainer

    full, _ = run(tmp_path / "full", 6)
    run(tmp_path / "part", 3)  # stops mid-epoch (the stream has no end) and saves step 3
    resumed, trainer = run(tmp_path / "part", 6, resume="auto")
    assert trainer.global_step == 6
    assert [c for c in resumed.calls if c[0] == "train"] == [("train", i) for i in (3, 4, 5)]
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_val_check_points_are_arithmetic_not_a_set():
    """An endless loader with val_check_interval=1 must not build anything proportional to 10^12."""
    import time

    start = time.perf_counter()
    trainer = quiet(max_steps=2, val_check_interval=1)
    trainer.fit(Tiny(), DataLoader(Stream(), batch_size=4), DataLoader(dataset(4), batch_size=4))
    assert time.perf_counter() - start < 10


def test_batch_end_callbacks_get_dataloader_idx_and_add_dataloader_idx_false_shares_a_name():
    class Seen(Callback):
        def __init__(self):
            self.seen = []

        def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
            self.seen.append((dataloader_idx, batch_idx))

    class Shared(Tiny):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("val/seen", float(dataloader_idx), add_dataloader_idx=False)

    seen = Seen()
    results = quiet(callbacks=seen).validate(Shared(), [DataLoader(dataset(4), batch_size=2)] * 2)
    assert seen.seen == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert results == [{"val/seen": 0.5}, {"val/seen": 0.5}]  # one metric over both loaders, in both dicts


def test_the_progress_output_of_an_endless_loader(caplog):
    import logging

    from trainkit.callbacks import ProgressBar

    trainer = Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                      callbacks=ProgressBar(plain_interval_s=0.0), num_sanity_val_steps=0)
    with caplog.at_level(logging.INFO, logger="trainkit"):
        trainer.fit(Tiny(), DataLoader(Stream(), batch_size=4))
    assert "batch 3/? step 3" in caplog.text  # no TTY: plain lines, with an unknown total


def test_a_module_that_defines_its_own_loaders():
    class Own(Tiny):
        def train_dataloader(self):
            return DataLoader(dataset(8), batch_size=4)

        def val_dataloader(self):
            return [DataLoader(dataset(4), batch_size=4), DataLoader(dataset(4, seed=5), batch_size=4)]

    module = Own()
    trainer = quiet(max_epochs=1)
    trainer.fit(module)
    assert trainer.global_step == 2 and "val/loss/dataloader_idx_1" in trainer.callback_metrics
    assert len(trainer.validate(module)) == 2
    with pytest.raises(UserError, match="test_dataloader"):
        trainer.test(module)
    # loaders passed in win over the module's own
    assert len(trainer.validate(module, DataLoader(dataset(4), batch_size=4))) == 1
