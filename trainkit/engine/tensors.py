"""Walking nested batches (dicts, lists, tuples, namedtuples) to transform their tensors."""
from __future__ import annotations

from typing import Any, Callable

import torch


def apply_to_tensors(data: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(data, torch.Tensor):
        return fn(data)
    if isinstance(data, dict):
        return {k: apply_to_tensors(v, fn) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        mapped = [apply_to_tensors(v, fn) for v in data]
        return type(data)(*mapped) if hasattr(data, "_fields") else type(data)(mapped)
    return data
