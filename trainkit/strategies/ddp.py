"""DistributedDataParallel: one process per device, gradients averaged across processes.

Placement, batch movement and clipping are the single-device strategy's (composed, not copied);
this adds the process group, the DDP wrapper and the collectives that metrics and checkpoints use.
Gradient accumulation skips the all-reduce on all but the last micro-batch (`no_sync`); clipping
runs after it, on the averaged gradients.
"""
from __future__ import annotations

import atexit
import contextlib
import gc
import weakref
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainkit.exits import close_process_group
from trainkit.launch.env import DistEnv
from trainkit.launch.rendezvous import rendezvous_store
from trainkit.strategies.single import SingleDeviceStrategy


class _TrainingStep(nn.Module):
    """DDP syncs gradients of what runs through its forward: route training_step through it."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any) -> Any:
        return self.module.training_step(*args)


class _Pending:
    """An all-reduce under way; `wait()` gives the summed tensor."""

    def __init__(self, tensor: torch.Tensor, work: Any) -> None:
        self.tensor, self.work = tensor, work

    def wait(self) -> torch.Tensor:
        self.work.wait()
        return self.tensor


def init_process_group(env: DistEnv, backend: str, timeout_s: float):
    """Join the group through the launcher's rendezvous store, under a prefix per restart attempt:
    a restarted gloo group that reused the first attempt's keys failed to connect or hung here."""
    if dist.is_initialized():
        return _GROUP_STORE[0]
    timeout = timedelta(seconds=timeout_s)
    store = dist.PrefixStore(f"trainkit/attempt{env.restart_count}", rendezvous_store(env, timeout_s))
    dist.init_process_group(backend, store=store, rank=env.rank, world_size=env.world_size, timeout=timeout)
    _GROUP_STORE[0] = store
    # A script of the user's own (Trainer(strategy="ddp") under torchrun) ends at interpreter exit;
    # a trainkit worker leaves through exits.leave (os._exit), so this never runs there.
    atexit.register(_close_at_exit)
    return store


_GROUP_STORE = [None]  # the store of this process's group (one group per process)
_WRAPPED: "weakref.WeakSet[DDPStrategy]" = weakref.WeakSet()  # strategies holding a DDP wrapper


def _close_at_exit() -> None:
    """Free the group while the interpreter is whole. A DDP wrapper keeps the group (and gloo's
    threads, with the last collectives' tensors) alive past destroy_process_group; freed during
    interpreter finalization instead, they can abort the process after a finished run."""
    for strategy in list(_WRAPPED):
        strategy._ddp = None
    gc.collect()
    close_process_group()
    gc.collect()


class DDPStrategy:
    forward_in_lockstep = False
    supports_inference_mode = True

    def __init__(self, env: DistEnv, device: torch.device, find_unused_parameters: bool = False,
                 timeout_s: float = 1800.0) -> None:
        self.store = init_process_group(env, "nccl" if device.type == "cuda" else "gloo", timeout_s)
        self.env = env
        self.world_size = env.world_size
        self.global_rank = env.rank
        self.local_rank = env.local_rank
        self.is_global_zero = env.rank == 0
        self.local = SingleDeviceStrategy(device)
        self.root_device = device
        self.find_unused_parameters = find_unused_parameters
        self._ddp: DistributedDataParallel | None = None

    def setup_module(self, module: nn.Module) -> nn.Module:
        module = self.local.setup_module(module)
        device_ids = [self.root_device.index] if self.root_device.type == "cuda" else None
        self._ddp = DistributedDataParallel(_TrainingStep(module), device_ids=device_ids,
                                            find_unused_parameters=self.find_unused_parameters)
        _WRAPPED.add(self)
        return module

    def batch_to_device(self, batch: Any) -> Any:
        return self.local.batch_to_device(batch)

    def training_step(self, module: nn.Module, *args: Any) -> Any:
        return self._ddp(*args)

    def no_backward_sync(self, module: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        return self._ddp.no_sync() if enabled else contextlib.nullcontext()

    def clip_gradients(self, parameters: list[torch.Tensor], max_norm: float, algorithm: str) -> torch.Tensor | None:
        return self.local.clip_gradients(parameters, max_norm, algorithm)  # grads are identical on all ranks

    def average_gradients(self, parameters: list[torch.Tensor]) -> None:
        # One flat all-reduce per dtype instead of one per tensor. Gradients already averaged
        # stay the same (the mean of equal values), so a second backward before a step is safe.
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for p in parameters:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        for grads in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= self.world_size
            for g, part in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(part.view_as(g))

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.all_reduce_sum_async(tensor).wait()

    def all_reduce_sum_async(self, tensor: torch.Tensor) -> "_Pending":
        tensor = tensor.to(self.root_device)
        return _Pending(tensor, dist.all_reduce(tensor, op=dist.ReduceOp.SUM, async_op=True))

    def barrier(self) -> None:
        dist.barrier()

    def teardown(self) -> None:
        pass  # the group lives as long as the process (fit, then test): closed as the process leaves
