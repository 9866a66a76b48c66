"""The loss and perplexity of a whole split of text, exactly, for the language-model recipes.

Each evaluation batch adds its summed token loss and its number of scored tokens (targets equal
to IGNORE excluded: padding, prompts) to float64 totals; at the end of the split the totals are
summed over all processes, and `loss = total loss / total tokens`, `ppl = exp(loss)`: the
perplexity of every token of the split, not a mean of per-batch values, the same on any number of
processes and with any batch size.

    totals = SplitTotals()
    totals.add("val", logits, targets)       # in validation_step
    totals.log(self, "val")                  # in on_validation_epoch_end: logs val/loss, val/ppl
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from trainkit.engine.module import TrainModule

IGNORE = -1  # the target of a position that is not scored


def token_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy (nats) over the scored targets, and their number."""
    loss_sum = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum")
    return loss_sum, (targets != IGNORE).sum()


def loss_and_perplexity(loss_sum: float, count: float) -> tuple[float, float]:
    """Mean loss per token over a whole split and its perplexity exp(mean); NaN for no tokens."""
    if count == 0:
        return math.nan, math.nan
    loss = loss_sum / count
    return loss, math.exp(loss)


class SplitTotals:
    """Running float64 sums (loss, tokens) per split, kept on the device until the split ends."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}

    def add(self, split: str, logits: torch.Tensor, targets: torch.Tensor) -> None:
        loss_sum, count = token_loss_sum(logits, targets)
        sums = torch.stack([loss_sum.double(), count.double()])
        self._sums[split] = self._sums[split] + sums if split in self._sums else sums

    def log(self, module: TrainModule, split: str) -> tuple[float, float]:
        """Log `<split>/loss` and `<split>/ppl` over all processes; every process must call it
        (the sum is a collective), also one whose shard of the split was empty."""
        sums = self._sums.pop(split, None)
        if sums is None:
            sums = torch.zeros(2, dtype=torch.float64)
        loss_sum, count = module.sum_over_processes(sums).tolist()
        loss, ppl = loss_and_perplexity(loss_sum, count)
        module.log(f"{split}/loss", loss, prog_bar=True)
        module.log(f"{split}/ppl", ppl, prog_bar=True)
        return loss, ppl
