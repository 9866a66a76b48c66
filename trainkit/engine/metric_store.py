"""What `TrainModule.log()` records, kept as device tensors until someone reads it.

Step values are the latest logged tensor; epoch values are a running (sum, weight) pair. Floats
are made only when a logger, the progress bar or a callback asks — at most every
`log_every_n_steps` — so logging never forces a device sync inside the step.
"""
from __future__ import annotations

from typing import Callable

import torch


class MetricStore:
    def __init__(self) -> None:
        self.training = True  # the Trainer flips this: it decides the on_step/on_epoch defaults
        # Set by the Trainer under several processes: sums a tensor over all of them. Every read
        # is then a collective that all ranks make at the same point, and every rank gets the
        # same numbers (the mean over ranks for step values, the global weighted mean for epochs).
        self.reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.world_size = 1
        # Set by the evaluation loop while it runs loader i of several: names get Lightning's
        # "/dataloader_idx_i" suffix, so each loader's metrics stay apart.
        self.dataloader_idx: int | None = None
        self.step_values: dict[str, torch.Tensor | float] = {}
        # Training and evaluation keep separate epoch sums: a validation inside a training
        # epoch must not flush (or mix into) the training epoch's means.
        self._epoch_sums: dict[bool, dict[str, tuple[torch.Tensor, float]]] = {True: {}, False: {}}
        self.prog_bar: set[str] = set()
        # Latest float of every metric, for callbacks (checkpoint monitor, early stopping) and
        # for the final report.
        self.callback_metrics: dict[str, float] = {}

    def log(
        self,
        name: str,
        value: torch.Tensor | float,
        *,
        prog_bar: bool = False,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        batch_size: int | None = None,
        add_dataloader_idx: bool = True,
    ) -> None:
        if self.dataloader_idx is not None and add_dataloader_idx:
            name = f"{name}/dataloader_idx_{self.dataloader_idx}"
        if isinstance(value, torch.Tensor):
            value = value.detach()
            if value.numel() != 1:
                raise ValueError(f"self.log({name!r}, ...) needs a scalar, got a tensor of shape {tuple(value.shape)}")
        else:
            value = float(value)  # a python number stays one: no tensor to make
        if on_step is None:
            on_step = self.training
        if on_epoch is None:
            on_epoch = not self.training
        if prog_bar and on_step:  # the bar shows step values; epoch values get their own line
            self.prog_bar.add(name)
        if on_step:
            self.step_values[name] = value
        if on_epoch:
            weight = float(batch_size or 1)
            sums = self._epoch_sums[self.training]
            total, count = sums.get(name, (0.0, 0.0))
            sums[name] = (total + (value.double() if isinstance(value, torch.Tensor) else value) * weight, count + weight)

    def read_step(self) -> dict[str, float]:
        """Floats of the step values logged since the last read (syncs the device once)."""
        names = sorted(self.step_values)
        if self.reduce_sum is not None and names:
            packed = torch.tensor([float(self.step_values[n]) for n in names], dtype=torch.float64)
            values = dict(zip(names, (self.reduce_sum(packed) / self.world_size).tolist()))
        else:
            values = {name: float(self.step_values[name]) for name in names}
        self.step_values.clear()
        self.callback_metrics.update(values)
        return values

    def read_epoch(self) -> dict[str, float]:
        """Epoch means of what the current mode (training or evaluation) logged with on_epoch
        since the last read; resets them."""
        sums = self._epoch_sums[self.training]
        names = sorted(sums)
        totals = [float(sums[n][0]) for n in names]
        counts = [float(sums[n][1]) for n in names]
        if self.reduce_sum is not None and names:
            packed = self.reduce_sum(torch.tensor(totals + counts, dtype=torch.float64)).tolist()
            totals, counts = packed[: len(names)], packed[len(names) :]
        values = {name: total / count for name, total, count in zip(names, totals, counts)}
        sums.clear()
        self.callback_metrics.update(values)
        return values

    def progress_bar_values(self) -> dict[str, float]:
        """Latest floats of the step metrics logged with prog_bar=True, without clearing anything."""
        values = {}
        for name in self.prog_bar:
            if name in self.step_values:
                values[name] = float(self.step_values[name])
            elif name in self.callback_metrics:
                values[name] = self.callback_metrics[name]
        return values

    def state_dict(self) -> dict[str, list[float]]:
        """The training epoch's running sums (a resumed epoch reports the same means)."""
        return {name: [float(total), count] for name, (total, count) in self._epoch_sums[True].items()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self._epoch_sums[True] = {name: (torch.tensor(total, dtype=torch.float64), count) for name, (total, count) in state.items()}
