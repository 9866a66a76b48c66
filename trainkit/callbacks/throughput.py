"""How fast training runs and how much memory it holds, logged every `log_every_n_steps`.

    throughput/samples_per_s   samples trained per second, all processes together
    throughput/tokens_per_s    tokens per second, all processes (when the module counts tokens)
    throughput/steps_per_s     optimizer steps per second
    throughput/data_wait       the share of the time the loop waited for the next batch (mean over processes)
    throughput/flops_per_s     achieved FLOP/s, all processes (the FLOPs of one batch x batches / time)
    throughput/mfu             flops_per_s / (peak FLOP/s of a device x processes), when the peak is known
    throughput/device/...      the same per process (this rank's), under several processes
    memory/rank<r>/max_allocated_gb, max_reserved_gb   CUDA peaks of each rank since the start
    memory/rank<r>/max_rss_gb  the peak resident memory of each rank's process, on CPU

No device sync is added: the time is the wall time between two log steps, where the loop reads the
logged values from the device anyway (validation time left out), so what the device still had
queued at the window's start is counted where it ran. The first window starts at the end of the
first step (its compile, warm-up and FLOP count are not throughput). The counts of all processes
are summed with one small all-reduce at each log step.

Samples: `batch_size_fn(batch)` (default: the first dimension of the first tensor in the batch).
Tokens: `length_fn(batch)`, else the module's `tokens_in_batch(batch)` when it defines one (for a
padded batch, e.g. `batch["mask"].sum()`); either may return an int or a tensor (summed on the
device, read at log steps). FLOPs: torch.utils.flop_counter counts the operators (matmuls,
convolutions, attention) of the first training batch's forward and backward once. Peak: `peak_flops`
(FLOP/s of one device), else the table in trainkit/peak_flops.py for the GPU and precision.
`eta` (the progress bar's) is the steps left at the last window's rate.
"""
from __future__ import annotations

import logging
import math
import resource
import sys
import time
from typing import Any, Callable, Iterable, Iterator

import torch

from trainkit.engine.callback import Callback
from trainkit.peak_flops import device_peak

log = logging.getLogger("trainkit")


def first_dim(batch: Any) -> int | None:
    """The size of the first dimension of the first tensor in a batch (dicts, lists, tuples)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else None
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        found = first_dim(item)
        if found is not None:
            return found
    return None


class ThroughputMonitor(Callback):
    def __init__(self, batch_size_fn: Callable[[Any], int | None] | None = None,
                 length_fn: Callable[[Any], int | torch.Tensor] | None = None,
                 peak_flops: float | None = None) -> None:
        self.batch_size_fn = batch_size_fn or first_dim
        self.length_fn = length_fn
        self.peak_flops = peak_flops
        self.flops_per_batch: float | None = None  # counted once, on the first training batch of a fit
        self.latest: dict[str, float] = {}  # the last window's values (the progress bar shows some)
        self._clock = time.perf_counter
        self._window_step: int | None = None  # the step the open window started at (None: none open)
        self._counting: Any = None  # the FlopCounterMode while it counts

    # -- what the loop calls ------------------------------------------------------------------
    def timed(self, batches: Iterable) -> Iterator:
        """The training batches, the time spent waiting for each added up."""
        it, clock = iter(batches), self._clock
        while True:
            began = clock()
            try:
                item = next(it)
            except StopIteration:
                return
            self._wait += clock() - began
            yield item

    # -- hooks --------------------------------------------------------------------------------
    def on_fit_start(self, trainer, module) -> None:
        self._tokens_of = self.length_fn or getattr(module, "tokens_in_batch", None)
        self._peak = self.peak_flops or device_peak(trainer.strategy.root_device, trainer.precision.mode)
        self._window_step = None  # the first window opens at the end of the first step
        self.flops_per_batch = None
        self._reset()
        self._last_step = trainer.global_step

    def _reset(self) -> None:
        self._began, self._wait, self._excluded = self._clock(), 0.0, 0.0
        self._batches = self._samples = 0
        self._tokens: Any = 0  # an int, or a device tensor when the module counts with tensors

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.flops_per_batch is None and self._counting is None:
            self._start_counting()
        self._batches += 1
        samples = self.batch_size_fn(batch)
        if samples is not None:
            self._samples += samples
        if self._tokens_of is not None:
            tokens = self._tokens_of(batch)  # a tensor is summed where it is: read at log steps only
            self._tokens = self._tokens + (tokens.detach() if isinstance(tokens, torch.Tensor) else tokens)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self._counting is not None:
            self._stop_counting()
        step, last = trainer.global_step, self._last_step
        if step == last:
            return  # a micro-batch inside an accumulation window
        self._last_step = step
        every = trainer.log_every_n_steps
        if self._window_step is None:  # the first step ends: the first window opens
            self._window_step = step
            self._reset()
        elif step // every != last // every:  # (manual optimization may count several steps a batch)
            self._log_window(trainer, step)

    def on_validation_start(self, trainer, module) -> None:
        if self._counting is not None:  # a validation inside the first step: count training only
            self._stop_counting()
        self._validation_began = self._clock()

    def on_validation_end(self, trainer, module) -> None:
        if self._window_step is not None:  # (the sanity check comes before the first window)
            self._excluded += self._clock() - self._validation_began

    def on_exception(self, trainer, module, exception) -> None:
        if self._counting is not None:
            self._counting.__exit__(None, None, None)
            self._counting = None

    # -- FLOPs --------------------------------------------------------------------------------
    def _start_counting(self) -> None:
        from torch.utils.flop_counter import FlopCounterMode

        self._counting = FlopCounterMode(display=False)
        self._counting.__enter__()

    def _stop_counting(self) -> None:
        counting, self._counting = self._counting, None
        counting.__exit__(None, None, None)
        self.flops_per_batch = float(counting.get_total_flops())

    # -- one window ---------------------------------------------------------------------------
    def _log_window(self, trainer, step: int) -> None:
        elapsed = max(self._clock() - self._began - self._excluded, 1e-9)
        steps = step - self._window_step
        tokens = float(self._tokens) if self._tokens_of is not None else None
        flops = self.flops_per_batch * self._batches / elapsed if self.flops_per_batch else None
        mine = [self._samples / elapsed, (tokens or 0.0) / elapsed, self._wait / elapsed, flops or 0.0]
        world, rank = trainer.world_size, trainer.global_rank
        memory = _memory(trainer.strategy.root_device)
        if world > 1:  # one all-reduce: the rates summed, each rank's memory in its own slots
            slots = [0.0] * (2 * world)
            slots[2 * rank: 2 * rank + 2] = memory
            summed = trainer.strategy.all_reduce_sum(torch.tensor(mine + slots, dtype=torch.float64)).tolist()
            run, memory_of = summed[:4], [summed[4 + 2 * r: 6 + 2 * r] for r in range(world)]
            run[2] /= world  # data wait: the mean share
        else:
            run, memory_of = mine, [memory]
        values = {"throughput/steps_per_s": steps / elapsed, "throughput/data_wait": run[2]}
        if self._samples:
            values["throughput/samples_per_s"] = run[0]
        if tokens is not None:
            values["throughput/tokens_per_s"] = run[1]
        if flops is not None:
            values["throughput/flops_per_s"] = run[3]
            if self._peak:
                values["throughput/mfu"] = run[3] / (self._peak * world)
        if world > 1:
            for key, value in (("samples_per_s", mine[0]), ("tokens_per_s", mine[1]), ("data_wait", mine[2]),
                               ("flops_per_s", mine[3])):
                if f"throughput/{key}" in values:
                    values[f"throughput/device/{key}"] = value
            if flops is not None and self._peak:
                values["throughput/device/mfu"] = mine[3] / self._peak
        names = ("max_allocated_gb", "max_reserved_gb") if trainer.strategy.root_device.type == "cuda" \
            else ("max_rss_gb",)
        for r, pair in enumerate(memory_of):
            for name, value in zip(names, pair):
                values[f"memory/rank{r}/{name}"] = value
        left = trainer.estimated_stepping_batches - step
        values_eta = left / values["throughput/steps_per_s"] if not math.isinf(left) else None
        self.latest = {**values, "eta_s": values_eta} if values_eta is not None else values
        trainer.log_metrics(values)
        self._window_step = step
        self._reset()

    def progress_text(self) -> str:
        """What the progress bar adds: the run's rate and the time left."""
        if not self.latest:
            return ""
        rate = self.latest.get("throughput/samples_per_s")
        text = f"{rate:.4g} samples/s" if rate is not None else f"{self.latest['throughput/steps_per_s']:.3g} steps/s"
        eta = self.latest.get("eta_s")
        if eta is not None:
            text += f" eta {_duration(eta)}"
        return text


def _memory(device: torch.device) -> list[float]:
    """Peak memory of this process in GB: CUDA (allocated, reserved), else (resident set, 0)."""
    if device.type == "cuda":  # host-side counters of the caching allocator: no sync
        return [torch.cuda.max_memory_allocated(device) / 1e9, torch.cuda.max_memory_reserved(device) / 1e9]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return [peak * (1 if sys.platform == "darwin" else 1024) / 1e9, 0.0]


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
