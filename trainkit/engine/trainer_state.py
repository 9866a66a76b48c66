"""The trainer's own state, and the checkpoints that carry it: save, resume, init_from.

A checkpoint holds the model and optimizer (through torch.distributed.checkpoint, sharded where
the strategy shards), `state_dict(trainer)` (counters, data seed, schedulers, precision, callbacks,
the training epoch's metric sums, and the settings exactness depends on), and per rank the RNG
streams. Resuming refuses a checkpoint whose settings differ, unless `resume_strict=False`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
from typing import TYPE_CHECKING, Any

import torch

from trainkit import storage
from trainkit.callbacks.weight_averaging import WeightAveraging
from trainkit.engine.callback import Callback
from trainkit.engine.hparams import checkpoint_fields, plain
from trainkit.engine.rng import capture_rng
from trainkit.engine.samplers import GlobalBatchSampler
from trainkit.engine.state import TrainState
from trainkit.errors import StorageError, UserError

if TYPE_CHECKING:
    from trainkit.engine.trainer import Trainer

log = logging.getLogger("trainkit")


def state_dict(trainer: Trainer) -> dict[str, Any]:
    """Everything beyond model and optimizer that resume needs (plain types and tensors)."""
    # Lightning's checkpoint hooks edit one dict; what they add is saved and given back on resume.
    hooked = {"epoch": trainer.state.epoch, "global_step": trainer.state.global_step}
    trainer._call("on_save_checkpoint", hooked)
    return {
        "hooks": hooked,
        "progress": dataclasses.asdict(trainer.state),
        "data_seed": trainer._data_seed,
        "last_val_step": trainer._last_val_step,
        "lr_schedulers": [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs],
        # A checkpoint taken at an epoch's end replays the epoch-end hooks on resume: a
        # ReduceLROnPlateau, early stopping and checkpoints decide there on the values they monitor.
        "callback_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "precision": trainer.precision.state_dict(),
        "callbacks": {key: cb.state_dict() for key, cb in keyed_callbacks(trainer.callbacks)},
        "metrics": trainer.metrics.state_dict(),
        "settings": settings(trainer),
        **checkpoint_fields(trainer._module, trainer.datamodule),
    }


def load_state_dict(trainer: Trainer, state: dict[str, Any]) -> None:
    trainer.state = TrainState(**state["progress"])
    trainer.state.should_stop = False
    trainer._last_val_step = state["last_val_step"]
    trainer._data_seed = state["data_seed"]
    batches = getattr(trainer.train_dataloader, "batch_sampler", None)
    if isinstance(batches, GlobalBatchSampler):
        batches.seed = trainer._data_seed
    schedulers = state.get("lr_schedulers")
    if schedulers is None:  # saved before several schedulers existed
        schedulers = [] if state.get("lr_scheduler") is None else [state["lr_scheduler"]]
    configs = trainer.lr_scheduler_configs
    if len(schedulers) != len(configs):
        raise UserError(f"the checkpoint holds {len(schedulers)} learning-rate schedulers, configure_optimizers "
                        f"returns {len(configs)}; resume with the schedulers of the run that saved it")
    for config, saved_state in zip(configs, schedulers):
        config.scheduler.load_state_dict(saved_state)
    trainer.precision.load_state_dict(state["precision"])
    trainer.hooks.call_load_checkpoint(state.get("hooks", {}))  # before the callbacks' own state, as Lightning
    saved = state["callbacks"]
    for key, cb in keyed_callbacks(trainer.callbacks):
        if key in saved:
            cb.load_state_dict(saved[key])
    trainer.metrics.load_state_dict(state["metrics"])
    trainer.metrics.callback_metrics.update(
        {k: torch.tensor(v, dtype=torch.float64) for k, v in state.get("callback_metrics", {}).items()})


def keyed_callbacks(callbacks: list[Callback]) -> list[tuple[str, Callback]]:
    """Each callback under a stable key: its class name, with `#N` for the N-th repeat."""
    seen: dict[str, int] = {}
    keyed = []
    for cb in callbacks:
        name = type(cb).__name__
        keyed.append((f"{name}#{seen.get(name, 0)}" if name in seen else name, cb))
        seen[name] = seen.get(name, 0) + 1
    return keyed


def settings(trainer: Trainer) -> dict[str, Any]:
    """What must match for a resumed run to continue this one exactly. The number of
    processes is not among them: with the same global batch the data order is the same on
    any number (samplers.py) and DCP reshards model and optimizer."""
    batches = getattr(trainer.train_dataloader, "batch_sampler", None)
    per_process = getattr(batches, "batch_size", None) or getattr(trainer.train_dataloader, "batch_size", None)
    return {
        "global batch size": per_process * trainer.strategy.world_size if per_process else None,
        "train batches per epoch": trainer.num_training_batches,
        "trainer.accumulate_grad_batches": trainer.accumulate_grad_batches,
        **trainer.hparams,
    }


def save_checkpoint(trainer: Trainer, filepath: str | None = None, weights_only: bool = False) -> str:
    """A checkpoint folder (`filepath` a name in `checkpoint_dir` or a path; by default named after
    epoch and step), or a single file for a path ending in .ckpt/.pt/.pth. Weight-averaging
    callbacks put their averaged weights in as the model's for the time of the save."""
    from trainkit import checkpoint

    trainer.heartbeat.mark("checkpoint")
    trainer.finite_check.check()  # never a checkpoint of weights that a non-finite loss produced
    finish_saves(trainer)  # a second save waits for the first
    with contextlib.ExitStack() as stack:
        for cb in trainer.callbacks:
            if isinstance(cb, WeightAveraging):
                stack.enter_context(cb.averaged_weights())
        if filepath is not None and checkpoint.is_single_file(filepath):
            return _save_single_file(trainer, filepath)
        if weights_only:
            raise UserError(f"save_checkpoint({filepath!r}, weights_only=True) writes a single file: give a path "
                            f"ending in {' / '.join(checkpoint.FILE_SUFFIXES)}")
        with storage.logging_step(trainer.state.global_step, trainer.checkpoint_dir):
            for lg in trainer.loggers:  # what was logged up to this step is on disk before the checkpoint
                lg.flush()
        name = filepath or f"epoch={trainer.state.epoch}-step={trainer.state.global_step}"
        directory = os.path.dirname(os.path.abspath(name)) if os.sep in name else trainer.checkpoint_dir
        try:
            os.makedirs(directory, exist_ok=True)
            if trainer.async_checkpoint:
                trainer._pending_save = PendingSave(checkpoint.save_async(
                    directory, os.path.basename(name), model=trainer.model, optimizers=trainer.optimizers,
                    trainer_state=state_dict(trainer), rank_state=_rank_state(trainer),
                    rank=trainer.strategy.global_rank, is_global_zero=trainer.is_global_zero,
                    barrier=trainer.strategy.barrier,
                    trainable_only=not trainer._module.checkpoint_frozen_parameters))
                return trainer._pending_save.write.path
            return checkpoint.save(
                directory,
                os.path.basename(name),
                model=trainer.model,
                optimizers=trainer.optimizers,
                trainer_state=state_dict(trainer),
                rank_state=_rank_state(trainer),
                rank=trainer.strategy.global_rank,
                is_global_zero=trainer.is_global_zero,
                barrier=trainer.strategy.barrier,
                trainable_only=not trainer._module.checkpoint_frozen_parameters,
            )
        except BaseException as exc:
            _fail_save(trainer, exc, directory, os.path.basename(name))
            raise


def _fail_save(trainer: Trainer, exc: BaseException, directory: str, name: str) -> None:
    """After a save failed: nothing half-written stays behind, and a write the machine refused
    (disk full, permission denied, the folder gone) becomes one StorageError naming the step and
    what is intact. Other failures are left to propagate as they are."""
    from trainkit import checkpoint

    partial = checkpoint.temporary(directory, name)
    stopped = isinstance(exc, (KeyboardInterrupt, SystemExit))
    # Looked at before the clean-up frees the space: a full disk is still full now.
    refused = None if stopped else storage.refusal(exc, partial if os.path.isdir(partial) else directory)
    if trainer.is_global_zero:
        shutil.rmtree(partial, ignore_errors=True)
    if refused is not None:
        raise StorageError(f"saving the checkpoint of step {trainer.state.global_step} failed: {refused}; nothing "
                           f"of it was kept; {storage.intact(directory)}") from exc


@dataclasses.dataclass
class PendingSave:
    """An async checkpoint being written, and what waits for it to be published."""

    write: Any  # checkpoint.PendingSave
    then: list = dataclasses.field(default_factory=list)


def after_save(trainer: Trainer, action: Any) -> None:
    """Run `action` once the checkpoint just saved is complete: now, or after an async write."""
    if trainer._pending_save is None:
        action()
    else:
        trainer._pending_save.then.append(action)


def finish_saves(trainer: Trainer) -> None:
    """Wait until the async checkpoint being written is published (`last` moved), then run what
    waited for it. Raises what went wrong in the write."""
    pending, trainer._pending_save = trainer._pending_save, None
    if pending is None:
        return
    try:
        pending.write.wait()
    except BaseException as exc:
        _fail_save(trainer, exc, os.path.dirname(pending.write.path), os.path.basename(pending.write.path))
        raise
    for action in pending.then:
        action()


def _rank_state(trainer: Trainer) -> dict[str, Any]:
    """This rank's part of a checkpoint: its RNG streams, and a stateful loader's own state."""
    state = {"rng": capture_rng(), "epoch_rng": trainer._epoch_rng,
             "spike_guard": trainer.spike_guard.state_dict() if trainer.spike_guard else None}
    loader = trainer._data_position.state_dict() if trainer._data_position is not None else None
    if loader is not None:
        state["loader"] = loader
    return state


def _save_single_file(trainer: Trainer, path: str) -> str:
    from trainkit import checkpoint

    weights = checkpoint.full_model_state(trainer.model)  # a collective under FSDP
    path = os.path.abspath(os.path.expanduser(path))
    # What the module's and callbacks' on_save_checkpoint add goes into the file too (plain values).
    hooked = {"epoch": trainer.current_epoch, "global_step": trainer.global_step}
    trainer._call("on_save_checkpoint", hooked)
    if trainer.is_global_zero:
        checkpoint.save_single_file(path, weights, **plain(hooked, "on_save_checkpoint"),
                                    **checkpoint_fields(trainer._module, trainer.datamodule))
    trainer.strategy.barrier()
    return path


def checkpoint_to_load(trainer: Trainer, ckpt_path: str | None = None) -> str | None:
    """The checkpoint `ckpt_path` (else `resume`) names: None for none, the newest intact one for
    "auto"; "best" and "last" as in Lightning (the checkpoint callback's best, the newest)."""
    from trainkit import checkpoint

    resume = trainer.resume if ckpt_path is None else ckpt_path
    if resume == "best":
        cb = trainer.checkpoint_callback
        best = cb.best_model_path if cb is not None else None
        if not best:
            raise UserError('ckpt_path="best": there is no best checkpoint (that needs a ModelCheckpoint with a '
                            'monitor that has saved); pass ckpt_path="last" or a path')
        resume = best
    elif resume == "last":
        resume = os.path.join(trainer.checkpoint_dir, checkpoint.LAST)
        if not os.path.exists(resume):
            raise UserError(f'ckpt_path="last": no checkpoint in {trainer.checkpoint_dir} yet')
    if resume in (None, "none"):
        return None
    if resume == "auto":
        path, problems = checkpoint.find_resumable(trainer.checkpoint_dir)
        for problem in problems:
            log.warning("skipping a damaged checkpoint: %s", problem)
        if path is None and problems:
            raise UserError(f"trainer.resume=auto: no intact checkpoint in {trainer.checkpoint_dir} ("
                            + "; ".join(problems) + "); remove them, or set trainer.resume=none to start over")
        if path is None:
            log.info("trainer.resume=auto: no checkpoint in %s, starting fresh", trainer.checkpoint_dir)
        return path
    path = checkpoint.resolve(resume)
    problem = checkpoint.damage(path)
    if problem is not None:
        raise UserError(f"trainer.resume={resume}: {problem}")
    return path


def restore(trainer: Trainer, ckpt_path: str | None = None) -> None:
    """Before fit: continue from the checkpoint `resume` names, or start from `init_from`'s weights."""
    from trainkit import checkpoint

    trainer.heartbeat.mark("checkpoint")
    path = checkpoint_to_load(trainer, ckpt_path)
    if path is None:
        if trainer.init_from:
            _init_weights(trainer)
        return
    rank = trainer.strategy.global_rank
    trainer_state, rank_state = checkpoint.load(path, trainer.model, trainer.optimizers, rank)
    saved, current = trainer_state["settings"], settings(trainer)
    differ = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    if differ:
        listing = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in differ)
        if trainer.resume_strict:
            raise UserError(
                f"cannot resume exactly from {path}: settings differ ({listing}); use the checkpoint's "
                "settings, or set trainer.resume_strict=false to resume anyway (not an exact continuation)"
            )
        log.warning("resuming from %s although settings differ (%s): not an exact continuation", path, listing)
    load_state_dict(trainer, trainer_state)
    if rank_state is None:  # saved by fewer processes: this rank takes rank 0's RNG streams
        log.warning("%s has no RNG state for rank %d (saved by fewer processes): using rank 0's", path, rank)
        rank_state = checkpoint.load_rank_state(path, 0)
    if trainer.spike_guard is not None and rank_state.get("spike_guard") is not None:  # each rank its own losses
        trainer.spike_guard.load_state_dict(rank_state["spike_guard"])
    trainer._resume_position = {"batch_idx": trainer.state.batch_idx, **rank_state}
    log.info("resumed from %s: step %d, epoch %d, batch %d of the epoch", path, trainer.state.global_step,
             trainer.state.epoch, trainer.state.batch_idx)


def _init_weights(trainer: Trainer) -> None:
    """Fine-tuning starts a new run from another run's weights: fresh optimizer, schedule,
    counters and data order. (A resumed fine-tuning run continues from its own checkpoint.)"""
    from trainkit import checkpoint

    path = checkpoint.resolve(trainer.init_from)
    problem = checkpoint.damage(path)
    if problem is not None:
        raise UserError(f"trainer.init_from={trainer.init_from}: {problem}")
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

    try:
        checkpoint.load_model_weights(path, trainer.model)
    except (Exception, CheckpointException) as exc:  # noqa: BLE001 - DCP names the mismatching key and shapes
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise UserError(f"trainer.init_from={path}: its weights do not fit this model ("
                        f"{lines[-1] if lines else type(exc).__name__}); use the model settings of the run "
                        "that saved it") from None
    log.info("initialized the model from %s (weights only: fresh optimizer, schedule and counters)", path)


def load_weights_for_evaluation(trainer: Trainer, ckpt_path: str | None = None) -> None:
    """validate / test / predict: the weights of the checkpoint `resume` names, if any."""
    from trainkit import checkpoint

    path = checkpoint_to_load(trainer, ckpt_path)
    if path is None:
        if ckpt_path is None and trainer.resume == "auto":
            log.warning("trainer.resume=auto found no checkpoint: %s runs on the model's initial weights",
                        trainer.state.stage)
        return
    checkpoint.load_model_weights(path, trainer.model)
    log.info("loaded weights from %s", path)
