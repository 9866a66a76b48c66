"""What `TrainModule.log()` records, kept as device tensors until someone reads it.

Lightning's semantics: in the training batch loop a value is logged per step by default, anywhere
else (epoch hooks, evaluation) per epoch; both on → `name_step` at each step and `name_epoch` at
the epoch end. Epoch values are reduced with `reduce_fx` ("mean" weighted by `batch_size`, "sum",
"max", "min"); a torchmetrics `Metric` (recognised by its methods; torchmetrics is not imported)
is `compute()`d at the epoch end and `reset()`.

Nothing is copied to the host until a logger, the progress bar or a callback asks — at most every
`log_every_n_steps`, and at epoch ends — so logging never forces a device sync inside the step.
Under several processes every read is one collective that all ranks make at the same point, and
every rank gets the same numbers (the cross-rank reduction of each value): that read is already a
sync point, so `sync_dist` costs nothing extra and is always in effect.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

REDUCE_FX = ("mean", "sum", "max", "min")
_TORCH_FX = {torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min",
             torch.amax: "max", torch.amin: "min"}


def is_metric_object(value: Any) -> bool:
    """A torchmetrics.Metric (or anything shaped like one) without importing torchmetrics."""
    return not isinstance(value, torch.Tensor) and all(
        callable(getattr(value, m, None)) for m in ("update", "compute", "reset"))


@dataclass
class _EpochValue:
    total: Any  # tensor or float: the weighted sum, the sum, the max or the min so far
    weight: float  # the weights summed (batch sizes), for "mean"
    fx: str
    logger: bool
    metric: Any = None  # a torchmetrics.Metric: computed at the epoch end instead


class MetricStore:
    def __init__(self) -> None:
        self.training = True  # the Trainer flips this: training and evaluation keep separate sums
        # True inside the training batch loop: there `log()` defaults to on_step, elsewhere on_epoch.
        self.step_default = False
        # Set by the Trainer under several processes: sums a tensor over all of them.
        self.reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.world_size = 1
        self.rank = 0
        # Set by the evaluation loop while it runs loader i of several: names get Lightning's
        # "/dataloader_idx_i" suffix, so each loader's metrics stay apart.
        self.dataloader_idx: int | None = None
        self.step_values: dict[str, Any] = {}
        self._step_to_logger: dict[str, bool] = {}
        # Training and evaluation keep separate epoch sums: a validation inside a training
        # epoch must not flush (or mix into) the training epoch's means.
        self._epoch: dict[bool, dict[str, _EpochValue]] = {True: {}, False: {}}
        self.prog_bar: set[str] = set()
        # Latest value of every metric (0-d float64 tensors, as Lightning gives tensors), for
        # callbacks (checkpoint monitor, early stopping) and the final report.
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.logged_metrics: dict[str, torch.Tensor] = {}  # what was last sent to the loggers

    def log(
        self,
        name: str,
        value: Any,
        *,
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Callable = "mean",
        batch_size: int | None = None,
        add_dataloader_idx: bool = True,
    ) -> None:
        if self.dataloader_idx is not None and add_dataloader_idx:
            name = f"{name}/dataloader_idx_{self.dataloader_idx}"
        if on_step is None:
            on_step = self.step_default
        if on_epoch is None:
            on_epoch = not self.step_default
        fx = _TORCH_FX.get(reduce_fx, reduce_fx) if callable(reduce_fx) else reduce_fx
        if fx not in REDUCE_FX:
            raise ValueError(f"self.log({name!r}, reduce_fx={reduce_fx!r}): use one of {', '.join(REDUCE_FX)}")
        metric = value if is_metric_object(value) else None
        if metric is not None:
            # The batch's own value is what the metric's forward() returned, if it was called so.
            value = getattr(metric, "_forward_cache", None) if on_step else None
            if on_step and value is None:
                value = metric.compute()
        if value is not None:
            value = _scalar(name, value)
        step_name, epoch_name = (f"{name}_step", f"{name}_epoch") if on_step and on_epoch else (name, name)
        to_logger = logger is not False
        if prog_bar:
            self.prog_bar.add(step_name if on_step else epoch_name)
        if on_step:
            self.step_values[step_name] = value
            self._step_to_logger[step_name] = to_logger
        if on_epoch:
            sums = self._epoch[self.training]
            if metric is not None:
                sums[epoch_name] = _EpochValue(None, 0.0, fx, to_logger, metric)
                return
            weight = float(batch_size or 1)
            v = value.double() if isinstance(value, torch.Tensor) else value
            old = sums.get(epoch_name)
            if old is None:
                sums[epoch_name] = _EpochValue(v * weight if fx == "mean" else v, weight, fx, to_logger)
            elif fx == "mean":
                old.total, old.weight = old.total + v * weight, old.weight + weight
            elif fx == "sum":
                old.total = old.total + v
            else:
                old.total = _extreme(old.total, v, fx)

    def read_step(self) -> dict[str, float]:
        """Floats of the step values logged since the last read (syncs the device once), for the
        loggers; all of them go to `callback_metrics`."""
        names = sorted(self.step_values)
        if not names:
            return {}
        packed = _pack([self.step_values[n] for n in names])
        if self.reduce_sum is not None:
            packed = self.reduce_sum(packed) / self.world_size
        values = dict(zip(names, packed.tolist()))
        self.step_values.clear()
        self._publish(values)
        return {n: v for n, v in values.items() if self._step_to_logger.get(n, True)}

    def read_epoch(self) -> dict[str, float]:
        """The epoch values of the current mode (training or evaluation) since the last read;
        resets them (and the Metric objects among them). Returns those meant for the loggers."""
        sums = self._epoch[self.training]
        names = sorted(sums)
        if not names:
            return {}
        values: dict[str, float] = {}
        plain = [n for n in names if sums[n].metric is None]
        for fx in REDUCE_FX:
            group = [n for n in plain if sums[n].fx == fx]
            if group:
                values.update(zip(group, self._reduce(fx, [sums[n] for n in group])))
        for n in names:
            metric = sums[n].metric
            if metric is not None:  # torchmetrics syncs its own state across processes
                values[n] = float(metric.compute())
                metric.reset()
        to_logger = {n for n in names if sums[n].logger}
        sums.clear()
        self._publish(values)
        return {n: v for n, v in values.items() if n in to_logger}

    def _reduce(self, fx: str, entries: list[_EpochValue]) -> list[float]:
        totals = _pack([e.total for e in entries])
        weights = torch.tensor([e.weight for e in entries], dtype=torch.float64)
        if self.reduce_sum is not None:
            if fx in ("mean", "sum"):
                both = self.reduce_sum(torch.cat([totals, weights]))
                totals, weights = both[: len(entries)], both[len(entries):]
            else:  # each rank fills its own row; the sum is then every rank's values
                rows = torch.zeros(self.world_size, len(entries), dtype=torch.float64)
                rows[self.rank] = totals
                gathered = self.reduce_sum(rows)
                totals = gathered.amax(0) if fx == "max" else gathered.amin(0)
        return (totals / weights).tolist() if fx == "mean" else totals.tolist()

    def _publish(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.callback_metrics[name] = torch.tensor(value, dtype=torch.float64)
            # Lightning also keeps the plain name: the latest of `name_step` / `name_epoch`.
            for suffix in ("_step", "_epoch"):
                if name.endswith(suffix):
                    self.callback_metrics[name[: -len(suffix)]] = self.callback_metrics[name]

    def progress_bar_values(self) -> dict[str, float]:
        """Latest floats of the metrics logged with prog_bar=True, without clearing anything."""
        values = {}
        for name in self.prog_bar:
            if name in self.step_values:
                values[name] = float(self.step_values[name])
            elif name in self.callback_metrics:
                values[name] = float(self.callback_metrics[name])
        return values

    def state_dict(self) -> dict[str, list[Any]]:
        """The training epoch's running values (a resumed epoch reports the same means).
        Metric objects keep their own state (a module's attribute): not saved here."""
        return {name: [float(e.total), e.weight, e.fx, e.logger]
                for name, e in self._epoch[True].items() if e.metric is None}

    def load_state_dict(self, state: dict[str, list[Any]]) -> None:
        self._epoch[True] = {}
        for name, saved in state.items():
            total, weight = saved[0], saved[1]
            fx, logger = (saved[2], saved[3]) if len(saved) > 2 else ("mean", True)
            self._epoch[True][name] = _EpochValue(torch.tensor(total, dtype=torch.float64), weight, fx, logger)


def _scalar(name: str, value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.numel() != 1:
            raise ValueError(f"self.log({name!r}, ...) needs a scalar, got a tensor of shape {tuple(value.shape)}")
        return value.reshape(())
    return float(value)  # a python number stays one: no tensor to make


def _pack(values: list[Any]) -> torch.Tensor:
    """One float64 CPU vector of tensors and floats: a single copy from the device."""
    device = next((v.device for v in values if isinstance(v, torch.Tensor)), torch.device("cpu"))
    return torch.stack([_as_tensor(v).to(device) for v in values]).cpu()


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64)
    return torch.tensor(float(value), dtype=torch.float64)


def _extreme(a: Any, b: Any, fx: str) -> Any:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a, b = _as_tensor(a), _as_tensor(b)
        if a.device != b.device:
            b = b.to(a.device)
        return torch.maximum(a, b) if fx == "max" else torch.minimum(a, b)
    return max(a, b) if fx == "max" else min(a, b)
