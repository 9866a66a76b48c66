"""Where a run's time goes: `Trainer(profiler="simple" | "advanced" | "pytorch")`.

    simple    wall time of every step, hook (callbacks' and the module's) and data fetch the loops
              run: calls, mean, total, share
    advanced  Python's cProfile over the whole stage: the 30 functions with the most cumulative time
    pytorch   torch.profiler over a window of batches (skip `wait`, warm up `warmup`, record
              `active`): operators with CPU and CUDA time, a table, and a trace that TensorBoard's
              profiler view (`tensorboard --logdir <run_dir>/profiler`) and Perfetto open;
              `memory_snapshot=True` on a GPU also dumps the CUDA allocator's history over the
              stage (open it at https://pytorch.org/memory_viz)

Options as a dict in the config (`trainer.profiler={name: pytorch, wait: 1, warmup: 1, active: 3}`)
or the class itself (`Trainer(profiler=PyTorchProfiler(active=5))`). Each report is printed (rank 0)
when its stage (fit, validate, test, predict) ends and saved, with the traces, in
<default_root_dir>/profiler/ (one file per stage and rank). Without a profiler the loops run the
bare functions: `wrap` is only called when one is set.
"""
from __future__ import annotations

import cProfile
import inspect
import io
import logging
import os
import pstats
import time
from collections import defaultdict
from typing import Any, Callable, Iterable, Iterator, Protocol

from trainkit.errors import ConfigError

log = logging.getLogger("trainkit")


class Profiler(Protocol):
    def start(self, stage: str, root_dir: str, rank: int) -> None: ...
    def wrap(self, action: str, fn: Callable) -> Callable: ...
    def iterate(self, action: str, batches: Iterable) -> Iterator: ...
    def stop(self) -> str: ...


def _classes() -> dict[str, type]:
    return {"simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler}


PROFILERS = ("simple", "advanced", "pytorch")


def check_profiler(value: Any) -> None:
    """Refuse a profiler setting make_profiler could not build (torch-free: the CLI checks configs)."""
    if value is None or value is False or all(callable(getattr(value, m, None)) for m in ("start", "wrap", "iterate", "stop")):
        return
    name, options = (value, {}) if isinstance(value, str) else \
        (value.get("name"), {k: v for k, v in value.items() if k != "name"}) if isinstance(value, dict) else (None, None)
    if options is None:
        raise ConfigError(f"profiler={value!r}: pass 'simple', 'advanced', 'pytorch', a dict such as {{name: pytorch, "
                          "active: 5}, or an object with start/wrap/iterate/stop (trainkit.profiler.Profiler)")
    if not isinstance(name, str) or name.lower() not in PROFILERS:
        raise ConfigError(f"profiler={value!r}: the name is not one of: {', '.join(PROFILERS)} (or null)")
    known = [p for p in inspect.signature(_classes()[name.lower()]).parameters]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"profiler={value!r}: {name} takes no {', '.join(unknown)}; it takes: "
                          f"{', '.join(known) or 'no options'}")


def make_profiler(value: Any) -> Profiler | None:
    check_profiler(value)
    if value is None or value is False:
        return None
    if isinstance(value, str):
        return _classes()[value.lower()]()
    if isinstance(value, dict):
        return _classes()[value["name"].lower()](**{k: v for k, v in value.items() if k != "name"})
    return value


def _save(report: str, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(report + "\n")


class SimpleProfiler:
    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def start(self, stage: str, root_dir: str, rank: int) -> None:
        self.stage, self.totals, self.calls = stage, defaultdict(float), defaultdict(int)
        self.path = os.path.join(root_dir, "profiler", f"{stage}-rank{rank}-simple.txt")
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
        report = "\n".join(lines)
        _save(report, self.path)
        return f"{report}\n(saved: {self.path})"


class AdvancedProfiler:
    """cProfile over the stage (one profile: cProfile cannot nest one per action)."""

    def start(self, stage: str, root_dir: str, rank: int) -> None:
        self.stage = stage
        self.path = os.path.join(root_dir, "profiler", f"{stage}-rank{rank}-advanced.txt")
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
        report = f"{self.stage.upper()} Profiler Report (cProfile, by cumulative time)\n{out.getvalue()}"
        _save(report, self.path)
        return f"{report}\n(saved: {self.path})"


class PyTorchProfiler:
    """torch.profiler over one window of the stage's batches (the first `wait` skipped, `warmup`
    traced but dropped, `active` recorded), then off: the trace stays small and the rest of the
    run pays nothing."""

    def __init__(self, wait: int = 1, warmup: int = 1, active: int = 3, memory_snapshot: bool = False,
                 record_shapes: bool = False) -> None:
        if wait < 0 or warmup < 0 or active < 1:
            raise ConfigError(f"profiler: wait={wait}, warmup={warmup}, active={active}: need wait >= 0, "
                              "warmup >= 0, active >= 1 (batches)")
        self.wait, self.warmup, self.active = wait, warmup, active
        self.memory_snapshot, self.record_shapes = memory_snapshot, record_shapes

    def start(self, stage: str, root_dir: str, rank: int) -> None:
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU]
        cuda = torch.cuda.is_available()
        if cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.stage, self.dir = stage, os.path.join(root_dir, "profiler")
        self._memory_path = None
        if self.memory_snapshot:
            if cuda:
                self._memory_path = os.path.join(self.dir, f"{stage}-rank{rank}-memory.pickle")
                torch.cuda.memory._record_memory_history(max_entries=100_000)
            else:
                log.warning("profiler: memory_snapshot records the CUDA allocator; no GPU here, none is written")
        self._window = self.wait + self.warmup + self.active
        self._seen = 0
        self._profile = torch.profiler.profile(
            activities=activities, record_shapes=self.record_shapes, profile_memory=self.memory_snapshot,
            schedule=torch.profiler.schedule(wait=self.wait, warmup=self.warmup, active=self.active, repeat=1),
            # <worker>.<time>.pt.trace.json: the names TensorBoard's profiler view looks for
            on_trace_ready=torch.profiler.tensorboard_trace_handler(self.dir, worker_name=f"{stage}-rank{rank}"),
        )
        self._profile.__enter__()
        self._active = True
        self._record = torch.profiler.record_function

    def wrap(self, action: str, fn: Callable) -> Callable:
        record = self._record

        def recorded(*args: Any, **kwargs: Any) -> Any:
            if not self._active:
                return fn(*args, **kwargs)
            with record(action):
                return fn(*args, **kwargs)

        return recorded

    def iterate(self, action: str, batches: Iterable) -> Iterator:
        for batch in batches:
            yield batch
            if self._active:
                self._seen += 1
                self._profile.step()
                if self._seen >= self._window:
                    self._finish()

    def _finish(self) -> None:
        if self._active:
            self._active = False
            self._profile.__exit__(None, None, None)  # a window cut short (fewer batches) is written here

    def stop(self) -> str:
        self._finish()
        lines = [f"{self.stage.upper()} Profiler Report (torch.profiler over batches {self.wait + self.warmup + 1}"
                 f"-{self._window}; traces in {self.dir})"]
        if self._memory_path is not None:
            import torch

            torch.cuda.memory._dump_snapshot(self._memory_path)
            torch.cuda.memory._record_memory_history(enabled=None)
            lines.append(f"CUDA memory snapshot: {self._memory_path} (open it at https://pytorch.org/memory_viz)")
        try:
            lines.append(self._profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        except (AssertionError, RuntimeError):  # the stage ended before the window recorded anything
            lines.append(f"(nothing recorded: the stage ran {self._seen} of the window's {self._window} batches)")
        return "\n".join(lines)
