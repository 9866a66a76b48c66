"""Time `trainkit --complete` (what the shell completion scripts run on each Tab) against a bare
`python -c pass`: medians of N fresh processes per prefix. The budget is 0.2 s per answer.

    python scripts/bench_completion.py [--n 15]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREFIXES = ["trainkit ", "trainkit fit model=", "trainkit fit model=sakt model.", "trainkit fit trainer.max_",
            "trainkit fit callbacks.early_stopping.", "trainkit fit trainer.resume=", "trainkit resume outputs/"]


def median_wall(cmd: list[str], n: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=15)
    n = parser.parse_args().n
    bare = median_wall([sys.executable, "-c", "pass"], n)
    print(f"{'python -c pass':<45} {bare * 1000:6.0f} ms")
    for prefix in PREFIXES:
        t = median_wall([sys.executable, "-m", "trainkit", "--complete", prefix], n)
        print(f"{prefix!r:<45} {t * 1000:6.0f} ms  ({(t - bare) * 1000:+.0f} ms over a bare interpreter)")


if __name__ == "__main__":
    main()
