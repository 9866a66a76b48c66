"""The validation, test and predict loops (also the validation inside fit and its sanity check).

Several loaders (a list or dict) run one after the other, as in Lightning: each step gets
`dataloader_idx` (its position), a metric logged from loader i is named `<name>/dataloader_idx_i`,
and validate/test return one dict per loader (predict one list per loader). With one loader
nothing changes: no `dataloader_idx` argument, no suffix.
"""
from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Any, Iterable

import torch

from trainkit.engine import loaders
from trainkit.engine.data import DataModule
from trainkit.engine.module import TrainModule, positional_arity
from trainkit.errors import UserError

if TYPE_CHECKING:
    from trainkit.engine.trainer import Trainer

_SUFFIX = "/dataloader_idx_"


def run_stage(
    trainer: Trainer, stage: str, module: TrainModule, dataloaders: Iterable | None, datamodule: DataModule | None
) -> list[dict[str, float]]:
    """`trainer.validate` / `trainer.test`: find the loaders, shard them, run the loop."""
    hook = "val_dataloader" if stage == "validate" else "test_dataloader"
    dataloaders = loaders.requested(hook, dataloaders, datamodule, module)
    if dataloaders is None:
        raise UserError(f"{stage} needs data: pass dataloaders=, a datamodule with {hook}(), or define "
                        f"{hook}() on the module")
    limit = trainer.limit_val_batches if stage == "validate" else trainer.limit_test_batches
    shards, limits = loaders.prepare_eval(trainer, dataloaders, limit)
    return evaluate(trainer, stage, module, shards, limits)


def evaluate(trainer: Trainer, stage: str, module: TrainModule, shards: list, limits: list,
             log: bool = True) -> list[dict[str, float]]:
    """Run `validation_step` / `test_step` over `limits[i]` batches of each loader; returns each
    loader's epoch metrics (`log=False`: the sanity check, whose numbers go nowhere)."""
    prefix = "validation" if stage == "validate" else "test"
    for loader, limit in zip(shards, limits):
        check_lockstep(trainer, stage, min(loaders.length(loader), limit))
    step_fn = module.validation_step if stage == "validate" else module.test_step
    several = len(shards) > 1
    if several:
        _needs_dataloader_idx(module, "validation_step" if stage == "validate" else "test_step", stage)
    strategy, precision = trainer.strategy, trainer.precision
    if trainer.profiler is not None:
        step_fn = trainer.profiler.wrap(f"{prefix}_step", step_fn)
    metrics = trainer.metrics
    was_training, step_default = module.training, metrics.step_default
    module.eval()
    metrics.training, metrics.step_default = False, False
    with_batch_idx = positional_arity(step_fn) >= 2
    transfer = trainer.hooks.batch_transfer()
    batch_start = trainer.hooks.targets(f"on_{prefix}_batch_start")
    batch_end = trainer.hooks.targets(f"on_{prefix}_batch_end")
    trainer._call(f"on_{prefix}_start")
    trainer._call(f"on_{prefix}_epoch_start")
    with grad_off(trainer):
        for idx, (loader, limit) in enumerate(zip(shards, limits)):
            metrics.dataloader_idx = idx if several else None
            extra = (idx,) if several else ()
            for batch_idx, batch in _batches(trainer, f"{stage}_dataloader_next", loader, limit):
                trainer.heartbeat.mark("validation")
                batch = strategy.batch_to_device(precision.convert_input(batch)) if transfer is None \
                    else transfer(batch, idx)
                for fn in batch_start:
                    fn(batch, batch_idx, *extra)
                with precision.autocast():
                    out = step_fn(batch, batch_idx, *extra) if with_batch_idx else step_fn(batch, *extra)
                for fn in batch_end:
                    fn(out, batch, batch_idx, *extra)
        metrics.dataloader_idx = None
        trainer._call(f"on_{prefix}_epoch_end")
    trainer.heartbeat.mark("collective")  # the epoch's metrics are reduced over the ranks
    values = metrics.read_epoch()
    if log:
        trainer.log_metrics(values)
    trainer._call(f"on_{prefix}_end")
    module.train(was_training)
    metrics.training, metrics.step_default = was_training, step_default
    return [_of_loader(values, idx) for idx in range(len(shards))] if several else [values]


def predict(trainer: Trainer, module: TrainModule, dataloaders: Iterable | None,
            datamodule: DataModule | None) -> list[Any]:
    """Each batch's `predict_step` output: a list, or one list per loader when there are several."""
    dataloaders = loaders.requested("predict_dataloader", dataloaders, datamodule, module)
    if dataloaders is None:
        raise UserError("predict needs data: pass dataloaders=, a datamodule with predict_dataloader(), or define "
                        "predict_dataloader() on the module")
    shards, limits = loaders.prepare_eval(trainer, dataloaders, trainer.limit_predict_batches)  # each rank its shard
    for loader, limit in zip(shards, limits):
        check_lockstep(trainer, "predict", min(loaders.length(loader), limit))
    several = len(shards) > 1
    if several:
        _needs_dataloader_idx(module, "predict_step", "predict")
    strategy, precision = trainer.strategy, trainer.precision
    step_fn = module.predict_step
    with_batch_idx = positional_arity(step_fn) >= 2
    if trainer.profiler is not None:
        step_fn = trainer.profiler.wrap("predict_step", step_fn)
    transfer = trainer.hooks.batch_transfer()
    batch_start = trainer.hooks.targets("on_predict_batch_start")
    batch_end = trainer.hooks.targets("on_predict_batch_end")
    was_training = module.training
    module.eval()  # as Lightning: dropout and batch-norm statistics in evaluation mode
    trainer._call("on_predict_start")
    trainer._call("on_predict_epoch_start")
    outputs: list[list[Any]] = []
    with grad_off(trainer):
        for idx, (loader, limit) in enumerate(zip(shards, limits)):
            extra = (idx,) if several else ()
            outputs.append([])
            for batch_idx, batch in _batches(trainer, "predict_dataloader_next", loader, limit):
                batch = strategy.batch_to_device(precision.convert_input(batch)) if transfer is None \
                    else transfer(batch, idx)
                for fn in batch_start:
                    fn(batch, batch_idx, *extra)
                with precision.autocast():
                    out = step_fn(batch, batch_idx, *extra) if with_batch_idx else step_fn(batch, *extra)
                outputs[-1].append(out)
                for fn in batch_end:
                    fn(out, batch, batch_idx, *extra)
    trainer._call("on_predict_epoch_end")
    trainer._call("on_predict_end")
    module.train(was_training)
    return outputs if several else outputs[0]


def sanity_check(trainer: Trainer, module: TrainModule, shards: list, limits: list) -> None:
    """Lightning's check before training: `num_sanity_val_steps` batches of each val loader, so a
    bug in validation shows in seconds rather than after the first epoch. Nothing it computes is
    kept: no logging, callback_metrics as before, and the RNG streams as before (training draws
    the same numbers with or without it). Callbacks see `trainer.sanity_checking` (the stage is
    "sanity_check", so the ones that act on validation during fit leave it alone)."""
    from trainkit.engine.rng import capture_rng, restore_rng

    steps = [min(trainer.num_sanity_val_steps, n) for n in limits]
    if not shards or not sum(steps):
        return
    rng, metrics = capture_rng(), dict(trainer.metrics.callback_metrics)
    stage, trainer.state.stage = trainer.state.stage, "sanity_check"
    try:
        trainer._call("on_sanity_check_start")
        evaluate(trainer, "validate", module, shards, steps, log=False)
        trainer._call("on_sanity_check_end")
    finally:
        trainer.state.stage = stage
        trainer.metrics.step_values.clear()
        trainer.metrics.callback_metrics.clear()
        trainer.metrics.callback_metrics.update(metrics)
        restore_rng(rng)


def grad_off(trainer: Trainer):
    """torch.inference_mode (Trainer(inference_mode=True), the default, where the strategy allows
    it) or torch.no_grad."""
    if trainer.inference_mode and trainer.strategy.supports_inference_mode:
        return torch.inference_mode()
    return torch.no_grad()


def _batches(trainer: Trainer, action: str, loader: Iterable, limit: int | float) -> Iterable[tuple[int, Any]]:
    batches = loaders.take(loader, limit)
    return trainer.profiler.iterate(action, batches) if trainer.profiler is not None else batches


def _needs_dataloader_idx(module: TrainModule, hook: str, stage: str) -> None:
    params = inspect.signature(getattr(module, hook)).parameters
    if "dataloader_idx" not in params and not any(p.kind is p.VAR_POSITIONAL for p in params.values()):
        raise UserError(f"{stage} has several dataloaders, but {type(module).__name__}.{hook}() takes no "
                        "dataloader_idx: add `dataloader_idx=0` to its arguments")


def _of_loader(values: dict[str, float], idx: int) -> dict[str, float]:
    """Loader idx's metrics: its own suffixed ones and those logged outside any loader."""
    own = f"{_SUFFIX}{idx}"
    return {k: v for k, v in values.items() if _SUFFIX not in k or k.endswith(own)}


def check_lockstep(trainer: Trainer, stage: str, batches: int | float) -> None:
    """Under FSDP every forward is a collective: a rank with fewer batches would leave the others
    waiting. Refuse with the numbers instead (one small all-reduce before the loop)."""
    strategy = trainer.strategy
    if not strategy.forward_in_lockstep or batches == math.inf:
        return
    total = int(strategy.all_reduce_sum(torch.tensor([float(batches)])).item())
    world = strategy.world_size
    if total != batches * world:
        raise UserError(
            f"strategy=fsdp {stage}: this rank has {batches} batches, the {world} ranks {total} in all; "
            "FSDP needs as many on every rank (each forward gathers the weights from all of them). Run "
            f"{stage} with strategy=ddp (FSDP checkpoints load there too), or a batch size / data size that "
            "splits evenly over the ranks")
