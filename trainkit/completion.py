"""Shell completion: `trainkit --completion bash|zsh|fish` prints a script to source; the script
asks `trainkit --complete "<line up to the cursor>"` for the candidates, one per line.

It completes commands and flags, config groups and their options (the built-in ones and the
project's, as `trainkit --help` lists them), the keys of `trainer.*`, `strategy.*`, ... from the
typed schema (read from trainkit/config.py's source: no OmegaConf, no Hydra), the keys of
`model.*`, `datamodule.*`, `callbacks.*`, ... from the option chosen on the line (else the primary
config's default), `true|false` for a bool key, and paths for `trainer.resume=` and the commands
that take a run folder. Every answer is a short process that never imports torch.
"""
from __future__ import annotations

import ast
import os
import re
import shlex
from pathlib import Path
from typing import Any

COMMANDS = ("fit", "validate", "test", "predict", "tune", "resume", "export", "sweep-summary", "plot", "init")
PATH_COMMANDS = ("resume", "export", "sweep-summary", "plot", "init")  # their arguments are folders or files
FLAGS = ("--cfg", "-m", "--multirun", "--dry-run", "--debug", "--config-dir", "--help")
PATH_KEYS = ("trainer.resume", "trainer.init_from", "datamodule.path", "data_dir", "hydra.run.dir", "hydra.sweep.dir")

SCRIPTS = {
    "bash": r'''# trainkit completion for bash: source it, or save it as ~/.local/share/bash-completion/completions/trainkit
_trainkit_complete() {
    local line="${COMP_LINE:0:$COMP_POINT}" cur="${COMP_WORDS[COMP_CWORD]}" c
    local IFS=$'\n'
    local candidates=($(trainkit --complete "$line" 2>/dev/null))
    # bash splits a word at '=' and ':' (COMP_WORDBREAKS): offer what follows the last break
    local full="${line##*[[:space:]]}"
    local drop=$(( ${#full} - ${#cur} ))
    COMPREPLY=()
    for c in "${candidates[@]}"; do COMPREPLY+=("${c:drop}"); done
    if [[ ${#COMPREPLY[@]} -eq 1 && "${COMPREPLY[0]}" == *[=./] ]]; then compopt -o nospace; fi
}
complete -o default -F _trainkit_complete trainkit
''',
    "zsh": r'''# trainkit completion for zsh: source it from ~/.zshrc (after compinit)
_trainkit_complete() {
    local -a candidates
    candidates=("${(@f)$(trainkit --complete "${(j: :)words[1,CURRENT]}" 2>/dev/null)}")
    compadd -Q -S '' -- ${(M)candidates:#*[=./]}
    compadd -Q -- ${candidates:#*[=./]}
}
compdef _trainkit_complete trainkit
''',
    "fish": r'''# trainkit completion for fish: save it as ~/.config/fish/completions/trainkit.fish
complete -c trainkit -f -a '(trainkit --complete (commandline -cp) 2>/dev/null)'
''',
}


def script(shell: str) -> str | None:
    return SCRIPTS.get(shell)


def complete(line: str) -> list[str]:
    """The candidates for the last word of `line` (the command line up to the cursor)."""
    words = _split(line)
    current = "" if not line or line[-1].isspace() else words.pop()
    if words and os.path.basename(words[0]).startswith("trainkit"):
        words = words[1:]
    config_dir = _value_after(words, ("--config-dir", "-cd"))
    previous = words[-1] if words else ""
    if previous in ("--config-dir", "-cd"):
        return _paths(current, folders_only=True)
    if previous == "--cfg":
        return _match(current, ["job", "hydra", "all"])
    if previous == "--recipe":
        return _match(current, _recipes())
    positional = [w for i, w in enumerate(words) if not w.startswith("-") and words[i - 1:i] not in (
        ["--config-dir"], ["-cd"], ["--cfg"], ["--recipe"], ["--out"])]
    if not positional:
        return _match(current, [*COMMANDS, *FLAGS, "--completion"] if current.startswith("-") else COMMANDS)
    if current.startswith("-"):
        return _match(current, FLAGS)
    command = positional[0]
    if command in PATH_COMMANDS and (command != "resume" or len(positional) == 1):
        return _paths(current)
    project = _project(config_dir)
    if project is None:
        return []
    overrides = Overrides(project, positional[1:])
    found = overrides.complete(current)
    if command in ("validate", "test", "predict") and len(positional) == 1 and "=" not in current:
        found = _paths(current) + found  # a run folder first, or overrides
    return found


def _split(line: str) -> list[str]:
    try:
        words = shlex.split(line)
    except ValueError:  # an open quote: the word being typed
        words = line.split()
    return words


def _value_after(words: list[str], flags: tuple[str, ...]) -> str | None:
    for i, word in enumerate(words[:-1]):
        if word in flags:
            return words[i + 1]
    return None


def _match(prefix: str, candidates: Any) -> list[str]:
    return [c for c in candidates if c.startswith(prefix)]


def _paths(prefix: str, folders_only: bool = False, before: str = "") -> list[str]:
    """Files and folders starting with `prefix` (folders end with `/`), each after `before`."""
    folder, _, start = prefix.rpartition("/")
    base = os.path.expanduser(folder + "/" if folder or prefix.startswith("/") else ".")
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    out = []
    for name in names:
        if not name.startswith(start) or (name.startswith(".") and not start.startswith(".")):
            continue
        path = (folder + "/" if folder or prefix.startswith("/") else "") + name
        if os.path.isdir(os.path.join(base, name)):
            out.append(f"{before}{path}/")
        elif not folders_only:
            out.append(before + path)
    return out


def _recipes() -> list[str]:
    from trainkit import builtin

    folder = Path(builtin.config_dir()).parent / "recipes"
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))) \
        if folder.is_dir() else []


def _project(config_dir: str | None):
    from trainkit.errors import UserError
    from trainkit.project import find_project

    try:
        return find_project(config_dir=config_dir)
    except UserError:
        return None


class Overrides:
    """Candidates for one override word, given the overrides already on the line."""

    def __init__(self, project, words: list[str]) -> None:
        self.project = project
        self.chosen = {}  # group -> option named on the line
        for word in words:
            key, sep, value = word.lstrip("+~").partition("=")
            if sep and project.is_group(key) and re.fullmatch(r"[\w.-]+", value):
                self.chosen[key] = value

    def complete(self, word: str) -> list[str]:
        sign = word[:1] if word[:1] in "+~" else ""
        word = word[len(sign):]
        key, sep, value = word.partition("=")
        if sep:
            return [sign + c for c in self._values(key, value)]
        names = self._names(word)
        return [sign + c for c in names]

    def _values(self, key: str, value: str) -> list[str]:
        before = f"{key}="
        if self.project.is_group(key):
            return [before + o for o in _match(value, self.project.options(key))]
        if key in PATH_KEYS:
            specials = ["auto", "none"] if key == "trainer.resume" else []
            return [before + s for s in _match(value, specials)] + _paths(value, before=before)
        node, _, leaf = key.rpartition(".")
        kind = schema().get(node, {}).get(leaf)
        if kind == "bool":
            return [before + v for v in _match(value, ("true", "false"))]
        return []

    def _names(self, word: str) -> list[str]:
        """Group choices (`model=`), node prefixes (`trainer.`), and `node.key=` for a word with a dot."""
        if "." not in word:
            groups = [f"{g}=" for g in self.project.groups()]
            nodes = [f"{n}." for n in sorted({*schema(), *self._group_nodes()}) if n]
            leaves = [f"{k}=" for k, v in schema().get("", {}).items() if v != "node" and k not in ("command", "run_dir")]
            leaves += ["hydra.run.dir=", "hydra.sweep.dir="]  # where the run (or sweep) folder goes
            return _match(word, sorted({*groups, *nodes, *leaves}))
        path, _, leaf = word.rpartition(".")
        keys = dict(schema().get(path, {}))  # the typed nodes: trainer, strategy, precision, ...
        head, *rest = path.split(".")
        if self.project.is_group(head):
            node = self._composed(head)
            for part in rest:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict):
                keys.update({k: "node" if isinstance(v, dict) else "value" for k, v in node.items()
                             if not str(k).startswith("_")})
        return [f"{path}.{k}" + ("." if kind == "node" else "=") for k, kind in sorted(keys.items())
                if k.startswith(leaf)]

    def _group_nodes(self) -> list[str]:
        return [g for g in self.project.groups() if g not in ("experiment", "debug", "hparams_search")]

    def _composed(self, group: str) -> dict:
        """The chosen option's content (its same-group defaults merged under it), as Hydra would
        put it at `group` — enough to name its keys, without composing the whole config."""
        option = self.chosen.get(group) or default_option(self.project, group)
        return _load_option(self.project, group, option) if option else {}


def _load_option(project, group: str, option: str, depth: int = 0) -> dict:
    path = project.option_file(group, option)
    if path is None or depth > 5:
        return {}
    import yaml

    try:
        content = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(content, dict):
        return {}
    merged: dict = {}
    for entry in content.pop("defaults", None) or []:
        if isinstance(entry, str) and entry != "_self_":
            merged.update(_load_option(project, group, entry, depth + 1))
    merged.update(content)
    return merged


def default_option(project, group: str) -> str | None:
    """The option the primary config (the project's fit.yaml, else trainkit's) picks for `group`."""
    primary = next((d / "fit.yaml" for d in project.search_path if (d / "fit.yaml").is_file()), None)
    if primary is None:
        return None
    match = re.search(rf"^\s*-\s*{re.escape(group)}\s*:\s*[\"']?([\w.-]+)", primary.read_text(), re.M)
    return match[1] if match and match[1] != "null" else None


_SCHEMA: dict[str, dict[str, str]] | None = None


def schema() -> dict[str, dict[str, str]]:
    """`{"trainer": {"max_steps": "int", "deterministic": "bool", ...}, "": {"run_dir": "str", ...}}`:
    the typed nodes of RunConfig in trainkit/config.py, read from its source (importing it would
    import OmegaConf and Hydra, a tenth of a second a keystroke)."""
    global _SCHEMA
    if _SCHEMA is None:
        source = Path(__file__).with_name("config.py").read_text()
        classes = {node.name: node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)}

        def fields(cls: ast.ClassDef) -> dict[str, str]:
            return {item.target.id: ast.unparse(item.annotation) for item in cls.body
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)}

        top = fields(classes["RunConfig"])
        _SCHEMA = {"": {k: "node" if v in classes else v for k, v in top.items() if k != "project"}}
        for key, annotation in top.items():
            if annotation in classes:
                _SCHEMA[key] = {k: ("bool" if v in ("bool", "Optional[bool]") else v)
                                for k, v in fields(classes[annotation]).items()}
    return _SCHEMA
