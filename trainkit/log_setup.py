"""Logging for a run: the `trainkit` logger to the console and to `<run_dir>/trainkit.log`.

Console lines go through rich's console, which keeps them above a live progress bar on a
terminal and prints them as plain text elsewhere (SLURM, nohup, CI). Never wrapped: a run
directory printed on one line can be copied.
"""
from __future__ import annotations

import logging
import os

from rich import get_console


class _ConsoleHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            get_console().print(self.format(record), markup=False, highlight=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


def setup_logging(run_dir: str | None, is_global_zero: bool = True) -> None:
    logger = logging.getLogger("trainkit")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if is_global_zero:
        console = _ConsoleHandler()
        console.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(console)
    if run_dir is not None:
        os.makedirs(run_dir, exist_ok=True)
        file = logging.FileHandler(os.path.join(run_dir, "trainkit.log"))
        file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(file)
