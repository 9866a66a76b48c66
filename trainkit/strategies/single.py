"""One process, one device."""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from trainkit.engine.tensors import apply_to_tensors
from trainkit.strategies.base import Done


class SingleDeviceStrategy:
    world_size = 1
    global_rank = 0
    local_rank = 0
    is_global_zero = True
    forward_in_lockstep = False
    supports_inference_mode = True
    store = None  # one process: no group

    def __init__(self, device: torch.device) -> None:
        self.root_device = device
        self._move_batches = device.type != "cpu"  # DataLoaders already yield CPU tensors

    def setup_module(self, module: nn.Module) -> nn.Module:
        return module.to(self.root_device)

    def batch_to_device(self, batch: Any) -> Any:
        if not self._move_batches:
            return batch
        device = self.root_device
        return apply_to_tensors(batch, lambda t: t.to(device, non_blocking=True))

    def training_step(self, module: nn.Module, *args: Any) -> Any:
        return module.training_step(*args)

    def no_backward_sync(self, module: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        """Skip gradient all-reduce on non-final micro-batches (nothing to skip with one device)."""
        return contextlib.nullcontext()

    def clip_gradients(self, parameters: list[torch.Tensor], max_norm: float, algorithm: str) -> torch.Tensor | None:
        if algorithm == "value":
            nn.utils.clip_grad_value_(parameters, max_norm)
            return None
        return nn.utils.clip_grad_norm_(parameters, max_norm)

    def average_gradients(self, parameters: list[torch.Tensor]) -> None:
        pass  # one process: its gradients are the average

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def all_reduce_sum_async(self, tensor: torch.Tensor) -> Done:
        return Done(tensor)

    def barrier(self) -> None:
        pass

    def teardown(self) -> None:
        pass
