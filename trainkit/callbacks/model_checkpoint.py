"""Save model + optimizer + counters to `<dirpath>/epoch=<E>-step=<N>.pt`, and `last.pt`.

Without `monitor`, it keeps the newest `save_top_k` checkpoints (saved every `every_n_epochs`
epochs and/or every `every_n_train_steps` steps); with `monitor`, it saves after each validation
and keeps the best `save_top_k`. Each file is written to a temporary name and renamed, and
`last.pt` is a hard link swapped in atomically, so a kill never leaves a half-written file under
a real name. Files hold only tensors and plain types: `torch.load(..., weights_only=True)` reads them.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch

from trainkit.engine.callback import Callback
from trainkit.errors import ConfigError

log = logging.getLogger("trainkit")


class ModelCheckpoint(Callback):
    def __init__(
        self,
        dirpath: str,
        monitor: str | None = None,
        mode: str = "min",
        save_top_k: int = 1,
        save_last: bool = True,
        every_n_epochs: int = 1,
        every_n_train_steps: int | None = None,
    ) -> None:
        if mode not in ("min", "max"):
            raise ConfigError(f"callbacks.model_checkpoint.mode={mode!r} must be 'min' or 'max'")
        self.dirpath = dirpath
        self.monitor, self.mode = monitor, mode
        self.save_top_k, self.save_last = save_top_k, save_last
        self.every_n_epochs, self.every_n_train_steps = every_n_epochs, every_n_train_steps
        self.kept: list[tuple[float, str]] = []  # (score, path), best first when monitoring
        self.best_model_path: str | None = None
        self.last_model_path: str | None = None
        self._last_saved_step = -1

    # -- when to save ----------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        n = self.every_n_train_steps
        if n and trainer.global_step % n == 0 and trainer.global_step != self._last_saved_step:
            self._save(trainer, module, score=None)

    def on_train_epoch_end(self, trainer, module) -> None:
        if self.monitor is None and self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._save(trainer, module, score=None)

    def on_validation_end(self, trainer, module) -> None:
        if self.monitor is None or trainer.state.stage != "fit":
            return
        if self.monitor not in trainer.callback_metrics:
            raise ConfigError(
                f"checkpoint monitor {self.monitor!r} was not logged; logged: "
                f"{', '.join(sorted(trainer.callback_metrics)) or 'nothing'}"
            )
        self._save(trainer, module, score=trainer.callback_metrics[self.monitor])

    def on_fit_end(self, trainer, module) -> None:
        if self.save_last and trainer.global_step != self._last_saved_step and trainer.global_step > 0:
            self._save(trainer, module, score=None, keep=False)

    # -- how -------------------------------------------------------------------------------------
    def _save(self, trainer, module, score: float | None, keep: bool = True) -> None:
        if self._last_saved_step == trainer.global_step and score is None:
            return
        os.makedirs(self.dirpath, exist_ok=True)
        name = f"epoch={trainer.current_epoch}-step={trainer.global_step}"
        if self.monitor is not None and score is not None:
            name += f"-{self.monitor.replace('/', '_')}={score:.4f}"
        path = os.path.join(self.dirpath, name + ".pt")
        if trainer.is_global_zero:
            _atomic_save(_checkpoint(trainer, module), path)
            if self.save_last:
                _atomic_link(path, os.path.join(self.dirpath, "last.pt"))
                self.last_model_path = os.path.join(self.dirpath, "last.pt")
        self._last_saved_step = trainer.global_step
        if keep:
            self._retain(path, score)
        elif trainer.is_global_zero and not self.save_last:
            os.remove(path)
        log.debug("saved checkpoint %s", path)

    def _retain(self, path: str, score: float | None) -> None:
        if self.monitor is None or score is None:
            self.kept.append((0.0, path))  # newest last
        else:
            bad = math.inf if self.mode == "min" else -math.inf
            key = score if math.isfinite(score) else bad
            self.kept.append((key, path))
            self.kept.sort(key=lambda kv: kv[0], reverse=self.mode == "max")
            self.best_model_path = self.kept[0][1]
        while self.save_top_k >= 0 and len(self.kept) > self.save_top_k:
            drop = self.kept.pop(0 if self.monitor is None else -1)[1]
            if os.path.exists(drop):
                os.remove(drop)  # `last.pt` is a hard link: removing the name keeps its data

    def state_dict(self) -> dict[str, Any]:
        return {"kept": [list(kv) for kv in self.kept], "best_model_path": self.best_model_path}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kept = [tuple(kv) for kv in state["kept"]]
        self.best_model_path = state["best_model_path"]


def _checkpoint(trainer, module) -> dict[str, Any]:
    return {
        "model": module.state_dict(),
        "optimizer": trainer.optimizer.state_dict() if trainer.optimizer is not None else None,
        "lr_scheduler": trainer.lr_scheduler.state_dict() if trainer.lr_scheduler is not None else None,
        "precision": trainer.precision.state_dict(),
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "metrics": dict(trainer.callback_metrics),
    }


def _atomic_save(obj: Any, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_link(target: str, link: str) -> None:
    tmp = link + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    os.link(target, tmp)
    os.replace(tmp, link)


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read a checkpoint written by ModelCheckpoint, as plain data (no code runs)."""
    from trainkit.errors import UserError

    if os.path.isdir(path):
        path = os.path.join(path, "last.pt")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which, not how pickle failed
        raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}); is it complete?") from exc
