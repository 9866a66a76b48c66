"""Who drops out? Two tables, one pipeline (trainkit/tabular/datamodule.py): stratified splits or k folds, scaling and
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

from trainkit.tabular import oulad
from trainkit.tabular.datamodule import Raw, TabularDataModule
from trainkit.tabular.tables import find_file, read_table


class UCIDropoutDataModule(TabularDataModule):
    """`<path>/data.csv.gz` (or data.csv): one row per student, `,` or `;` separated. Columns
    named in `numeric` must hold numbers, those in `categorical` are codes (any strings), `target`
    one of `classes`; other columns are ignored."""

    missing_path = "it must hold data.csv.gz (or data.csv), UCI's 'Predict Students' Dropout and Academic Success' table"
    data_folder = "uci_dropout"
    source = ("UCI's dataset 697, CC BY 4.0, https://archive.ics.uci.edu/dataset/697 (Realinho et al., "
              "doi:10.3390/data7110146): its data.csv, gzipped or not")

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
    `path` (see trainkit/tabular/oulad.py). One row per student and presentation; class 0 (`classes[0]`) is at
    risk: a final_result in `at_risk`. `numeric` may name studentInfo's num_of_prev_attempts and
    studied_credits, date_registration, and the click features of oulad.CLICK_FEATURES, counted
    over the days before day `click_days`; `categorical` any of oulad.CATEGORICAL.

    split=random: a stratified random test set (test_fraction); split=presentation: the
    presentations in `test_presentations` (codes such as 2014B) are the test set, the others the pool
    (oulad.AtRisk, shared with the engagement recipe).
    """

    missing_path = "it must hold OULAD's studentInfo.csv.gz, studentRegistration.csv.gz and studentVle_daily.csv.gz"
    data_folder = "oulad"
    source = oulad.SOURCE

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
        self.task = oulad.AtRisk(self.classes, list(at_risk), split, list(test_presentations), click_days,
                                 self.numeric, self.categorical)

    def _load(self, folder: Path) -> Raw:
        students = oulad.read_students(folder)
        clicks = oulad.read_daily_clicks(folder, students) if self.task.needs_clicks else None
        return self.task.rows(students, clicks)
