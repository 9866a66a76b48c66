"""The `_target_`s of a run's config: import each, and check its node against the signature.

Every key of a `model`/`datamodule`/`optimizer`/`scheduler`/callback/logger node is matched
against the parameters and annotations of the class or function it instantiates, so a typo or a
wrong type is one line naming the key (and the config file that set it), before any data or model
work. Each worker runs this on `<run_dir>/config.yaml` (trainkit.run); it needs neither Hydra nor
the config schema (trainkit.config), which a worker does not import.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import types
import typing
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from trainkit.errors import ConfigError


def target_nodes(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """(dotted key, node) of every node that names a `_target_` to instantiate."""
    nodes = []
    for key in ("model", "datamodule", "optimizer", "scheduler"):
        node = cfg.get(key)
        if isinstance(node, DictConfig) and "_target_" in node:
            nodes.append((key, node))
    for group in ("callbacks", "logger"):
        for name, node in (cfg.get(group) or {}).items():
            if isinstance(node, DictConfig) and "_target_" in node:
                nodes.append((f"{group}.{name}", node))
    return nodes


def check_targets(cfg: DictConfig) -> None:
    """Import each `_target_` and check the node's keys and value types against its signature."""
    for key, node in target_nodes(cfg):
        target = _import(key, node._target_, cfg.get("project"))
        _check_call(key, node, target)


def _import(key: str, path: str, project: Any = None) -> Any:
    module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        where = ""
        source = _source_of(key, path, project)
        if source:
            where = f"; set in {source}"
        if project and project.get("root"):
            where += f"; modules are looked up in the project folder {project['root']} and the installed packages"
        raise ConfigError(f"{key}._target_={path!r} cannot be imported ({exc}){where}; check the name") from None


def _source_of(key: str, target: str, project: Any) -> str | None:
    """The config file that set `<key>._target_`: the group's option file, or the experiment that
    overrode it (Hydra's choices, mapped to files by trainkit.project.record)."""
    sources = (project or {}).get("sources") or {}
    group = key.split(".")[0]
    candidates = [sources[g] for g in (group, "experiment", "debug") if sources.get(g)]
    for path in candidates:
        try:
            with open(path) as f:
                if target in f.read():
                    return path
        except OSError:
            continue
    return candidates[0] if candidates else None


def _check_call(key: str, node: DictConfig, target: Any) -> None:
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        sig = inspect.signature(target)
        hints = typing.get_type_hints(fn)
    except (TypeError, ValueError, NameError):
        return  # builtins or unresolvable annotations: nothing to check against
    params = sig.parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    given = [k for k in node.keys() if not str(k).startswith("_")]
    for name in given:
        if name not in params and not accepts_any:
            close = difflib.get_close_matches(str(name), list(params), n=1)
            hint = f"; did you mean {key}.{close[0]}?" if close else ""
            raise ConfigError(
                f"{key}.{name} is not a parameter of {node._target_}{hint} "
                f"(valid: {', '.join(p for p in params if p not in ('self', 'args', 'kwargs'))})"
            )
        if name in hints:
            value = OmegaConf.to_container(node[name], resolve=True) if isinstance(
                node[name], (DictConfig, ListConfig)) else node[name]
            if not _matches(value, hints[name]):
                raise ConfigError(
                    f"{key}.{name}={value!r} has the wrong type: expected {_type_name(hints[name])}, "
                    f"got {type(value).__name__}"
                )
    partial = node.get("_partial_", False)
    if not partial:
        for name, p in params.items():
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in given:
                raise ConfigError(f"{key}.{name} is required by {node._target_}: set {key}.{name}=...")


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any or value is None and _allows_none(hint):
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (bool, str):
        return isinstance(value, hint)
    return True  # a type we cannot check from YAML values (tensors, callables, ...)


def _allows_none(hint: Any) -> bool:
    return hint is type(None) or type(None) in typing.get_args(hint)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
