"""Checkpoints on disk: one folder each, published atomically, verified before use.

    checkpoints/
      epoch=3-step=604-val_auc=0.7583/
        state/          model + optimizers through torch.distributed.checkpoint (DCP): the same
                        files serve one process, DDP and FSDP (each rank writes its own shards);
                        the first optimizer under `optim`, the others under `optim1`, `optim2`, ...
        trainer.pt      counters, data position, schedulers, GradScaler, callbacks, run settings,
                        and how many optimizers `state/` holds
        rank0.pt        this rank's RNG states (one file per rank)
        MANIFEST.json   size and sha256 of every file above, written last
      last -> epoch=3-step=604-val_auc=0.7583      (relative symlink, swapped atomically)

A module with `checkpoint_frozen_parameters = False` (LoRA on a pretrained model) keeps only its
trainable parameters and its buffers in `state/` (trainer.pt: model_state "trainable"); loading
fills those and leaves the frozen rest as the module's __init__ built it.

A checkpoint is written under `.tmp-<name>`, fsynced, given its manifest, then renamed into
place; only then does `last` move. A kill at any moment leaves the previous checkpoint and
`last` intact. `save_async` copies the model and optimizer state to host memory and returns: DCP
writes the shards in a thread while training goes on, and rank zero gives the folder its
manifest, renames it and moves `last` when the write completes. Everything is read back with `weights_only=True` (and DCP's metadata with an
unpickler that admits only DCP's own record types), so a stranger's checkpoint cannot run code.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import pickle
import re
import shutil
import threading
import warnings
from concurrent.futures import Future
from typing import Any, Callable

import torch

from trainkit.errors import UserError

# torch.distributed.checkpoint (DCP) is imported where a checkpoint is written or read, never at
# import: a run finds out whether it resumes (this module) before its first step, and DCP's
# import (about 50 ms, with torch's elastic agent) is no part of that.

MANIFEST = "MANIFEST.json"
LAST = "last"
_STEP = re.compile(r"step=(\d+)")


# -- writing --------------------------------------------------------------------------------------
def save(
    directory: str,
    name: str,
    *,
    model: torch.nn.Module,
    optimizers: list[torch.optim.Optimizer],
    trainer_state: dict[str, Any],
    rank_state: dict[str, Any],
    rank: int = 0,
    is_global_zero: bool = True,
    barrier: Callable[[], None] = lambda: None,
    trainable_only: bool = False,
) -> str:
    """Write a complete checkpoint `<directory>/<name>` and point `last` at it. Every rank calls
    this; rank zero publishes. Returns the checkpoint's path."""
    tmp = _begin(directory, name, is_global_zero, barrier)
    with _quiet_single_process():
        import torch.distributed.checkpoint as dcp

        dcp.save(_model_optim_state(model, optimizers, trainable_only), checkpoint_id=os.path.join(tmp, "state"),
                 no_dist=not _distributed())
    _save_small_files(tmp, trainer_state, rank_state, len(optimizers), rank, is_global_zero, trainable_only)
    barrier()
    if is_global_zero:
        _publish(directory, name, tmp)
    barrier()
    return os.path.join(directory, name)


class PendingSave:
    """A checkpoint being written in the background: `wait()` returns once it is published (or
    raises what went wrong); `path` is where it will be."""

    def __init__(self, path: str, write: Future, publish: Callable[[], None] | None) -> None:
        self.path, self._publish = path, publish
        self._finished = threading.Event()
        self._error: BaseException | None = None
        write.add_done_callback(self._finish)  # in DCP's writer thread, once the shards are on disk

    def _finish(self, write: Future) -> None:
        try:
            write.result()
            if self._publish is not None:
                self._publish()
        except BaseException as exc:  # noqa: BLE001 - DCP's CheckpointException is a BaseException
            self._error = exc
        finally:
            self._finished.set()

    def done(self) -> bool:
        return self._finished.is_set()

    def wait(self) -> None:
        self._finished.wait()
        if self._error is not None:
            raise self._error


def save_async(
    directory: str,
    name: str,
    *,
    model: torch.nn.Module,
    optimizers: list[torch.optim.Optimizer],
    trainer_state: dict[str, Any],
    rank_state: dict[str, Any],
    rank: int = 0,
    is_global_zero: bool = True,
    barrier: Callable[[], None] = lambda: None,
    trainable_only: bool = False,
) -> PendingSave:
    """`save`, returning as soon as the model and optimizer state are copied to host memory
    (the small files are written before it returns). Every rank calls it, and waits for its
    previous PendingSave first. Several processes: DCP's writer thread coordinates the ranks
    over a gloo group of its own (a collective there must not interleave with the training's),
    and rank zero's write completes only once every rank's shards are on disk, so rank zero
    publishes alone."""
    tmp = _begin(directory, name, is_global_zero, barrier)
    _save_small_files(tmp, trainer_state, rank_state, len(optimizers), rank, is_global_zero, trainable_only)
    # (DCP's writer thread warns too, outside any catch_warnings of this thread)
    warnings.filterwarnings("ignore", message=_NO_DIST_WARNING)
    with _quiet_single_process():
        import torch.distributed.checkpoint as dcp

        write = dcp.async_save(_model_optim_state(model, optimizers, trainable_only), checkpoint_id=os.path.join(tmp, "state"),
                               no_dist=not _distributed(), process_group=_writer_group())
    write = getattr(write, "upload_completion", write)  # (an AsyncSaveResponse with a stager of one's own)
    publish = (lambda: _publish(directory, name, tmp)) if is_global_zero else None
    return PendingSave(os.path.join(directory, name), write, publish)


_WRITER_GROUPS: dict[int, Any] = {}


def _writer_group() -> Any:
    """A gloo group for DCP's writer thread, made once per process group (a collective: every
    rank reaches it at the same save)."""
    if not _distributed():
        return None
    world = torch.distributed.group.WORLD
    if id(world) not in _WRITER_GROUPS:
        _WRITER_GROUPS[id(world)] = torch.distributed.new_group(backend="gloo")
    return _WRITER_GROUPS[id(world)]


def _begin(directory: str, name: str, is_global_zero: bool, barrier: Callable[[], None]) -> str:
    tmp = temporary(directory, name)
    if is_global_zero:
        shutil.rmtree(tmp, ignore_errors=True)  # debris of a save that was killed
        os.makedirs(tmp)
    barrier()
    return tmp


def _save_small_files(tmp: str, trainer_state: dict[str, Any], rank_state: dict[str, Any], optimizers: int,
                      rank: int, is_global_zero: bool, trainable_only: bool) -> None:
    _save_file(rank_state, os.path.join(tmp, f"rank{rank}.pt"))
    if is_global_zero:
        _save_file({**trainer_state, "optimizers": optimizers, "model_state": _model_state_kind(trainable_only)},
                   os.path.join(tmp, "trainer.pt"))


def _publish(directory: str, name: str, tmp: str) -> None:
    """Rank zero, once every file is written: manifest, rename into place, move `last`."""
    final = os.path.join(directory, name)
    _write_manifest(tmp)
    if os.path.exists(final):  # the same step saved again (e.g. a signal right after a save)
        remove(final)
    os.rename(tmp, final)
    _fsync_dir(directory)
    point_last(directory, name)


def temporary(directory: str, name: str) -> str:
    """Where checkpoint `name` is written before it is published (removed when a save fails)."""
    return os.path.join(directory, f".tmp-{name}")


def point_last(directory: str, name: str) -> None:
    tmp = os.path.join(directory, f".{LAST}.tmp")
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(name, tmp)
    os.replace(tmp, os.path.join(directory, LAST))
    _fsync_dir(directory)


def remove(path: str) -> None:
    """Delete a checkpoint: first out of sight (one rename), then from disk."""
    trash = os.path.join(os.path.dirname(path), f".trash-{os.path.basename(path)}")
    shutil.rmtree(trash, ignore_errors=True)
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _model_state_kind(trainable_only: bool) -> str:
    return "trainable" if trainable_only else "full"


def _trainable_only(path: str) -> bool:
    """Whether the checkpoint at `path` holds only the parameters that trained (see the top)."""
    trainer_state = torch.load(os.path.join(path, "trainer.pt"), map_location="cpu", weights_only=True)
    return trainer_state.get("model_state") == "trainable"


def _model_optim_state(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer],
                       trainable_only: bool = False) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    if trainable_only:
        model_state = _trainable_state(model)
    elif not optimizers:
        return {"model": model.state_dict()}
    else:
        model_state = get_model_state_dict(model)
    # One optimizer keeps the key it always had, so checkpoints of single-optimizer runs stay the same.
    state = {"model": model_state}
    for i, optimizer in enumerate(optimizers):
        state[_optim_key(i)] = get_optimizer_state_dict(model, optimizer)
    return state


def _optim_key(i: int) -> str:
    return "optim" if i == 0 else f"optim{i}"


def _save_file(obj: Any, path: str) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _files(root: str) -> list[str]:
    found = []
    for folder, _, names in os.walk(root):
        found += [os.path.relpath(os.path.join(folder, n), root) for n in names if n != MANIFEST]
    return sorted(found)


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_manifest(root: str) -> None:
    entries = {rel: {"size": os.path.getsize(os.path.join(root, rel)), "sha256": _sha256(os.path.join(root, rel))}
               for rel in _files(root)}
    _fsync_dir(os.path.join(root, "state"))
    path = os.path.join(root, MANIFEST)
    with open(path, "w") as f:
        json.dump({"files": entries}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(root)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


_NO_DIST_WARNING = "torch.distributed is disabled, unavailable or uninitialized"


@contextlib.contextmanager
def _quiet_single_process():
    # DCP warns on every save and load without a process group; one process is a case we mean.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NO_DIST_WARNING)
        yield


# -- finding and checking ------------------------------------------------------------------------
def step_of(path: str) -> int:
    match = _STEP.search(os.path.basename(os.path.normpath(path)))
    return int(match[1]) if match else -1


def resolve(path: str) -> str:
    """A checkpoint folder from what a user may point at: the folder, `last`, or `checkpoints/`."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, MANIFEST)):
        if os.path.lexists(os.path.join(path, LAST)):
            path = os.path.join(path, LAST)
    return os.path.realpath(path)


def verify(path: str) -> str | None:
    """None when the checkpoint is complete and intact; else what is wrong with it."""
    manifest = os.path.join(path, MANIFEST)
    if not os.path.isdir(path):
        return f"{path} does not exist"
    if not os.path.isfile(manifest):
        return f"{path} has no {MANIFEST} (an incomplete save, or not a trainkit checkpoint)"
    try:
        with open(manifest) as f:
            entries = json.load(f)["files"]
    except (ValueError, KeyError) as exc:
        return f"{manifest} is unreadable ({exc})"
    for rel, expected in entries.items():
        file = os.path.join(path, rel)
        if not os.path.isfile(file):
            return f"{file} is missing"
        if os.path.getsize(file) != expected["size"]:
            return f"{file} has {os.path.getsize(file)} bytes, the manifest says {expected['size']} (truncated?)"
        if _sha256(file) != expected["sha256"]:
            return f"{file} does not match its checksum (altered or corrupt)"
    return None


def unloadable(path: str) -> str | None:
    """None when the checkpoint's files can be read back (checked after `verify`); else what
    cannot be. A checkpoint can match its manifest and still be damage: its DCP metadata refers to
    a type the safe unpickler refuses, or to a shard that is not there (the manifest rewritten to
    match). Nothing is unpickled beyond the allow-list, so no code runs."""
    state = os.path.join(path, "state")
    metadata_file = os.path.join(state, ".metadata")
    try:
        metadata = _safe_reader(state).read_metadata()
    except Exception as exc:  # noqa: BLE001 - whatever the unpickler refused or could not parse
        return f"{metadata_file} cannot be read ({_first_line(exc)})"
    ends: dict[str, int] = {}
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        rel = str(info.relative_path)
        ends[rel] = max(ends.get(rel, 0), int(info.offset) + int(info.length))
    for rel, end in sorted(ends.items()):
        shard = os.path.join(state, rel)
        if not os.path.isfile(shard):
            return f"{shard} is missing (named by {metadata_file})"
        if os.path.getsize(shard) < end:
            return f"{shard} has {os.path.getsize(shard)} bytes, {metadata_file} needs {end} (truncated?)"
    # The rank files are each read by their own rank at load; trainer.pt by every rank.
    trainer_file = os.path.join(path, "trainer.pt")
    try:
        torch.load(trainer_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch names what weights_only refused
        return f"{trainer_file} cannot be read ({_first_line(exc)})"
    return None


def _first_line(exc: BaseException) -> str:
    """The line that says why: torch's weights_only refusal puts it after a paragraph of advice."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = next((line for line in lines if line.startswith("Unsupported")), lines[0] if lines else "")
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__


def damage(path: str) -> str | None:
    """What is wrong with the checkpoint at `path` (its manifest, then whether it loads), or None."""
    return verify(path) or unloadable(path)


def candidates(directory: str) -> list[str]:
    """Checkpoint folders in `directory`, `last`'s target first, then newest step first."""
    if not os.path.isdir(directory):
        return []
    found = sorted(
        (os.path.join(directory, n) for n in os.listdir(directory)
         if not n.startswith(".") and n != LAST and os.path.isdir(os.path.join(directory, n))),
        key=step_of,
        reverse=True,
    )
    last = os.path.join(directory, LAST)
    if os.path.lexists(last):
        target = os.path.realpath(last)
        found = [target] + [p for p in found if os.path.realpath(p) != target]
    return found


def find_resumable(directory: str) -> tuple[str | None, list[str]]:
    """The newest intact checkpoint in `directory` (trying `last` first), and what was wrong
    with each one skipped on the way."""
    problems = []
    for path in candidates(directory):
        problem = damage(path)
        if problem is None:
            return path, problems
        problems.append(problem)
    return None, problems


# -- reading --------------------------------------------------------------------------------------
def load(
    path: str, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], rank: int = 0
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Load model and optimizers in place; return (trainer state, this rank's state or None)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    trainer_state = torch.load(os.path.join(path, "trainer.pt"), map_location="cpu", weights_only=True)
    saved = trainer_state.get("optimizers", 1)  # written since several optimizers exist; before, always 1
    if saved != len(optimizers):
        raise UserError(f"checkpoint {path} holds the state of {saved} optimizers, but configure_optimizers returns "
                        f"{len(optimizers)}; resume with the optimizers of the run that saved it, or start a new run "
                        "from its weights alone with trainer.init_from")
    trainable_only = trainer_state.get("model_state") == "trainable"
    state = _model_optim_state(model, optimizers, trainable_only)
    _dcp_load(state, path)
    if trainable_only:
        _set_trainable_state(model, state["model"])
    elif not optimizers:
        model.load_state_dict(state["model"])
    else:
        set_model_state_dict(model, state["model"])
    if optimizers:
        for i, optimizer in enumerate(optimizers):
            set_optimizer_state_dict(model, optimizer, state[_optim_key(i)])
    return trainer_state, load_rank_state(path, rank)


def load_rank_state(path: str, rank: int) -> dict[str, Any] | None:
    rank_file = os.path.join(path, f"rank{rank}.pt")
    return torch.load(rank_file, map_location="cpu", weights_only=True) if os.path.exists(rank_file) else None


def load_model_weights(path: str, model: torch.nn.Module) -> None:
    """Weights only (for validate / test / predict, or to fine-tune from another run)."""
    if _trainable_only(path):
        state = {"model": _trainable_state(model)}
        _dcp_load(state, path)
        _set_trainable_state(model, state["model"])
        return
    state = {"model": model.state_dict()}
    _dcp_load(state, path)
    model.load_state_dict(state["model"])


def _trainable_state(model: torch.nn.Module) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(ignore_frozen_params=True))
    for name, param in model.named_parameters(remove_duplicate=False):  # also a tied alias of a frozen weight
        if not param.requires_grad:
            state.pop(name, None)
    return state


def _set_trainable_state(model: torch.nn.Module, state: dict[str, Any]) -> None:
    # The template asked DCP for exactly the trainable parameters and buffers, so every key is
    # there; the frozen parameters, absent by design, keep what the module's __init__ loaded.
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(ignore_frozen_params=True, strict=False))


def read_model_weights(path: str) -> dict[str, torch.Tensor]:
    """The model's whole `state_dict` from a checkpoint folder (on the CPU), without building the
    model and whatever the number of processes that saved it."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = _safe_reader(os.path.join(path, "state")).read_metadata()
    # DCP stores {"model": {"lstm.weight": ...}} under flat keys "model.lstm.weight"; a template
    # of the same nesting, made from the metadata, loads it.
    weights = {
        key[len("model."):]: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in metadata.state_dict_metadata.items()
        if key.startswith("model.") and isinstance(meta, TensorStorageMetadata)
    }
    _dcp_load({"model": weights}, path)
    return weights


def export_model(path: str, out_file: str) -> int:
    """Write the model's plain `state_dict` (one torch.save file) for inference elsewhere, without
    building the model. Returns the number of tensors written."""
    weights = read_model_weights(path)
    tmp = out_file + ".tmp"
    _save_file(weights, tmp)
    os.replace(tmp, out_file)
    return len(weights)


# -- single-file checkpoints, for handing a model around ---------------------------------------------
# One torch file of plain values (loadable with weights_only=True), in Lightning's key names:
#   {"format": "trainkit.ckpt/1", "state_dict": {name: tensor}, "hyper_parameters": {...},
#    "hparams_name": "kwargs" | <argument name> | None, "datamodule_hyper_parameters": {...},
#    "epoch": int, "global_step": int}
# It holds no optimizer, schedule, counters' detail or RNG: runs resume from checkpoint folders.
FILE_FORMAT = "trainkit.ckpt/1"
FILE_SUFFIXES = (".ckpt", ".pt", ".pth")


def is_single_file(path: str) -> bool:
    return str(path).endswith(FILE_SUFFIXES)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state_dict on the CPU, gathered from every rank under FSDP (every rank
    calls this; under FSDP only rank zero gets the tensors)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_single_file(path: str, state_dict: dict[str, torch.Tensor], **fields: Any) -> str:
    """Write a single-file checkpoint atomically (under a temporary name, then renamed)."""
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    contents = {"format": FILE_FORMAT, "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, **fields}
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.path.basename(path)}")
    _save_file(contents, tmp)
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))
    return path


def read_checkpoint(path: str, map_location: Any = None) -> dict[str, Any]:
    """A checkpoint's weights and hyper-parameters in the single-file layout above, from a
    single file or from a checkpoint folder (`last`, a run's `checkpoints/` also do)."""
    resolved = resolve(path)
    if os.path.isfile(resolved):
        try:
            return torch.load(resolved, map_location=map_location, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch names what it could not read
            raise UserError(f"{path} is not a readable checkpoint file: {str(exc).splitlines()[0]}") from exc
    problem = damage(resolved)
    if problem is not None:
        raise UserError(f"checkpoint {path}: {problem}")
    trainer_state = torch.load(os.path.join(resolved, "trainer.pt"), map_location="cpu", weights_only=True)
    weights = read_model_weights(resolved)
    if map_location is not None:
        if not isinstance(map_location, (str, torch.device)):
            raise UserError("map_location for a checkpoint folder must be a device (a str or torch.device)")
        weights = {k: v.to(map_location) for k, v in weights.items()}
    progress = trainer_state.get("progress", {})
    return {
        **trainer_state.get("hooks", {}),  # what on_save_checkpoint added
        "format": FILE_FORMAT,
        "state_dict": weights,
        **{k: trainer_state[k] for k in ("hyper_parameters", "hparams_name", "datamodule_hyper_parameters")
           if k in trainer_state},
        "epoch": progress.get("epoch", 0),
        "global_step": progress.get("global_step", 0),
    }


def _dcp_load(state: dict[str, Any], path: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

    try:
        with _quiet_single_process():
            dcp.load(state, storage_reader=_safe_reader(os.path.join(path, "state")), no_dist=not _distributed())
    except (Exception, CheckpointException) as exc:
        raise UserError(f"checkpoint {path} does not fit this model/optimizer: {str(exc).splitlines()[0]}") from exc


class _RestrictedUnpickler(pickle.Unpickler):
    """DCP writes its `.metadata` with plain pickle; admit only its own record types."""

    _MODULES = ("torch.distributed.checkpoint.metadata",)
    _NAMES = {
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch.serialization", "_get_layout"),
        ("torch", "Size"),
        ("collections", "OrderedDict"),
        ("pathlib", "PosixPath"),
        ("pathlib", "PurePosixPath"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if module in self._MODULES or (module, name) in self._NAMES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.memory_format)):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"checkpoint metadata refers to {module}.{name}, which is not allowed")


def _safe_reader(path: str) -> Any:
    """DCP's FileSystemReader of `path`, reading the metadata through `_RestrictedUnpickler`."""
    return _safe_reader_class()(path)


@functools.cache
def _safe_reader_class() -> type:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as f:
                metadata = _RestrictedUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader
