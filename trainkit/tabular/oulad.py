"""Reading OULAD (the Open University Learning Analytics Dataset), for the at-risk and engagement recipes.

    students = read_students(folder)          # studentInfo + date_registration, one row per student-presentation
    clicks = read_daily_clicks(folder, students)   # studentVle_daily: one row per (student, presentation, day)
    features = click_features(students, clicks, days=28)      # name -> [N] float
    sequences = day_sequences(students, clicks, days=28)      # [N, 1 + 28, 4] float
    raw = AtRisk(classes, at_risk=["Withdrawn", "Fail"], ...).rows(students, clicks)   # the at-risk task's rows

Files under the folder, each plain or gzipped (`.csv.gz` first): `studentInfo.csv`,
`studentRegistration.csv` (the OU's originals: quoted, CRLF) and `studentVle_daily.csv`, the
clickstream summed per student and day: columns code_module, code_presentation, id_student,
date (days from the module start, negative before it), n_rows, n_sites, sum_click.

Days and clicks. A "window of d days" is every day before day d, the days before the module
start included: what is known d days into the presentation.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainkit.errors import ConfigError, DataError
from trainkit.tabular.datamodule import Raw
from trainkit.tabular.tables import find_file, is_int, read_bytes, read_table

INFO_COLUMNS = (
    "code_module", "code_presentation", "id_student", "gender", "region", "highest_education", "imd_band",
    "age_band", "num_of_prev_attempts", "studied_credits", "disability", "final_result",
)
CATEGORICAL = tuple(c for c in INFO_COLUMNS if c not in ("id_student", "num_of_prev_attempts", "studied_credits", "final_result"))
FINAL_RESULTS = ("Pass", "Distinction", "Fail", "Withdrawn")
DAILY_COLUMNS = ("code_module", "code_presentation", "id_student", "date", "n_rows", "n_sites", "sum_click")
DAY_FEATURES = ("clicks", "sites", "rows", "active")  # per step of day_sequences, all but `active` as log1p

# The numeric features a datamodule config may name, besides studentInfo's two numbers.
CLICK_FEATURES = {
    "clicks": "log(1 + clicks in the window)",
    "active_days": "days with any click in the window",
    "site_visits": "log(1 + sum over days of the distinct sites visited)",
    "clicks_before_start": "log(1 + clicks before day 0)",
    "clicks_last_week": "log(1 + clicks in the window's last 7 days)",
    "days_since_active": "days from the last active day (before the start: day -1) to the window's last day; days + 1 if none",
}
NUMERIC = ("num_of_prev_attempts", "studied_credits", "date_registration", *CLICK_FEATURES)
SPLITS = ("random", "presentation")
# Where to get the data (the message of a missing folder names it).
SOURCE = ("OULAD, CC BY 4.0, from https://analyse.kmi.open.ac.uk/open_dataset; studentVle_daily.csv is its "
          "studentVle.csv summed per code_module, code_presentation, id_student and date (n_rows: records, "
          "n_sites: distinct id_site, sum_click: clicks)")


@dataclass
class Students:
    """studentInfo's rows (file order), with date_registration from studentRegistration."""

    # INFO_COLUMNS -> [N]: strings, but num_of_prev_attempts, studied_credits and date_registration
    # (from studentRegistration) as floats, NaN where missing.
    columns: dict[str, np.ndarray]
    key: np.ndarray  # [N] int64: the presentation's index in `presentations` * 2**32 + id_student
    presentations: list[str]  # sorted "code_module,code_presentation" strings
    source: Path

    def __len__(self) -> int:
        return len(self.key)


@dataclass
class DailyClicks:
    row: np.ndarray  # [M] int64: the student row (into Students) of each daily record; -1: not in studentInfo
    date: np.ndarray  # [M] int64
    n_rows: np.ndarray  # [M] int64
    n_sites: np.ndarray  # [M] int64
    sum_click: np.ndarray  # [M] int64
    source: Path


def read_students(folder: Path) -> Students:
    info_file = find_file(folder, "studentInfo.csv")
    info = read_table(info_file, INFO_COLUMNS, "OULAD's studentInfo table")
    info.check_values("final_result", FINAL_RESULTS, "final_result must be one of OULAD's four results")
    columns = {name: np.array(info.column(name), dtype=object) for name in INFO_COLUMNS}
    for name in ("num_of_prev_attempts", "studied_credits"):
        columns[name] = info.floats(name)
    presentations = sorted({f"{m},{p}" for m, p in zip(columns["code_module"], columns["code_presentation"])})
    key = _keys(presentations, columns["code_module"], columns["code_presentation"], info.ints("id_student"))
    unique, counts = np.unique(key, return_counts=True)
    if np.any(counts > 1):
        second = np.flatnonzero(key == unique[counts > 1][0])[1]
        raise DataError(f"{info_file}, line {info.lines[second]}: a second row for the same student and presentation")
    students = Students(columns, key, presentations, info_file)

    reg_file = find_file(folder, "studentRegistration.csv")
    reg = read_table(reg_file, ("code_module", "code_presentation", "id_student", "date_registration"),
                     "OULAD's studentRegistration table")
    reg_key = _keys(presentations, np.array(reg.column("code_module"), dtype=object),
                    np.array(reg.column("code_presentation"), dtype=object), reg.ints("id_student"))
    row = student_rows(students, reg_key)
    columns["date_registration"] = np.full(len(key), np.nan)
    columns["date_registration"][row[row >= 0]] = reg.floats("date_registration")[row >= 0]
    return students


def student_rows(students: Students, keys: np.ndarray) -> np.ndarray:
    """The row in `students` of each key; -1 where there is none."""
    order = np.argsort(students.key)
    pos = np.minimum(np.searchsorted(students.key[order], keys), len(order) - 1)
    return np.where(students.key[order][pos] == keys, order[pos], -1)


def _keys(presentations: list[str], modules: np.ndarray, codes: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """presentation index * 2**32 + id_student; -1 for a presentation not in `presentations`."""
    index = {name: i for i, name in enumerate(presentations)}
    p = np.array([index.get(f"{m},{c}", -1) for m, c in zip(modules, codes)], dtype=np.int64)
    return np.where(p >= 0, p * 2**32 + ids, -1)


def read_daily_clicks(folder: Path, students: Students) -> DailyClicks:
    path = find_file(folder, "studentVle_daily.csv")
    data = read_bytes(path).removeprefix(b"\xef\xbb\xbf")
    header_line, _, body = data.partition(b"\n")
    header = [name.strip() for name in next(csv.reader([header_line.decode("utf-8", "replace")]), [])]
    missing = [name for name in DAILY_COLUMNS if name not in header]
    if missing:
        raise DataError(
            f"{path}, line 1: no column {missing[0]!r}; the columns are {', '.join(map(repr, header))} "
            f"(the daily clickstream: {', '.join(DAILY_COLUMNS)})"
        )
    parsed = _parse_daily_fast(body) if tuple(header) == DAILY_COLUMNS else None
    if parsed is None:  # another column order, quoting, blank lines, or a bad value: the careful reader
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{path}: not a UTF-8 text file; convert it (e.g. iconv -f latin1 -t utf-8)") from None
        parsed = _parse_daily_slow(path, text, header)
    keys, ids, numbers = parsed
    index = {name: i for i, name in enumerate(students.presentations)}
    p = np.array([index.get(k, -1) for k in keys], dtype=np.int64)
    key = np.where(p[ids] >= 0, p[ids] * 2**32 + numbers[:, 0], -1)
    return DailyClicks(student_rows(students, key), numbers[:, 1], numbers[:, 2], numbers[:, 3], numbers[:, 4], path)


def _parse_daily_fast(body: bytes) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """The canonical layout parsed without a Python loop over rows (1.8M of them); None when the
    text is not that simple layout, so that the careful reader finds and reports the problem.

    Each line has 6 commas; its first two fields (module, presentation) are read as one short
    byte string per line, then blanked, and numpy parses the five numbers of every line at once.
    """
    if b'"' in body or not body.strip():
        return None
    buf = np.frombuffer(body if body.endswith(b"\n") else body + b"\n", dtype=np.uint8)
    ends = np.flatnonzero(buf == ord("\n"))
    starts = np.concatenate([[0], ends[:-1] + 1])
    commas = np.flatnonzero(buf == ord(","))
    if len(commas) != 6 * len(ends):
        return None
    commas = commas.reshape(-1, 6)
    if np.any(commas[:, 0] < starts) or np.any(commas[:, 5] > ends):  # 6n commas, 6 on every line
        return None
    key_len = commas[:, 1] - starts  # "AAA,2013J" is the key of "AAA,2013J,11391,..."
    shortest, width = int(key_len.min()), int(key_len.max())
    if width > 64:
        return None
    keys = np.zeros((len(ends), width), dtype=np.uint8)
    blanked = buf.copy()
    for j in range(width):
        at = starts + j if j < shortest else (starts + j)[key_len > j]
        if j < shortest:
            keys[:, j] = buf[at]
        else:
            keys[key_len > j, j] = buf[at]
        blanked[at] = ord(" ")
    blanked[commas[:, 1]] = ord(" ")
    blanked[ends] = ord(",")
    try:
        numbers = np.fromstring(blanked.tobytes().rstrip(b", \r"), dtype=np.int64, sep=",")
    except ValueError:
        return None
    if len(numbers) != 5 * len(ends):
        return None
    # Files are grouped by presentation: find the runs of equal keys, then the distinct ones among them.
    starts_run = np.concatenate([[True], np.any(keys[1:] != keys[:-1], axis=1)])
    run_keys = keys[starts_run].view(f"S{width}").ravel()
    unique, run_ids = np.unique(run_keys, return_inverse=True)
    ids = run_ids[np.cumsum(starts_run) - 1]
    names = [k.decode("ascii", "replace").replace(" ", "") for k in unique]
    return names, ids.astype(np.int64), numbers.reshape(-1, 5)


def _parse_daily_slow(path: Path, text: str, header: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader)
    at = [header.index(name) for name in DAILY_COLUMNS]
    names: dict[str, int] = {}
    ids, numbers = [], []
    for row in reader:
        if len(row) != len(header):
            if not "".join(row).strip():
                continue
            raise DataError(f"{path}, line {reader.line_num}: {len(row)} fields but the header has {len(header)}")
        fields = [row[i].strip() for i in at]
        ids.append(names.setdefault(f"{fields[0]},{fields[1]}", len(names)))
        try:
            numbers.append([int(v) for v in fields[2:]])
        except ValueError:
            column = next(n for n, v in zip(DAILY_COLUMNS[2:], fields[2:]) if not is_int(v))
            value = fields[2 + DAILY_COLUMNS[2:].index(column)]
            raise DataError(f"{path}, line {reader.line_num}, column {column!r}: {value!r} is not an integer") from None
    if not ids:
        raise DataError(f"{path}: the file has a header but no rows")
    return list(names), np.array(ids, dtype=np.int64), np.array(numbers, dtype=np.int64).reshape(-1, 5)


def _window(students: Students, clicks: DailyClicks, days: int) -> np.ndarray:
    """The daily records of known students inside the window (day < days)."""
    return np.flatnonzero((clicks.row >= 0) & (clicks.date < days))


def click_features(students: Students, clicks: DailyClicks, days: int) -> dict[str, np.ndarray]:
    """CLICK_FEATURES of every student over a window of `days` days; a student without records has none."""
    n = len(students)
    inside = _window(students, clicks, days)
    row, date = clicks.row[inside], clicks.date[inside]
    click = clicks.sum_click[inside].astype(np.float64)

    def total(values: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        if where is None:
            return np.bincount(row, weights=values, minlength=n)
        return np.bincount(row[where], weights=values[where], minlength=n)

    last_active = np.full(n, -math.inf)
    np.maximum.at(last_active, row, date.astype(np.float64))
    # Any day before the start counts as day -1: the value runs from 0 (active on the last day) to
    # days (last active before the start); days + 1 when never active.
    since = np.where(np.isfinite(last_active), days - 1 - np.maximum(last_active, -1), days + 1)
    return {
        "clicks": np.log1p(total(click)),
        "active_days": total(np.ones(len(row))),
        "site_visits": np.log1p(total(clicks.n_sites[inside].astype(np.float64))),
        "clicks_before_start": np.log1p(total(click, date < 0)),
        "clicks_last_week": np.log1p(total(click, date >= days - 7)),
        "days_since_active": since.astype(np.float64),
    }


def day_sequences(students: Students, clicks: DailyClicks, days: int) -> np.ndarray:
    """[N, 1 + days, 4]: step 0 sums everything before day 0, step 1 + d is day d (0 <= d < days);
    the features per step are DAY_FEATURES (log1p of clicks, sites, records; 1 if active)."""
    inside = _window(students, clicks, days)
    row = clicks.row[inside]
    step = np.maximum(clicks.date[inside], -1) + 1  # every day before the start -> step 0
    out = np.zeros((len(students), 1 + days, len(DAY_FEATURES)), dtype=np.float64)
    for f, values in enumerate((clicks.sum_click[inside], clicks.n_sites[inside], clicks.n_rows[inside])):
        np.add.at(out[:, :, f], (row, step), values)
    out[:, :, 3] = out[:, :, 0] > 0
    out[:, :, :3] = np.log1p(out[:, :, :3])
    return out


def numeric_features(students: Students, clicks: DailyClicks | None, names: list[str], days: int) -> np.ndarray:
    """[N, len(names)] float64 (NaN: missing): studentInfo's numbers, date_registration, click features (NUMERIC)."""
    computed = dict(click_features(students, clicks, days)) if clicks is not None else {}
    for name in ("num_of_prev_attempts", "studied_credits", "date_registration"):
        computed[name] = students.columns[name]
    return np.stack([computed[name] for name in names], axis=1) if names else np.zeros((len(students), 0))


@dataclass
class AtRisk:
    """The at-risk task over OULAD's students, shared by the at-risk and engagement datamodules:
    class 0 (`classes[0]`) is a final_result in `at_risk`; split=random leaves the test set to the
    stratified split, split=presentation makes it the presentations in `test_presentations`.
    `numeric` names features of NUMERIC (click features over the days before day `click_days`),
    `categorical` columns of CATEGORICAL. Checked when built: a ConfigError names the key."""

    classes: list[str]
    at_risk: list[str]
    split: str
    test_presentations: list[str]
    click_days: int
    numeric: list[str]
    categorical: list[str]

    def __post_init__(self) -> None:
        if len(self.classes) != 2:
            raise ConfigError(f"datamodule.classes={self.classes}: at-risk prediction has two classes (at risk first)")
        if self.split not in SPLITS:
            raise ConfigError(f"datamodule.split={self.split!r}: choose one of {', '.join(SPLITS)}")
        unknown = [r for r in self.at_risk if r not in FINAL_RESULTS]
        if unknown or not self.at_risk:
            raise ConfigError(f"datamodule.at_risk={list(self.at_risk)}: name final_result values ({', '.join(FINAL_RESULTS)})")
        for key, names, allowed in (("numeric", self.numeric, NUMERIC), ("categorical", self.categorical, CATEGORICAL)):
            unknown = [n for n in names if n not in allowed]
            if unknown:
                raise ConfigError(f"datamodule.{key}: {unknown[0]!r} is not an OULAD feature; choose from {', '.join(allowed)}")
        if self.click_days < 1:
            raise ConfigError(f"datamodule.click_days={self.click_days}: must be at least 1")

    @property
    def needs_clicks(self) -> bool:
        return any(name in CLICK_FEATURES for name in self.numeric)

    def rows(self, students: Students, clicks: DailyClicks | None) -> Raw:
        columns = students.columns
        labels = np.where(np.isin(columns["final_result"], self.at_risk), 0, 1).astype(np.int64)
        numeric = numeric_features(students, clicks, self.numeric, self.click_days)
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
