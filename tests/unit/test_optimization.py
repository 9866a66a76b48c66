"""Optimizers and schedulers as Lightning 2.x sets them up: every `configure_optimizers` return
format, scheduler intervals / frequencies / monitors, and manual optimization (a two-optimizer GAN)
that resumes exactly."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainkit import Callback, Trainer, TrainModule
from trainkit.errors import ConfigError, UserError


class Regressor(TrainModule):
    def __init__(self, configure=None):
        super().__init__()
        self.net = nn.Linear(8, 1)
        self._configure = configure

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return self._configure(self)


def data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, x[:, :2].sum(dim=1, keepdim=True))


def loader(n=64, batch_size=16):
    return DataLoader(data(n), batch_size=batch_size)


def quiet(**kwargs) -> Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("enable_progress_bar", False)
    return Trainer(accelerator="cpu", **kwargs)


def sgd(module, lr=1.0):
    return torch.optim.SGD(module.parameters(), lr=lr)


def fit(configure, val=False, **trainer_kwargs):
    module = Regressor(configure)
    trainer = quiet(**trainer_kwargs)
    trainer.fit(module, train_dataloaders=loader(), val_dataloaders=loader() if val else None)
    return module, trainer


def lr(trainer, i=0):
    return trainer.optimizers[i].param_groups[0]["lr"]


# -- return formats (4 batches per epoch) --------------------------------------------------------
def halving(opt):
    return torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)


@pytest.mark.parametrize("form", ["optimizer", "list", "tuple", "dict", "list of dicts"])
def test_a_single_optimizer_in_every_form_trains(form):
    def configure(m):
        opt = sgd(m, 0.1)
        return {"optimizer": opt, "list": [opt], "tuple": (opt,), "dict": {"optimizer": opt},
                "list of dicts": [{"optimizer": opt}]}[form]

    torch.manual_seed(0)
    before = Regressor(None).net.weight.detach().clone()
    torch.manual_seed(0)
    module, trainer = fit(configure, max_steps=3)
    assert trainer.global_step == 3 and len(trainer.optimizers) == 1
    assert isinstance(trainer.optimizers[0], torch.optim.SGD) and lr(trainer) == 0.1
    assert not torch.equal(module.net.weight, before)
    assert trainer.lr_scheduler_configs == []


@pytest.mark.parametrize("form", ["two lists", "dict", "dict of config", "list of dicts", "tuple of dicts"])
def test_a_scheduler_in_every_form_steps_per_epoch_by_default(form):
    def configure(m):
        opt = sgd(m)
        sched = halving(opt)
        return {"two lists": ([opt], [sched]), "dict": {"optimizer": opt, "lr_scheduler": sched},
                "dict of config": {"optimizer": opt, "lr_scheduler": {"scheduler": sched}},
                "list of dicts": [{"optimizer": opt, "lr_scheduler": sched}],
                "tuple of dicts": ({"optimizer": opt, "lr_scheduler": {"scheduler": sched}},)}[form]

    _, trainer = fit(configure, max_epochs=3)
    assert lr(trainer) == 0.5**3  # once per epoch, not once per step (12 steps)
    (config,) = trainer.lr_scheduler_configs
    assert (config.interval, config.frequency, config.monitor, config.strict, config.name) == ("epoch", 1, None, True, None)


def test_step_interval_and_frequency_count_batches_of_the_epoch_as_lightning():
    # 5 batches per epoch, frequency 2: stepped after batches 2 and 4 of each epoch (Lightning
    # counts the batch index within the epoch), so 4 times in two epochs, not 5.
    def configure(m):
        opt = sgd(m)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": halving(opt), "interval": "step", "frequency": 2}}

    module = Regressor(configure)
    trainer = quiet(max_epochs=2)
    trainer.fit(module, train_dataloaders=loader(n=80))
    assert trainer.global_step == 10 and lr(trainer) == 0.5**4


def test_epoch_frequency_and_several_schedulers_on_one_optimizer():
    def configure(m):
        opt = sgd(m)
        per_step = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        every_other_epoch = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.1)
        return [opt], [{"scheduler": per_step, "interval": "step"},
                       {"scheduler": every_other_epoch, "interval": "epoch", "frequency": 2, "name": "decay"}]

    _, trainer = fit(configure, max_epochs=3)
    assert lr(trainer) == pytest.approx(0.5**12 * 0.1)  # 12 steps; epochs 1 (the 2nd) only
    assert [c.name for c in trainer.lr_scheduler_configs] == [None, "decay"]


def test_an_epoch_scheduler_does_not_step_when_max_steps_ends_the_epoch_early():
    def configure(m):
        opt = sgd(m)
        return {"optimizer": opt, "lr_scheduler": halving(opt)}

    _, trainer = fit(configure, max_steps=6)  # epoch 0 whole, epoch 1 cut after 2 batches
    assert lr(trainer) == 0.5


def test_none_runs_the_steps_without_an_optimizer(caplog):
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="trainkit"):
        module, trainer = fit(lambda m: None, max_steps=3)
    assert "configure_optimizers() returned None" in caplog.text
    assert trainer.global_step == 3 and trainer.optimizers == []
    torch.manual_seed(0)
    assert torch.equal(module.net.weight, Regressor(None).net.weight)


@pytest.mark.parametrize("returned, shown", [
    ("adam", "'adam'"),
    ({"lr_scheduler": None}, "dict without an 'optimizer'"),
    ([1, 2], "[1, 2]"),
])
def test_a_bad_return_names_what_was_returned_and_the_accepted_forms(returned, shown):
    with pytest.raises(ConfigError, match="configure_optimizers") as info:
        fit(lambda m: returned, max_steps=1)
    assert shown in str(info.value)
    assert "([optimizers], [schedulers])" in str(info.value)


def test_a_scheduler_dict_without_scheduler_or_with_a_bad_interval_is_refused():
    def missing(m):
        return {"optimizer": sgd(m), "lr_scheduler": {"interval": "step"}}

    def interval(m):
        opt = sgd(m)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": halving(opt), "interval": "batch"}}

    with pytest.raises(ConfigError, match="'scheduler'"):
        fit(missing, max_steps=1)
    with pytest.raises(ConfigError, match="interval='batch'.*'step' or 'epoch'"):
        fit(interval, max_steps=1)


def test_several_optimizers_need_manual_optimization():
    def configure(m):
        return [sgd(m), torch.optim.Adam(m.parameters())]

    with pytest.raises(ConfigError, match="self.automatic_optimization = False"):
        fit(configure, max_steps=1)


# -- ReduceLROnPlateau -------------------------------------------------------------------------
class RecordingPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def step(self, metrics):
        self.seen.append(float(metrics))
        super().step(metrics)


def test_reduce_on_plateau_is_stepped_with_the_monitored_value_after_validation():
    seen = {}

    def configure(m):
        seen["sched"] = RecordingPlateau(opt := sgd(m, lr=0.1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": seen["sched"], "monitor": "val_loss"}}

    class Values(Callback):
        def on_validation_end(self, trainer, module):
            if not trainer.sanity_checking:
                seen.setdefault("val", []).append(float(trainer.callback_metrics["val_loss"]))

    _, trainer = fit(configure, val=True, max_epochs=3, callbacks=[Values()])
    assert seen["sched"].seen == seen["val"] and len(seen["val"]) == 3


def test_reduce_on_plateau_lowers_the_lr_when_the_monitor_stalls():
    def configure(m):
        opt = sgd(m, lr=1.0)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5),
                "monitor": "stalled"}

    class Stalled(Regressor):
        def on_validation_epoch_end(self):
            self.log("stalled", 1.0)

    module = Stalled(configure)
    trainer = quiet(max_epochs=3)
    trainer.fit(module, train_dataloaders=loader(), val_dataloaders=loader())
    assert lr(trainer) == 0.25  # epochs 1 and 2 saw no improvement


def test_reduce_on_plateau_needs_a_monitor():
    def configure(m):
        opt = sgd(m)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt)}

    with pytest.raises(ConfigError, match="ReduceLROnPlateau.*monitor"):
        fit(configure, max_steps=1)


def test_a_missing_monitor_is_an_error_naming_the_keys_when_strict_and_a_warning_otherwise(caplog):
    def configure(strict):
        def build(m):
            opt = sgd(m)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_acc", "strict": strict}}
        return build

    with pytest.raises(UserError, match=r"monitor='val_acc'.*available: val_loss"):
        fit(configure(True), val=True, max_epochs=1)
    with caplog.at_level(logging.WARNING, logger="trainkit"):
        _, trainer = fit(configure(False), val=True, max_epochs=2)
    assert "val_acc" in caplog.text and lr(trainer) == 1.0


# -- manual optimization -----------------------------------------------------------------------
def gan_data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(n, 8, generator=g) * 0.5 + 2.0
    noise = torch.randn(n, 4, generator=g)
    return TensorDataset(real, noise)


class GAN(TrainModule):
    """Generator 4 -> 8, discriminator 8 -> 1, each with its own Adam and schedule."""

    def __init__(self, noise_from_rng=True, clip=1.0):
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 8))
        self.discriminator = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        self.noise_from_rng, self.clip = noise_from_rng, clip
        self.check_toggle = True
        self.losses: list[tuple[float, float]] = []
        self.toggled: list[bool] = []

    def training_step(self, batch, batch_idx):
        real, noise = batch
        if self.noise_from_rng:  # the RNG stream has to come back exactly on resume
            noise = torch.randn(noise.shape)
        opt_g, opt_d = self.optimizers()
        ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)

        self.toggle_optimizer(opt_g)
        self.toggled.append(not any(p.requires_grad for p in self.discriminator.parameters()))
        fake = self.generator(noise)
        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(fake), ones)
        d_grads = [None if p.grad is None else p.grad.clone() for p in self.discriminator.parameters()]
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        # toggled: the generator's loss leaves the discriminator's gradients as they were
        assert not self.check_toggle or all((a is None and p.grad is None) or torch.equal(a, p.grad)
                                            for a, p in zip(d_grads, self.discriminator.parameters()))
        if self.clip:
            self.clip_gradients(opt_g, gradient_clip_val=self.clip, gradient_clip_algorithm="norm")
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        with self.toggled_optimizer(opt_d):
            d_loss = (F.binary_cross_entropy_with_logits(self.discriminator(real), ones)
                      + F.binary_cross_entropy_with_logits(self.discriminator(fake.detach()), zeros)) / 2
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            opt_d.step()
        self.log_dict({"g_loss": g_loss, "d_loss": d_loss})
        self.losses.append((float(g_loss.detach()), float(d_loss.detach())))

    def on_train_epoch_end(self):
        for sched in self.lr_schedulers():
            sched.step()

    def configure_optimizers(self):
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=1e-2, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=2e-2, betas=(0.5, 0.999))
        return ([opt_g, opt_d],
                [torch.optim.lr_scheduler.StepLR(opt_g, 1, gamma=0.5), torch.optim.lr_scheduler.StepLR(opt_d, 1, gamma=0.8)])


def gan_loader(batch_size=8):
    return DataLoader(gan_data(), batch_size=batch_size, shuffle=True)


def test_a_two_optimizer_gan_trains_in_manual_optimization():
    torch.manual_seed(0)
    module = GAN()
    start = {k: v.clone() for k, v in module.state_dict().items()}
    seen = []

    class Steps(Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):
            seen.append((trainer.global_step, type(optimizer).__name__, optimizer is trainer.optimizers[len(seen) % 2]))

    trainer = quiet(max_epochs=2, seed=1, callbacks=[Steps()])
    trainer.fit(module, train_dataloaders=gan_loader())
    assert trainer.global_step == 2 * 12  # Lightning: every optimizer.step() call counts
    assert seen[:3] == [(0, "Adam", True), (1, "Adam", True), (2, "Adam", True)] and len(seen) == 24
    for name, value in module.state_dict().items():
        assert not torch.equal(value, start[name]), name  # both networks were updated
    assert module.losses[0] != module.losses[-1] and all(module.toggled)
    assert all(p.requires_grad for p in module.parameters())  # untoggled
    assert [s.get_last_lr()[0] for s in module.lr_schedulers()] == pytest.approx([1e-2 * 0.5**2, 2e-2 * 0.8**2])
    opt_g, opt_d = module.optimizers()
    assert isinstance(opt_g, torch.optim.Adam) and opt_g.optimizer is trainer.optimizers[0]
    assert opt_d.param_groups is trainer.optimizers[1].param_groups


def test_clip_gradients_bounds_the_norm_the_optimizer_sees():
    norms = []

    class Probe(Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):
            if optimizer is trainer.optimizers[0]:
                grads = [p.grad for p in module.generator.parameters()]
                norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    torch.manual_seed(0)
    quiet(max_steps=10, callbacks=[Probe()]).fit(GAN(clip=1e-3), train_dataloaders=gan_loader())
    assert len(norms) == 5 and max(norms) <= 1e-3 + 1e-7


def test_manual_optimization_refuses_trainer_clipping_and_accumulation():
    with pytest.raises(ConfigError, match="gradient_clip_val.*manual optimization.*clip_gradients"):
        quiet(max_steps=2, gradient_clip_val=1.0).fit(GAN(), train_dataloaders=gan_loader())
    with pytest.raises(ConfigError, match="accumulate_grad_batches.*manual optimization"):
        quiet(max_steps=2, accumulate_grad_batches=2).fit(GAN(), train_dataloaders=gan_loader())


def test_manual_backward_in_automatic_optimization_is_refused():
    class Wrong(Regressor):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.manual_backward(loss)
            return loss

    with pytest.raises(UserError, match="manual_backward.*automatic_optimization = False"):
        quiet(max_steps=1).fit(Wrong(sgd), train_dataloaders=loader())


def test_16_mixed_manual_optimization_scales_the_loss_and_steps():
    torch.manual_seed(0)
    module = GAN()
    start = module.generator[0].weight.detach().clone()
    trainer = quiet(max_steps=6, precision="16-mixed")
    trainer.fit(module, train_dataloaders=gan_loader())
    assert trainer.global_step == 6 and not torch.equal(module.generator[0].weight, start)


def test_the_gan_resumes_exactly(tmp_path):
    def run(root, max_steps, resume):
        torch.manual_seed(0)
        module = GAN()
        trainer = Trainer(accelerator="cpu", max_steps=max_steps, seed=3, logger=False, enable_progress_bar=False,
                          default_root_dir=str(root), checkpoint_every_n_steps=6, resume=resume)
        trainer.fit(module, train_dataloaders=gan_loader())
        return module, trainer

    plain, _ = run(tmp_path / "plain", 40, "none")
    run(tmp_path / "resumed", 18, "none")  # stops mid-epoch 1 (6 batches, 12 steps per epoch)
    resumed, trainer = run(tmp_path / "resumed", 40, "auto")
    assert trainer.global_step == 40
    assert len(resumed.losses) == 11  # batches 9..20: only what came after the checkpoint at step 18
    for name, value in plain.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    for a, b in zip(plain.lr_schedulers(), resumed.lr_schedulers()):
        assert a.state_dict() == b.state_dict()
    for a, b in zip(plain.trainer.optimizers, trainer.optimizers):
        for sa, sb in zip(a.state.values(), b.state.values()):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_automatic_optimization_with_schedulers_resumes_exactly(tmp_path):
    def configure(m):
        opt = torch.optim.AdamW(m.parameters(), lr=0.05)
        warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=5)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5, threshold=10.0)
        return [opt], [{"scheduler": warm, "interval": "step"}, {"scheduler": plateau, "monitor": "val_loss"}]

    def run(root, max_steps, resume):
        torch.manual_seed(0)
        module = Regressor(configure)
        trainer = Trainer(accelerator="cpu", max_steps=max_steps, seed=3, logger=False, enable_progress_bar=False,
                          default_root_dir=str(root), checkpoint_every_n_steps=6, resume=resume)
        trainer.fit(module, train_dataloaders=DataLoader(data(), batch_size=8, shuffle=True), val_dataloaders=loader())
        return module, trainer

    plain, a = run(tmp_path / "plain", 30, "none")
    run(tmp_path / "resumed", 12, "none")
    resumed, b = run(tmp_path / "resumed", 30, "auto")
    assert torch.equal(plain.net.weight, resumed.net.weight) and lr(a) == lr(b) < 0.05
    assert [c.scheduler.state_dict() for c in a.lr_scheduler_configs] == [c.scheduler.state_dict() for c in b.lr_scheduler_configs]


def test_a_checkpoint_with_another_number_of_optimizers_is_refused(tmp_path):
    common = dict(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path),
                  checkpoint_every_n_steps=2)
    class OneOptimizer(GAN):
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters())

    Trainer(max_steps=2, **common).fit(GAN(), train_dataloaders=gan_loader())
    with pytest.raises(UserError, match="2 optimizers.*1"):
        Trainer(max_steps=4, resume="auto", **common).fit(OneOptimizer(), train_dataloaders=gan_loader())


def test_a_module_s_own_optimizer_step_and_zero_grad_run_the_automatic_step():
    seen, zeroed = [], []

    class WarmUp(Regressor):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
            for group in optimizer.param_groups:  # Lightning's documented warm-up
                group["lr"] = 0.1 * min(1.0, (self.trainer.global_step + 1) / 4)
            optimizer.step(closure=optimizer_closure)

        def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
            zeroed.append(batch_idx)
            optimizer.zero_grad()

    class Lr(Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):
            seen.append(optimizer.param_groups[0]["lr"])

    module = WarmUp(sgd)
    quiet(max_steps=6, callbacks=[Lr()]).fit(module, train_dataloaders=loader())
    assert seen == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1]) and zeroed == [0, 1, 2, 3, 0, 1]


def test_an_optimizer_step_that_does_not_step_leaves_the_weights_but_counts():
    class Frozen(Regressor):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
            optimizer_closure()

    torch.manual_seed(0)
    module = Frozen(sgd)
    start = module.net.weight.detach().clone()
    trainer = quiet(max_steps=3)
    trainer.fit(module, train_dataloaders=loader())
    assert trainer.global_step == 3 and torch.equal(module.net.weight, start)


def test_a_resume_from_an_epoch_end_checkpoint_does_not_run_the_epoch_end_hooks_again(tmp_path):
    # The default ModelCheckpoint saves in on_train_epoch_end, after the GAN's own hook stepped its
    # schedulers: the resumed run must not step them a second time.
    def run(root, max_steps, resume):
        torch.manual_seed(0)
        module = GAN()
        Trainer(accelerator="cpu", max_steps=max_steps, seed=3, logger=False, enable_progress_bar=False,
                default_root_dir=str(root), resume=resume).fit(module, train_dataloaders=gan_loader())
        return module

    plain = run(tmp_path / "plain", 24, "none")
    run(tmp_path / "resumed", 12, "none")  # exactly one epoch
    resumed = run(tmp_path / "resumed", 24, "auto")
    assert [s.get_last_lr() for s in resumed.lr_schedulers()] == [s.get_last_lr() for s in plain.lr_schedulers()]
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in plain.state_dict().items())


def test_a_checkpoint_of_the_single_optimizer_format_still_resumes_exactly(tmp_path):
    from trainkit import checkpoint

    def configure(m):
        opt = torch.optim.Adam(m.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": halving(opt), "interval": "step"}}

    def run(root, max_steps, resume):
        torch.manual_seed(0)
        module = Regressor(configure)
        trainer = Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                          default_root_dir=str(root), checkpoint_every_n_steps=3, resume=resume)
        trainer.fit(module, train_dataloaders=loader(batch_size=8))
        return module, trainer

    plain, _ = run(tmp_path / "plain", 6, "none")
    run(tmp_path / "old", 3, "none")
    # rewrite trainer.pt as trainkit wrote it before several optimizers: one "lr_scheduler", no count
    last = tmp_path / "old" / "checkpoints" / "last"
    state = torch.load(last / "trainer.pt", weights_only=True)
    state["lr_scheduler"] = state.pop("lr_schedulers")[0]
    del state["optimizers"], state["callback_metrics"]
    torch.save(state, last / "trainer.pt")
    checkpoint._write_manifest(str(last.resolve()))
    resumed, trainer = run(tmp_path / "old", 6, "auto")
    assert trainer.global_step == 6 and lr(trainer) == 0.1 * 0.5**6
    assert torch.equal(plain.net.weight, resumed.net.weight)


def test_manual_optimization_logs_when_its_steps_pass_a_multiple_of_log_every_n_steps(tmp_path):
    import csv

    from trainkit.loggers import CSVLogger

    torch.manual_seed(0)
    quiet(max_steps=12, log_every_n_steps=3, logger=[CSVLogger(save_dir=str(tmp_path))]).fit(
        GAN(), train_dataloaders=gan_loader())
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    steps = [int(r["step"]) for r in rows if r.get("g_loss")]
    assert steps == [4, 6, 10, 12]  # two steps a batch: 3 -> 4, 6, 9 -> 10, 12


def test_a_module_s_lr_scheduler_step_steps_its_schedulers():
    calls = []

    class Custom(Regressor):
        def lr_scheduler_step(self, scheduler, metric):
            calls.append((self.trainer.global_step, metric))
            scheduler.step()

    def configure(m):
        opt = sgd(m)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": halving(opt), "interval": "step", "frequency": 2}}

    module = Custom(configure)
    trainer = quiet(max_steps=6)
    trainer.fit(module, train_dataloaders=loader())
    assert calls == [(2, None), (4, None), (6, None)] and lr(trainer) == 0.5**3
