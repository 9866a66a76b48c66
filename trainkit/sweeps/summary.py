"""The table of a sweep: one row per trial, printed and saved as `<sweep dir>/sweep_summary.csv`.

    trainkit sweep-summary multirun/2026-11-21_10-00-00_ab12cd      # also while it runs, or after a crash

Everything comes from the files of each trial's run directory, so the table can be rebuilt at
any time: the overrides from `.hydra/overrides.yaml`, the status, error and best value from
`results.json`; for a trial without one (still running, or killed) the best value so far from
`metrics.csv` and the metric from `config.yaml`. The printed table shows the overrides that
differ between trials (those every trial shares once, above it); the CSV has all of them.
Status: completed, pruned (stopped by Optuna), failed (with its error), interrupted (stopped by a
signal), unfinished (running, or killed without a word).
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainkit.sweeps.results import read_results, sweep_metric

SUMMARY = "sweep_summary.csv"
COLUMNS = ["trial", "status", "overrides", "metric", "mode", "best", "step", "run_dir", "error"]
_HIDDEN = ("sweep.optuna_",)  # overrides the Optuna sweeper adds for its own bookkeeping

# The sweep directory of the multirun this process ran (set by SweepCallback, read by the CLI).
_current: dict[str, str] = {}


@dataclass
class TrialRow:
    trial: str
    status: str
    overrides: list[str]
    metric: str | None
    mode: str
    best: float | None
    step: int | None
    run_dir: str
    error: str = ""

    def as_csv(self) -> dict[str, Any]:
        return {"trial": self.trial, "status": self.status, "overrides": " ".join(self.overrides),
                "metric": self.metric or "", "mode": self.mode, "best": "" if self.best is None else repr(self.best),
                "step": "" if self.step is None else self.step, "run_dir": self.run_dir, "error": self.error}


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra-core < 1.1
    _HydraCallback = object


class SweepCallback(_HydraCallback):
    """Hydra callback (fit.yaml's hydra.callbacks): tells the CLI which sweep directory a
    multirun wrote, whichever sweeper and launcher ran its trials."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        _current["dir"] = str(Path(str(config.hydra.sweep.dir)).absolute())


def finished_sweep() -> str | None:
    return _current.pop("dir", None)


def trial_dirs(sweep_dir: str | Path) -> list[Path]:
    """Run directories under a sweep directory: those Hydra made (`.hydra/`) or trainkit wrote."""
    found = []
    for root, dirs, _ in os.walk(sweep_dir):
        here = Path(root)
        if here != Path(sweep_dir) and ((here / ".hydra").is_dir() or (here / "config.yaml").is_file()):
            found.append(here)
            dirs.clear()
            continue
        dirs[:] = [d for d in dirs if d not in ("checkpoints", ".hydra")]
    return sorted(found, key=lambda p: [int(s) if s.isdigit() else s for s in p.relative_to(sweep_dir).parts])


def read_trial(run_dir: Path, sweep_dir: str | Path) -> TrialRow:
    record = read_results(str(run_dir)) or {}
    overrides = [o for o in _load_list(run_dir / ".hydra" / "overrides.yaml") if not o.startswith(_HIDDEN)]
    cfg = _load(run_dir / "config.yaml")
    best_record = record.get("best") or {}
    metric, mode = (best_record["metric"], best_record["mode"]) if best_record else (
        sweep_metric(cfg) if cfg is not None else (None, "max"))
    best, step = best_record.get("value"), best_record.get("step")
    if best is None and metric:
        best, step = _best_in_csv(run_dir / "metrics.csv", metric, mode)
    status, error = record.get("status"), str(record.get("error") or "")
    if status is None:
        error = _error_in_log(run_dir / "trainkit.log")
        status = "failed" if error else "unfinished"
    return TrialRow(str(run_dir.relative_to(sweep_dir)), status, overrides, metric, mode, best, step,
                    str(run_dir.absolute()), error)


def summarize(sweep_dir: str | Path, print_table: bool = True) -> list[TrialRow]:
    """Read every trial, write `sweep_summary.csv` into the sweep directory, print the table."""
    rows = [read_trial(d, sweep_dir) for d in trial_dirs(sweep_dir)]
    common = _common(rows)
    tmp = Path(sweep_dir) / f"{SUMMARY}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(row.as_csv() for row in rows)  # all its overrides: a row reruns its trial
    os.replace(tmp, Path(sweep_dir) / SUMMARY)
    if print_table:
        _print(rows, common, sweep_dir)
    return rows


def read_summary(sweep_dir: str | Path) -> list[dict[str, str]]:
    with open(Path(sweep_dir) / SUMMARY, newline="") as f:
        return list(csv.DictReader(f))


def best_row(rows: list[TrialRow]) -> TrialRow | None:
    scored = [r for r in rows if r.best is not None and math.isfinite(r.best)]
    if not scored:
        return None
    return (max if scored[0].mode == "max" else min)(scored, key=lambda r: r.best)


def _print(rows: list[TrialRow], common: list[str], sweep_dir: str | Path) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from rich import get_console

    console = get_console() if get_console().is_terminal else Console(width=200, highlight=False)
    metrics = {(r.metric, r.mode) for r in rows if r.metric}
    metric, mode = next(iter(metrics)) if len(metrics) == 1 else ("metric", "")
    top = best_row(rows)
    table = Table(title=f"sweep {sweep_dir}: {len(rows)} trials", title_justify="left")
    table.add_column("trial", justify="right")
    table.add_column("overrides", overflow="fold")
    table.add_column(f"best {metric} ({mode})" if mode else "best", justify="right")
    table.add_column("step", justify="right")
    table.add_column("status")
    table.add_column("run directory", overflow="fold")
    if any(r.error for r in rows):
        table.add_column("error", overflow="fold")
    for r in rows:
        best = "" if r.best is None else f"{r.best:.4f}"
        if r is top:
            best = f"[bold green]{best}[/] *"
        status = {"failed": "[red]failed[/]", "pruned": "[yellow]pruned[/]"}.get(r.status, r.status)
        cells = [escape(r.trial), escape(" ".join(_varying(r, common))), best, "" if r.step is None else str(r.step),
                 status, escape(r.run_dir)]
        if any(x.error for x in rows):
            cells.append(escape(r.error[:300]))
        table.add_row(*cells)
    if common:
        console.print(f"overrides of every trial: {' '.join(common)}", markup=False, highlight=False, soft_wrap=True)
    console.print(table)
    if top is not None:
        console.print(f"best: trial {top.trial}, {top.metric}={top.best:.4f} at step {top.step}: "
                      f"{' '.join(_varying(top, common)) or '(no overrides)'}", markup=False, highlight=False,
                      soft_wrap=True)
    console.print(f"summary: {Path(sweep_dir).absolute() / SUMMARY}", markup=False, highlight=False, soft_wrap=True)


def _common(rows: list[TrialRow]) -> list[str]:
    if len(rows) < 2:
        return []
    shared = set(rows[0].overrides).intersection(*(r.overrides for r in rows[1:]))
    return [o for o in rows[0].overrides if o in shared]


def _varying(row: TrialRow, common: list[str]) -> list[str]:
    return [o for o in row.overrides if o not in common]


def _load(path: Path) -> Any:
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    try:
        return OmegaConf.load(path)
    except Exception:  # noqa: BLE001 - a half-written file of a running trial
        return None


def _load_list(path: Path) -> list[str]:
    loaded = _load(path)
    return [str(x) for x in loaded] if loaded is not None else []


def _best_in_csv(path: Path, metric: str, mode: str) -> tuple[float | None, int | None]:
    best, step = None, None
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                raw = row.get(metric)
                if not raw:
                    continue
                value = float(raw)
                if math.isfinite(value) and (best is None or (value > best if mode == "max" else value < best)):
                    best, step = value, int(row["step"])
    except (OSError, ValueError, KeyError):
        pass
    return best, step


def _error_in_log(path: Path) -> str:
    """The last `error: ...` line the CLI wrote into a run's trainkit.log."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    return errors[-1] if errors else ""
