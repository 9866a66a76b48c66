"""Your project: a folder with `configs/` (the same groups as trainkit's) and your own code.

Found from the current folder upwards: the first folder with a `pyproject.toml` that says

    [tool.trainkit]
    config_dir = "conf"          # relative to the pyproject.toml

or with a `configs/` folder that holds a `fit.yaml` or a folder named like one of trainkit's groups.
`--config-dir <dir>` or `TRAINKIT_CONFIG_DIR=<dir>` name the config folder outright (the project
root is then the folder above it).

Its configs are layered over trainkit's built-in ones through Hydra's config search path: the
project's folder comes first (Hydra's "main" entry), trainkit's right after it (added by the
search-path plugin in hydra_plugins/trainkit_searchpath), so a project option of the same name
wins, every built-in option stays reachable, and a `fit.yaml` of the project replaces trainkit's
primary config. The project root goes into `<run_dir>/config.yaml` (`project.root`), and every
worker puts it on `sys.path` before it builds anything, wherever it runs (the folder must be on a
filesystem the nodes share).

Torch-free: `trainkit --help` lists the project's options from here.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from trainkit.errors import ConfigError


def builtin_config_dir() -> Path:
    """trainkit's own configs (the package trainkit.configs, trainkit/builtin.py)."""
    from trainkit import builtin

    return builtin.config_dir().resolve()


@dataclass(frozen=True)
class Project:
    root: Path | None = None  # importable: on sys.path of the parent and of every worker
    config_dir: Path | None = None  # its configs, searched before trainkit's

    @property
    def search_path(self) -> list[Path]:
        """Config folders, first match wins."""
        return [p for p in (self.config_dir, builtin_config_dir()) if p is not None]

    @property
    def main_dir(self) -> Path:
        """Hydra's "main" config folder: the project's when there is one."""
        return self.search_path[0]

    def groups(self) -> list[str]:
        return sorted({p.name for d in self.search_path for p in d.iterdir() if p.is_dir() and p.name != "hydra"
                       and not p.name.startswith(("_", "."))})

    def is_group(self, name: str) -> bool:
        return any((d / name).is_dir() for d in self.search_path)

    def options(self, group: str) -> dict[str, bool]:
        """The options of `group`, each with whether the project's configs provide it."""
        found: dict[str, bool] = {}
        for d in reversed(self.search_path):  # the project's last: its options win the flag
            for path in (d / group).glob("*.yaml"):
                found[path.stem] = d == self.config_dir
        return dict(sorted(found.items()))

    def option_file(self, group: str, option: str) -> Path | None:
        """The file Hydra composes for `group=option`: the first in the search path."""
        for d in self.search_path:
            path = d / group / f"{option}.yaml"
            if path.is_file():
                return path
        return None


def find_project(cwd: str | Path | None = None, config_dir: str | None = None) -> Project:
    """The project of `cwd` (default: the current folder); `config_dir` is --config-dir."""
    config_dir = config_dir or os.environ.get("TRAINKIT_CONFIG_DIR")
    builtin = builtin_config_dir().resolve()
    if config_dir:
        path = Path(config_dir).expanduser().resolve()
        if not path.is_dir():
            source = "--config-dir" if not os.environ.get("TRAINKIT_CONFIG_DIR") else "TRAINKIT_CONFIG_DIR"
            raise ConfigError(f"{source}={config_dir}: no such folder; point it at your project's configs/")
        return Project(None, None) if path == builtin else Project(path.parent, path)
    here = Path(cwd or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        configs = _from_pyproject(folder / "pyproject.toml") or _configs_folder(folder / "configs")
        if configs is not None:
            return Project(None, None) if configs == builtin else Project(folder, configs)
    return Project(None, None)


def _configs_folder(path: Path) -> Path | None:
    if not path.is_dir():
        return None
    if (path / "fit.yaml").is_file() or any((path / g).is_dir() for g in _builtin_groups()):
        return path.resolve()
    return None


def _builtin_groups() -> list[str]:
    d = builtin_config_dir()
    return [p.name for p in d.iterdir() if p.is_dir()]


def _from_pyproject(path: Path) -> Path | None:
    """`[tool.trainkit] config_dir` of a pyproject.toml, as an absolute folder."""
    if not path.is_file():
        return None
    text = path.read_text(errors="replace")
    if "[tool.trainkit]" not in text:
        return None
    try:
        import tomllib
    except ImportError:  # Python 3.10: the one key, read by hand
        match = re.search(r"^\[tool\.trainkit\][^\[]*?^config_dir\s*=\s*[\"']([^\"']+)[\"']", text, re.M | re.S)
        value = match[1] if match else None
    else:
        value = tomllib.loads(text).get("tool", {}).get("trainkit", {}).get("config_dir")
    if not value:
        return None
    folder = (path.parent / value).resolve()
    if not folder.is_dir():
        raise ConfigError(f"{path}: [tool.trainkit] config_dir = {value!r}, but {folder} is not a folder")
    return folder


# The project of this CLI invocation, for the search-path plugin (set by `activate`). A Hydra app
# that is not trainkit's CLI sees None, and the plugin leaves its search path alone.
ACTIVE: Project | None = None


def activate(project: Project) -> None:
    """Use `project` for this process's composition, and make its code importable here."""
    global ACTIVE
    ACTIVE = project
    if project.root is not None:
        make_importable(str(project.root))


def make_importable(root: str) -> None:
    """Put the project root first on sys.path (a console script does not add the current folder,
    and a worker may run anywhere); TRAINKIT_PROJECT lets error reports point into its files."""
    if root not in sys.path:
        sys.path.insert(0, root)
    os.environ["TRAINKIT_PROJECT"] = root


def record(project: Project, choices: dict[str, str] | None) -> dict:
    """The `project` node of config.yaml: where the code lives and which file each group's option
    came from (error messages name it; a resumed run imports from the same root)."""
    sources = {}
    for group, option in (choices or {}).items():
        if option and "/" not in group and group != "hydra" and not group.startswith("hydra/"):
            path = project.option_file(group, str(option))
            if path is not None:
                sources[group] = str(path)
    return {"root": str(project.root) if project.root else None,
            "config_dirs": [str(p) for p in project.search_path], "sources": sources}
