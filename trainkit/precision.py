"""Numeric precision: where autocast, GradScaler and parameter dtypes live.

    32          fp32 everywhere (nothing to do)
    bf16-mixed  fp32 weights, forward under bf16 autocast
    16-mixed    fp32 weights, forward under fp16 autocast, loss scaled by a GradScaler that skips
                steps whose gradients overflowed (inf/NaN) and lowers the scale
    bf16-true   weights and floating inputs cast to bf16 (half the memory; no fp32 master copy)
    64-true     weights and floating inputs in float64 (numerical checks; slow)

Lightning's names are accepted too: "32-true", 32, 16, "bf16", 64 (choices.PRECISION_ALIASES).
All of them run on CPU (torch has CPU autocast for bf16 and fp16) and on CUDA.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from trainkit.choices import PRECISIONS, precision_mode
from trainkit.engine.tensors import apply_to_tensors
from trainkit.errors import ConfigError


class Precision:
    def __init__(
        self,
        mode: str = "32",
        device_type: str = "cpu",
        init_scale: float = 2.0**16,
        growth_interval: int = 2000,
    ) -> None:
        name = mode
        mode = precision_mode(name)
        if mode is None:
            raise ConfigError(f"precision={name!r} is not one of {', '.join(PRECISIONS)} (or Lightning's 32-true, 16, bf16, 64)")
        self.mode = mode
        self.device_type = device_type
        self._unscaled: set[int] = set()  # optimizers unscaled since their last step (16-mixed)
        self._watched: set[int] = set()  # optimizers whose step hook tells whether the GradScaler stepped them
        self._ran = False
        self.autocast_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(mode)
        self.param_dtype = {"bf16-true": torch.bfloat16, "64-true": torch.float64}.get(mode)
        self.scaler = (
            torch.amp.GradScaler(device_type, init_scale=init_scale, growth_interval=growth_interval)
            if mode == "16-mixed"
            else None
        )
        self._skipped: torch.Tensor | None = None  # on the device: steps the GradScaler skipped (inf/NaN grads)

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to(self.param_dtype) if self.param_dtype is not None else module

    def convert_input(self, batch: Any) -> Any:
        if self.param_dtype is None:
            return batch
        return apply_to_tensors(batch, lambda t: t.to(self.param_dtype) if t.is_floating_point() else t)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """`loss.backward(*args, **kwargs)`, the loss scaled first under 16-mixed."""
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward(*args, **kwargs)

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients back to their true scale (before hooks that read them, and clipping);
        once per step: asking again before the step changes nothing."""
        if self.scaler is not None and id(optimizer) not in self._unscaled:
            self.scaler.unscale_(optimizer)
            self._unscaled.add(id(optimizer))

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Step the optimizer; False when the GradScaler skipped the step (inf/NaN gradients).
        No host sync of its own: the GradScaler reads its inf check to decide (torch does, once
        per step, unless the optimizer is fused), a step hook says whether the step ran, and the
        count of skipped steps stays on the device until it is logged."""
        if self.scaler is None:
            optimizer.step()
            return True
        if id(optimizer) not in self._watched:
            optimizer.register_step_post_hook(self._note_step)
            self._watched.add(id(optimizer))
        self._ran = False
        before = self.scaler._get_scale_async()  # None until a loss was scaled
        before = before.clone() if before is not None else None
        self.scaler.step(optimizer)
        self.scaler.update()
        self._unscaled.clear()
        if before is not None:  # the scaler lowers its scale exactly when it found inf/NaN and skipped
            skipped = (self.scaler._get_scale_async() < before).long()  # type: ignore[operator]
            self._skipped = skipped if self._skipped is None else self._skipped + skipped
        return self._ran

    def _note_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._ran = True

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps the GradScaler skipped (a host sync: read at log steps)."""
        return 0 if self._skipped is None else int(self._skipped)

    @property
    def loss_scale(self) -> float:
        return self.scaler.get_scale() if self.scaler is not None else 1.0

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

