"""metrics.csv: one row per logged step — `step`, `epoch`, then each metric, at full precision.

Metrics logged for the same step (training values and a validation at that step) share one row.
Rows are appended as soon as their step is complete; when a new metric name appears the file is
rewritten once with the wider header, so the file on disk is always a valid CSV.

A resumed run writes into the same file: the rows already there are kept, and those at or after
the first step the resumed run logs are replaced (it logs them again, identically when exact).
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
from typing import Any


class CSVLogger:
    def __init__(self, save_dir: str, filename: str = "metrics.csv") -> None:
        self.path = os.path.join(save_dir, filename)
        self._columns: list[str] = ["step", "epoch"]
        self._written: list[dict[str, Any]] = []  # rows on disk (kept to rewrite on a new column)
        self._pending: dict[str, Any] | None = None  # the current step's row, still open
        self._reopen: dict[str, Any] | None = None  # the last row, flushed before its step ended
        self._resumed = False  # rows read from an earlier run are trimmed at the first new step
        if os.path.exists(self.path):
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self._columns = list(reader.fieldnames or self._columns)
                self._written = [{k: v for k, v in row.items() if v != ""} for row in reader]
            self._resumed = True

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        pass  # the run directory's config.yaml already holds them

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self._resumed:
            self._resumed = False
            self._written = [row for row in self._written if int(row["step"]) < step]
            self._rewrite()
        if self._reopen is not None and self._reopen["step"] == step:
            # The step's row was flushed (a checkpoint) and more arrives for it: take it back.
            self._written.remove(self._reopen)
            self._pending = self._reopen
            self._rewrite()
        self._reopen = None
        if self._pending is not None and self._pending["step"] != step:
            self._write(self._pending)
            self._pending = None
        if self._pending is None:
            self._pending = {"step": step}
        self._pending.update(metrics)

    def flush(self) -> None:
        """Write the open row. A later value for the same step rewrites it in place."""
        if self._pending is not None:
            self._write(self._pending)
            self._reopen = self._pending
            self._pending = None

    def finalize(self, status: str) -> None:
        self.flush()
        if not os.path.exists(self.path):  # a run that logged nothing still leaves a valid CSV
            self._rewrite()

    def _write(self, row: dict[str, Any]) -> None:
        new_columns = [k for k in row if k not in self._columns]
        self._written.append(row)
        if new_columns or not os.path.exists(self.path):
            self._columns.extend(new_columns)
            self._rewrite()
        else:
            line = io.StringIO()
            csv.DictWriter(line, fieldnames=self._columns).writerow(row)
            with open(self.path, "ab", buffering=0) as f:
                end = f.tell()
                try:
                    f.write(line.getvalue().encode())
                except OSError as exc:  # a full disk: never half a row, so the file stays a valid CSV
                    f.truncate(end)
                    exc.filename = exc.filename or self.path
                    raise

    def _rewrite(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self._columns)
                writer.writeheader()
                writer.writerows(self._written)
        except OSError as exc:  # the file in place stays as it was
            with contextlib.suppress(OSError):
                os.remove(tmp)
            exc.filename = exc.filename or tmp
            raise
        os.replace(tmp, self.path)
