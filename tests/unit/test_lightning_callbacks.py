"""Lightning's callbacks and checkpoint API on the real Trainer with a tiny model: ModelCheckpoint,
EarlyStopping, LearningRateMonitor, ModelSummary, Timer, weight averaging, save_hyperparameters,
load_from_checkpoint and single-file checkpoints."""
from __future__ import annotations

import logging
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainkit import DataModule, Trainer, TrainModule
from trainkit.callbacks import (
    EarlyStopping,
    EMAWeightAveraging,
    LearningRateMonitor,
    ModelCheckpoint,
    ModelSummary,
    RichModelSummary,
    Timer,
    WeightAveraging,
)
from trainkit.errors import ConfigError


class Scripted(TrainModule):
    """Linear 4 -> 1; its validation logs `val/loss` from a script (one value per validation),
    so which checkpoints are best is known in advance."""

    def __init__(self, scores=(), hidden: int = 4, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters(ignore=["scores"])
        self.net = nn.Linear(hidden, 1)
        self.scores = list(scores)
        self.validations = 0

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/mse", F.mse_loss(self(x), y), batch_size=len(x))

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            return
        if self.scores:
            self.log("val/loss", self.scores[min(self.validations, len(self.scores) - 1)])
        self.validations += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def loader(n=32, batch_size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch_size)


def trainer(tmp_path, **kwargs) -> Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_progress_bar", False)
    kwargs.setdefault("enable_model_summary", False)
    kwargs.setdefault("enable_checkpointing", False)
    return Trainer(accelerator="cpu", default_root_dir=str(tmp_path), **kwargs)


def folders(path) -> list[str]:
    return sorted(p for p in os.listdir(path) if not p.startswith("."))


# -- ModelCheckpoint -------------------------------------------------------------------------------
def test_save_top_k_keeps_the_k_best_by_the_monitor(tmp_path):
    scores = [0.5, 0.3, 0.4, 0.2, 0.6]
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ck"), monitor="val/loss", save_top_k=2,
                           filename="{epoch}-{val/loss:.2f}")
    trainer(tmp_path, max_epochs=5, callbacks=[ckpt]).fit(Scripted(scores), loader(), loader())
    # epochs 1 (0.30) and 3 (0.20) are the best two; epoch 4 is the newest, kept for resume
    assert folders(tmp_path / "ck") == ["epoch=1-val_loss=0.30-step=8", "epoch=3-val_loss=0.20-step=16",
                                        "epoch=4-val_loss=0.60-step=20", "last"]
    assert os.path.basename(ckpt.best_model_path) == "epoch=3-val_loss=0.20-step=16"
    assert ckpt.best_model_score.item() == pytest.approx(0.2)
    assert os.path.basename(ckpt.kth_best_model_path) == "epoch=1-val_loss=0.30-step=8"
    assert sorted(round(v.item(), 2) for v in ckpt.best_k_models.values()) == [0.2, 0.3]
    assert os.path.basename(ckpt.last_model_path) == "epoch=4-val_loss=0.60-step=20"
    assert os.path.realpath(tmp_path / "ck" / "last") == ckpt.last_model_path


def test_mode_max_all_and_none(tmp_path):
    scores = [0.5, 0.3, 0.4]
    keep_all = ModelCheckpoint(dirpath=str(tmp_path / "all"), monitor="val/loss", mode="max", save_top_k=-1)
    keep_none = ModelCheckpoint(dirpath=str(tmp_path / "none"), monitor="val/loss", save_top_k=0)
    trainer(tmp_path, max_epochs=3, callbacks=[keep_all, keep_none]).fit(Scripted(scores), loader(), loader())
    assert folders(tmp_path / "all") == ["epoch=0-step=4-val_loss=0.5000", "epoch=1-step=8-val_loss=0.3000",
                                         "epoch=2-step=12-val_loss=0.4000", "last"]
    assert keep_all.best_model_path.endswith("epoch=0-step=4-val_loss=0.5000")  # mode=max
    assert folders(tmp_path / "none") == ["epoch=2-step=12-val_loss=0.4000", "last"]  # only the newest
    assert keep_none.best_model_path == "" and keep_none.best_k_models == {}


def test_every_n_train_steps_without_monitor_keeps_the_latest(tmp_path):
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ck"), every_n_train_steps=3, filename="s{step}",
                           auto_insert_metric_name=False)
    trainer(tmp_path, max_steps=10, callbacks=[ckpt]).fit(Scripted(), loader())
    # saves at steps 3, 6, 9; save_top_k=1 without a monitor keeps the newest only
    assert folders(tmp_path / "ck") == ["last", "s9-step=9"]
    assert ckpt.best_model_path == ckpt.last_model_path
    every = ModelCheckpoint(dirpath=str(tmp_path / "every"), every_n_train_steps=3, save_top_k=-1)
    trainer(tmp_path, max_steps=10, callbacks=[every]).fit(Scripted(), loader())
    assert folders(tmp_path / "every") == ["epoch=0-step=3", "epoch=1-step=6", "epoch=2-step=9", "last"]


def test_format_checkpoint_name_as_lightning():
    ckpt = ModelCheckpoint(filename="{epoch:03d}-{val/loss:.2f}-{missing}")
    assert ckpt.format_checkpoint_name({"epoch": 5, "step": 40, "val/loss": torch.tensor(0.123456)}) == \
        "epoch=005-val_loss=0.12-missing=0-step=40"
    plain = ModelCheckpoint(filename="e{epoch}-{step}", auto_insert_metric_name=False)
    assert plain.format_checkpoint_name({"epoch": 1, "step": 7}) == "e1-7-step=7"
    with pytest.raises(ConfigError, match="needs a metric"):
        ModelCheckpoint(save_top_k=3)


def test_missing_monitor_is_an_error_naming_what_was_logged(tmp_path):
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ck"), monitor="val/acc")
    with pytest.raises(ConfigError, match="val/acc.*val/mse"):
        trainer(tmp_path, max_epochs=1, callbacks=[ckpt]).fit(Scripted(), loader(), loader())


def test_checkpoint_state_resumes_exactly(tmp_path):
    scores = [0.5, 0.3, 0.4, 0.2, 0.6, 0.1]

    def run(directory, epochs, resume=None):
        ckpt = ModelCheckpoint(dirpath=str(directory), monitor="val/loss", save_top_k=2)
        stop = EarlyStopping(monitor="val/loss", patience=5)
        module = Scripted(scores)
        t = trainer(tmp_path, max_epochs=epochs, callbacks=[ckpt, stop], resume=resume, seed=0)
        if resume:
            module.validations = 3  # the script continues where the first run left it
        t.fit(module, loader(), loader())
        return ckpt, stop

    straight, straight_stop = run(tmp_path / "a", 6)
    run(tmp_path / "b", 3)
    resumed, resumed_stop = run(tmp_path / "b", 6, resume="auto")
    assert {os.path.basename(p): v.item() for p, v in resumed.best_k_models.items()} == \
        {os.path.basename(p): v.item() for p, v in straight.best_k_models.items()}
    assert os.path.basename(resumed.best_model_path) == os.path.basename(straight.best_model_path)
    assert folders(tmp_path / "a") == folders(tmp_path / "b")
    assert (resumed_stop.wait_count, resumed_stop.best_score.item()) == \
        (straight_stop.wait_count, straight_stop.best_score.item())


def test_save_weights_only_writes_single_files_that_load_with_weights_only(tmp_path):
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ck"), save_weights_only=True)
    module = Scripted(hidden=4, lr=0.2)
    trainer(tmp_path, max_epochs=2, callbacks=[ckpt]).fit(module, loader())
    assert folders(tmp_path / "ck") == ["epoch=1-step=8.ckpt"]  # not resumable: no `last`
    contents = torch.load(ckpt.best_model_path, weights_only=True)
    assert contents["global_step"] == 8 and contents["epoch"] == 1
    assert contents["hyper_parameters"] == {"hidden": 4, "lr": 0.2}
    assert torch.equal(contents["state_dict"]["net.weight"], module.net.weight)


# -- EarlyStopping ---------------------------------------------------------------------------------
def test_early_stopping_patience_and_min_delta(tmp_path):
    # improvements smaller than min_delta do not count
    stop = EarlyStopping(monitor="val/loss", patience=2, min_delta=0.05)
    t = trainer(tmp_path, max_epochs=20, callbacks=[stop])
    t.fit(Scripted([1.0, 0.97, 0.96, 0.5]), loader(), loader())
    assert t.current_epoch == 3 and stop.stopped_epoch == 2 and stop.best_score.item() == 1.0


def test_early_stopping_thresholds_and_finite_check(tmp_path):
    stop = EarlyStopping(monitor="val/loss", stopping_threshold=0.25, patience=100)
    t = trainer(tmp_path, max_epochs=20, callbacks=[stop])
    t.fit(Scripted([0.5, 0.4, 0.2, 0.1]), loader(), loader())
    assert stop.stopped_epoch == 2 and "Stopping threshold reached" in stop.stopping_reason_message

    diverge = EarlyStopping(monitor="val/loss", divergence_threshold=2.0, patience=100)
    t = trainer(tmp_path, max_epochs=20, callbacks=[diverge])
    t.fit(Scripted([0.5, 1.0, 3.0, 0.1]), loader(), loader())
    assert diverge.stopped_epoch == 2 and "Divergence" in diverge.stopping_reason_message

    nan = EarlyStopping(monitor="val/loss", patience=100)
    t = trainer(tmp_path, max_epochs=20, callbacks=[nan])
    t.fit(Scripted([0.5, float("nan"), 0.1]), loader(), loader())
    assert nan.stopped_epoch == 1 and "not finite" in nan.stopping_reason_message


def test_early_stopping_strict(tmp_path):
    with pytest.raises(ConfigError, match=r"'val/acc'.*val/mse"):
        trainer(tmp_path, max_epochs=2, callbacks=[EarlyStopping(monitor="val/acc")]).fit(
            Scripted(), loader(), loader())
    lenient = EarlyStopping(monitor="val/acc", strict=False, patience=1)
    t = trainer(tmp_path, max_epochs=3, callbacks=[lenient])
    t.fit(Scripted(), loader(), loader())
    assert t.current_epoch == 3 and lenient.wait_count == 0  # ran on, untouched


# -- LearningRateMonitor ---------------------------------------------------------------------------
class Recorder:
    def __init__(self):
        self.rows, self.params = [], []

    def log_hyperparams(self, params):
        self.params.append(params)

    def log_metrics(self, metrics, step):
        self.rows.append((step, dict(metrics)))

    def flush(self):
        pass

    def finalize(self, status):
        pass


class TwoGroups(Scripted):
    def configure_optimizers(self):
        opt = torch.optim.SGD([{"params": [self.net.weight], "lr": 0.1},
                               {"params": [self.net.bias], "lr": 0.01}], momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)}


def test_lr_monitor_keys_and_values(tmp_path):
    rec = Recorder()
    monitor = LearningRateMonitor(log_momentum=True)
    trainer(tmp_path, max_epochs=2, logger=rec, log_every_n_steps=1, callbacks=[monitor]).fit(TwoGroups(), loader())
    lr_rows = [(step, m) for step, m in rec.rows if any(k.startswith("lr-") for k in m)]
    # an epoch-interval scheduler: logged at each epoch's start, in the row of its first step
    assert [step for step, _ in lr_rows] == [1, 5]
    assert {k: v for k, v in lr_rows[1][1].items() if k != "epoch"} == {
        "lr-SGD/pg1": 0.05, "lr-SGD/pg1-momentum": 0.9, "lr-SGD/pg2": 0.005, "lr-SGD/pg2-momentum": 0.9}
    assert monitor.lrs["lr-SGD/pg1"] == [0.1, 0.05]

    rec = Recorder()
    trainer(tmp_path, max_steps=4, logger=rec, log_every_n_steps=2,
            callbacks=[LearningRateMonitor(logging_interval="step")]).fit(Scripted(), loader())
    assert [(step, m["lr-SGD"]) for step, m in rec.rows if "lr-SGD" in m] == [(2, 0.1), (4, 0.1)]


class Named(Scripted):
    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=0.01)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "my-lr"}}


def test_lr_monitor_uses_the_scheduler_name_and_adam_betas(tmp_path):
    rec = Recorder()
    trainer(tmp_path, max_steps=3, logger=rec, log_every_n_steps=1,
            callbacks=[LearningRateMonitor(log_momentum=True)]).fit(Named(), loader())
    logged = [(step, m["my-lr"], m["my-lr-momentum"]) for step, m in rec.rows if "my-lr" in m]
    assert logged == [(1, 0.01, 0.9), (2, 0.005, 0.9), (3, 0.0025, 0.9)]  # the rate each step used
    assert not any(k.startswith("lr-") for _, m in rec.rows for k in m)


# -- ModelSummary ----------------------------------------------------------------------------------
class Nested(Scripted):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
        self.block[1].requires_grad_(False)
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.block(x))


def test_model_summary_is_on_by_default(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="trainkit"):
        Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                default_root_dir=str(tmp_path)).fit(Nested(), loader())
    text = "\n".join(r.getMessage() for r in caplog.records if "Trainable params" in r.getMessage())
    lines = text.splitlines()
    assert lines[1].split() == ["|", "Name", "|", "Type", "|", "Params", "|", "Mode"]
    rows = [line.split("|") for line in lines[3:6]]
    assert [(r[1].strip(), r[2].strip(), r[3].strip()) for r in rows] == [
        ("net", "Linear", "5"), ("block", "Sequential", "56"), ("head", "Linear", "9")]
    # 5 + 40 + 9 trainable; the frozen batch norm's 16 are not
    assert "54        Trainable params" in text and "16        Non-trainable params" in text
    assert "70        Total params" in text and "0.000     Total estimated model params size (MB)" in text


def test_model_summary_depth_and_rich(tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="trainkit"):
        trainer(tmp_path, max_steps=1, callbacks=[ModelSummary(max_depth=-1)]).fit(Nested(), loader())
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "block.0 " in text and "block.1 " in text and "BatchNorm1d" in text
    caplog.clear()
    trainer(tmp_path, max_steps=1, enable_model_summary=False).fit(Nested(), loader())
    assert not any("Trainable params" in r.getMessage() for r in caplog.records)
    trainer(tmp_path, max_steps=1, callbacks=[RichModelSummary()]).fit(Nested(), loader())
    assert "Sequential" in capsys.readouterr().out


# -- save_hyperparameters / load_from_checkpoint ------------------------------------------------------
class Base(TrainModule):
    def __init__(self, hidden: int = 4, lr: float = 0.1, backbone: nn.Module | None = None, **kwargs):
        super().__init__()
        self.save_hyperparameters(ignore="backbone")
        self.net = nn.Linear(hidden, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class Child(Base):
    def __init__(self, depth: int = 2, hidden: int = 4):
        super().__init__(hidden=hidden, lr=0.5, note="x")


def test_save_hyperparameters_reads_the_init_chain():
    child = Child(depth=3)
    assert dict(child.hparams) == {"depth": 3, "hidden": 4, "lr": 0.5, "note": "x"}
    assert child.hparams.lr == 0.5
    child.hparams.lr = 1.0
    assert child.hparams_initial.lr == 0.5  # a copy taken at save time

    class Picked(TrainModule):
        def __init__(self, a=1, b=2, c=3):
            super().__init__()
            self.save_hyperparameters("a", "c", logger=False)

    assert dict(Picked(a=5).hparams) == {"a": 5, "c": 3}

    class Dm(DataModule):
        def __init__(self, batch_size: int = 8):
            self.save_hyperparameters()

    assert Dm(16).hparams.batch_size == 16


def test_hparams_are_logged_once_and_logger_false_skips(tmp_path):
    rec = Recorder()
    trainer(tmp_path, max_steps=1, logger=rec).fit(Base(hidden=4, lr=0.25), loader())
    assert rec.params == [{"hidden": 4, "lr": 0.25}]

    class Quiet(Base):
        def __init__(self, lr: float = 0.2):
            super().__init__(lr=lr)
            self.save_hyperparameters(logger=False)

    rec = Recorder()
    trainer(tmp_path, max_steps=1, logger=rec).fit(Quiet(), loader())
    assert rec.params == []


def test_load_from_checkpoint_rebuilds_with_hparams_and_overrides(tmp_path):
    module = Base(hidden=4, lr=0.3, backbone=nn.Linear(1, 1))
    t = trainer(tmp_path, max_steps=3, enable_checkpointing=True)
    t.fit(module, loader())
    folder = t.save_checkpoint()
    for path in (folder, str(tmp_path / "checkpoints"), t.save_checkpoint(str(tmp_path / "model.ckpt"))):
        loaded = Base.load_from_checkpoint(path)
        assert dict(loaded.hparams) == {"hidden": 4, "lr": 0.3}
        assert torch.equal(loaded.net.weight, module.net.weight) and torch.equal(loaded.net.bias, module.net.bias)
    assert Base.load_from_checkpoint(folder, lr=0.9).hparams.lr == 0.9  # overrides win
    with pytest.raises(RuntimeError, match="size mismatch"):
        Base.load_from_checkpoint(folder, hidden=5)


def test_datamodule_hparams_travel_with_the_checkpoint(tmp_path):
    class Data(DataModule):
        def __init__(self, batch_size: int = 8, n: int = 32):
            self.save_hyperparameters()

        def train_dataloader(self):
            return loader(n=self.hparams.n, batch_size=self.hparams.batch_size)

    t = trainer(tmp_path, max_steps=2)
    t.fit(Base(), datamodule=Data(batch_size=4))
    path = t.save_checkpoint(str(tmp_path / "m.ckpt"))
    assert torch.load(path, weights_only=True)["datamodule_hyper_parameters"] == {"batch_size": 4, "n": 32}
    assert Data.load_from_checkpoint(path, n=16).hparams == {"batch_size": 4, "n": 16}
    assert Data.load_from_checkpoint(t.save_checkpoint()).hparams.batch_size == 4  # a folder too


def test_single_file_checkpoint_is_plain(tmp_path, caplog):
    class Odd(Base):
        def __init__(self, fn=len, hidden: int = 4):
            super().__init__(hidden=hidden)

    module = Odd()
    t = trainer(tmp_path, max_steps=2)
    t.fit(module, loader())
    path = t.save_checkpoint(str(tmp_path / "out" / "odd.ckpt"))
    assert "fn (builtin_function_or_method)" in caplog.text  # named, and left out
    contents = torch.load(path, weights_only=True)
    assert set(contents) == {"format", "state_dict", "hyper_parameters", "hparams_name", "epoch", "global_step"}
    assert contents["hyper_parameters"] == {"hidden": 4, "lr": 0.1} and contents["global_step"] == 2
    assert Odd.load_from_checkpoint(path, fn=min).hparams.fn is min
    with pytest.raises(Exception, match="weights_only=True"):
        t.save_checkpoint(str(tmp_path / "folder"), weights_only=True)


# -- weight averaging ------------------------------------------------------------------------------
def test_weight_averaging_refuses_fsdp(tmp_path):
    t = trainer(tmp_path, max_steps=1, callbacks=[EMAWeightAveraging()])
    t.strategy.forward_in_lockstep = True  # what FSDP declares
    with pytest.raises(ConfigError, match="fsdp"):
        t.fit(Scripted(), loader())


def test_on_save_checkpoint_extras_reach_load_from_checkpoint(tmp_path):
    seen = []

    class Extra(Base):
        def on_save_checkpoint(self, checkpoint):
            checkpoint["vocab"] = ["a", "b"]

        def on_load_checkpoint(self, checkpoint):
            seen.append(checkpoint["vocab"])

    t = trainer(tmp_path, max_steps=2)
    t.fit(Extra(), loader())
    file, folder = t.save_checkpoint(str(tmp_path / "x.ckpt")), t.save_checkpoint()
    assert torch.load(file, weights_only=True)["vocab"] == ["a", "b"]
    Extra.load_from_checkpoint(file)
    Extra.load_from_checkpoint(folder)
    assert seen == [["a", "b"], ["a", "b"]]
