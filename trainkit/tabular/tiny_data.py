"""Tiny generated files in the real formats of the UCI and OULAD data, for the tests (and to try
the recipes without the data): the same file names, column names, quoting and encodings as the
shared copies, a few hundred rows whose classes depend on the features, so that a model learns.

    write_uci(folder)      folder/data.csv.gz: the UCI table (BOM, the header's stray tab, 37 columns)
    write_oulad(folder)    folder/studentInfo.csv.gz, studentRegistration.csv.gz (quoted, CRLF),
                           studentVle_daily.csv.gz (unquoted, LF), 4 presentations in 2013 and 2014
"""
from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np

UCI_HEADER = [
    "Marital status", "Application mode", "Application order", "Course", "Daytime/evening attendance\t",
    "Previous qualification", "Previous qualification (grade)", "Nacionality", "Mother's qualification",
    "Father's qualification", "Mother's occupation", "Father's occupation", "Admission grade", "Displaced",
    "Educational special needs", "Debtor", "Tuition fees up to date", "Gender", "Scholarship holder",
    "Age at enrollment", "International",
    *[f"Curricular units {sem} sem ({what})" for sem in ("1st", "2nd")
      for what in ("credited", "enrolled", "evaluations", "approved", "grade", "without evaluations")],
    "Unemployment rate", "Inflation rate", "GDP", "Target",
]
UCI_CODES = {  # a few of each column's real codes
    "Marital status": [1, 2, 4], "Application mode": [1, 15, 17, 39], "Course": [171, 9254, 9500, 9773],
    "Previous qualification": [1, 19, 39], "Nacionality": [1, 41], "Mother's qualification": [1, 19, 37, 38],
    "Father's qualification": [1, 19, 37, 38], "Mother's occupation": [3, 5, 9], "Father's occupation": [3, 7, 9],
}


def write_uci(folder: Path, rows: int = 240, seed: int = 0, separator: str = ",") -> Path:
    """data.csv.gz with `rows` students; the class follows the approved curricular units."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    approved = rng.integers(0, 7, rows)
    target = np.where(approved < 2, "Dropout", np.where(approved < 4, "Enrolled", "Graduate"))
    target[rng.random(rows) < 0.1] = "Enrolled"  # some noise
    out = io.StringIO()
    writer = csv.writer(out, delimiter=separator, lineterminator="\n")
    writer.writerow(UCI_HEADER)
    for i in range(rows):
        row = []
        for name in UCI_HEADER[:-1]:
            if name in UCI_CODES:
                row.append(int(rng.choice(UCI_CODES[name])))
            elif "approved" in name:
                row.append(int(approved[i]))
            elif "grade" in name:
                row.append(round(float(rng.uniform(10, 16) if approved[i] else 0.0), 2))
            elif name in ("Unemployment rate", "Inflation rate", "GDP"):
                row.append(round(float(rng.normal(5, 3)), 1))
            elif name == "Age at enrollment":
                row.append(int(rng.integers(17, 50)))
            else:
                row.append(int(rng.integers(0, 2)))
        writer.writerow([*row, target[i]])
    path = folder / "data.csv.gz"
    path.write_bytes(gzip.compress(out.getvalue().encode("utf-8-sig"), mtime=0))
    return path


OULAD_PRESENTATIONS = [("AAA", "2013J"), ("AAA", "2014J"), ("BBB", "2013B"), ("BBB", "2014B")]
INFO_HEADER = ["code_module", "code_presentation", "id_student", "gender", "region", "highest_education",
               "imd_band", "age_band", "num_of_prev_attempts", "studied_credits", "disability", "final_result"]
DAILY_HEADER = ["code_module", "code_presentation", "id_student", "date", "n_rows", "n_sites", "sum_click"]


def write_oulad(folder: Path, rows: int = 240, seed: int = 0) -> Path:
    """The three tables with `rows` student-presentations; at-risk students click less and stop earlier."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    info, registration, daily = [], [], []
    results = rng.choice(["Pass", "Distinction", "Fail", "Withdrawn"], rows, p=[0.4, 0.1, 0.2, 0.3])
    for i in range(rows):
        module, presentation = OULAD_PRESENTATIONS[i % len(OULAD_PRESENTATIONS)]
        student = 10000 + i
        at_risk = results[i] in ("Fail", "Withdrawn")
        imd = "" if i % 17 == 0 else str(rng.choice(["0-10%", "10-20", "20-30%", "90-100%"]))
        info.append([module, presentation, student, rng.choice(["M", "F"]), rng.choice(["Scotland", "Wales", "London Region"]),
                     rng.choice(["A Level or Equivalent", "HE Qualification", "Lower Than A Level"]), imd,
                     rng.choice(["0-35", "35-55", "55<="]), int(rng.integers(0, 3)), int(rng.choice([60, 120])),
                     rng.choice(["N", "Y"]), results[i]])
        registration.append([module, presentation, student, "" if i % 31 == 0 else int(rng.integers(-150, 0)),
                             int(rng.integers(0, 60)) if results[i] == "Withdrawn" else ""])
        last_day = int(rng.integers(0, 20)) if at_risk else 60
        for day in range(-10, min(last_day, 40)):
            if rng.random() < (0.2 if at_risk else 0.6):
                sites = int(rng.integers(1, 8))
                daily.append([module, presentation, student, day, sites + int(rng.integers(0, 3)), sites,
                              sites * int(rng.integers(1, 6))])
    _write(folder / "studentInfo.csv.gz", INFO_HEADER, info, quoted=True)
    _write(folder / "studentRegistration.csv.gz",
           ["code_module", "code_presentation", "id_student", "date_registration", "date_unregistration"],
           registration, quoted=True)
    _write(folder / "studentVle_daily.csv.gz", DAILY_HEADER, daily, quoted=False)
    return folder


def _write(path: Path, header: list[str], rows: list[list], quoted: bool) -> None:
    """As the shared copies: the OU's tables quoted with CRLF, the derived daily file plain with LF."""
    out = io.StringIO()
    if quoted:
        writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    else:
        writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(gzip.compress(out.getvalue().encode("utf-8"), mtime=0))
