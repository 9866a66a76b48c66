"""The validation, test and predict loops (also the validation inside fit)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable

import torch

from trainkit.engine import loaders
from trainkit.engine.data import DataModule
from trainkit.engine.module import TrainModule
from trainkit.errors import UserError

if TYPE_CHECKING:
    from trainkit.engine.trainer import Trainer


def run_stage(
    trainer: Trainer, stage: str, module: TrainModule, dataloaders: Iterable | None, datamodule: DataModule | None
) -> dict[str, float]:
    """`trainer.validate` / `trainer.test`: find the loader, shard it, run the loop."""
    if dataloaders is None:
        if datamodule is None:
            raise UserError(f"{stage} needs data: pass dataloaders= or a datamodule")
        dataloaders = datamodule.val_dataloader() if stage == "validate" else datamodule.test_dataloader()
    if dataloaders is None:
        raise UserError(f"{stage}: the datamodule returned no {stage} dataloader")
    dataloaders = loaders.distribute(dataloaders, trainer.strategy, trainer._data_seed, train=False)
    limit = trainer.limit_val_batches if stage == "validate" else trainer.limit_test_batches
    return evaluate(trainer, stage, module, dataloaders, loaders.num_batches(dataloaders, limit))


def evaluate(trainer: Trainer, stage: str, module: TrainModule, loader: Iterable, limit: int | float) -> dict[str, float]:
    """Run `validation_step` / `test_step` over `limit` batches; returns the epoch's metrics."""
    prefix = "validation" if stage == "validate" else "test"
    check_lockstep(trainer, stage, min(loaders.length(loader), limit))
    step_fn = module.validation_step if stage == "validate" else module.test_step
    strategy, precision = trainer.strategy, trainer.precision
    was_training = module.training
    module.eval()
    trainer.metrics.training = False
    getattr(module, f"on_{prefix}_epoch_start")()
    trainer._call(f"on_{prefix}_start")
    with torch.inference_mode():
        for batch_idx, batch in loaders.take(loader, limit):
            batch = strategy.batch_to_device(precision.convert_input(batch))
            with precision.autocast():
                out = step_fn(batch, batch_idx)
            trainer._call_batch(f"on_{prefix}_batch_end", out, batch, batch_idx)
        getattr(module, f"on_{prefix}_epoch_end")()
    values = trainer.metrics.read_epoch()
    trainer.log_metrics(values)
    trainer._call(f"on_{prefix}_end")
    module.train(was_training)
    trainer.metrics.training = was_training
    return values


def predict(trainer: Trainer, module: TrainModule, dataloaders: Iterable | None, datamodule: DataModule | None) -> list[Any]:
    loader = dataloaders if dataloaders is not None else datamodule.predict_dataloader()
    loader = loaders.distribute(loader, trainer.strategy, trainer._data_seed, train=False)  # each rank its shard
    limit = loaders.num_batches(loader, trainer.limit_predict_batches)
    check_lockstep(trainer, "predict", min(loaders.length(loader), limit))
    strategy, precision = trainer.strategy, trainer.precision
    trainer._call("on_predict_start")
    outputs = []
    with torch.inference_mode():
        for batch_idx, batch in loaders.take(loader, limit):
            batch = strategy.batch_to_device(precision.convert_input(batch))
            with precision.autocast():
                out = module.predict_step(batch, batch_idx)
            outputs.append(out)
            trainer._call_batch("on_predict_batch_end", out, batch, batch_idx)
    trainer._call("on_predict_end")
    return outputs


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
