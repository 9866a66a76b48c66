"""Hyper-parameters: `save_hyperparameters()`, `self.hparams`, and rebuilding a module from them.

    class Model(TrainModule):
        def __init__(self, hidden: int = 64, lr: float = 1e-3, backbone: nn.Module | None = None):
            super().__init__()
            self.save_hyperparameters(ignore=["backbone"])   # hparams == {"hidden": 64, "lr": 0.001}

As in Lightning, the arguments are read from the calling `__init__`'s frame (and from the
`__init__`s of subclasses that called it through `super()`), kept in `self.hparams` (a dict whose
keys are also attributes), copied once into `self.hparams_initial`, sent to every logger once at
the start of a run (unless `logger=False`), and written into every checkpoint.

trainkit checkpoints load with `torch.load(weights_only=True)`, so only plain values go into them
(None, bool, int, float, str, tensors, and lists, tuples and dicts of those; an OmegaConf config
becomes its dict). Anything else is left out of the checkpoint with a warning: pass it again to
`load_from_checkpoint(path, name=value)`.
"""
from __future__ import annotations

import copy
import inspect
import logging
import types
from argparse import Namespace
from dataclasses import fields, is_dataclass
from typing import Any, Iterable

log = logging.getLogger("trainkit")

_PLAIN = (type(None), bool, int, float, str)


class AttributeDict(dict):
    """A dict whose keys read and write as attributes: `hparams.lr` is `hparams["lr"]`."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as exc:
            raise AttributeError(f"no hyper-parameter {key!r}; saved: {', '.join(self) or 'none'}") from exc

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        del self[key]

    def __repr__(self) -> str:
        if not self:
            return "AttributeDict()"
        width = max(len(str(k)) for k in self)
        return "\n".join(f'"{k}":'.ljust(width + 3) + f" {v!r}" for k, v in sorted(self.items(), key=lambda kv: str(kv[0])))


class HyperparametersMixin:
    """What TrainModule and DataModule share: `save_hyperparameters`, `hparams`, `hparams_initial`."""

    def save_hyperparameters(
        self,
        *args: Any,
        ignore: str | Iterable[str] | None = None,
        frame: types.FrameType | None = None,
        logger: bool = True,
    ) -> None:
        """Keep the calling `__init__`'s arguments (all of them, or the names in `args`, or the one
        dict / Namespace / dataclass passed) as `self.hparams`."""
        # Not a submodule nor state: set around nn.Module.__setattr__.
        object.__setattr__(self, "_log_hyperparams", logger)
        if len(args) == 1 and not isinstance(args[0], str) and not args[0]:
            return  # an empty container: nothing to keep
        if frame is None:
            frame = inspect.currentframe().f_back  # the __init__ that called us
        if is_dataclass(self):
            init_args = {f.name: getattr(self, f.name) for f in fields(self)}
        else:
            init_args = {}
            for found in _init_args_along(frame, self):
                init_args.update(found)
        ignored = {ignore} if isinstance(ignore, str) else set(ignore or ())
        init_args = {k: v for k, v in init_args.items() if k not in ignored}
        if not args:
            chosen, name = init_args, "kwargs" if init_args else None
        else:
            containers = [a for a in args if not isinstance(a, str)]
            if len(containers) == 1:
                chosen = containers[0]
                name = next((k for k, v in init_args.items() if v is chosen), None)
            else:
                missing = [a for a in args if isinstance(a, str) and a not in init_args]
                if missing:
                    raise ValueError(f"save_hyperparameters({', '.join(map(repr, missing))}): not an argument of "
                                     f"{type(self).__name__}.__init__ (its arguments: {', '.join(init_args) or 'none'})")
                chosen, name = {a: init_args[a] for a in args if isinstance(a, str)}, "kwargs"
        hparams = _as_dict(chosen)
        from torch import nn

        for key, value in hparams.items():
            if isinstance(value, nn.Module):
                log.warning("hyper-parameter %r is a module (its weights are saved with the model anyway); "
                            "consider save_hyperparameters(ignore=[%r])", key, key)
        object.__setattr__(self, "_hparams", AttributeDict(hparams))
        object.__setattr__(self, "_hparams_name", name)
        object.__setattr__(self, "_hparams_initial", copy.deepcopy(self._hparams))

    @property
    def hparams(self) -> AttributeDict:
        if "_hparams" not in self.__dict__:
            object.__setattr__(self, "_hparams", AttributeDict())
        return self.__dict__["_hparams"]

    @property
    def hparams_initial(self) -> AttributeDict:
        return AttributeDict(copy.deepcopy(self.__dict__.get("_hparams_initial", {})))


def _init_args_along(frame: types.FrameType, obj: Any) -> list[dict[str, Any]]:
    """The arguments of each `__init__` on the call chain that builds `obj`, innermost first.

    A frame belongs to the chain when it is an `__init__` whose `self` is `obj`; subclasses call
    their parents through `super().__init__(...)`, so walking outwards visits each in turn and a
    subclass's value of a shared name wins (it is applied last)."""
    found = []
    while frame is not None:
        code = frame.f_code
        local_vars = frame.f_locals
        if code.co_name == "__init__" and code.co_argcount and local_vars.get(code.co_varnames[0]) is obj:
            found.append(_frame_args(frame))
        elif found:
            break  # left the chain of __init__s
        frame = frame.f_back
    return found


def _frame_args(frame: types.FrameType) -> dict[str, Any]:
    info = inspect.getargvalues(frame)
    args = {name: info.locals[name] for name in info.args[1:]}  # without self
    if info.keywords:
        args.update(info.locals.get(info.keywords) or {})
    return args


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, Namespace):
        return vars(value).copy()
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    if _is_omegaconf(value):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    raise ValueError(f"save_hyperparameters takes argument names, a dict, a Namespace or a dataclass; "
                     f"got {type(value).__name__}")


def _is_omegaconf(value: Any) -> bool:
    return type(value).__module__.startswith("omegaconf")


# -- into checkpoints -----------------------------------------------------------------------------
def plain(hparams: dict[str, Any], owner: str) -> dict[str, Any]:
    """The hyper-parameters a `weights_only=True` checkpoint can hold; the others are left out
    with a warning that names them."""
    kept, dropped = {}, []
    for key, value in hparams.items():
        converted = _plain_value(value)
        if converted is _NOT_PLAIN:
            dropped.append(f"{key} ({type(value).__name__})")
        else:
            kept[key] = converted
    if dropped:
        log.warning("%s hyper-parameters %s are not plain values and are not saved in checkpoints; "
                    "pass them to load_from_checkpoint(path, <name>=...) to rebuild", owner, ", ".join(dropped))
    return kept


_NOT_PLAIN = object()


def _plain_value(value: Any) -> Any:
    import torch

    if isinstance(value, _PLAIN) or isinstance(value, torch.Tensor):
        return value
    if _is_omegaconf(value):
        from omegaconf import OmegaConf

        return _plain_value(OmegaConf.to_container(value, resolve=True))
    if isinstance(value, (list, tuple)):
        items = [_plain_value(v) for v in value]
        if any(v is _NOT_PLAIN for v in items):
            return _NOT_PLAIN
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, dict):
        items = {k: _plain_value(v) for k, v in value.items()}
        plain_keys = all(isinstance(k, _PLAIN) for k in items)
        return _NOT_PLAIN if not plain_keys or any(v is _NOT_PLAIN for v in items.values()) else items
    return _NOT_PLAIN


def checkpoint_fields(module: Any, datamodule: Any = None) -> dict[str, Any]:
    """The hyper-parameter entries every trainkit checkpoint carries (Lightning's key names)."""
    entries: dict[str, Any] = {}
    if getattr(module, "hparams", None):
        entries["hyper_parameters"] = plain(dict(module.hparams), type(module).__name__)
        entries["hparams_name"] = module.__dict__.get("_hparams_name")
    if datamodule is not None and getattr(datamodule, "hparams", None):
        entries["datamodule_hyper_parameters"] = plain(dict(datamodule.hparams), type(datamodule).__name__)
    return entries


def logged_hparams(module: Any, datamodule: Any = None) -> dict[str, Any]:
    """What the loggers receive once at the start of a run: the module's initial hyper-parameters
    merged with the datamodule's, unless either asked `save_hyperparameters(logger=False)`."""
    merged: dict[str, Any] = {}
    for owner in (module, datamodule):
        if owner is None or not owner.__dict__.get("_log_hyperparams", True):
            continue
        for key, value in owner.hparams_initial.items():
            if key in merged and merged[key] != value:
                raise ValueError(f"hyper-parameter {key!r} differs between the module ({merged[key]!r}) and the "
                                 f"datamodule ({value!r}); rename one of them")
            merged[key] = value
    return merged


# -- out of checkpoints ---------------------------------------------------------------------------
def rebuild(cls: type, saved: dict[str, Any], hparams_name: str | None, overrides: dict[str, Any]) -> Any:
    """`cls(**saved hyper-parameters, **overrides)`, keeping only what `cls.__init__` takes."""
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    names = [n for n, p in list(params.items())[1:]
             if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    kwargs = dict(saved)
    if hparams_name and hparams_name != "kwargs" and hparams_name in names:
        kwargs = {hparams_name: AttributeDict(saved)}  # saved from one dict/Namespace argument
    kwargs.update(overrides)
    if not takes_any:
        kwargs = {k: v for k, v in kwargs.items() if k in names}
    return cls(**kwargs)


def load_module(cls: type, path: str, map_location: Any, strict: bool, overrides: dict[str, Any]) -> Any:
    """`cls.load_from_checkpoint`: the module rebuilt from the checkpoint's hyper-parameters
    (`overrides` win), with its weights, on the device the weights were loaded to."""
    from trainkit import checkpoint

    contents = checkpoint.read_checkpoint(path, map_location)
    module = rebuild(cls, contents.get("hyper_parameters") or {}, contents.get("hparams_name"), overrides)
    module.on_load_checkpoint(contents)  # as Lightning: before the weights, with what on_save_checkpoint added
    result = module.load_state_dict(contents["state_dict"], strict=strict)
    if result.missing_keys or result.unexpected_keys:
        log.warning("%s.load_from_checkpoint(%s, strict=False): missing keys %s, unexpected keys %s", cls.__name__,
                    path, result.missing_keys, result.unexpected_keys)
    device = next((t.device for t in contents["state_dict"].values() if hasattr(t, "device")), None)
    return module.to(device) if device is not None else module


def load_datamodule(cls: type, path: str, overrides: dict[str, Any]) -> Any:
    """`DataModule.load_from_checkpoint`: rebuilt from the checkpoint's datamodule hyper-parameters."""
    from trainkit import checkpoint

    contents = checkpoint.read_checkpoint(path)
    return rebuild(cls, contents.get("datamodule_hyper_parameters") or {}, None, overrides)
