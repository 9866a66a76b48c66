"""The model's layers and parameter counts, shown once on rank 0 when fit starts (as Lightning).

The Trainer adds a `ModelSummary()` unless `enable_model_summary=False` or one is passed.

      | Name | Type       | Params | Mode
    -------------------------------------------
    0 | net  | Sequential | 1.1 K  | train
    -------------------------------------------
    1.1 K     Trainable params
    0         Non-trainable params
    1.1 K     Total params
    0.004     Total estimated model params size (MB)
    3         Modules in train mode
    0         Modules in eval mode

`max_depth=1` lists the top-level children, -1 every module, 0 only the totals. The size is the
parameters' bytes in the dtype they train in. `RichModelSummary` draws the same as a rich table.
The text goes to trainkit's log (the CLI's console and log file); with no logging set up, to stdout.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from torch import nn

from trainkit.engine.callback import Callback
from trainkit.errors import ConfigError

log = logging.getLogger("trainkit")

_UNITS = ("", "K", "M", "B", "T")


def human_count(number: float) -> str:
    """123 -> '123  ', 1234 -> '1.2 K', 2e6 -> '2.0 M' (Lightning's abbreviations)."""
    digits = int(math.floor(math.log10(number)) + 1) if number > 0 else 1
    groups = min(int(math.ceil(digits / 3)), len(_UNITS))
    scaled = number * 10 ** (-3 * (groups - 1))
    if groups == 1 or scaled >= 100:
        return f"{int(scaled):,d} {_UNITS[groups - 1]}"
    return f"{scaled:,.1f} {_UNITS[groups - 1]}"


@dataclass
class Summary:
    rows: list[tuple[str, str, int, bool]]  # name, type, parameters, training mode
    trainable: int
    total: int
    size_mb: float
    train_modules: int
    eval_modules: int


def summarize(module: nn.Module, max_depth: int = 1) -> Summary:
    if max_depth == 0:
        named = []
    elif max_depth == 1:
        named = list(module.named_children())
    else:
        named = [(n, m) for n, m in list(module.named_modules())[1:] if max_depth < 0 or n.count(".") < max_depth]
    rows = [(name, type(m).__name__, sum(p.numel() for p in m.parameters()), m.training) for name, m in named]
    params = list(module.parameters())
    leftover = sum(p.numel() for p in module.parameters(recurse=False))
    if leftover and max_depth != 0:
        rows.append(("other params", "n/a", leftover, module.training))
    modes = [m.training for m in list(module.modules())[1:]]
    return Summary(
        rows=rows,
        trainable=sum(p.numel() for p in params if p.requires_grad),
        total=sum(p.numel() for p in params),
        size_mb=sum(p.numel() * p.element_size() for p in params) * 1e-6,
        train_modules=modes.count(True),
        eval_modules=modes.count(False),
    )


def format_summary(summary: Summary) -> str:
    columns = [
        (" ", [str(i) for i in range(len(summary.rows))]),
        ("Name", [r[0] for r in summary.rows]),
        ("Type", [r[1] for r in summary.rows]),
        ("Params", [human_count(r[2]) for r in summary.rows]),
        ("Mode", ["train" if r[3] else "eval" for r in summary.rows]),
    ]
    widths = [max([len(title), *(len(v) for v in values)]) for title, values in columns]
    rule = "-" * (sum(widths) + 3 * (len(columns) + 1))
    lines = [" | ".join(title.ljust(w) for (title, _), w in zip(columns, widths)), rule]
    for i in range(len(summary.rows)):
        lines.append(" | ".join(values[i].ljust(w) for (_, values), w in zip(columns, widths)))
    lines.append(rule)
    return "\n".join(lines + _totals(summary))


def _totals(summary: Summary) -> list[str]:
    return [
        f"{human_count(summary.trainable):<10}Trainable params",
        f"{human_count(summary.total - summary.trainable):<10}Non-trainable params",
        f"{human_count(summary.total):<10}Total params",
        f"{summary.size_mb:<10,.3f}Total estimated model params size (MB)",
        f"{summary.train_modules:<10}Modules in train mode",
        f"{summary.eval_modules:<10}Modules in eval mode",
    ]


def _show(text: str) -> None:
    if log.hasHandlers():
        log.info("model summary:\n%s", text)
    else:
        print(text)


class ModelSummary(Callback):
    def __init__(self, max_depth: int = 1) -> None:
        if max_depth < -1:
            raise ConfigError(f"ModelSummary(max_depth={max_depth}) must be -1 (all), 0 (totals only) or more")
        self._max_depth = max_depth

    def on_fit_start(self, trainer, module) -> None:
        if trainer.is_global_zero:
            self.summarize(summarize(module, self._max_depth))

    def summarize(self, summary: Summary) -> None:
        _show(format_summary(summary))


class RichModelSummary(ModelSummary):
    def summarize(self, summary: Summary) -> None:
        from rich import get_console
        from rich.table import Table

        table = Table(header_style="bold magenta")
        for title in (" ", "Name", "Type", "Params", "Mode"):
            table.add_column(title, justify="right" if title in (" ", "Params") else "left")
        for i, (name, kind, count, training) in enumerate(summary.rows):
            table.add_row(str(i), name, kind, human_count(count), "train" if training else "eval")
        console = get_console()
        console.print(table)
        console.print("\n".join(_totals(summary)), markup=False, highlight=False)
