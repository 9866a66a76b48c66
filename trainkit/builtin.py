"""Where trainkit's built-in config groups are: the package `trainkit.configs` (the repository's
configs/ folder, shipped inside the wheel), found without importing torch or the package itself.

    config_dir()    the folder on disk (listing the groups for --help, checking an option exists)
    SEARCH_PATH     the same for Hydra's search path, wherever trainkit is installed (even zipped)
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "trainkit.configs"
SEARCH_PATH = f"pkg://{PACKAGE}"


def config_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{PACKAGE} is missing: this trainkit installation is broken; reinstall it")
    return Path(next(iter(spec.submodule_search_locations)))
