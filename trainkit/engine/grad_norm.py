"""The gradient norm of the steps that log: `Trainer(grad_norm="total" | "groups" | None)`.

    train/grad_norm             the global 2-norm of all gradients, before clipping
    train/grad_norm/<group>     each parameter group's ("groups"; the group's "name", else pg1, pg2, ...)

When the step clips by norm, the total is the norm clipping computed (what
`torch.nn.utils.clip_grad_norm_` returns); otherwise it is computed, at log steps only, after the
gradients are unscaled (16-mixed) and averaged over processes. The norms stay on the device until
the loop logs them (it reads the device there anyway). Automatic optimization only.
"""
from __future__ import annotations

from typing import Any

import torch

from trainkit.errors import ConfigError

MODES = ("total", "groups")


def check_mode(value: Any) -> str | None:
    if value is None or value is False:
        return None
    if value not in MODES:
        raise ConfigError(f"grad_norm={value!r} must be 'total', 'groups' or null (off)")
    return value


class GradNorms:
    def __init__(self, mode: str | None) -> None:
        self.mode = mode
        self._norms: dict[str, torch.Tensor] = {}

    def due(self, trainer: Any) -> bool:
        """Whether the step about to run logs (its norms are wanted)."""
        return self.mode is not None and (trainer.state.global_step + 1) % trainer.log_every_n_steps == 0

    def record(self, optimizer: torch.optim.Optimizer, clipped: torch.Tensor | None) -> None:
        """The norms of `optimizer`'s gradients now (before clipping); `clipped`: the total
        clipping computed, when it did."""
        groups = [[p.grad for p in group["params"] if p.grad is not None] for group in optimizer.param_groups]
        total = clipped if clipped is not None else _norm([g for grads in groups for g in grads])
        if total is not None:
            self._norms["train/grad_norm"] = total
        if self.mode == "groups":
            for i, (group, grads) in enumerate(zip(optimizer.param_groups, groups)):
                norm = _norm(grads)
                if norm is not None:
                    self._norms[f"train/grad_norm/{group.get('name') or f'pg{i + 1}'}"] = norm

    def read(self) -> dict[str, float]:
        """The recorded norms as floats (once), for the step's log row."""
        norms, self._norms = self._norms, {}
        return {key: float(_full(value)) for key, value in norms.items()}


def _norm(grads: list[torch.Tensor]) -> torch.Tensor | None:
    return torch.nn.utils.get_total_norm(grads) if grads else None


def _full(value: torch.Tensor) -> torch.Tensor:
    """A DTensor's (FSDP2) norm as a plain tensor: the reduction over its shards."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value
