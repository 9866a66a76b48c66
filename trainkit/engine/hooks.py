"""Calling a hook everywhere it is defined, in Lightning 2.x's order.

For each hook: the DataModule (setup/teardown only), then the callbacks in their order, then the
module. Two exceptions, as in Lightning: `on_train_epoch_end` runs the monitoring callbacks
(checkpointing, early stopping) after the module, so they see what the module logged there
(`targets(hook, monitoring=False)`, then `monitoring=True`); and on loading a checkpoint the
module's `on_load_checkpoint` runs before the callbacks'.

Which objects override which hook is worked out once per hook and cached: a hook nobody
overrides is an empty tuple: the loops look the per-batch hooks up once per epoch and skip an
unused one at no cost.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from trainkit.engine.callback import Callback
from trainkit.engine.data import DataModule
from trainkit.engine.module import TrainModule

if TYPE_CHECKING:
    from trainkit.engine.trainer import Trainer

DATAMODULE_HOOKS = ("setup", "teardown")
BATCH_TRANSFER_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")


def overrides(obj: Any, hook: str, base: type) -> bool:
    """True when `obj` defines `hook` itself rather than inheriting the no-op of `base`."""
    mine = getattr(type(obj), hook, None)
    return mine is not None and mine is not getattr(base, hook, None)


class Hooks:
    def __init__(self, trainer: Trainer, callbacks: list[Callback], module: TrainModule,
                 datamodule: DataModule | None) -> None:
        from trainkit.callbacks.early_stopping import EarlyStopping
        from trainkit.callbacks.model_checkpoint import ModelCheckpoint

        self.trainer, self.module, self.datamodule = trainer, module, datamodule
        self.callbacks = callbacks
        self._monitoring = tuple(cb for cb in callbacks if isinstance(cb, (ModelCheckpoint, EarlyStopping)))
        self._cache: dict[tuple[str, bool | None], tuple[Callable[..., Any], ...]] = {}

    def targets(self, hook: str, monitoring: bool | None = None) -> tuple[Callable[..., Any], ...]:
        """The bound hooks to call, in order, each taking the hook's own arguments.
        `monitoring`: None for every callback, True / False for only / all but the monitoring ones."""
        key = (hook, monitoring)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._find(hook, monitoring)
        return found

    def _find(self, hook: str, monitoring: bool | None) -> tuple[Callable[..., Any], ...]:
        trainer, module = self.trainer, self.module
        calls: list[Callable[..., Any]] = []
        if monitoring is None and hook in DATAMODULE_HOOKS and self.datamodule is not None:
            if overrides(self.datamodule, hook, DataModule):
                calls.append(getattr(self.datamodule, hook))
        for cb in self.callbacks:
            if monitoring is not None and (cb in self._monitoring) != monitoring:
                continue
            if overrides(cb, hook, Callback):
                fn = getattr(cb, hook)
                if trainer.profiler is not None:
                    fn = trainer.profiler.wrap(f"[Callback]{type(cb).__name__}.{hook}", fn)
                calls.append(_with_trainer(fn, trainer, module))
        if monitoring is not True and overrides(module, hook, TrainModule):
            fn = getattr(module, hook)
            calls.append(fn if trainer.profiler is None else
                         trainer.profiler.wrap(f"[LightningModule]{type(module).__name__}.{hook}", fn))
        return tuple(calls)

    def call(self, hook: str, *args: Any) -> list[Any]:
        """Call `hook` everywhere it is overridden; returns what each call returned."""
        return [fn(*args) for fn in self.targets(hook)]

    def call_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """`on_load_checkpoint`: the module first, then the callbacks (Lightning's order)."""
        if overrides(self.module, "on_load_checkpoint", TrainModule):
            self.module.on_load_checkpoint(checkpoint)
        for cb in self.callbacks:
            if overrides(cb, "on_load_checkpoint", Callback):
                cb.on_load_checkpoint(self.trainer, self.module, checkpoint)


    def batch_transfer(self) -> Callable[[Any, int], Any] | None:
        """Lightning's batch-transfer hooks as one function `(batch, dataloader_idx) -> batch`: each
        of the three from the DataModule when it overrides it, else from the module (Lightning's
        choice). None when neither overrides any: the loops then move batches themselves."""
        def owner(hook: str) -> Callable[..., Any] | None:
            if self.datamodule is not None and overrides(self.datamodule, hook, DataModule):
                return getattr(self.datamodule, hook)
            return getattr(self.module, hook) if overrides(self.module, hook, TrainModule) else None

        before, move, after = (owner(hook) for hook in BATCH_TRANSFER_HOOKS)
        if before is None and move is None and after is None:
            return None
        strategy, precision = self.trainer.strategy, self.trainer.precision

        def transfer(batch: Any, dataloader_idx: int) -> Any:
            if before is not None:
                batch = before(batch, dataloader_idx)
            batch = precision.convert_input(batch)
            batch = strategy.batch_to_device(batch) if move is None else move(batch, strategy.root_device,
                                                                                dataloader_idx)
            return batch if after is None else after(batch, dataloader_idx)

        return transfer


def _with_trainer(fn: Callable[..., Any], trainer: Trainer, module: TrainModule) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        return fn(trainer, module, *args)

    return call
