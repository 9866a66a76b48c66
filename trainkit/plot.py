"""`trainkit plot <run_dir> [<run_dir> ...]`: the training and validation curves of metrics.csv as one PNG.

One panel per quantity (`train/loss` and `val/loss` share the panel `loss`: train solid, validation
dashed with dots), one colour per run. Several run folders are overlaid; a sweep folder stands for
its trials, each labelled with the overrides that differ between them. The PNG goes into the first
folder named (`curves.png`, or `--out FILE`) and its path is printed. Needs matplotlib (the `plot`
extra); torch is never imported.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from trainkit.errors import UserError

USAGE = "usage: trainkit plot <run or sweep directory> [<run or sweep directory> ...] [--out FILE.png]"
SPLITS = ("train", "val")


@dataclass
class Curves:
    label: str
    series: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)  # metric -> steps, values


def plot_command(args: list[str]) -> str:
    """Write the PNG; returns its path. Bad input raises UserError."""
    args, out = _take_out(args)
    if not args or any(a.startswith("-") for a in args):
        raise UserError(USAGE)
    runs = [curves for folder in args for curves in _runs_of(Path(folder))]
    out = out or str(Path(args[0]) / "curves.png")
    draw(runs, out)
    return out


def _take_out(args: list[str]) -> tuple[list[str], str | None]:
    rest, out, i = [], None, 0
    while i < len(args):
        if args[i] in ("--out", "-o") and i + 1 < len(args):
            out, i = args[i + 1], i + 2
            continue
        if args[i].startswith("--out="):
            out = args[i].partition("=")[2]
        else:
            rest.append(args[i])
        i += 1
    return rest, out


def _runs_of(folder: Path) -> list[Curves]:
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; give a run directory (it holds metrics.csv) or a sweep directory")
    if (folder / "metrics.csv").is_file():
        return [read_curves(folder / "metrics.csv", folder.name)]
    from trainkit.sweeps.summary import trial_dirs

    trials = [t for t in trial_dirs(folder) if (t / "metrics.csv").is_file()]
    if not trials:
        raise UserError(f"{folder} has no metrics.csv, nor trials with one: give a run directory or a sweep directory "
                        "(a run logs metrics.csv with the csv logger, part of logger=default)")
    overrides = {t: _overrides(t) for t in trials}
    common = set.intersection(*(set(o) for o in overrides.values())) if len(trials) > 1 else set()
    labels = {t: " ".join([str(t.relative_to(folder)), *(o for o in overrides[t] if o not in common)]) for t in trials}
    return [read_curves(t / "metrics.csv", labels[t]) for t in trials]


def _overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    import yaml

    return [str(o) for o in yaml.safe_load(path.read_text()) or [] if not str(o).startswith(("hydra", "sweep.optuna_"))]


def read_curves(path: Path, label: str) -> Curves:
    curves = Curves(label)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            for name, value in row.items():
                if name in ("step", "epoch") or value in ("", None):
                    continue
                steps, values = curves.series.setdefault(name, ([], []))
                steps.append(step)
                values.append(float(value))
    return curves


def panel_of(metric: str) -> tuple[str, str | None]:
    """`train/loss` -> ("loss", "train"); `val/auc` -> ("auc", "val"); `lr-AdamW` -> ("lr-AdamW", None)."""
    for split in SPLITS:
        for sep in ("/", "_"):
            if metric.startswith(split + sep):
                return metric[len(split) + 1:], split
    return metric, None


def draw(runs: list[Curves], out: str):
    """Write the PNG; returns the matplotlib Figure."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state (Agg renders the PNG)
        from matplotlib.lines import Line2D
    except ImportError:
        raise UserError('trainkit plot needs matplotlib, which is not installed: pip install "trainkit[plot]"') from None
    panels: dict[str, list[tuple[int, str | None, str]]] = {}  # panel -> (run index, split, metric)
    for i, run in enumerate(runs):
        for metric in run.series:
            name, split = panel_of(metric)
            panels.setdefault(name, []).append((i, split, metric))
    if not panels:
        raise UserError("nothing to plot: metrics.csv has no metric columns yet (the first rows come at "
                        "trainer.log_every_n_steps)")
    names = sorted(panels, key=lambda n: (n != "loss", n))  # the loss first
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(5 * cols, 3.4 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for ax, name in zip(axes, names):
        for i, split, metric in panels[name]:
            steps, values = runs[i].series[metric]
            dashed = split == "val"
            ax.plot(steps, values, color=colours[i], linestyle="--" if dashed else "-",
                    marker="o" if dashed or len(steps) < 3 else None, markersize=3, linewidth=1.2)
        splits = {split for _, split, _ in panels[name]}
        ax.set_title(name + (" (train solid, val dashed)" if splits == {"train", "val"} else
                             f" ({next(iter(splits))})" if splits <= {"train", "val"} else ""), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    if len(runs) > 1 or runs[0].label:
        handles = [Line2D([], [], color=c, linewidth=2) for c in colours]
        fig.legend(handles, [r.label for r in runs], loc="outside lower center", ncols=min(4, len(runs)), fontsize=9)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    return fig
