"""Logging for a run: the `trainkit` logger to the console and to `<run_dir>/trainkit.log`.

On a terminal the console handler is rich's (it cooperates with the live progress bar); without
one (SLURM, nohup, CI) plain timestamped lines.
"""
from __future__ import annotations

import logging
import os
import sys


def setup_logging(run_dir: str | None, is_global_zero: bool = True) -> None:
    logger = logging.getLogger("trainkit")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if is_global_zero:
        if sys.stdout.isatty():
            from rich.logging import RichHandler

            console: logging.Handler = RichHandler(show_path=False, show_level=False, markup=False)
        else:
            console = logging.StreamHandler(sys.stdout)
            console.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(console)
    if run_dir is not None:
        os.makedirs(run_dir, exist_ok=True)
        file = logging.FileHandler(os.path.join(run_dir, "trainkit.log"))
        file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(file)
