"""trainkit: a config-driven training launcher for PyTorch.

    from trainkit import Trainer, TrainModule, DataModule

Lightning code runs with its imports changed: `import trainkit as L` (L.LightningModule,
L.LightningDataModule, L.Trainer, L.Callback, L.seed_everything), `import trainkit as pl`
(pl.callbacks.ModelCheckpoint, pl.loggers.CSVLogger), `from trainkit.pytorch import ...`.
The names are imported on first use, so `import trainkit` (and the CLI's --help) stay free of torch.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Trainer": "trainkit.engine.trainer",
    "TrainModule": "trainkit.engine.module",
    "LightningModule": "trainkit.engine.module",
    "DataModule": "trainkit.engine.data",
    "LightningDataModule": "trainkit.engine.data",
    "Callback": "trainkit.engine.callback",
    "seed_everything": "trainkit.engine.seed",
    "Precision": "trainkit.precision",
}
_SUBMODULES = ("callbacks", "loggers", "pytorch")  # `pl.callbacks.X` without importing them first
__all__ = [*_EXPORTS, *_SUBMODULES]


def __getattr__(name: str) -> Any:
    import importlib

    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"trainkit.{name}")
    raise AttributeError(f"module 'trainkit' has no attribute {name!r}")


# The repository keeps configs/ and recipes/ at its top level; the wheel (and `pip install -e .`)
# ships them as trainkit.configs and trainkit.recipes through pyproject's `package-dir`. A plain
# source checkout (PYTHONPATH=., pytest's pythonpath, a worktree) has no install step to do that
# mapping, so here the two folders beside trainkit/ are found under the same names; nothing else
# of the checkout becomes part of the package. In an installed trainkit the folders sit inside
# the package and this finder is never added.
class _CheckoutFolders:
    """Finds trainkit.configs and trainkit.recipes in <checkout>/configs and <checkout>/recipes."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        parent, _, name = fullname.rpartition(".")
        if parent != __name__ or name not in ("configs", "recipes"):
            return None
        folder = self.root / name
        return importlib.util.spec_from_file_location(fullname, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


_checkout = Path(__file__).resolve().parent.parent
if not (Path(__file__).parent / "recipes").is_dir() and (_checkout / "pyproject.toml").is_file() \
        and (_checkout / "recipes" / "__init__.py").is_file() and (_checkout / "configs" / "__init__.py").is_file():
    sys.meta_path.append(_CheckoutFolders(_checkout))
