"""Throughput and MFU against a hand count, the gradient norm against clip_grad_norm_, the spike
guard in one process, and the profilers' files."""
from __future__ import annotations

import copy
import json
import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainkit import Trainer, TrainModule
from trainkit.callbacks.throughput import ThroughputMonitor
from trainkit.errors import ConfigError, LossSpikeError

B, IN, OUT = 16, 8, 4


class Linear(TrainModule):
    def __init__(self, spike_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(IN, OUT)
        self.spike_at = spike_at
        self.weights_before: dict[int, torch.Tensor] = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.weights_before[batch_idx] = self.layer.weight.detach().clone()
        loss = F.mse_loss(self.layer(x), y)
        return loss * 1000 if batch_idx == self.spike_at else loss

    def tokens_in_batch(self, batch):
        return (batch[0] > 0).sum()  # a tensor: summed on the device, read at log steps

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, IN, generator=g), torch.randn(B, OUT, generator=g)) for _ in range(n)]


def fit(module: TrainModule, data, **kwargs) -> Trainer:
    args = dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, accelerator="cpu")
    trainer = Trainer(**{**args, **kwargs})
    trainer.fit(module, train_dataloaders=data)
    return trainer


def logged(trainer: Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.logged_metrics.items()}


def test_flops_of_a_linear_layer_are_counted_by_hand_and_rates_agree():
    data = batches(20)
    trainer = fit(Linear(), data, log_every_n_steps=10, peak_flops=1e9)
    monitor = trainer.throughput_monitor
    # forward: 2*B*IN*OUT (addmm); backward: the weight's gradient 2*B*IN*OUT (the input needs none)
    assert monitor.flops_per_batch == 4 * B * IN * OUT
    m = logged(trainer)
    assert m["throughput/flops_per_s"] / m["throughput/samples_per_s"] == pytest.approx(4 * IN * OUT, rel=1e-9)
    assert m["throughput/samples_per_s"] / m["throughput/steps_per_s"] == pytest.approx(B, rel=1e-9)
    assert m["throughput/mfu"] == pytest.approx(m["throughput/flops_per_s"] / 1e9, rel=1e-12)
    tokens = sum(int((x > 0).sum()) for x, _ in data[10:20])  # the window of steps 11..20
    assert m["throughput/tokens_per_s"] / m["throughput/samples_per_s"] == pytest.approx(tokens / (10 * B), rel=1e-9)
    assert 0 <= m["throughput/data_wait"] < 1 and m["memory/rank0/max_rss_gb"] > 0.01


def test_the_time_spent_waiting_for_data_is_measured():
    def slow():
        for batch in batches(12):
            time.sleep(0.02)
            yield batch

    class Slow(torch.utils.data.IterableDataset):
        def __iter__(self):
            return slow()

    loader = torch.utils.data.DataLoader(Slow(), batch_size=None)
    m = logged(fit(Linear(), loader, log_every_n_steps=10))
    assert m["throughput/data_wait"] > 0.5  # 20 ms of waiting against well under a millisecond of training
    assert m["throughput/steps_per_s"] < 1 / 0.02


def test_throughput_can_be_turned_off():
    trainer = fit(Linear(), batches(10), log_every_n_steps=5, throughput=False)
    assert trainer.throughput_monitor is None and not any(k.startswith("throughput/") for k in logged(trainer))


def test_the_progress_text_shows_the_rate_and_the_time_left():
    monitor = ThroughputMonitor()
    monitor.latest = {"throughput/steps_per_s": 2.0, "throughput/samples_per_s": 32.0, "eta_s": 3725.0}
    assert monitor.progress_text() == "32 samples/s eta 1:02:05"


@pytest.mark.parametrize("clip", [None, 0.5])
def test_the_logged_gradient_norm_is_the_one_clipping_computes(clip):
    data = batches(1)
    module = Linear()
    reference = copy.deepcopy(module)
    trainer = fit(module, data, log_every_n_steps=1, gradient_clip_val=clip)
    x, y = data[0]
    F.mse_loss(reference.layer(x), y).backward()
    expected = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    assert logged(trainer)["train/grad_norm"] == float(expected)


def test_gradient_norms_per_parameter_group():
    class TwoGroups(Linear):
        def configure_optimizers(self):
            return torch.optim.SGD([{"params": [self.layer.weight], "name": "weight"},
                                    {"params": [self.layer.bias]}], lr=0.01)

    data = batches(1)
    module = TwoGroups()
    reference = copy.deepcopy(module)
    m = logged(fit(module, data, log_every_n_steps=1, grad_norm="groups"))
    x, y = data[0]
    F.mse_loss(reference.layer(x), y).backward()
    assert m["train/grad_norm/weight"] == float(reference.layer.weight.grad.norm())
    assert m["train/grad_norm/pg2"] == float(reference.layer.bias.grad.norm())
    assert m["train/grad_norm"] == pytest.approx(math.hypot(m["train/grad_norm/weight"], m["train/grad_norm/pg2"]))


def test_the_spike_guard_skips_the_step_of_a_spike():
    module = Linear(spike_at=30)
    trainer = fit(module, batches(40), log_every_n_steps=40, spike_guard={"k": 6, "warmup": 10})
    assert torch.equal(module.weights_before[30], module.weights_before[31])  # step 31 was skipped
    assert not torch.equal(module.weights_before[29], module.weights_before[30])
    assert trainer.spike_guard.skipped == 1 and trainer.global_step == 40
    assert logged(trainer)["spike_guard/skipped_steps"] == 1.0


def test_too_many_spikes_stop_the_run():
    class Spiky(Linear):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * 1000 if batch_idx >= 12 else loss

    with pytest.raises(LossSpikeError, match="max_skips=2"):
        fit(Spiky(), batches(30), spike_guard={"warmup": 10, "max_skips": 2})


@pytest.mark.parametrize("kwargs", [{"spike_guard": {"kk": 3}}, {"spike_guard": {"k": -1}}, {"grad_norm": "all"},
                                    {"profiler": {"name": "pytorch", "activ": 2}}])
def test_bad_settings_are_refused_naming_them(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        Trainer(**kwargs)


def test_the_pytorch_profiler_writes_a_trace_tensorboard_reads(tmp_path):
    fit(Linear(), batches(8), profiler={"name": "pytorch", "wait": 1, "warmup": 1, "active": 2},
        default_root_dir=str(tmp_path))
    traces = list((tmp_path / "profiler").glob("fit-rank0.*.pt.trace.json"))  # TensorBoard's profiler view's names
    assert len(traces) == 1
    events = json.loads(traces[0].read_text())["traceEvents"]
    steps = {e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#")}
    assert steps == {"ProfilerStep#2", "ProfilerStep#3"}  # the active window only
    assert any(e.get("name") == "training_step" for e in events)


def test_the_simple_profiler_saves_its_table_in_the_run_folder(tmp_path, capsys):
    fit(Linear(), batches(4), profiler="simple", default_root_dir=str(tmp_path))
    saved = (tmp_path / "profiler" / "fit-rank0-simple.txt").read_text()
    assert "training_step" in saved and "train_dataloader_next" in saved and saved in capsys.readouterr().out


def test_a_resumed_run_keeps_the_spike_guards_history(tmp_path):
    guard = {"warmup": 5}
    whole = fit(Linear(), batches(20), max_steps=20, spike_guard=guard)
    fit(Linear(), batches(20), max_steps=10, spike_guard=guard, enable_checkpointing=True,
        default_root_dir=str(tmp_path))
    resumed = Trainer(max_steps=20, spike_guard=guard, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", enable_checkpointing=False)
    resumed.fit(Linear(), train_dataloaders=batches(20), ckpt_path=str(tmp_path / "checkpoints" / "last"))
    assert list(resumed.spike_guard.history) == list(whole.spike_guard.history) and len(whole.spike_guard.history) == 20
