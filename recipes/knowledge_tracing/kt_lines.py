"""The line formats of the DKT/DKVMN repositories (3 lines a student) and of AKT's (4 lines).

One record per student:

    4            <- sequence length
    12,7,7,3     <- skill ids, comma-separated
    0,1,1,0      <- responses, 1 = correct

AKT's format (`questions=True`) has the question ids on the line after the length:

    4
    301,88,88,17 <- question ids
    12,7,7,3     <- skill (concept) ids
    0,1,1,0

Blank lines between records, and trailing commas or whitespace on a line, are tolerated (files
in the wild have both). A record's student is its position in the file ("0", "1", ...).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainkit.errors import DataError


@dataclass
class KTSequence:
    """One student's answers (or a window of them), int64 arrays of one length.

    questions: the question id of each step, or None when the data has none.
    first: with multi-concept questions expanded into one step per concept (as pyKT does), the
    index of the first step of each step's question (first[t] == t for a question of one
    concept); None when every question has one concept.
    """

    skills: np.ndarray
    correct: np.ndarray
    questions: np.ndarray | None = None
    first: np.ndarray | None = None
    student: str = ""

    def __len__(self) -> int:
        return len(self.skills)

    def window(self, start: int, stop: int) -> KTSequence:
        """Steps start..stop-1; a question cut by the window's start begins at its step 0."""
        first = None if self.first is None else np.maximum(self.first[start:stop] - start, 0)
        questions = None if self.questions is None else self.questions[start:stop]
        return KTSequence(self.skills[start:stop], self.correct[start:stop], questions, first, self.student)


_FORMAT_HINT = "each record is 3 lines: the sequence length, the skill ids, the 0/1 responses"
_AKT_HINT = "each record is 4 lines: the sequence length, the question ids, the skill ids, the 0/1 responses"


def write_kt_lines(path: str | Path, sequences: Iterable[KTSequence], questions: bool = False) -> None:
    """3-line records, or AKT's 4-line ones with `questions` (every sequence must have them)."""
    with open(path, "w", encoding="utf-8") as f:
        for seq in sequences:
            if len(seq.skills) != len(seq.correct) or len(seq.skills) == 0:
                raise ValueError(f"need equal, non-zero lengths, got {len(seq.skills)} skills and {len(seq.correct)} responses")
            question_line = f"{_join(seq.questions)}\n" if questions else ""
            f.write(f"{len(seq.skills)}\n{question_line}{_join(seq.skills)}\n{_join(seq.correct)}\n")


def read_kt_lines(path: str | Path, questions: bool = False) -> list[KTSequence]:
    """All records of a file (AKT's 4-line ones with `questions`); DataError naming the file and
    line when it is missing or malformed."""
    path = Path(path)
    hint = _AKT_HINT if questions else _FORMAT_HINT
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the path") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file; {hint}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the file: {e.strerror}") from None
    # Keep the 1-based line numbers of the non-blank lines for the error messages.
    lines = [(no, line.strip()) for no, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise DataError(f"{path}: the file is empty; {hint}")
    size = 4 if questions else 3
    return [_parse_record(path, lines[i : i + size], size, hint, str(i // size)) for i in range(0, len(lines), size)]


def _parse_record(path: Path, record: list[tuple[int, str]], size: int, hint: str, student: str) -> KTSequence:
    start = record[0][0]
    if len(record) < size:
        raise DataError(
            f"{path}, line {start}: truncated record at end of file (it has {len(record)} of its {size} lines); "
            f"complete it or delete it; {hint}"
        )
    (_, length_line), *question_line, (ids_no, ids_line), (resp_no, resp_line) = record
    length = _parse_ints(path, start, length_line, "the sequence length", hint)
    if len(length) != 1 or length[0] < 1:
        raise DataError(
            f"{path}, line {start}: expected a sequence length (one positive integer), found {preview(length_line)}; "
            f"{hint}"
        )
    skills = _parse_ints(path, ids_no, ids_line, "skill ids", hint)
    correct = _parse_ints(path, resp_no, resp_line, "responses", hint)
    checked = [(ids_no, skills, "skill ids"), (resp_no, correct, "responses")]
    questions = None
    if question_line:
        (q_no, q_line), = question_line
        questions = _parse_ints(path, q_no, q_line, "question ids", hint)
        checked.append((q_no, questions, "question ids"))
    for line_no, values, what in checked:
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
    return KTSequence(skills, correct, questions, student=student)


def _parse_ints(path: Path, line_no: int, line: str, what: str, hint: str = _FORMAT_HINT) -> np.ndarray:
    fields = line.rstrip(", \t").split(",")
    try:
        return np.array([int(field) for field in fields], dtype=np.int64)
    except ValueError:
        position, field = next((i, f) for i, f in enumerate(fields, 1) if not _is_int(f))
        raise DataError(
            f"{path}, line {line_no}: {what} must be comma-separated integers, but item {position} is "
            f"{preview(field.strip())}; {hint}"
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
