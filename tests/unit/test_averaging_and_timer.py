"""Timer and weight averaging (EMA, SWA) on the real Trainer with a tiny model."""
from __future__ import annotations

import datetime
import time

import pytest
import torch
from torch import nn

from tests.unit.test_lightning_callbacks import Scripted, loader, trainer
from trainkit import Callback
from trainkit.callbacks import EMAWeightAveraging, ModelCheckpoint, StochasticWeightAveraging, Timer, WeightAveraging
from trainkit.errors import ConfigError


# -- Timer -----------------------------------------------------------------------------------------
def test_timer_parses_durations_and_stops_training(tmp_path):
    assert Timer("01:02:03:04")._duration == 93784 and Timer({"minutes": 2})._duration == 120
    with pytest.raises(ConfigError, match="DD:HH:MM:SS"):
        Timer("1h")
    class Slow(Scripted):
        def training_step(self, batch, batch_idx):
            time.sleep(0.02)
            return super().training_step(batch, batch_idx)

    timer = Timer(duration=datetime.timedelta(milliseconds=10), verbose=False)
    t = trainer(tmp_path, max_steps=50, callbacks=[timer])
    t.fit(Slow(), loader())
    assert t.global_step == 1  # stopped after its first step
    assert timer.time_elapsed("train") > 0 and timer.time_remaining("train") < 0
    assert timer.start_time("train") is not None and timer.end_time("train") is not None


# -- weight averaging ------------------------------------------------------------------------------
class Probe(Scripted):
    """Records the weight it validated with."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.seen.append(self.net.weight.detach().clone())
        super().validation_step(batch, batch_idx)


class Weights(Callback):
    """The weight after every optimizer step (and at each epoch's start)."""

    def __init__(self):
        self.steps, self.epoch_starts, self.at_validation = [], [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.steps.append(module.net.weight.detach().clone())

    def on_train_epoch_start(self, trainer, module):
        self.epoch_starts.append(module.net.weight.detach().clone())

    def on_validation_start(self, trainer, module):
        self.at_validation.append(len(self.steps))  # the steps (and averaging updates) done by then


def test_ema_equals_a_hand_computation_and_is_used_for_validation(tmp_path):
    decay = 0.5
    module, weights = Probe(), Weights()
    trainer(tmp_path, max_epochs=2, num_sanity_val_steps=0,
            callbacks=[weights, EMAWeightAveraging(decay=decay)]).fit(module, loader(), loader())
    def ema(steps):  # the first update copies, then ema = decay * ema + (1 - decay) * w
        average = steps[0]
        for w in steps[1:]:
            average = decay * average + (1 - decay) * w
        return average

    k = weights.at_validation[0]
    assert k >= 3
    assert torch.allclose(module.seen[0], ema(weights.steps[:k]))  # the first validation saw the average
    assert not torch.allclose(module.seen[0], weights.steps[k - 1])  # (not the current weight)
    expected = ema(weights.steps)
    assert torch.allclose(module.net.weight, expected)  # the model keeps the average after fit


def test_swa_averages_epoch_weights_and_anneals_the_rate(tmp_path):
    module, weights = Probe(), Weights()
    swa = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=3, annealing_epochs=1)
    lrs = []

    class Rate(Callback):
        def on_train_epoch_end(self, trainer, module):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer(tmp_path, max_epochs=5, num_sanity_val_steps=0, callbacks=[weights, swa, Rate()]).fit(module, loader())
    # as Lightning: epochs 2..4 (0-based) are SWA epochs; the average takes the weights at the start
    # of each of them, i.e. after epochs 1, 2 and 3
    expected = torch.stack(weights.epoch_starts[2:5]).mean(0)
    assert torch.allclose(module.net.weight, expected, atol=1e-7)
    assert int(swa.n_averaged) == 3
    assert lrs[:2] == [0.1, 0.1] and lrs[2:] == pytest.approx([0.05, 0.05, 0.05])  # SWALR from epoch 2


def test_swa_recomputes_batch_norm_statistics(tmp_path):
    class WithNorm(Scripted):
        def __init__(self):
            super().__init__()
            self.norm = nn.BatchNorm1d(4)

        def forward(self, x):
            return self.net(self.norm(x))

    module = WithNorm()
    trainer(tmp_path, max_epochs=2, num_sanity_val_steps=0,
            callbacks=[StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=1)]).fit(module, loader())
    x = torch.cat([batch[0] for batch in loader()])
    # one cumulative pass over the training data: the running mean is the data's mean
    assert torch.allclose(module.norm.running_mean, x.mean(0), atol=1e-6)
    assert module.norm.momentum == 0.1  # restored after the pass


def test_weight_averaging_saves_the_average_and_resumes_exactly(tmp_path):
    def run(directory, steps, resume=None):
        torch.manual_seed(0)
        module = Probe()
        avg = WeightAveraging()  # equal-weight average of every step
        ckpt = ModelCheckpoint(dirpath=str(directory), every_n_train_steps=2)
        trainer(tmp_path, max_steps=steps, callbacks=[avg, ckpt], resume=resume, seed=0).fit(module, loader())
        return module, avg

    straight, avg = run(tmp_path / "a", 6)
    run(tmp_path / "b", 4)
    saved = Scripted.load_from_checkpoint(str(tmp_path / "b"))
    resumed, resumed_avg = run(tmp_path / "b", 6, resume="auto")
    assert torch.equal(resumed.net.weight, straight.net.weight)
    assert torch.equal(resumed_avg.average_model.n_averaged, avg.average_model.n_averaged)
    assert int(avg.average_model.n_averaged) == 6
    # the checkpoint at step 4 holds the average of the first four steps as the model's weights
    assert not torch.equal(saved.net.weight, resumed.net.weight)




def test_timer_state_carries_the_training_time_over():
    timer = Timer(duration="00:00:01:00")
    timer.load_state_dict({"time_elapsed": {"train": 45.0, "validate": 3.0}})
    assert timer.time_elapsed("train") == 45.0 and timer.time_remaining("train") == 15.0
    assert timer.time_elapsed("validate") == 0.0  # only the training time counts on
    assert Timer().state_dict()["time_elapsed"]["train"] == 0.0


def test_swa_resumes_exactly(tmp_path):
    class Decaying(Scripted):  # a module scheduler that SWA replaces
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)}

    def run(directory, epochs, resume=None):
        torch.manual_seed(0)
        module = Decaying()
        swa = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2, annealing_epochs=2)
        ckpt = ModelCheckpoint(dirpath=str(directory))
        trainer(tmp_path, max_epochs=epochs, callbacks=[swa, ckpt], resume=resume, seed=0).fit(module, loader())
        return module, swa

    straight, swa = run(tmp_path / "a", 5)
    run(tmp_path / "b", 3)  # its checkpoint at epoch 3 is inside the SWA phase of the 5-epoch run
    resumed, resumed_swa = run(tmp_path / "b", 5, resume="auto")
    assert torch.equal(resumed.net.weight, straight.net.weight)
    assert int(resumed_swa.n_averaged) == int(swa.n_averaged) == 4
