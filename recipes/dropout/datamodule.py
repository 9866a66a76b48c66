"""Who drops out? Two tables, one pipeline (tabular.py): stratified splits or k folds, scaling and
category indices fitted on the training rows, class balancing by loss weights or oversampling.

    UCIDropoutDataModule    UCI "Predict Students' Dropout and Academic Success": 3 classes
                            (Dropout, Enrolled, Graduate) from 36 enrolment-time and first-year columns
    OULADAtRiskDataModule   OULAD: at risk (Withdrawn or Fail) or not (Pass, Distinction) from
                            demographics, registration and the first `click_days` days of clicks;
                            a random stratified split or train on 2013, test on 2014

The feature lists are config values (`numeric`, `categorical`): the model config interpolates
them and sizes its input layer from them, so the model is complete when it is built.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import oulad
from .tabular import Raw, TabularDataModule
from .tables import find_file, read_table
from trainkit.errors import ConfigError

SPLITS = ("random", "presentation")


class UCIDropoutDataModule(TabularDataModule):
    """`<path>/data.csv.gz` (or data.csv): one row per student, `,` or `;` separated. Columns
    named in `numeric` must hold numbers, those in `categorical` are codes (any strings), `target`
    one of `classes`; other columns are ignored."""

    missing_path = "it must hold data.csv.gz (or data.csv), UCI's 'Predict Students' Dropout and Academic Success' table"
    data_folder = "uci_dropout"

    def __init__(
        self,
        path: str,
        numeric: list[str],
        categorical: list[str],
        classes: list[str] = ("Dropout", "Enrolled", "Graduate"),
        target: str = "Target",
        max_categories: int = 64,
        test_fraction: float = 0.2,
        valid_fraction: float = 0.2,
        folds: int | None = None,
        fold: int | None = None,
        balance: str = "none",
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(path, numeric, categorical, classes, max_categories, test_fraction, valid_fraction,
                         folds, fold, balance, batch_size, num_workers, seed)
        self.target = target

    def _load(self, folder: Path) -> Raw:
        path = find_file(folder, "data.csv")
        table = read_table(path, [*self.numeric, *self.categorical, self.target],
                           "UCI's dropout table; see datamodule.numeric and datamodule.categorical")
        labels = table.check_values(self.target, self.classes, f"set datamodule.classes to the values of {self.target!r}")
        numeric = np.stack([table.floats(name) for name in self.numeric], axis=1) if self.numeric else np.zeros((len(table), 0))
        categorical = np.array([table.column(name) for name in self.categorical], dtype=str).T.reshape(len(table), -1)
        return Raw(numeric, categorical, self._class_index(labels), path)


class OULADAtRiskDataModule(TabularDataModule):
    """OULAD's studentInfo, studentRegistration and (for click features) studentVle_daily under
    `path` (see oulad.py). One row per student and presentation; class 0 (`classes[0]`) is at
    risk: a final_result in `at_risk`. `numeric` may name studentInfo's num_of_prev_attempts and
    studied_credits, date_registration, and the click features of oulad.CLICK_FEATURES, counted
    over the days before day `click_days`; `categorical` any of oulad.CATEGORICAL.

    split=random: a stratified random test set (test_fraction); split=presentation: the
    presentations in `test_presentations` (codes such as 2014B) are the test set, the others the pool.
    """

    missing_path = "it must hold OULAD's studentInfo.csv.gz, studentRegistration.csv.gz and studentVle_daily.csv.gz"
    data_folder = "oulad"

    def __init__(
        self,
        path: str,
        numeric: list[str],
        categorical: list[str],
        classes: list[str] = ("at_risk", "on_track"),
        at_risk: list[str] = ("Withdrawn", "Fail"),
        split: str = "random",
        test_presentations: list[str] = ("2014B", "2014J"),
        click_days: int = 28,
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
        super().__init__(path, numeric, categorical, classes, max_categories, test_fraction, valid_fraction,
                         folds, fold, balance, batch_size, num_workers, seed)
        if len(self.classes) != 2:
            raise ConfigError(f"datamodule.classes={self.classes}: at-risk prediction has two classes (at risk first)")
        if split not in SPLITS:
            raise ConfigError(f"datamodule.split={split!r}: choose one of {', '.join(SPLITS)}")
        unknown = [r for r in at_risk if r not in oulad.FINAL_RESULTS]
        if unknown or not at_risk:
            raise ConfigError(f"datamodule.at_risk={list(at_risk)}: name final_result values ({', '.join(oulad.FINAL_RESULTS)})")
        for key, names, allowed in (("numeric", self.numeric, oulad.NUMERIC), ("categorical", self.categorical, oulad.CATEGORICAL)):
            unknown = [n for n in names if n not in allowed]
            if unknown:
                raise ConfigError(f"datamodule.{key}: {unknown[0]!r} is not an OULAD feature; choose from {', '.join(allowed)}")
        if click_days < 1:
            raise ConfigError(f"datamodule.click_days={click_days}: must be at least 1")
        self.at_risk = list(at_risk)
        self.split = split
        self.test_presentations = list(test_presentations)
        self.click_days = click_days

    def _load(self, folder: Path) -> Raw:
        students = oulad.read_students(folder)
        clicks = oulad.read_daily_clicks(folder, students) if self._needs_clicks() else None
        return self._raw(students, clicks)

    def _needs_clicks(self) -> bool:
        return any(name in oulad.CLICK_FEATURES for name in self.numeric)

    def _raw(self, students: oulad.Students, clicks: oulad.DailyClicks | None) -> Raw:
        columns = students.columns
        labels = np.where(np.isin(columns["final_result"], self.at_risk), 0, 1).astype(np.int64)
        numeric = oulad.numeric_features(students, clicks, self.numeric, self.click_days)
        categorical = np.array([columns[name] for name in self.categorical], dtype=str).T.reshape(len(students), -1)
        test_mask = None
        if self.split == "presentation":
            test_mask = np.isin(columns["code_presentation"], self.test_presentations)
            if not test_mask.any() or test_mask.all():
                found = sorted(set(columns["code_presentation"]))
                raise ConfigError(
                    f"datamodule.test_presentations={self.test_presentations}: the data's presentations are "
                    f"{', '.join(found)}; the test set must be some but not all of them"
                )
        return Raw(numeric, categorical, labels, students.source, test_mask)
