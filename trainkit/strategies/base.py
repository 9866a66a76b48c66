"""What the Trainer needs from a strategy, written down once.

`single`, `ddp` and `fsdp` implement all of it, so the engine calls these methods without asking
which strategy it has (no `getattr(strategy, ..., None)` probes). A strategy of the user's own
passes `Trainer(strategy=obj)` by implementing the same members.
"""
from __future__ import annotations

import contextlib
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


class Pending(Protocol):
    """A sum under way between processes; `wait()` gives the summed tensor."""

    def wait(self) -> torch.Tensor: ...


@runtime_checkable
class Strategy(Protocol):
    root_device: torch.device
    world_size: int
    global_rank: int
    local_rank: int  # the process's index on its machine
    is_global_zero: bool
    # True when every forward is itself a collective (FSDP gathers weights): evaluation must then
    # run as many batches on every rank, which the Trainer checks before it starts.
    forward_in_lockstep: bool
    # False where a sharded forward mutates tensors evaluation made (FSDP2's all-gather bumps
    # version counters, which inference tensors lack): evaluation then runs under no_grad, as
    # Lightning does for FSDP.
    supports_inference_mode: bool
    # The group's key-value store (None in one process).
    store: Any

    def setup_module(self, module: nn.Module) -> nn.Module:
        """Place (and wrap) the module; returns the module the loops call."""

    def batch_to_device(self, batch: Any) -> Any: ...

    def training_step(self, module: nn.Module, *args: Any) -> Any:
        """Run `module.training_step(*args)` through whatever wrapper syncs its gradients."""

    def no_backward_sync(self, module: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient exchange while `enabled` (non-final micro-batches of an accumulation)."""

    def clip_gradients(self, parameters: list[torch.Tensor], max_norm: float, algorithm: str) -> torch.Tensor | None: ...

    def average_gradients(self, parameters: list[torch.Tensor]) -> None:
        """Manual optimization: average these gradients over the processes before a step (what
        the wrapper's backward does in automatic optimization); nothing in one process."""

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over all processes (the tensor itself in one process)."""

    def all_reduce_sum_async(self, tensor: torch.Tensor) -> Pending: ...

    def barrier(self) -> None: ...

    def teardown(self) -> None: ...


class Done:
    """A `Pending` with nothing to wait for (one process)."""

    def __init__(self, value: torch.Tensor) -> None:
        self.value = value

    def wait(self) -> torch.Tensor:
        return self.value
