"""Strategies: how the model is placed and how gradients and metrics cross processes.

The Trainer talks to one `Strategy` (the Protocol in base.py) and never asks which kind it has:
`single` (one device), `ddp` (one process per device; `auto` picks it when there are several) or
`fsdp` (FSDP2: parameters, gradients and optimizer state sharded over the processes).
"""
from __future__ import annotations

import torch

from trainkit.choices import ACCELERATORS, STRATEGIES
from trainkit.errors import ConfigError
from trainkit.launch.env import DistEnv
from trainkit.strategies.base import Strategy
from trainkit.strategies.ddp import DDPStrategy
from trainkit.strategies.fsdp import FSDPStrategy
from trainkit.strategies.single import SingleDeviceStrategy

__all__ = ["Strategy", "make_strategy", "resolve_device"]


def resolve_device(accelerator: str) -> torch.device:
    if accelerator not in ACCELERATORS:
        raise ConfigError(f"trainer.accelerator={accelerator!r} is not one of {', '.join(ACCELERATORS)}")
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator=gpu but no CUDA device is visible; use trainer.accelerator=cpu")
    if accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def make_strategy(
    name: str,
    accelerator: str,
    devices: int,
    num_nodes: int,
    env: DistEnv | None = None,
    find_unused_parameters: bool = False,
    timeout_s: float = 1800.0,
    precision_mode: str = "32",
    wrap_modules: list[str] | None = None,
    cpu_offload: bool = False,
) -> Strategy:
    """The strategy for this process. `env` is the rank layout its launcher gave it."""
    if name not in STRATEGIES:
        raise ConfigError(f"strategy={name!r} is not one of {', '.join(STRATEGIES)}")
    env = env or DistEnv()
    wanted = devices * num_nodes
    if env.world_size != wanted:
        raise ConfigError(_world_size_mismatch(devices, num_nodes, env))
    if name == "single" and wanted > 1:
        raise ConfigError(f"strategy=single runs one process, but {wanted} were asked for; use strategy=ddp")
    if wanted == 1 and name not in ("ddp", "fsdp"):
        return SingleDeviceStrategy(resolve_device(accelerator))
    device = resolve_device(accelerator)
    if device.type == "cuda":  # a task bound to one GPU (srun --gpus-per-task=1) sees it as cuda:0
        device = torch.device("cuda", env.local_rank if torch.cuda.device_count() > 1 else 0)
        torch.cuda.set_device(device)
    if name == "fsdp":
        return FSDPStrategy(env, device, precision_mode, wrap_modules, cpu_offload, timeout_s)
    return DDPStrategy(env, device, find_unused_parameters, timeout_s)


def _world_size_mismatch(devices: int, num_nodes: int, env: DistEnv) -> str:
    asked = f"devices={devices} x num_nodes={num_nodes} = {devices * num_nodes} processes"
    if not env.launcher:
        # Lightning would start the other processes itself; trainkit leaves that to a launcher.
        return (f"{asked}, but this process was started alone; run it as `torchrun --nproc_per_node={devices} "
                f"<script>.py` (or `srun --ntasks-per-node={devices}`), or use `trainkit fit trainer.devices={devices}`")
    source = "torchrun (WORLD_SIZE)" if env.launcher == "torchrun" else "srun (SLURM_STEP_NUM_TASKS)"
    return (f"{asked}, but {source} started {env.world_size}; set devices=\"auto\" (or devices x num_nodes = "
            f"{env.world_size}), or start {devices} processes per node on {num_nodes} node(s)")
