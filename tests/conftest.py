"""Shared test set-up: a private data cache, and small helpers to run the real CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Small simulated datasets keep every CLI run to seconds.
SMALL_DATA = ["datamodule.num_students=300", "datamodule.batch_size=16"]


# The real datasets: the repository's sibling shared/data, unless TRAINKIT_DATA already names a
# folder. Tests that need one skip, with the reason, when it is absent (needs_data).
os.environ.setdefault("TRAINKIT_DATA", str((ROOT.parent / "shared" / "data").resolve()))
DATA = Path(os.environ["TRAINKIT_DATA"])


def needs_data(name: str):
    """Skip unless $TRAINKIT_DATA/<name> exists (a real dataset, e.g. oulad)."""
    return pytest.mark.skipif(not (DATA / name).is_dir(), reason=f"needs the real dataset {DATA / name} (TRAINKIT_DATA)")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Simulated datasets go to a per-session cache, never to ~/.cache."""
    os.environ["TRAINKIT_CACHE"] = str(tmp_path_factory.mktemp("trainkit_cache"))
    yield


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real `trainkit` console entry, in a fresh process (stdout is not a TTY)."""
    return subprocess.run(
        [sys.executable, "-m", "trainkit", *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def metric_rows(run: Path) -> dict[int, dict[str, str]]:
    """metrics.csv of a run directory, by step (values as written: exact strings)."""
    import csv

    with open(run / "metrics.csv") as f:
        return {int(r["step"]): r for r in csv.DictReader(f)}


def train_losses(run: Path) -> dict[int, str]:
    return {step: r["train/loss"] for step, r in metric_rows(run).items() if r.get("train/loss")}


def final_weights(run: Path) -> dict:
    """The model weights of the run's last checkpoint, read whole in this process (DCP reshards)."""
    import torch

    from trainkit import checkpoint

    out = run / "weights.pt"
    checkpoint.export_model(checkpoint.resolve(str(run / "checkpoints")), str(out))
    return torch.load(out, weights_only=True)
