"""When to save and what to keep, as Lightning's ModelCheckpoint; `trainkit.checkpoint` writes.

Triggers (Lightning's): every `every_n_train_steps` optimizer steps; at the end of every
`every_n_epochs` epochs — after the epoch's validation when validation runs once per epoch, else
after each validation (`save_on_train_epoch_end` decides when given). With none of the two set,
every epoch. Unlike Lightning, both may be set (the CLI's config saves every N steps for crash
resume *and* at each epoch's validation).

What is kept: with `monitor`, the `save_top_k` best by it (-1: all; 0: none), in `best_k_models`;
without, the newest (`save_top_k=1`) or all (-1). trainkit also always keeps the newest checkpoint
and points `checkpoints/last` at it, so that a run resumes exactly (`save_last` cannot turn that
off). Old checkpoints are deleted only after a new one is published.

Names: `filename` is a template as in Lightning — `"{epoch}-{val/loss:.2f}"` gives
`epoch=3-val_loss=0.12` (`auto_insert_metric_name`; a `/` in a metric's name becomes `_`, since a
checkpoint is one folder). By default `epoch=<E>-step=<N>`, with `-<monitor>=<value:.4f>` when a
validation ran at that step. A name always carries `step=<N>` (added when the template has none): resume
and the `last` rules order checkpoints by it. Checkpoints are folders (exact resume);
`save_weights_only=True` writes single `.ckpt` files instead (weights and hyper-parameters, see
`trainkit.checkpoint`), which cannot resume a run and so never become `last`.
"""
from __future__ import annotations

import logging
import math
import os
import re
from typing import Any

import torch

from trainkit.engine.callback import Callback
from trainkit.errors import ConfigError

log = logging.getLogger("trainkit")

_FIELD = re.compile(r"\{([^{}:]+)(:[^{}]*)?\}")
_HAS_STEP = re.compile(r"step=\d+")


class ModelCheckpoint(Callback):
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_NAME_LAST = "last"

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool | str | None = None,
        save_top_k: int = 1,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: int | None = None,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
    ) -> None:
        if mode not in ("min", "max"):
            raise ConfigError(f"ModelCheckpoint(mode={mode!r}) must be 'min' or 'max'")
        if save_top_k < -1:
            raise ConfigError(f"ModelCheckpoint(save_top_k={save_top_k}) must be >= -1 (-1 keeps all)")
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise ConfigError(f"ModelCheckpoint(save_top_k={save_top_k}, monitor=None): keeping the best "
                              f"{save_top_k} needs a metric to rank by; set monitor=, or save_top_k=-1 to keep all")
        for key, value in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and value < 0:
                raise ConfigError(f"ModelCheckpoint({key}={value}) must be >= 0")
        if save_last not in (None, True, False, "link"):
            raise ConfigError(f"ModelCheckpoint(save_last={save_last!r}) must be None, True, False or 'link'")
        if save_last is False:
            log.info("ModelCheckpoint(save_last=False): trainkit keeps the newest checkpoint as `last` anyway "
                     "(runs resume from it)")
        self.dirpath = os.path.realpath(os.path.expanduser(dirpath)) if dirpath else None
        self.filename = filename
        self.monitor = monitor
        self.verbose = verbose
        self.save_last = save_last
        self.save_top_k = save_top_k
        self.save_weights_only = save_weights_only
        self.mode = mode
        self.auto_insert_metric_name = auto_insert_metric_name
        if every_n_train_steps is None and every_n_epochs is None:
            every_n_epochs = 1
        self.every_n_train_steps = every_n_train_steps or 0
        self.every_n_epochs = every_n_epochs or 0
        self.save_on_train_epoch_end = save_on_train_epoch_end

        self.best_k_models: dict[str, torch.Tensor] = {}
        self.kth_best_model_path = ""
        self.kth_value = torch.tensor(math.inf if mode == "min" else -math.inf)
        self.best_model_path = ""
        self.best_model_score: torch.Tensor | None = None
        self.current_score: torch.Tensor | None = None
        self.last_model_path = ""
        self._saved: list[str] = []  # every checkpoint of this callback still on disk, oldest first
        self._last_global_step_saved = 0  # no checkpoint before the first step
        self._validated = False  # a missing monitor is an error once validation has run
        self._validated_step = -1  # the step of the latest validation during fit

    # -- when ------------------------------------------------------------------------------------
    def setup(self, trainer, module, stage) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        n = self.every_n_train_steps
        if n and trainer.global_step % n == 0:
            self.save(trainer)

    def on_train_epoch_end(self, trainer, module) -> None:
        if self._save_at_epoch_end(trainer) and self._epoch_due(trainer):
            self.save(trainer)

    def on_validation_end(self, trainer, module) -> None:
        if trainer.state.stage != "fit":  # (also skips the sanity check)
            return
        self._validated, self._validated_step = True, trainer.global_step
        if not self._save_at_epoch_end(trainer) and self._epoch_due(trainer):
            self.save(trainer)

    def _epoch_due(self, trainer) -> bool:
        return bool(self.every_n_epochs) and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _save_at_epoch_end(self, trainer) -> bool:
        if self.save_on_train_epoch_end is not None:
            return self.save_on_train_epoch_end
        if trainer.check_val_every_n_epoch != 1:
            return False
        if not sum(trainer.num_val_batches):  # (one count per validation loader)
            return True  # no validation: the epoch's end is the only moment
        return trainer.val_check_interval == 1.0  # validation once, just before the epoch ends

    # -- what -----------------------------------------------------------------------------------
    def save(self, trainer) -> str | None:
        """Save at the current step unless it is saved already (or no step was taken); rank the
        checkpoint by the monitor; delete those no longer kept. Every rank calls this."""
        step = trainer.global_step
        if step == self._last_global_step_saved or trainer.fast_dev_run:
            return None  # (fast_dev_run saves nothing, as in Lightning)
        metrics = self._monitor_candidates(trainer)
        current = self._current(metrics)
        # Ranked by the monitor's latest value (as Lightning), but the default name shows it only
        # when a validation ran at this very step.
        fresh = self._validated_step == step
        template = self.filename or self._default_template(metrics if fresh else {})
        path = os.path.join(self.dirpath, self.format_checkpoint_name(metrics, template))
        if self.save_weights_only:
            path += ".ckpt"
        self._last_global_step_saved = step  # part of the saved state: a resumed run does not save it twice
        self._rank(path, current, metrics)
        self.last_model_path = path
        self._saved.append(path)
        from trainkit.engine import trainer_state

        trainer.save_checkpoint(path, weights_only=self.save_weights_only)
        if trainer.is_global_zero:  # (an async save: once it is complete, so a kill keeps the previous one)
            unkept = self._unkept()
            trainer_state.after_save(trainer, lambda: self._delete(unkept))
        return path

    def _current(self, metrics: dict[str, Any]) -> torch.Tensor | None:
        if self.monitor is None:
            return None
        if self.monitor not in metrics:
            message = (f"ModelCheckpoint(monitor={self.monitor!r}) could not find {self.monitor!r} in the logged "
                       f"metrics: {', '.join(sorted(k for k in metrics if k not in ('epoch', 'step'))) or 'none'}. "
                       f"Log it with self.log({self.monitor!r}, value), or change monitor")
            if self._validated:
                raise ConfigError(message)
            log.warning("%s (saving without it before the first validation)", message)
            return None
        value = torch.as_tensor(metrics[self.monitor], dtype=torch.float64).detach().cpu().squeeze()
        if torch.isnan(value):  # ranked as the worst, as Lightning does
            value = torch.tensor(math.inf if self.mode == "min" else -math.inf, dtype=torch.float64)
        return value

    def check_monitor_top_k(self, current: torch.Tensor | None) -> bool:
        if current is None or self.save_top_k == 0:
            return False
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return True
        kth = self.best_k_models[self.kth_best_model_path]
        return bool(current < kth if self.mode == "min" else current > kth)  # a tie does not displace

    def _rank(self, path: str, current: torch.Tensor | None, metrics: dict[str, Any]) -> None:
        epoch, step = metrics["epoch"], metrics["step"]
        if self.monitor is None:
            self.best_model_path = path
            return
        if not self.check_monitor_top_k(current):
            if self.verbose and current is not None:
                log.info("Epoch %d, global step %d: %r was not in top %d", epoch, step, self.monitor, self.save_top_k)
            return
        if self.save_top_k != -1 and len(self.best_k_models) == self.save_top_k:
            self.best_k_models.pop(self.kth_best_model_path)
        self.current_score = current
        self.best_k_models[path] = current
        better, worse = (min, max) if self.mode == "min" else (max, min)
        if self.save_top_k == -1 or len(self.best_k_models) == self.save_top_k:
            self.kth_best_model_path = worse(self.best_k_models, key=lambda p: self.best_k_models[p])
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        self.best_model_path = better(self.best_k_models, key=lambda p: self.best_k_models[p])
        self.best_model_score = self.best_k_models[self.best_model_path]
        if self.verbose:
            log.info("Epoch %d, global step %d: %r reached %.5f (best %.5f), saving model to %r as top %d", epoch, step,
                     self.monitor, float(current), float(self.best_model_score), path,
                     self.save_top_k if self.save_top_k > 0 else len(self.best_k_models))

    def _kept(self) -> set[str]:
        keep = {self.last_model_path} | set(self.best_k_models)
        if self.monitor is None:
            keep |= set(self._saved) if self.save_top_k == -1 else {self.best_model_path}
        return keep

    def _unkept(self) -> list[str]:
        """The saved checkpoints no longer kept, taken off the list of saved ones."""
        keep = self._kept()
        unkept = [p for p in self._saved if p not in keep]
        self._saved = [p for p in self._saved if p in keep]
        return unkept

    @staticmethod
    def _delete(paths: list[str]) -> None:
        from trainkit import checkpoint

        for path in paths:
            if os.path.isdir(path):
                checkpoint.remove(path)
            elif os.path.isfile(path):
                os.remove(path)

    # -- names ----------------------------------------------------------------------------------
    def _monitor_candidates(self, trainer) -> dict[str, Any]:
        metrics = dict(trainer.callback_metrics)
        metrics["epoch"] = trainer.current_epoch
        metrics["step"] = trainer.global_step
        return metrics

    def format_checkpoint_name(self, metrics: dict[str, Any], filename: str | None = None) -> str:
        """The checkpoint's name (no folder) for these metrics: `filename`'s fields filled in, a
        missing metric as 0 (as Lightning), and `-step=<N>` added when the name has no step."""
        template = filename or self.filename or self._default_template(metrics)

        def fill(match: re.Match) -> str:
            name, spec = match[1], (match[2] or ":")[1:]
            value = metrics.get(name, 0)
            if isinstance(value, torch.Tensor):
                value = value.item()
            if name in ("epoch", "step"):
                value = int(value)
            text = format(value, spec)
            return f"{name.replace('/', '_')}{self.CHECKPOINT_EQUALS_CHAR}{text}" if self.auto_insert_metric_name else text

        name = _FIELD.sub(fill, template).replace("/", "_")
        if not _HAS_STEP.search(name):
            name += f"{self.CHECKPOINT_JOIN_CHAR}step={int(metrics.get('step', 0))}"
        return name

    def _default_template(self, metrics: dict[str, Any]) -> str:
        if self.monitor is not None and self.monitor in metrics:
            return "{epoch}-{step}-{" + self.monitor + ":.4f}"
        return "{epoch}-{step}"

    # -- resume ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "dirpath": self.dirpath,
            "best_model_score": self.best_model_score,
            "best_model_path": self.best_model_path,
            "current_score": self.current_score,
            "best_k_models": dict(self.best_k_models),
            "kth_best_model_path": self.kth_best_model_path,
            "kth_value": self.kth_value,
            "last_model_path": self.last_model_path,
            "saved": list(self._saved),
            "last_global_step_saved": self._last_global_step_saved,
            "validated": self._validated,
            "validated_step": self._validated_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("dirpath") not in (None, self.dirpath):
            log.warning("ModelCheckpoint: the checkpoints were saved in %s, this run saves in %s; the ranking of "
                        "the earlier ones is not carried over", state["dirpath"], self.dirpath)
            self._last_global_step_saved = state["last_global_step_saved"]
            return
        self.best_model_score = state["best_model_score"]
        self.best_model_path = state["best_model_path"]
        self.current_score = state["current_score"]
        self.best_k_models = dict(state["best_k_models"])
        self.kth_best_model_path = state["kth_best_model_path"]
        self.kth_value = state["kth_value"]
        self.last_model_path = state["last_model_path"]
        self._saved = list(state["saved"])
        self._last_global_step_saved = state["last_global_step_saved"]
        self._validated = state["validated"]
        self._validated_step = state["validated_step"]
