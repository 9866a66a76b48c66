"""Lightning 2.x behaviour of the module, callback, DataModule and Trainer APIs, on the real
Trainer with a tiny model. The expected hook order is Lightning's, as its own test
(tests/tests_pytorch/models/test_hooks.py) and docs (common/hooks.rst) state it."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainkit as L
from trainkit.callbacks import ModelCheckpoint
from trainkit.engine.callback import Callback
from trainkit.engine.optimizers import unwrap
from trainkit.errors import NonFiniteLossError, UserError

MODULE_HOOKS = [
    "setup", "teardown", "configure_model", "on_fit_start", "on_fit_end", "on_train_start", "on_train_end",
    "on_train_epoch_start", "on_train_epoch_end", "on_train_batch_start", "on_train_batch_end",
    "on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
    "on_validation_start", "on_validation_end", "on_validation_epoch_start", "on_validation_epoch_end",
    "on_validation_batch_start", "on_validation_batch_end", "on_test_start", "on_test_end",
    "on_test_epoch_start", "on_test_epoch_end", "on_test_batch_start", "on_test_batch_end",
    "on_predict_start", "on_predict_end", "on_predict_epoch_start", "on_predict_epoch_end",
    "on_predict_batch_start", "on_predict_batch_end", "on_save_checkpoint", "on_load_checkpoint",
]


def data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True))


def loader(n=8, batch_size=4):
    return DataLoader(data(n), batch_size=batch_size)


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def forward(self, x):
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", F.mse_loss(self(x), y))

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def recording_module(called):
    attrs = {h: (lambda name: lambda self, *a, **k: called.append(name))(h) for h in MODULE_HOOKS}
    return type("Hooked", (Tiny,), attrs)()


def recording_callback(called):
    names = [h for h in vars(Callback) if h.startswith("on_") or h in ("setup", "teardown")]
    attrs = {h: (lambda name: lambda self, *a, **k: called.append(f"Callback.{name}"))(h) for h in names}
    return type("HookedCallback", (Callback,), attrs)()


class RecordingData(L.LightningDataModule):
    def __init__(self, called):
        self.called = called

    def prepare_data(self):
        self.called.append("dm.prepare_data")

    def setup(self, stage):
        self.called.append(f"dm.setup:{stage}")

    def teardown(self, stage):
        self.called.append(f"dm.teardown:{stage}")

    def train_dataloader(self):
        return loader()

    def val_dataloader(self):
        return loader()

    def test_dataloader(self):
        return loader()

    def predict_dataloader(self):
        return loader()


def trainer(**kwargs):
    kwargs = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, **kwargs}
    return L.Trainer(**kwargs)


def both(name):
    return [f"Callback.{name}", name]


def test_fit_calls_every_hook_in_lightnings_order():
    called = []
    model, cb, dm = recording_module(called), recording_callback(called), RecordingData(called)
    trainer(max_epochs=1, callbacks=[cb]).fit(model, dm)

    def train_batch():
        # Lightning calls on_before_zero_grad after the next window's first forward; trainkit
        # right after the step (README, "Coming from Lightning").
        return [*both("on_train_batch_start"), *both("on_before_backward"), *both("on_after_backward"),
                *both("on_before_optimizer_step"), *both("on_before_zero_grad")]

    def val_batch():
        return [*both("on_validation_batch_start"), *both("on_validation_batch_end")]

    validation = [*both("on_validation_start"), *both("on_validation_epoch_start"), *val_batch(), *val_batch(),
                  *both("on_validation_epoch_end"), *both("on_validation_end")]
    expected = [
        "dm.prepare_data", "dm.setup:fit", "Callback.setup", "setup", "configure_model",
        *both("on_fit_start"),
        "Callback.on_sanity_check_start", *validation, "Callback.on_sanity_check_end",  # (no module hook)
        *both("on_train_start"), *both("on_train_epoch_start"),
        *train_batch(), *both("on_train_batch_end"),
        # A documented difference (README, "Coming from Lightning"): the validation at the
        # epoch's last batch runs before that batch's on_train_batch_end, not after it.
        *train_batch(), *validation, *both("on_train_batch_end"),
        *both("on_train_epoch_end"), *both("on_train_end"), *both("on_fit_end"),
        "dm.teardown:fit", "Callback.teardown", "teardown",
    ]
    assert called == expected


@pytest.mark.parametrize("stage,noun", [("validate", "validation"), ("test", "test"), ("predict", "predict")])
def test_evaluation_calls_its_hooks_in_lightnings_order(stage, noun):
    called = []
    model, cb, dm = recording_module(called), recording_callback(called), RecordingData(called)
    getattr(trainer(callbacks=[cb]), stage)(model, datamodule=dm)
    batch = [*both(f"on_{noun}_batch_start"), *both(f"on_{noun}_batch_end")]
    assert called == [
        "dm.prepare_data", f"dm.setup:{stage}", "Callback.setup", "setup", "configure_model",
        *both(f"on_{noun}_start"), *both(f"on_{noun}_epoch_start"), *batch, *batch,
        *both(f"on_{noun}_epoch_end"), *both(f"on_{noun}_end"),
        f"dm.teardown:{stage}", "Callback.teardown", "teardown",
    ]


def test_train_epoch_end_runs_monitoring_callbacks_after_the_module(tmp_path):
    called = []

    class Checkpoint(ModelCheckpoint):
        def on_train_epoch_end(self, trainer, pl_module):
            called.append("ModelCheckpoint")

    class Module(Tiny):
        def on_train_epoch_end(self):
            called.append("module")

    trainer(max_epochs=1, callbacks=[Checkpoint(dirpath=str(tmp_path)), recording_callback(called)]).fit(
        Module(), loader(), loader())
    ends = [c for c in called if c in ("Callback.on_train_epoch_end", "module", "ModelCheckpoint")]
    assert ends == ["Callback.on_train_epoch_end", "module", "ModelCheckpoint"]


def test_on_train_batch_start_returning_minus_one_ends_the_epoch():
    class Stop(Tiny):
        def on_train_batch_start(self, batch, batch_idx):
            return -1 if batch_idx == 1 else None

    t = trainer(max_epochs=2)
    t.fit(Stop(), DataLoader(data(16), batch_size=4))
    assert t.global_step == 2  # one step in each of the two epochs


class Logging(Tiny):
    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("both", float(batch_idx), on_step=True, on_epoch=True)
        self.log("total", 1.0, on_step=False, on_epoch=True, reduce_fx="sum")
        self.log("peak", float(batch_idx), on_step=False, on_epoch=True, reduce_fx=torch.max)
        self.log("weighted", float(batch_idx), on_step=False, on_epoch=True, batch_size=batch_idx + 1)
        self.log("hidden", 7.0, logger=False)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_default", float(batch_idx))  # evaluation: per epoch by default


class Rows:
    def __init__(self):
        self.rows = []

    def log_metrics(self, metrics, step):
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params): ...
    def flush(self): ...
    def finalize(self, status): ...


def test_log_keys_and_values_follow_lightning():
    rows = Rows()
    t = trainer(max_epochs=1, logger=rows, log_every_n_steps=1)
    t.fit(Logging(), DataLoader(data(12), batch_size=4), loader())  # batches 0, 1, 2
    logged = {k for _, row in rows.rows for k in row}
    assert {"both_step", "both_epoch", "total", "peak", "weighted", "val_default"} <= logged
    assert "both" not in logged and "hidden" not in logged  # logger=False: not sent to the loggers
    m = t.callback_metrics
    assert all(isinstance(v, torch.Tensor) for v in m.values())
    assert float(m["both_epoch"]) == pytest.approx(1.0) and float(m["both"]) == float(m["both_epoch"])
    assert float(m["total"]) == 3.0 and float(m["peak"]) == 2.0
    assert float(m["weighted"]) == pytest.approx((0 * 1 + 1 * 2 + 2 * 3) / 6)  # batch_size-weighted mean
    assert float(m["hidden"]) == 7.0  # in callback_metrics all the same
    assert float(m["val_default"]) == pytest.approx(0.5)
    steps = [row["both_step"] for _, row in rows.rows if "both_step" in row]
    assert steps == [0.0, 1.0, 2.0]
    assert isinstance(t.logged_metrics["both_epoch"], torch.Tensor)


class FakeMetric:
    """Shaped like a torchmetrics.Metric (which trainkit does not import)."""

    def __init__(self):
        self.values, self.resets = [], 0

    def update(self, v):
        self.values.append(float(v))

    def compute(self):
        return torch.tensor(sum(self.values) / len(self.values))

    def reset(self):
        self.values, self.resets = [], self.resets + 1


def test_a_metric_object_is_computed_at_the_epoch_end_and_reset():
    class WithMetric(Tiny):
        def __init__(self):
            super().__init__()
            self.metric = FakeMetric()

        def validation_step(self, batch, batch_idx):
            self.metric.update(batch_idx + 1)
            self.log("val_metric", self.metric)

    model = WithMetric()
    t = trainer()
    t.validate(model, loader())
    assert float(t.callback_metrics["val_metric"]) == 1.5 and model.metric.resets == 1


def test_training_step_returning_none_skips_the_batch():
    class Skip(Tiny):
        def training_step(self, batch, batch_idx):
            return None if batch_idx % 2 else super().training_step(batch, batch_idx)

    before = []

    class Count(Callback):
        def on_before_backward(self, trainer, pl_module, loss):
            before.append(trainer.state.batch_idx)

    t = trainer(max_epochs=1, callbacks=[Count()])
    t.fit(Skip(), DataLoader(data(16), batch_size=4))
    assert t.global_step == 2 and before == [0, 2]


def test_training_step_without_batch_idx_and_module_properties(capsys):
    seen = {}

    class NoIdx(Tiny):
        def training_step(self, batch):
            seen.update(device=self.device, dtype=self.dtype, epoch=self.current_epoch, step=self.global_step,
                        rank=(self.global_rank, self.local_rank), opt=self.optimizers(), sched=self.lr_schedulers(),
                        trainer=self.trainer, logger=self.logger)
            self.print("rank zero says hi")
            return super().training_step(batch, 0)

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1)}

    model = NoIdx()
    t = trainer(max_epochs=1)
    t.fit(model, loader())
    assert seen["device"] == torch.device("cpu") and seen["dtype"] == torch.float32
    assert (seen["epoch"], seen["step"], seen["rank"]) == (0, 1, (0, 0))
    assert unwrap(seen["opt"]) is t.optimizers[0]  # (Lightning too wraps it, in a LightningOptimizer)
    assert isinstance(seen["sched"], torch.optim.lr_scheduler.StepLR) and seen["trainer"] is t
    assert seen["logger"] is None and t.lightning_module is model
    assert "rank zero says hi" in capsys.readouterr().out


def test_fit_takes_a_datamodule_second_and_validate_without_a_model_uses_the_fitted_one():
    dm = RecordingData([])
    t = trainer(max_epochs=1)
    model = Tiny()
    t.fit(model, dm)
    assert t.datamodule is dm and dm.trainer is t
    result = t.validate()
    assert set(result[0]) == {"val_loss"} and t.lightning_module is model
    assert t.test(ckpt_path=None)[0]["test_loss"] >= 0


def test_checkpoint_hooks_edit_the_saved_dict_and_get_it_back_on_resume(tmp_path):
    loaded = {}

    class Saver(Tiny):
        def on_save_checkpoint(self, checkpoint):
            checkpoint["module_note"] = {"step": self.global_step}

        def on_load_checkpoint(self, checkpoint):
            loaded["module"] = dict(checkpoint)

    class Keeper(Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            checkpoint["callback_note"] = [1, 2, 3]

        def on_load_checkpoint(self, trainer, pl_module, checkpoint):
            loaded["callback"] = checkpoint["callback_note"]

    ckpts = str(tmp_path / "ckpts")
    trainer(max_steps=2, callbacks=[Keeper(), ModelCheckpoint(dirpath=ckpts)]).fit(Saver(), loader())
    assert not loaded
    t = trainer(max_steps=4, callbacks=[Keeper(), ModelCheckpoint(dirpath=ckpts)], resume="auto")
    t.fit(Saver(), loader())
    assert loaded["module"]["module_note"] == {"step": 2} and loaded["module"]["global_step"] == 2
    assert loaded["callback"] == [1, 2, 3] and t.global_step == 4


def test_ckpt_path_best_needs_a_monitored_checkpoint():
    t = trainer(max_epochs=1)
    t.fit(Tiny(), loader(), loader())
    with pytest.raises(UserError, match="best"):
        t.validate(ckpt_path="best")


@pytest.mark.parametrize("every,where", [(1, "at step 3 "), (4, "at a step from 1 to 4 ")])
def test_a_non_finite_loss_stops_naming_the_step_or_the_steps_since_the_last_check(every, where):
    class Poison(Tiny):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * float("nan") if self.global_step == 2 else loss

    with pytest.raises(NonFiniteLossError, match=where):
        trainer(max_epochs=1, log_every_n_steps=every).fit(Poison(), DataLoader(data(32), batch_size=4))


def test_lightning_import_names_without_torch():
    code = ("import sys, trainkit as L, trainkit as pl; assert 'torch' not in sys.modules;"
            "L.LightningModule, L.LightningDataModule, L.Trainer, L.Callback, L.seed_everything;"
            "pl.callbacks.ModelCheckpoint, pl.callbacks.EarlyStopping, pl.loggers.CSVLogger;"
            "from trainkit.pytorch import LightningModule, LightningDataModule, Trainer, Callback, seed_everything;"
            "from trainkit.pytorch.callbacks import ModelCheckpoint, LearningRateMonitor;"
            "from trainkit.pytorch.loggers import CSVLogger, TensorBoardLogger;"
            "assert L.LightningModule is L.TrainModule and L.seed_everything(5) == 5")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_config_schema_takes_the_trainer_signatures_defaults():
    import dataclasses
    import inspect

    from trainkit.config import TrainerConfig

    signature = inspect.signature(L.Trainer.__init__).parameters
    schema = {f.name: f.default for f in dataclasses.fields(TrainerConfig)}
    shared = signature.keys() & schema.keys()
    assert len(shared) >= 20
    assert {k: schema[k] for k in shared} == {k: signature[k].default for k in shared}
    assert (schema["resume"], schema["gradient_clip_val"], schema["log_every_n_steps"]) == (None, None, 50)


def test_the_training_step_reads_nothing_back_from_the_device(monkeypatch):
    """No host sync the user did not ask for: the loop reads no tensor per step (a NaN check per
    micro-batch would read one every step); reads happen only at log steps and epoch ends."""
    reads = []
    for name in ("__bool__", "__float__", "item", "tolist"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, (lambda fn, n: lambda self, *a: (reads.append(n), fn(self, *a))[1])(
            original, name))
    t = trainer(max_epochs=1, log_every_n_steps=1000, num_sanity_val_steps=0)
    t.fit(Tiny(), DataLoader(data(64), batch_size=4))  # 16 steps
    assert t.global_step == 16
    assert len(reads) <= 3, reads  # the epoch end's reads, whatever the number of steps


def test_batch_transfer_hooks_come_from_the_datamodule_else_the_module():
    called = []

    class Scaled(Tiny):
        def on_before_batch_transfer(self, batch, dataloader_idx):
            called.append(("module.before", dataloader_idx))
            return [batch[0] * 0, batch[1]]  # the step must see this batch

        def on_after_batch_transfer(self, batch, dataloader_idx):
            called.append(("module.after", dataloader_idx))
            return batch

        def training_step(self, batch, batch_idx):
            assert torch.count_nonzero(batch[0]) == 0
            return super().training_step(batch, batch_idx)

    class Moving(RecordingData):
        def transfer_batch_to_device(self, batch, device, dataloader_idx):
            called.append(("dm.transfer", dataloader_idx))
            return super().transfer_batch_to_device(batch, device, dataloader_idx)

    trainer(max_steps=1, num_sanity_val_steps=0, limit_val_batches=0).fit(Scaled(), Moving([]))
    assert called == [("module.before", 0), ("dm.transfer", 0), ("module.after", 0)]
