"""Two CSV formats of knowledge-tracing data: pyKT's sequence files and raw interaction logs.

pyKT (`train_valid_sequences.csv`, `test_sequences.csv`, written by pyKT's preprocessing): one
row per window of a student's sequence, the ids and responses as quoted comma-separated lists,
padded to pyKT's maxlen with -1. The columns used are `fold` (0-4 on train/valid rows, -1 on
test rows), `concepts` and `responses`, and when present `uid` (the student), `questions` (the
question ids) and `is_repeat` (1 on the second and later concept of a multi-concept question,
which pyKT expands into one step per concept); any others (timestamps, selectmasks, ...) are
ignored.

    fold,uid,questions,concepts,responses,is_repeat
    0,17,"5,9,9,-1","3,3,8,-1","1,0,0,-1","0,0,1,-1"

Interactions: one row per answer, the column names chosen by the caller (user, skill, 0/1
correct, optionally a question id and an order or timestamp to sort each student's answers by).
A skill cell may name several concepts joined by `_` (pyKT's convention, `3_8`): the answer is
expanded into one step per concept, as pyKT does.

    user_id,skill_id,correct,order_id
    17,3,1,40231

Errors name the file and line (the header is line 1) and the fix, as for kt_lines.
"""
from __future__ import annotations

import csv
import io
import operator
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .kt_lines import KTSequence, preview
from trainkit.errors import DataError

PYKT_PAD = -1
PYKT_COLUMNS = ("fold", "uid", "concepts", "responses", "selectmasks")
PYKT_QUESTION_COLUMNS = ("fold", "uid", "questions", "concepts", "responses", "is_repeat", "selectmasks")
INTERACTION_COLUMNS = ("user_id", "skill_id", "correct", "order_id")  # ASSISTments' names
CONCEPT_SEPARATOR = "_"  # pyKT's joiner of a multi-concept question's concepts in one cell

_PYKT_HINT = "pyKT's sequence CSV has the columns fold, concepts and responses (comma-separated lists in quotes)"
_INTERACTIONS_HINT = (
    "an interaction CSV has a header, then one row per answer; datamodule.user_col, skill_col, "
    "correct_col and order_col (or null) name its user, skill, 0/1 correct and order columns"
)

PyKTWindow = tuple[int, KTSequence]  # (fold, window)
Rows = Iterator[tuple[int, list[str]]]  # (line number, fields)


# -- pyKT --------------------------------------------------------------------------------------
def write_pykt_csv(
    path: str | Path, students: Iterable[tuple[int, KTSequence]], max_len: int = 200, min_len: int = 3,
    questions: bool = False,
) -> None:
    """One (fold, sequence) per student, written as pyKT's preprocessing does: cut into windows of
    max_len, the last one padded with -1 to max_len, or dropped when shorter than min_len. With
    `questions`, also the questions and is_repeat columns (every sequence must have questions)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PYKT_QUESTION_COLUMNS if questions else PYKT_COLUMNS)
        for uid, (fold, seq) in enumerate(students):
            for start in range(0, len(seq), max_len):
                part = seq.window(start, start + max_len)
                if len(part) < min_len:
                    continue
                pad = [PYKT_PAD] * (max_len - len(part))
                columns = [part.skills, part.correct]
                if questions:
                    repeat = np.zeros(len(part), dtype=np.int64) if part.first is None else part.first != np.arange(len(part))
                    columns = [part.questions, *columns, repeat]
                columns.append(np.ones(len(part), dtype=np.int64))
                writer.writerow([fold, uid, *(_join([*column, *pad]) for column in columns)])


def read_pykt_csv(path: str | Path) -> list[PyKTWindow]:
    """Every row as (fold, window), the -1 padding dropped; the window's student is its uid (else
    its line), with questions when the file has the column, and `first` when is_repeat marks a
    multi-concept question."""
    path = Path(path)
    columns, rows = _read_table(path, ("fold", "concepts", "responses"), _PYKT_HINT)
    return [_parse_pykt_row(path, line, row, columns) for line, row in rows]


def _parse_pykt_row(path: Path, line: int, row: list[str], columns: dict[str, int]) -> PyKTWindow:
    fold_text = row[columns["fold"]].strip()
    try:
        fold = int(fold_text)
    except ValueError:
        raise DataError(f"{path}, line {line}: fold is {preview(fold_text)}, not an integer; {_PYKT_HINT}") from None
    concepts = _parse_ints(path, line, row[columns["concepts"]], "concepts")
    responses = _parse_ints(path, line, row[columns["responses"]], "responses")
    if len(concepts) != len(responses):
        raise DataError(
            f"{path}, line {line}: {len(concepts)} concepts but {len(responses)} responses; "
            f"each step needs one of each (padding: -1 in both lists)"
        )
    # pyKT masks padding by the concepts (-1); every real step needs a 0/1 response.
    real = concepts != PYKT_PAD
    concepts, responses = concepts[real], responses[real]
    bad = np.flatnonzero((responses != 0) & (responses != 1))
    if len(bad):
        raise DataError(
            f"{path}, line {line}: a response is {responses[bad[0]]}, not 0 or 1; responses must be "
            f"1 (correct) or 0 (wrong), and -1 only where the concept is -1 (padding)"
        )
    extra = {}
    for name in ("questions", "is_repeat"):
        if name in columns:
            values = _parse_ints(path, line, row[columns[name]], name)
            if len(values) != len(real):
                raise DataError(
                    f"{path}, line {line}: {len(values)} {name} but {len(real)} concepts; each step needs one of each"
                )
            extra[name] = values[real]
    first = None
    if "is_repeat" in extra:
        repeat = extra["is_repeat"] == 1
        if len(repeat) and repeat[0]:
            repeat[0] = False  # a window may start inside a question: its rows begin there
        first = np.maximum.accumulate(np.where(repeat, 0, np.arange(len(repeat))))
    student = row[columns["uid"]].strip() if "uid" in columns else f"{path.name}:{line}"
    return fold, KTSequence(concepts, responses, extra.get("questions"), first, student)


# -- interactions ------------------------------------------------------------------------------
def write_interactions_csv(path: str | Path, rows: Iterable[tuple], columns: Iterable[str] = INTERACTION_COLUMNS) -> None:
    """Rows (user, skill, correct, order, by default) under the header `columns`."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)


def read_interactions_csv(
    path: str | Path, user_col: str, skill_col: str, correct_col: str, order_col: str | None,
    question_col: str | None = None,
) -> list[KTSequence]:
    """One sequence per student, students in order of first appearance.

    Each student's answers are stable-sorted by order_col (numerically when every value is a
    number, else as text, which orders ISO timestamps), or kept in file order when it is None.
    Skill and question ids are integers when every id is one, else strings. A skill cell with
    several concepts (`3_8`) becomes one step per concept, its question's `first` step marked.
    """
    path = Path(path)
    optional = [name for name in (order_col, question_col) if name]
    names = [user_col, skill_col, correct_col, *optional]
    columns, rows = _read_table(path, names, _INTERACTIONS_HINT)
    pick = operator.itemgetter(*(columns[name] for name in names))
    lines, picked = [], []
    for line, row in rows:
        lines.append(line)
        picked.append(pick(row))
    users, skills, answers, *rest = (np.array([value.strip() for value in column]) for column in zip(*picked))
    order = [rest.pop(0)] if order_col else []
    question_ids = rest[0] if question_col else None
    if (i := _first(skills == "")) is not None:
        raise DataError(
            f"{path}, line {lines[i]}: {skill_col} is empty; every answer needs a skill id (drop the row)"
        )
    if (i := _first((answers != "0") & (answers != "1"))) is not None:
        raise DataError(
            f"{path}, line {lines[i]}: {correct_col} is {preview(str(answers[i]))}, not 0 or 1; "
            f"responses must be 1 (correct) or 0 (wrong)"
        )
    if order_col and (i := _first(order[0] == "")) is not None:
        raise DataError(
            f"{path}, line {lines[i]}: {order_col} is empty; give every row its order, or set order_col=null"
        )
    if question_col and (i := _first(question_ids == "")) is not None:
        raise DataError(
            f"{path}, line {lines[i]}: {question_col} is empty; every answer needs a question id (or set "
            f"question_col=null)"
        )

    _, first_row, student = np.unique(users, return_index=True, return_inverse=True)
    appearance = np.argsort(np.argsort(first_row))[student]  # students numbered by first appearance
    when = _as_numbers(order[0], np.float64) if order_col else np.arange(len(users))
    by_student = np.lexsort((when, appearance))  # stable: rows with equal order keep file order
    students = np.split(by_student, np.cumsum(np.bincount(appearance))[:-1])
    student_ids = users[np.sort(first_row)]  # in order of first appearance
    # One step per concept of each answer (a plain cell is one concept); ids typed over the whole file.
    parts = [cell.split(CONCEPT_SEPARATOR) for cell in skills]
    count = np.array([len(part) for part in parts])
    concepts = _as_numbers(np.array([c for part in parts for c in part]), np.int64)
    offset = np.cumsum(count) - count  # each answer's first step among all steps
    responses = answers.astype(np.int64)
    questions = None if question_ids is None else _as_numbers(question_ids, np.int64)
    multi = bool((count > 1).any())
    sequences = []
    for rows, name in zip(students, student_ids):
        steps = np.concatenate([np.arange(offset[r], offset[r] + count[r]) for r in rows]) if multi else rows
        first = np.repeat(np.cumsum(count[rows]) - count[rows], count[rows]) if multi else None
        sequences.append(KTSequence(
            concepts[steps], np.repeat(responses[rows], count[rows]),
            None if questions is None else np.repeat(questions[rows], count[rows]), first, str(name),
        ))
    return sequences


def _first(flags: np.ndarray) -> int | None:
    """The index of the first True, or None."""
    hits = np.flatnonzero(flags)
    return int(hits[0]) if len(hits) else None


def _as_numbers(values: np.ndarray, dtype: type) -> np.ndarray:
    """values as numbers when every one is a number of that type, else unchanged (text)."""
    try:
        return values.astype(dtype)
    except ValueError:
        return values


# -- shared ------------------------------------------------------------------------------------
def _read_table(path: Path, wanted: Iterable[str], hint: str) -> tuple[dict[str, int], Rows]:
    """The header's column positions, and an iterator over the rows with their line numbers."""
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark, which would
        # otherwise become part of the first column's name.
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the path") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file; convert it (e.g. iconv -f latin1 -t utf-8)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the file: {e.strerror}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        raise DataError(f"{path}: the file is empty; {hint}")
    columns = {name.strip(): i for i, name in enumerate(header)}
    for name in wanted:
        if name not in columns:
            raise DataError(f"{path}, line 1: no column {name!r}; the columns are {', '.join(columns)}; {hint}")
    return columns, _rows(path, reader, len(header), hint)


def _rows(path: Path, reader: Any, width: int, hint: str) -> Rows:
    """Rows as (line number, fields), blank lines skipped; DataError if there are none."""
    found = False
    for row in reader:
        if len(row) != width:
            if not "".join(row).strip():
                continue  # a blank line
            raise DataError(
                f"{path}, line {reader.line_num}: {len(row)} fields but the header has {width}; "
                f"quote fields that contain commas"
            )
        found = True
        yield reader.line_num, row
    if not found:
        raise DataError(f"{path}: the file has a header but no rows; {hint}")


def _parse_ints(path: Path, line: int, text: str, what: str) -> np.ndarray:
    values = []
    for position, field in enumerate(text.strip().rstrip(",").split(","), 1):
        try:
            values.append(int(field))
        except ValueError:
            raise DataError(
                f"{path}, line {line}: {what} must be comma-separated integers, but item {position} is "
                f"{preview(field.strip())}; {_PYKT_HINT}"
            ) from None
    return np.array(values, dtype=np.int64)


def _join(values: Iterable[int]) -> str:
    return ",".join(str(int(v)) for v in values)
