"""OULAD students as sequences of daily VLE activity, with the same rows, classes and splits as the
at-risk table (recipes/dropout), so that the two models are scored on the same students.

Each student-presentation gets 1 + 7 * weeks steps: step 0 sums the activity before the module
start (day < 0), step 1 + d is day d. Per step (oulad.DAY_FEATURES): log(1 + clicks), log(1 +
distinct sites), log(1 + click records), active 0/1, then standardised per feature with the
training rows' statistics. A batch carries them as `days` [B, 1 + 7 * weeks, 4], next to the
static features of the at-risk table (`numeric`, `categorical`; both may be empty lists).
"""
from __future__ import annotations

from pathlib import Path

from trainkit.recipes.dropout import oulad
from trainkit.recipes.dropout.datamodule import OULADAtRiskDataModule
from trainkit.recipes.dropout.tabular import Raw
from trainkit.errors import ConfigError


class OULADClicksDataModule(OULADAtRiskDataModule):
    def __init__(
        self,
        path: str,
        numeric: list[str],
        categorical: list[str],
        weeks: int = 4,
        classes: list[str] = ("at_risk", "on_track"),
        at_risk: list[str] = ("Withdrawn", "Fail"),
        split: str = "random",
        test_presentations: list[str] = ("2014B", "2014J"),
        max_categories: int = 64,
        test_fraction: float = 0.2,
        valid_fraction: float = 0.2,
        folds: int | None = None,
        fold: int | None = None,
        balance: str = "class_weights",
        batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        if weeks < 1:
            raise ConfigError(f"datamodule.weeks={weeks}: must be at least 1")
        # The click features of `numeric`, if any, count the same days as the sequence.
        super().__init__(path, numeric, categorical, classes, at_risk, split, test_presentations, 7 * weeks,
                         max_categories, test_fraction, valid_fraction, folds, fold, balance, batch_size,
                         num_workers, seed)
        self.weeks = weeks

    def _needs_clicks(self) -> bool:
        return True

    def _load(self, folder: Path) -> Raw:
        students = oulad.read_students(folder)
        clicks = oulad.read_daily_clicks(folder, students)
        raw = self._raw(students, clicks)
        raw.extra["days"] = oulad.day_sequences(students, clicks, self.click_days)
        return raw
