"""OULAD students as sequences of daily VLE activity, with the same rows, classes and splits as the
at-risk table (recipes/dropout: both take their rows from trainkit.tabular.oulad.AtRisk), so that
the two models are scored on the same students.

Each student-presentation gets 1 + 7 * weeks steps: step 0 sums the activity before the module
start (day < 0), step 1 + d is day d. Per step (oulad.DAY_FEATURES): log(1 + clicks), log(1 +
distinct sites), log(1 + click records), active 0/1, then standardised per feature with the
training rows' statistics. A batch carries them as `days` [B, 1 + 7 * weeks, 4], next to the
static features of the at-risk table (`numeric`, `categorical`; both may be empty lists).
"""
from __future__ import annotations

from pathlib import Path

from trainkit.errors import ConfigError
from trainkit.tabular import oulad
from trainkit.tabular.datamodule import Raw, TabularDataModule


class OULADClicksDataModule(TabularDataModule):
    missing_path = "it must hold OULAD's studentInfo.csv.gz, studentRegistration.csv.gz and studentVle_daily.csv.gz"
    data_folder = "oulad"
    source = oulad.SOURCE

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
        super().__init__(path, numeric, categorical, classes, max_categories, test_fraction, valid_fraction,
                         folds, fold, balance, batch_size, num_workers, seed)
        # The click features of `numeric`, if any, count the same days as the sequence.
        self.task = oulad.AtRisk(self.classes, list(at_risk), split, list(test_presentations), 7 * weeks,
                                 self.numeric, self.categorical)
        self.weeks = weeks

    def _load(self, folder: Path) -> Raw:
        students = oulad.read_students(folder)
        clicks = oulad.read_daily_clicks(folder, students)
        raw = self.task.rows(students, clicks)
        raw.extra["days"] = oulad.day_sequences(students, clicks, self.task.click_days)
        return raw
