"""What every knowledge-tracing model of the recipe is trained and scored on: the next answer.

A model's forward gives logits [B, T-1], entry t predicting the answer at step t+1 from steps
0..t. `KTObjective` turns them into the loss, the logged values and the predictions: masked BCE
over real next steps (padding never counts), AUC and accuracy over every such prediction of the
epoch (exact, not an average of per-batch AUCs). DKT and SAKT each hold one and call it from
their step methods, so that their numbers mean the same thing.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from trainkit.engine.module import TrainModule
from trainkit.metrics import BinaryMetrics

Batch = dict[str, torch.Tensor]  # skills, correct, mask: [B, T] (see datamodule.py)
Log = Callable[..., None]  # the model's TrainModule.log


def next_step_targets(logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits of the real next steps, their 0/1 targets (in the logits' dtype), and the
    [B, T-1] mask that selected them."""
    mask = batch["mask"][:, 1:]
    targets = batch["correct"][:, 1:][mask].to(logits.dtype)
    return logits[mask], targets, mask


class KTObjective:
    """Loss, metrics and logs under the names every recipe config and callback expects:
    train/loss, then val/ and test/ loss, auc and acc."""

    def __init__(self) -> None:
        self.metrics = {"val": BinaryMetrics(), "test": BinaryMetrics()}

    def training_step(self, forward: Callable[[], torch.Tensor], batch: Batch, module: TrainModule) -> torch.Tensor:
        """`forward()` gives the logits; it runs while the processes exchange their counts."""
        # The mean over every real next step of the *global* batch: ranks hold different numbers
        # of real steps (padding), so each divides its sum by the count over all processes and
        # multiplies by their number (DDP averages gradients over ranks). One process: the plain mean.
        count = module.sum_over_processes(batch["mask"][:, 1:].sum(dtype=torch.float32), async_op=True)
        logits, targets, _ = next_step_targets(forward(), batch)
        loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") * (module.trainer.world_size / count.wait())
        module.log("train/loss", loss, prog_bar=True)
        return loss

    def evaluation_step(self, logits: torch.Tensor, batch: Batch, stage: str, log: Log) -> None:
        """stage: "val" or "test"."""
        logits, targets, _ = next_step_targets(logits, batch)
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float())
        # Weighted by the number of predictions: the epoch value is the exact mean over all of them.
        log(f"{stage}/loss", loss, prog_bar=True, batch_size=targets.numel())
        self.metrics[stage].update(torch.sigmoid(logits.float()), targets)

    def evaluation_epoch_end(self, stage: str, log: Log) -> None:
        values = self.metrics[stage].compute()
        self.metrics[stage].reset()
        log(f"{stage}/auc", values["auc"], prog_bar=True)
        log(f"{stage}/acc", values["acc"], prog_bar=True)

    def predict_step(self, logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        """Probability of a correct answer at each next step; `mask` marks the real ones."""
        return {"prob": torch.sigmoid(logits.float()), "mask": batch["mask"][:, 1:]}
