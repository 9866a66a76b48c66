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


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on loopback (SQLite backend), started once for the session and
    stopped by its process group's id. Yields its URI."""
    import signal
    import socket
    import time
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "w")
    # One worker and no job runner: its start-up is what the tests wait for.
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--default-artifact-root",
         str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
