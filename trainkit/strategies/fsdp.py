"""FSDP2 (`torch.distributed.fsdp.fully_shard`): parameters, gradients and optimizer state sharded
over the processes; each wrapped block gathers its parameters just for its forward and backward.

Blocks to wrap are named by class (`strategy.wrap_modules=[TransformerBlock]`); the root module is
always wrapped. Left empty, the blocks are those the model names itself: every class listed in a
submodule's `_no_split_modules` (Hugging Face models name their decoder layer there, e.g.
GPT2Block, LlamaDecoderLayer). The precision plugin's mode picks the mixed-precision policy (bf16-mixed: bf16
compute, fp32 gradient reduction). Checkpoints are sharded: every rank writes its own part through
torch.distributed.checkpoint, which can read them back on another number of processes.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

import torch
from torch import nn

from trainkit.launch.env import DistEnv
from trainkit.strategies.ddp import DDPStrategy

log = logging.getLogger("trainkit")


class FSDPStrategy(DDPStrategy):
    # Every forward gathers the sharded weights from all ranks: evaluation and prediction must run
    # the same number of batches on each (the Trainer checks before it starts).
    forward_in_lockstep = True
    supports_inference_mode = False
    # Shares the process group, placement and collectives of DDP; only how the module is wrapped
    # and how gradient sync is paused differ.
    def __init__(self, env: DistEnv, device: torch.device, precision_mode: str = "32",
                 wrap_modules: list[str] | None = None, cpu_offload: bool = False, timeout_s: float = 1800.0) -> None:
        super().__init__(env, device, timeout_s=timeout_s)
        self.precision_mode = precision_mode
        self.wrap_modules = set(wrap_modules or [])
        self.cpu_offload = cpu_offload

    def setup_module(self, module: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        module = self.local.setup_module(module)
        options: dict[str, Any] = {}
        if self.precision_mode in ("bf16-mixed", "16-mixed"):
            dtype = torch.bfloat16 if self.precision_mode == "bf16-mixed" else torch.float16
            options["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        if self.cpu_offload:
            options["offload_policy"] = CPUOffloadPolicy()
        names = self.wrap_modules or layer_classes(module)
        for sub in module.modules():
            if sub is not module and type(sub).__name__ in names:
                fully_shard(sub, **options)
        fully_shard(module, **options)
        return module

    def training_step(self, module: nn.Module, *args: Any) -> Any:
        return module.training_step(*args)  # fully_shard's hooks sit on module.forward

    def average_gradients(self, parameters: list[torch.Tensor]) -> None:
        pass  # fully_shard's backward hooks already reduce-scattered them, in every backward

    def no_backward_sync(self, module: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        return _paused_gradient_sync(module) if enabled else contextlib.nullcontext()


def layer_classes(module: nn.Module) -> set[str]:
    """The block classes a model declares as units that must not be split (`_no_split_modules`)."""
    names: set[str] = set()
    for sub in module.modules():
        names.update(getattr(sub, "_no_split_modules", None) or ())
    if names:
        log.info("strategy=fsdp: sharding each %s (from the model's _no_split_modules; strategy.wrap_modules "
                 "overrides)", ", ".join(sorted(names)))
    return names


@contextlib.contextmanager
def _paused_gradient_sync(module: nn.Module) -> Iterator[None]:
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)
