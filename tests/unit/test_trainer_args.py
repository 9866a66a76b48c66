"""The Trainer arguments Lightning users pass, with Lightning 2.x's meaning, on the real Trainer."""
from __future__ import annotations

import datetime
import os
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainkit import Callback, DataModule, Trainer, TrainModule
from trainkit.callbacks import EarlyStopping
from trainkit.errors import ConfigError
from trainkit.loggers import CSVLogger


def dataset(n: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x.sum(dim=1, keepdim=True))


class Tiny(TrainModule):
    def __init__(self, dropout: float = 0.0, sleep: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(dropout), nn.Linear(8, 1))
        self.sleep = sleep
        self.calls: list[tuple] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if self.sleep:
            time.sleep(self.sleep)
        x, y = batch
        self.calls.append(("train", self.trainer.current_epoch, batch_idx, x.clone()))
        loss = F.mse_loss(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.calls.append(("val", self.trainer.sanity_checking, batch_idx, x.clone(), torch.is_inference_mode_enabled(),
                           torch.is_grad_enabled()))
        self.log("val/loss", F.mse_loss(self(x), y), batch_size=len(x))

    def test_step(self, batch, batch_idx):
        self.calls.append(("test", batch_idx))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loaders(n_train=32, n_val=16, batch_size=4, shuffle=True):
    return (DataLoader(dataset(n_train), batch_size=batch_size, shuffle=shuffle),
            DataLoader(dataset(n_val, seed=1), batch_size=batch_size))


def trainer(**kwargs) -> Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("enable_progress_bar", False)
    return Trainer(accelerator="cpu", **kwargs)


def kinds(module: Tiny, kind: str) -> list[tuple]:
    return [c for c in module.calls if c[0] == kind]


# -- fast_dev_run ------------------------------------------------------------------------------
@pytest.mark.parametrize("value, n", [(True, 1), (3, 3)])
def test_fast_dev_run_runs_n_batches_of_each_loop_and_writes_no_checkpoint_or_log(tmp_path, value, n):
    module = Tiny()
    t = Trainer(accelerator="cpu", fast_dev_run=value, max_epochs=50, default_root_dir=str(tmp_path),
                enable_progress_bar=False, logger=CSVLogger(save_dir=str(tmp_path)))
    t.fit(module, *loaders())
    assert len(kinds(module, "train")) == n and t.global_step == n
    assert len(kinds(module, "val")) == n  # no sanity check: fast_dev_run skips it
    assert not any(c[1] for c in kinds(module, "val"))
    t.test(module, DataLoader(dataset(40), batch_size=4))
    assert len(kinds(module, "test")) == n
    assert t.loggers == []
    assert not os.path.exists(tmp_path / "checkpoints") and not os.path.exists(tmp_path / "metrics.csv")


def test_fast_dev_run_refuses_a_negative_count():
    with pytest.raises(ConfigError, match="fast_dev_run"):
        trainer(fast_dev_run=-1)


# -- overfit_batches -----------------------------------------------------------------------------
def test_overfit_batches_trains_and_validates_on_the_same_first_batches_every_epoch():
    module = Tiny()
    train, val = loaders(shuffle=True)
    trainer(overfit_batches=2, max_epochs=3, num_sanity_val_steps=0).fit(module, train, val)
    trains = kinds(module, "train")
    assert len(trains) == 6
    first = dataset(32).tensors[0]
    for _, epoch, batch_idx, x in trains:
        assert torch.equal(x, first[batch_idx * 4 : batch_idx * 4 + 4])  # unshuffled, the same every epoch
    assert len(kinds(module, "val")) == 6  # two val batches per epoch


def test_overfit_batches_as_a_fraction():
    module = Tiny()
    trainer(overfit_batches=0.25, max_epochs=1, num_sanity_val_steps=0).fit(module, *loaders())
    assert len(kinds(module, "train")) == 2  # a quarter of 8 batches
    assert len(kinds(module, "val")) == 1  # a quarter of 4


# -- the sanity check ----------------------------------------------------------------------------
class SanityRecorder(Callback):
    def __init__(self):
        self.events = []

    def on_sanity_check_start(self, trainer, module):
        self.events.append(("start", trainer.sanity_checking))

    def on_sanity_check_end(self, trainer, module):
        self.events.append(("end", trainer.sanity_checking, sorted(trainer.callback_metrics)))

    def on_train_epoch_start(self, trainer, module):
        self.events.append(("train", trainer.sanity_checking, sorted(trainer.callback_metrics)))


def test_two_sanity_val_batches_run_before_training_and_log_nothing(tmp_path):
    module, recorder = Tiny(), SanityRecorder()
    t = Trainer(accelerator="cpu", max_epochs=1, limit_val_batches=3, callbacks=recorder,
                logger=CSVLogger(save_dir=str(tmp_path)), enable_checkpointing=False, enable_progress_bar=False)
    t.fit(module, *loaders())
    assert module.calls[0][0] == "val" and module.calls[1][0] == "val" and module.calls[2][0] == "train"
    sanity = [c for c in kinds(module, "val") if c[1]]
    assert [c[2] for c in sanity] == [0, 1]
    assert len(kinds(module, "val")) == 5  # 2 for the sanity check, then limit_val_batches=3
    assert [e[:2] for e in recorder.events] == [("start", True), ("end", True), ("train", False)]
    assert recorder.events[1][2] == ["val/loss"]  # seen at its end, as in Lightning ...
    assert recorder.events[2][2] == []  # ... and gone before training starts
    assert not t.sanity_checking
    import csv

    with open(tmp_path / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/loss")]
    assert len(rows) == 1  # the epoch's validation only


def test_the_sanity_check_does_not_change_the_training_numbers():
    def run(steps):
        torch.manual_seed(0)
        module = Tiny(dropout=0.5)
        trainer(max_epochs=2, num_sanity_val_steps=steps, seed=None).fit(module, *loaders())
        return module

    a, b = run(0), run(2)
    assert len(kinds(b, "val")) == len(kinds(a, "val")) + 2
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_num_sanity_val_steps_minus_one_runs_the_whole_val_loader():
    module = Tiny()
    trainer(max_epochs=1, num_sanity_val_steps=-1, limit_train_batches=1).fit(module, *loaders())
    assert len([c for c in kinds(module, "val") if c[1]]) == 4


# -- min_epochs / min_steps ----------------------------------------------------------------------
class StopAtOnce(Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        trainer.should_stop = True


def test_min_steps_keeps_training_after_should_stop():
    module = Tiny()
    t = trainer(max_epochs=10, min_steps=5, callbacks=[StopAtOnce()], num_sanity_val_steps=0)
    t.fit(module, *loaders())
    assert t.global_step == 5


def test_min_epochs_overrides_early_stopping():
    module = Tiny()
    stop = EarlyStopping(monitor="val/loss", patience=0, min_delta=1e9)  # stops at its first chance
    t = trainer(max_epochs=10, min_epochs=3, callbacks=[stop], num_sanity_val_steps=0)
    t.fit(module, *loaders())
    assert t.current_epoch == 3
    assert len({c[1] for c in kinds(module, "train")}) == 3


# -- max_time ------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_time", ["00:00:00:01", {"seconds": 1}, datetime.timedelta(seconds=1)])
def test_max_time_stops_the_run(max_time):
    module = Tiny(sleep=0.05)
    t = trainer(max_epochs=1000, max_time=max_time, num_sanity_val_steps=0)
    start = time.monotonic()
    t.fit(module, *loaders())
    assert time.monotonic() - start < 5
    assert 5 <= t.global_step < 60


@pytest.mark.parametrize("bad", ["1h", "00:00:61", {"hour": 1}, -3])
def test_max_time_refuses_what_it_cannot_read(bad):
    with pytest.raises(ConfigError, match="max_time"):
        trainer(max_time=bad)


# -- profiler ------------------------------------------------------------------------------------
def test_simple_profiler_prints_a_summary_of_hook_times(capsys):
    trainer(max_epochs=1, profiler="simple", num_sanity_val_steps=0).fit(Tiny(), *loaders())
    out = capsys.readouterr().out
    assert "Profiler" in out
    for action in ("training_step", "validation_step", "optimizer_step"):
        line = next(line for line in out.splitlines() if action in line)
        assert "8" in line.split() or action == "validation_step"  # 8 training batches


def test_advanced_profiler_prints_cprofile_statistics(capsys):
    trainer(max_epochs=1, profiler="advanced", limit_train_batches=2, num_sanity_val_steps=0).fit(Tiny(), *loaders())
    out = capsys.readouterr().out
    assert "ncalls" in out and "training_step" in out


def test_pytorch_profiler_writes_a_trace_to_the_run_directory(tmp_path):
    trainer(max_epochs=1, profiler="pytorch", limit_train_batches=3, limit_val_batches=1, num_sanity_val_steps=0,
            default_root_dir=str(tmp_path)).fit(Tiny(), *loaders())
    traces = [p for p in (tmp_path / "profiler").iterdir() if p.name.endswith(".json")]
    assert traces and traces[0].stat().st_size > 0


def test_an_unknown_profiler_is_refused():
    with pytest.raises(ConfigError, match="profiler"):
        trainer(profiler="fancy")


# -- precision names -----------------------------------------------------------------------------
@pytest.mark.parametrize("name, mode", [
    ("32-true", "32"), ("32", "32"), (32, "32"), ("16-mixed", "16-mixed"), (16, "16-mixed"), ("bf16-mixed", "bf16-mixed"),
    ("bf16", "bf16-mixed"), ("bf16-true", "bf16-true"), (64, "64-true"), ("64-true", "64-true"), ("64", "64-true"),
])
def test_lightning_precision_names_map_to_trainkit_modes(name, mode):
    assert trainer(precision=name).precision.mode == mode


def test_precision_64_trains_the_module_in_double():
    module = Tiny()
    t = trainer(precision=64, max_epochs=1, limit_train_batches=2, num_sanity_val_steps=0)
    t.fit(module, *loaders())
    assert all(p.dtype == torch.float64 for p in module.parameters())


def test_an_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match="precision"):
        trainer(precision="fp8")


# -- the rest ------------------------------------------------------------------------------------
def test_a_single_callback_and_a_single_logger_object(tmp_path):
    recorder = SanityRecorder()
    logger = CSVLogger(save_dir=str(tmp_path))
    t = trainer(callbacks=recorder, logger=logger, max_epochs=1)
    assert recorder in t.callbacks and t.loggers == [logger]
    t.fit(Tiny(), *loaders())
    assert recorder.events[0][0] == "start"


def test_inference_mode_false_evaluates_under_no_grad():
    for mode in (True, False):
        module = Tiny()
        trainer(inference_mode=mode, num_sanity_val_steps=0).validate(module, loaders()[1])
        _, _, _, _, inference, grad = kinds(module, "val")[0]
        assert (inference, grad) == (mode, False)


def test_use_distributed_sampler_false_leaves_the_loader_alone():
    train, val = loaders()
    t = trainer(use_distributed_sampler=False, max_epochs=1, num_sanity_val_steps=0)
    t.fit(Tiny(), train, val)
    assert t.train_dataloader is train


def test_reload_dataloaders_every_n_epochs():
    class Counting(DataModule):
        def __init__(self):
            super().__init__()
            self.train_calls = self.val_calls = 0

        def train_dataloader(self):
            self.train_calls += 1
            return loaders()[0]

        def val_dataloader(self):
            self.val_calls += 1
            return loaders()[1]

    for every, expected in ((0, 1), (1, 4), (2, 2)):
        dm = Counting()
        trainer(max_epochs=4, reload_dataloaders_every_n_epochs=every, num_sanity_val_steps=0,
                limit_train_batches=1, limit_val_batches=1).fit(Tiny(), datamodule=dm)
        assert (dm.train_calls, dm.val_calls) == (expected, expected)


def test_benchmark_sets_cudnn_benchmark_for_the_run():
    seen = []

    class Look(Callback):
        def on_train_epoch_start(self, trainer, module):
            seen.append(torch.backends.cudnn.benchmark)

    before = torch.backends.cudnn.benchmark
    trainer(benchmark=True, max_epochs=1, limit_train_batches=1, callbacks=[Look()]).fit(Tiny(), *loaders())
    assert seen == [True]
    torch.backends.cudnn.benchmark = before


def test_devices_auto_and_model_summary_flag_are_accepted():
    t = trainer(devices="auto", enable_model_summary=False, max_epochs=1, limit_train_batches=1)
    assert t.world_size == 1
    t.fit(Tiny(), *loaders())


def test_sync_batchnorm_leaves_one_process_alone():
    class WithBN(Tiny):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))

    module = WithBN()
    trainer(sync_batchnorm=True, max_epochs=1, limit_train_batches=1).fit(module, *loaders())
    assert type(module.net[1]) is nn.BatchNorm1d


@pytest.mark.parametrize("kwargs", [
    {"min_epochs": -1}, {"min_steps": "5"}, {"num_sanity_val_steps": -2}, {"overfit_batches": 1.5},
    {"reload_dataloaders_every_n_epochs": -1}, {"devices": "many"}, {"inference_mode": "yes"},
    {"callbacks": "EarlyStopping"}, {"benchmark": "yes"}, {"profiler": 3},
])
def test_invalid_values_are_refused_naming_the_argument(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        trainer(**kwargs)


# -- the CLI's trainer fields ----------------------------------------------------------------------
def test_the_cli_takes_the_lightning_arguments_and_checks_them(tmp_path):
    from tests.unit.test_configs import compose_fit
    from trainkit.config import check_values

    cfg = compose_fit(["trainer.fast_dev_run=2", "trainer.max_time=00:01:30:00", "trainer.profiler=simple",
                       "trainer.min_epochs=2", "trainer.num_sanity_val_steps=0", "precision.mode=32-true"], tmp_path)
    check_values(cfg)
    assert cfg.precision.mode == "32"  # one spelling from here on
    t = cfg.trainer
    assert (t.fast_dev_run, t.max_time, t.profiler, t.min_epochs, t.num_sanity_val_steps) == (2, "00:01:30:00", "simple", 2, 0)
    for bad in ("trainer.max_time=1h", "trainer.profiler=fancy", "trainer.fast_dev_run=-2", "trainer.overfit_batches=2.5"):
        key = bad.split("=")[0]
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            check_values(compose_fit([bad], tmp_path))


# -- iteration-based training --------------------------------------------------------------------
def test_max_epochs_minus_one_means_no_epoch_limit():
    t = trainer(max_epochs=-1, max_steps=20, num_sanity_val_steps=0)
    t.fit(Tiny(), loaders(n_train=8)[0])  # 2 batches an epoch
    assert t.global_step == 20 and t.current_epoch == 10


def test_check_val_every_n_epoch_none_counts_val_check_interval_over_epochs():
    module = Tiny()
    t = trainer(max_steps=6, val_check_interval=3, check_val_every_n_epoch=None, num_sanity_val_steps=0)
    t.fit(module, *loaders(n_train=8))  # 2 batches an epoch: validation after batches 3 and 6 of the run
    trains_before = [sum(1 for c in module.calls[:i] if c[0] == "train") for i, c in enumerate(module.calls) if c[0] == "val"]
    assert trains_before == [3] * 4 + [6] * 4  # (4 val batches each time)
    with pytest.raises(ConfigError, match="val_check_interval"):
        trainer(val_check_interval=0.5, check_val_every_n_epoch=None)
