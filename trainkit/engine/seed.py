"""Seeding and deterministic mode."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int | None = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed python, numpy and torch (CPU and every CUDA device); returns the seed. Lightning's
    signature: no seed takes $PL_GLOBAL_SEED or 0; `workers` and `verbose` change nothing here
    (DataLoader workers get torch's per-worker seeds derived from this one)."""
    if seed is None:
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices
    return seed


def set_deterministic(enabled: bool) -> None:
    """Make torch pick deterministic kernels (and fail loudly on ops that have none)."""
    if enabled == torch.are_deterministic_algorithms_enabled():
        return  # nothing to change (and setting it imports torch._inductor: ~1 s at start-up)
    if enabled:
        # cuBLAS needs a fixed workspace to be deterministic; must be set before CUDA starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.benchmark = False if enabled else torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic = enabled
