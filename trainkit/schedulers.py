"""Learning-rate schedules stepped once per optimizer step (the `scheduler` config group).

Each takes the run's length as `total_steps`; the Trainer passes it (from max_steps, or
max_epochs x optimizer steps per epoch).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warm-up to the base LR, then cosine decay to `min_lr_ratio` x base LR."""
    return _warmup_then(optimizer, total_steps, warmup_steps, min_lr_ratio, lambda p: 0.5 * (1 + math.cos(math.pi * p)))


def warmup_linear(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warm-up to the base LR, then linear decay to `min_lr_ratio` x base LR."""
    return _warmup_then(optimizer, total_steps, warmup_steps, min_lr_ratio, lambda p: 1 - p)


def _warmup_then(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    min_lr_ratio: float,
    decay: Callable[[float], float],  # progress in [0, 1] -> 1 .. 0
) -> LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * decay(progress)

    return LambdaLR(optimizer, factor)
