"""Where a run's time goes: `Trainer(profiler="simple" | "advanced" | "pytorch")`.

    simple    wall time of every step, hook and data fetch the loops run: calls, mean, total, share
    advanced  Python's cProfile over the whole stage: the 30 functions with the most cumulative time
    pytorch   torch.profiler over the first batches (operators, CPU and CUDA time); a table, and a
              Chrome trace in <default_root_dir>/profiler/ (open it in chrome://tracing or Perfetto)

Each report is printed (rank 0) when its stage (fit, validate, test, predict) ends. Without a
profiler the loops run the bare functions: `wrap` is only called when one is set.
"""
from __future__ import annotations

import cProfile
import io
import os
import pstats
import time
from collections import defaultdict
from typing import Any, Callable, Iterable, Iterator, Protocol

from trainkit.errors import ConfigError


PROFILERS = ("simple", "advanced", "pytorch")


class Profiler(Protocol):
    def start(self, stage: str, root_dir: str, rank: int) -> None: ...
    def wrap(self, action: str, fn: Callable) -> Callable: ...
    def iterate(self, action: str, batches: Iterable) -> Iterator: ...
    def stop(self) -> str: ...


def make_profiler(value: Any) -> Profiler | None:
    if value is None or value is False:
        return None
    if isinstance(value, str):
        if value.lower() not in PROFILERS:
            raise ConfigError(f"profiler={value!r} is not one of: {', '.join(PROFILERS)} (or null)")
        return {"simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler}[value.lower()]()
    if all(callable(getattr(value, name, None)) for name in ("start", "wrap", "iterate", "stop")):
        return value
    raise ConfigError(f"profiler={value!r}: pass 'simple', 'advanced', 'pytorch', or an object with "
                      "start/wrap/iterate/stop (trainkit.profiler.Profiler)")


class SimpleProfiler:
    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def start(self, stage: str, root_dir: str, rank: int) -> None:
        self.stage, self.totals, self.calls = stage, defaultdict(float), defaultdict(int)
        self._began = time.perf_counter()

    def wrap(self, action: str, fn: Callable) -> Callable:
        totals, calls, clock = self.totals, self.calls, time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[action] += clock() - began
                calls[action] += 1

        return timed

    def iterate(self, action: str, batches: Iterable) -> Iterator:
        it = iter(batches)
        fetch = self.wrap(action, next)
        while True:
            try:
                yield fetch(it)
            except StopIteration:
                return

    def stop(self) -> str:
        wall = time.perf_counter() - self._began
        width = max([len(a) for a in self.totals] + [6])
        lines = [f"{self.stage.upper()} Profiler Report (wall time {wall:.3f} s)",
                 f"{'Action':<{width}}  {'Mean (s)':>10}  {'Calls':>7}  {'Total (s)':>10}  {'%':>6}"]
        for action, total in sorted(self.totals.items(), key=lambda kv: -kv[1]):
            n = self.calls[action]
            lines.append(f"{action:<{width}}  {total / n:>10.6f}  {n:>7d}  {total:>10.4f}  {100 * total / wall:>6.2f}")
        return "\n".join(lines)


class AdvancedProfiler:
    """cProfile over the stage (one profile: cProfile cannot nest one per action)."""

    def start(self, stage: str, root_dir: str, rank: int) -> None:
        self.stage = stage
        self._profile = cProfile.Profile()
        self._profile.enable()

    def wrap(self, action: str, fn: Callable) -> Callable:
        return fn  # cProfile sees every call already

    def iterate(self, action: str, batches: Iterable) -> Iterator:
        return iter(batches)

    def stop(self) -> str:
        self._profile.disable()
        out = io.StringIO()
        pstats.Stats(self._profile, stream=out).sort_stats("cumulative").print_stats(30)
        return f"{self.stage.upper()} Profiler Report (cProfile, by cumulative time)\n{out.getvalue()}"


class PyTorchProfiler:
    """torch.profiler over the stage's first `batches` batches, then off (a trace stays small)."""

    def __init__(self, batches: int = 5) -> None:
        self.batches = batches

    def start(self, stage: str, root_dir: str, rank: int) -> None:
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.stage = stage
        self.path = os.path.join(root_dir, "profiler", f"{stage}-rank{rank}-trace.json")
        self._seen = 0
        self._profile = torch.profiler.profile(activities=activities)
        self._profile.__enter__()
        self._active = True
        self._record = torch.profiler.record_function

    def wrap(self, action: str, fn: Callable) -> Callable:
        record = self._record

        def recorded(*args: Any, **kwargs: Any) -> Any:
            with record(action):
                return fn(*args, **kwargs)

        return recorded

    def iterate(self, action: str, batches: Iterable) -> Iterator:
        for batch in batches:
            yield batch
            self._seen += 1
            if self._seen >= self.batches:
                self._finish()

    def _finish(self) -> None:
        if self._active:
            self._active = False
            self._profile.__exit__(None, None, None)

    def stop(self) -> str:
        self._finish()
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._profile.export_chrome_trace(self.path)
        table = self._profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        return f"{self.stage.upper()} Profiler Report (torch.profiler, first {self.batches} batches; trace: {self.path})\n{table}"
