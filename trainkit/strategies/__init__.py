"""Strategies: how the model is placed and how gradients and metrics cross processes.

The Trainer talks to one `Strategy` object and never asks which kind it has. This version ships
the single-device strategy; DDP and FSDP2 plug into the same seam.
"""
from __future__ import annotations

import torch

from trainkit.choices import ACCELERATORS, STRATEGIES
from trainkit.errors import ConfigError
from trainkit.strategies.single import SingleDeviceStrategy



def resolve_device(accelerator: str) -> torch.device:
    if accelerator not in ACCELERATORS:
        raise ConfigError(f"trainer.accelerator={accelerator!r} is not one of {', '.join(ACCELERATORS)}")
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator=gpu but no CUDA device is visible; use trainer.accelerator=cpu")
    if accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def make_strategy(name: str, accelerator: str, devices: int, num_nodes: int) -> SingleDeviceStrategy:
    if name not in STRATEGIES:
        raise ConfigError(f"strategy={name!r} is not one of {', '.join(STRATEGIES)}")
    if devices * num_nodes != 1:
        raise ConfigError(
            f"trainer.devices={devices} trainer.num_nodes={num_nodes} asks for {devices * num_nodes} "
            "processes, but this version trains in one process only; use trainer.devices=1"
        )
    return SingleDeviceStrategy(resolve_device(accelerator))
