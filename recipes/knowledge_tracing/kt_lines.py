"""The 3-line text format of the DKT and DKVMN repositories.

One record per student, three lines each:

    4            <- sequence length
    12,7,7,3     <- skill ids, comma-separated
    0,1,1,0      <- responses, 1 = correct

Blank lines between records, and trailing commas or whitespace on a line, are tolerated (files
in the wild have both).
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from trainkit.errors import DataError

KTSequence = tuple[np.ndarray, np.ndarray]  # (skill ids, 0/1 responses), int64, same length

_FORMAT_HINT = "each record is 3 lines: the sequence length, the skill ids, the 0/1 responses"


def write_kt_lines(path: str | Path, sequences: Iterable[KTSequence]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for skills, correct in sequences:
            if len(skills) != len(correct) or len(skills) == 0:
                raise ValueError(f"need equal, non-zero lengths, got {len(skills)} skills and {len(correct)} responses")
            f.write(f"{len(skills)}\n{_join(skills)}\n{_join(correct)}\n")


def read_kt_lines(path: str | Path) -> list[KTSequence]:
    """All records of a file; DataError naming the file and line when it is missing or malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the path") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file; {_FORMAT_HINT}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the file: {e.strerror}") from None
    # Keep the 1-based line numbers of the non-blank lines for the error messages.
    lines = [(no, line.strip()) for no, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise DataError(f"{path}: the file is empty; {_FORMAT_HINT}")
    return [_parse_record(path, lines[i : i + 3]) for i in range(0, len(lines), 3)]


def _parse_record(path: Path, record: list[tuple[int, str]]) -> KTSequence:
    start = record[0][0]
    if len(record) < 3:
        raise DataError(
            f"{path}, line {start}: truncated record at end of file (it has {len(record)} of its 3 lines); "
            f"complete it or delete it; {_FORMAT_HINT}"
        )
    (_, length_line), (ids_no, ids_line), (resp_no, resp_line) = record
    length = _parse_ints(path, start, length_line, "the sequence length")
    if len(length) != 1 or length[0] < 1:
        raise DataError(
            f"{path}, line {start}: expected a sequence length (one positive integer), found {preview(length_line)}; "
            f"{_FORMAT_HINT}"
        )
    skills = _parse_ints(path, ids_no, ids_line, "skill ids")
    correct = _parse_ints(path, resp_no, resp_line, "responses")
    for line_no, values, what in ((ids_no, skills, "skill ids"), (resp_no, correct, "responses")):
        if len(values) != length[0]:
            raise DataError(
                f"{path}, line {line_no}: the record starting at line {start} has length {length[0]} "
                f"but this line has {len(values)} {what}; make the length match the ids and responses"
            )
    bad = np.flatnonzero((correct != 0) & (correct != 1))
    if len(bad):
        raise DataError(
            f"{path}, line {resp_no}: response {bad[0] + 1} is {correct[bad[0]]}, not 0 or 1; "
            f"responses must be 1 (correct) or 0 (wrong)"
        )
    return skills, correct


def _parse_ints(path: Path, line_no: int, line: str, what: str) -> np.ndarray:
    fields = line.rstrip(", \t").split(",")
    try:
        return np.array([int(field) for field in fields], dtype=np.int64)
    except ValueError:
        position, field = next((i, f) for i, f in enumerate(fields, 1) if not _is_int(f))
        raise DataError(
            f"{path}, line {line_no}: {what} must be comma-separated integers, but item {position} is "
            f"{preview(field.strip())}; {_FORMAT_HINT}"
        ) from None


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def preview(text: str, limit: int = 40) -> str:
    """The text quoted, cut short: a misaligned record can put a whole id list where one number belongs."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _join(values: np.ndarray) -> str:
    return ",".join(map(str, np.asarray(values).tolist()))
