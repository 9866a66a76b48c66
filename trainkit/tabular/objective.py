"""What every model of the dropout and engagement recipes is trained and scored on: one class per student.

A model's forward gives logits [B, C]; class 0 is the positive class (Dropout, at risk) whose AUC
and F1 are reported. `ClassifierObjective` turns the logits into:
  train/loss   cross-entropy weighted by the batch's `weight` (the class weights of
               datamodule.balance=class_weights; 1 otherwise): sum(w * ce) / sum(w) over the global batch
  val/loss     plain (unweighted) cross-entropy, the mean over the whole split
  val/acc      accuracy of the most probable class (3-class accuracy for UCI)
  val/auc      AUC of P(class 0) for "class 0 or not" (dropout-vs-rest for UCI), exact over the split
  val/f1       F1 of class 0;  val/macro_f1: the mean F1 over the classes
(and the same under test/). All are over every row of the split, across processes, not averages
of per-batch values.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from trainkit.engine.module import TrainModule
from trainkit.metrics import BinaryMetrics

Batch = dict[str, torch.Tensor]  # numeric, categorical, label, weight (see tabular.py)
Log = Callable[..., None]


class ClassifierObjective:
    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.auc = {"val": BinaryMetrics(), "test": BinaryMetrics()}
        self.confusion: dict[str, torch.Tensor | None] = {"val": None, "test": None}

    def training_step(self, forward: Callable[[], torch.Tensor], batch: Batch, module: TrainModule) -> torch.Tensor:
        """`forward()` gives the logits; it runs while the processes exchange the weight total."""
        weight = batch["weight"]
        # As in the KT recipe: divide by the weight summed over all processes and multiply by their
        # number (DDP averages gradients), so that every rank's gradient is that of the global mean.
        total = module.sum_over_processes(weight.sum(dtype=torch.float32), async_op=True)
        logits = forward()
        ce = F.cross_entropy(logits.float(), batch["label"], reduction="none")
        loss = (ce * weight).sum() * (module.trainer.world_size / total.wait())
        module.log("train/loss", loss, prog_bar=True)
        return loss

    def evaluation_step(self, logits: torch.Tensor, batch: Batch, stage: str, log: Log) -> None:
        """stage: "val" or "test"."""
        logits, labels = logits.float(), batch["label"]
        log(f"{stage}/loss", F.cross_entropy(logits, labels), prog_bar=True, batch_size=labels.numel())
        probs = torch.softmax(logits, dim=-1)
        self.auc[stage].update(probs[:, 0], (labels == 0).long())
        cells = labels * self.num_classes + probs.argmax(-1)
        counts = torch.bincount(cells, minlength=self.num_classes**2).view(self.num_classes, self.num_classes)
        self.confusion[stage] = counts if self.confusion[stage] is None else self.confusion[stage] + counts

    def evaluation_epoch_end(self, stage: str, log: Log, module: TrainModule) -> None:
        auc = self.auc[stage].compute()["auc"]
        self.auc[stage].reset()
        confusion = self.confusion[stage]
        if confusion is None:  # no batches on this process: it still takes part in the sum
            device = next(module.parameters()).device
            confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long, device=device)
        self.confusion[stage] = None
        confusion = module.sum_over_processes(confusion.double()).cpu()  # [true, predicted]
        true_positive = confusion.diagonal()
        f1 = 2 * true_positive / (confusion.sum(0) + confusion.sum(1)).clamp(min=1)
        log(f"{stage}/auc", auc, prog_bar=True)
        log(f"{stage}/acc", true_positive.sum() / confusion.sum().clamp(min=1), prog_bar=True)
        log(f"{stage}/f1", f1[0])
        log(f"{stage}/macro_f1", f1.mean())

    def predict_step(self, logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        """The probability of each class per row, and the true class."""
        return {"probs": torch.softmax(logits.float(), dim=-1), "label": batch["label"]}
