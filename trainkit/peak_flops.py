"""The peak FLOP/s of one device, for MFU: a small table of common GPUs by compute dtype.

Dense figures from the vendors' data sheets (no 2:4 sparsity), per device. Names are matched
against `torch.cuda.get_device_name()` in order (the first row whose key is part of the lower-case
name wins, so "h100 pcie" comes before "h100"). A device or dtype not in the table has no MFU; set
`trainer.peak_flops` (FLOP/s of one device) to get it, on any hardware, CPU included.
"""
from __future__ import annotations

import torch

# name fragment -> {compute dtype: FLOP/s}; "tf32" is float32 matmuls on tensor cores
_GPUS: list[tuple[str, dict[str, float]]] = [
    ("b200", {"fp64": 40e12, "fp32": 80e12, "tf32": 1.1e15, "bf16": 2.25e15, "fp16": 2.25e15}),
    ("h200", {"fp64": 67e12, "fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12}),
    ("h100 nvl", {"fp64": 60e12, "fp32": 60e12, "tf32": 417.5e12, "bf16": 835e12, "fp16": 835e12}),
    ("h100 pcie", {"fp64": 51e12, "fp32": 51e12, "tf32": 378e12, "bf16": 756e12, "fp16": 756e12}),
    ("h100", {"fp64": 67e12, "fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12}),
    ("a100", {"fp64": 19.5e12, "fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12}),
    ("l40s", {"fp32": 91.6e12, "tf32": 183e12, "bf16": 362e12, "fp16": 362e12}),
    ("a10g", {"fp32": 31.2e12, "tf32": 62.5e12, "bf16": 125e12, "fp16": 125e12}),
    ("a10", {"fp32": 31.2e12, "tf32": 62.5e12, "bf16": 125e12, "fp16": 125e12}),
    ("l4", {"fp32": 30.3e12, "tf32": 60e12, "bf16": 121e12, "fp16": 121e12}),
    ("v100", {"fp64": 7.8e12, "fp32": 15.7e12, "fp16": 125e12}),
    ("t4", {"fp32": 8.1e12, "fp16": 65e12}),
    ("rtx 4090", {"fp32": 82.6e12, "tf32": 82.6e12, "bf16": 165.2e12, "fp16": 165.2e12}),
    ("rtx 3090", {"fp32": 35.6e12, "tf32": 35.6e12, "bf16": 71e12, "fp16": 71e12}),
]


def compute_dtype(precision_mode: str) -> str:
    """The dtype the matmuls of a precision mode run in."""
    if precision_mode.startswith("bf16"):
        return "bf16"
    if precision_mode.startswith("16"):
        return "fp16"
    if precision_mode.startswith("64"):
        return "fp64"
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def device_peak(device: torch.device, precision_mode: str) -> float | None:
    """FLOP/s of one device at this precision from the table; None when it is not there (CPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    dtype = compute_dtype(precision_mode)
    for fragment, peaks in _GPUS:
        if fragment in name:
            return peaks.get(dtype)
    return None
