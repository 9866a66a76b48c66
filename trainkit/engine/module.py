"""The TrainModule API (alias `LightningModule`): a model that knows how to train itself.

A `TrainModule` is an `nn.Module` with step methods. The Trainer calls them; they return the loss
(training; `None` skips the batch) or anything (evaluation, prediction) and report numbers with
`self.log(name, value)`, with Lightning's meaning of every argument (engine/metric_store.py).

    class MyModel(TrainModule):
        def training_step(self, batch, batch_idx):      # batch_idx may be left out
            loss = ...
            self.log("train/loss", loss, prog_bar=True)
            return loss

The hooks below are Lightning's, called in Lightning's order (engine/hooks.py); a hook a module
does not override costs nothing. Logged tensors stay on the device: nothing is copied to the host
until a logger asks for it (every `log_every_n_steps`), so logging adds no synchronisation.
"""
from __future__ import annotations

import inspect
import warnings
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from trainkit.engine.batch_transfer import BatchTransferHooks
from trainkit.engine.hparams import HyperparametersMixin, load_module

if TYPE_CHECKING:
    from trainkit.engine.trainer import Trainer


class TrainModule(BatchTransferHooks, HyperparametersMixin, nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # Plain attribute, not a submodule: the Trainer is not part of the model's state.
        object.__setattr__(self, "_trainer", None)

    # -- what a recipe writes ---------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | dict[str, Any] | None:
        raise NotImplementedError(f"{type(self).__name__} must define training_step(batch, batch_idx)")

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no validation_step(batch, batch_idx)")

    def test_step(self, batch: Any, batch_idx: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no test_step(batch, batch_idx)")

    def predict_step(self, batch: Any, batch_idx: int) -> Any:
        return self(batch)

    # False: training_step steps its optimizers itself (self.optimizers(), self.manual_backward).
    automatic_optimization: bool = True
    # False: checkpoints hold only the parameters that train (requires_grad) and the buffers; the
    # frozen rest is what __init__ builds again (a pretrained base under LoRA: megabytes, not GB).
    checkpoint_frozen_parameters: bool = True

    def configure_optimizers(self) -> Any:
        """Return what Lightning 2.x accepts: an optimizer; a list of them; `([opts], [scheds])`;
        `{"optimizer": opt, "lr_scheduler": sched_or_config}`; a list of such dicts; or None.

        A scheduler config is `{"scheduler": s, "interval": "epoch"|"step", "frequency": 1,
        "monitor": None, "strict": True, "name": None}` (engine/optimizers.py). Several
        optimizers need `automatic_optimization = False`. When a module does not override this
        method, the Trainer builds the optimizer and scheduler that its `optimizer=` /
        `scheduler=` arguments (the `optimizer` and `scheduler` config groups) describe.
        """
        raise NotImplementedError

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """How the Trainer steps a scheduler in automatic optimization (override to change it)."""
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Called for each automatic optimizer step when overridden (a learning-rate warm-up, say);
        call `optimizer.step(closure=optimizer_closure)` in it. Forward and backward ran already."""
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        """Called after each automatic optimizer step when overridden."""
        optimizer.zero_grad()

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Called before each automatic optimizer step when overridden; clips as the Trainer is set."""
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # -- hooks (Lightning's names and arguments; override those you need) ---------------------
    def prepare_data(self) -> None: ...
    def setup(self, stage: str) -> None: ...
    def teardown(self, stage: str) -> None: ...
    def configure_model(self) -> None: ...
    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any: ...
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None: ...
    def on_before_zero_grad(self, optimizer: torch.optim.Optimizer) -> None: ...
    def on_before_backward(self, loss: torch.Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None: ...
    def on_validation_start(self) -> None: ...
    def on_validation_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_start(self) -> None: ...
    def on_test_end(self) -> None: ...
    def on_test_epoch_start(self) -> None: ...
    def on_test_epoch_end(self) -> None: ...
    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_start(self) -> None: ...
    def on_predict_end(self) -> None: ...
    def on_predict_epoch_start(self) -> None: ...
    def on_predict_epoch_end(self) -> None: ...
    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add plain values (numbers, strings, lists, dicts, tensors) to `checkpoint`: they are
        saved with trainkit's checkpoint and given back to `on_load_checkpoint` on resume."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str, map_location: Any = None, strict: bool = True, **overrides: Any):
        """The module rebuilt from a checkpoint's saved hyper-parameters (`overrides` win), with its
        weights: a checkpoint folder or a single `.ckpt` file (trainkit.engine.hparams)."""
        return load_module(cls, checkpoint_path, map_location, strict, overrides)

    # -- what the Trainer provides -------------------------------------------------------------
    @property
    def trainer(self) -> Trainer:
        if self._trainer is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a Trainer")
        return self._trainer

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return self._trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    @property
    def current_epoch(self) -> int:
        return self._trainer.current_epoch if self._trainer is not None else 0

    @property
    def global_step(self) -> int:
        return self._trainer.global_step if self._trainer is not None else 0

    @property
    def global_rank(self) -> int:
        return self._trainer.global_rank if self._trainer is not None else 0

    @property
    def local_rank(self) -> int:
        return self._trainer.local_rank if self._trainer is not None else 0

    @property
    def logger(self) -> Any:
        return self._trainer.logger if self._trainer is not None else None

    @property
    def loggers(self) -> list[Any]:
        return self._trainer.loggers if self._trainer is not None else []

    def print(self, *args: Any, **kwargs: Any) -> None:
        """`print` on the global rank zero only."""
        if self.global_rank == 0:
            print(*args, **kwargs)

    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Callable = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        metric_attribute: str | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """Record a scalar (a tensor, a number or a torchmetrics Metric) with Lightning's
        semantics (metric_store.py). `sync_dist` is always in effect and costs no extra collective:
        values are reduced over the processes when they are read (log steps, epoch ends), which
        are sync points already. `enable_graph`, `sync_dist_group`, `metric_attribute` and
        `rank_zero_only` are accepted for Lightning code and change nothing."""
        if self._trainer is None:
            warnings.warn(f"{type(self).__name__}.log({name!r}) outside a Trainer run is ignored", stacklevel=2)
            return
        self._trainer.metrics.log(name, value, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch,
                                  reduce_fx=reduce_fx, batch_size=batch_size, add_dataloader_idx=add_dataloader_idx)

    def log_dict(self, dictionary: dict[str, Any], prog_bar: bool = False, logger: bool | None = None,
                 on_step: bool | None = None, on_epoch: bool | None = None, reduce_fx: str | Callable = "mean",
                 enable_graph: bool = False, sync_dist: bool = False, sync_dist_group: Any = None,
                 add_dataloader_idx: bool = True, batch_size: int | None = None,
                 rank_zero_only: bool = False) -> None:
        for name, value in dictionary.items():
            self.log(name, value, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch,
                     reduce_fx=reduce_fx, batch_size=batch_size, add_dataloader_idx=add_dataloader_idx)

    def sum_over_processes(self, tensor: torch.Tensor, async_op: bool = False) -> Any:
        """`tensor` summed over all processes (itself in one process); not differentiated.

        For losses averaged over a varying number of items (masked tokens, padded steps): divide
        the summed loss by the count over all processes and multiply by `trainer.world_size`,
        and the gradient DDP averages is that of the global mean — the same as one process on
        the whole global batch. With `async_op=True` it returns a handle whose `wait()` gives the
        sum: start it before the forward pass and the exchange overlaps with it.
        """
        pending = self.trainer.strategy.all_reduce_sum_async(tensor.detach().clone())
        return pending if async_op else pending.wait()

    # -- optimization (Lightning's names; the work is in optimization.py and optimizers.py) -----
    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        """The optimizer, or the list of them. Their `step()` goes through the Trainer (gradient
        averaging, precision, hooks, global_step) unless `use_pl_optimizer=False`."""
        opts = self.trainer._step_through if use_pl_optimizer else self.trainer.optimizers
        return opts[0] if len(opts) == 1 else list(opts)

    def lr_schedulers(self) -> Any:
        """The scheduler, the list of them, or None."""
        scheds = [config.scheduler for config in self.trainer.lr_scheduler_configs]
        return None if not scheds else scheds[0] if len(scheds) == 1 else scheds

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Backward in manual optimization (the precision's loss scaling included)."""
        from trainkit.engine import optimization

        optimization.manual_backward(self.trainer, loss, *args, **kwargs)

    def toggle_optimizer(self, optimizer: Any) -> None:
        """Only `optimizer`'s parameters compute gradients until `untoggle_optimizer`."""
        from trainkit.engine import optimizers

        self._param_requires_grad_state = optimizers.toggle(self.trainer.optimizers, optimizer)

    def untoggle_optimizer(self, optimizer: Any) -> None:
        from trainkit.engine import optimizers

        optimizers.untoggle(self.trainer.optimizers, optimizer, getattr(self, "_param_requires_grad_state", {}))
        self._param_requires_grad_state = {}

    def toggled_optimizer(self, optimizer: Any) -> Any:
        """`with self.toggled_optimizer(opt):` toggles, and untoggles on the way out."""
        from trainkit.engine import optimizers

        return optimizers.toggled(self, optimizer)

    def clip_gradients(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Clip the gradients of `optimizer`'s parameters ("norm" or "value"), unscaled first."""
        from trainkit.engine import optimization

        optimization.clip_gradients(self.trainer, optimizer, gradient_clip_val, gradient_clip_algorithm)


LightningModule = TrainModule


def positional_arity(fn: Callable[..., Any]) -> int:
    """How many positional arguments `fn` takes (a large number for *args): a step written
    `training_step(self, batch)` is called without batch_idx, as Lightning does."""
    count = 0
    for param in inspect.signature(fn).parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            return 1 << 10
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            count += 1
    return count
