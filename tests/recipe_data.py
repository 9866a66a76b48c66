"""Small generated data for each datamodule option, so every recipe runs in tests in seconds.

`TINY_DATA[option](tmp_path)` writes tiny files in that datamodule's real format under tmp_path
(when it reads files) and returns the overrides that point the datamodule at them and keep it small.
`RECIPE_PAIRS` says which datamodule a model option trains on by default and the reverse, so the
every-config test can run each option with a partner it fits.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from tests.conftest import SMALL_DATA


def _knowledge_tracing(tmp_path: Path) -> list[str]:
    return list(SMALL_DATA)  # the simulator writes these formats itself (path=null)


TINY_DATA: dict[str, Callable[[Path], list[str]]] = {
    "kt_lines": _knowledge_tracing,
    "kt_pykt": _knowledge_tracing,
    "kt_interactions": _knowledge_tracing,
}

# model option -> the datamodule option it trains on; datamodule option -> a model that reads it.
RECIPE_PAIRS: dict[str, str] = {
    "knowledge_tracing": "kt_lines",
    "sakt": "kt_lines",
    "kt_lines": "knowledge_tracing",
    "kt_pykt": "knowledge_tracing",
    "kt_interactions": "knowledge_tracing",
}
