"""Where trainkit's built-in config groups are: the package `trainkit.configs` (the repository's
configs/ folder, shipped inside the wheel), found without importing torch or the package itself.

    config_dir()    the folder on disk (listing the groups for --help, checking an option exists)
    recipe_dir(n)   the source folder of the recipe `n` (trainkit.recipes.<n>), for `trainkit init`
    SEARCH_PATH     the same for Hydra's search path, wherever trainkit is installed (even zipped)
    DATA_DIR        the config's `data_dir`: where the real-data recipes read their datasets
    data_dir()      that folder, resolved (for scripts that run without a composed config)
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "trainkit.configs"
SEARCH_PATH = f"pkg://{PACKAGE}"
# $TRAINKIT_DATA, else a folder in the user's cache: never a path relative to where trainkit runs
# (the datasets' subfolders: oulad/, uci_dropout/, openstax_text/).
DATA_DIR = "${oc.env:TRAINKIT_DATA,'~/.cache/trainkit/data'}"


def config_dir() -> Path:
    return _package_dir(PACKAGE)


def recipe_dir(name: str) -> Path:
    return _package_dir("trainkit.recipes") / name


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{package} is missing: this trainkit installation is broken; reinstall it")
    return Path(next(iter(spec.submodule_search_locations)))


def data_dir() -> Path:
    from omegaconf import OmegaConf

    return Path(OmegaConf.create({"data_dir": DATA_DIR}).data_dir).expanduser()
