"""trainkit: a config-driven training launcher for PyTorch.

    from trainkit import Trainer, TrainModule, DataModule

The names are imported on first use, so `import trainkit` (and the CLI's --help) stay free of torch.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Trainer": "trainkit.engine.trainer",
    "TrainModule": "trainkit.engine.module",
    "DataModule": "trainkit.engine.data",
    "Callback": "trainkit.engine.callback",
    "Precision": "trainkit.precision",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trainkit' has no attribute {name!r}")
