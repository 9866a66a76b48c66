"""CSV tables, plain or gzipped, read into columns of strings with errors that name the place.

    table = read_table(path, ["Course", "Target"])     # DataError if a column is missing
    table.column("Course")                             # list[str], one per row
    table.floats("Admission grade")                    # float64 array; '' is NaN; a bad value is a DataError

Both of the recipe's sources go through here: UCI's table (`,` or, as UCI ships it, `;` as the
separator, a UTF-8 BOM, a header with a stray tab) and OULAD's quoted CRLF tables. Header names
are stripped of surrounding whitespace, so `"Daytime/evening attendance\t"` is found as
`Daytime/evening attendance`. Error messages give the file, the line (the header is line 1) and
the column.
"""
from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainkit.errors import DataError


def read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when its name ends in .gz; DataError when it cannot be read."""
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check datamodule.path") from None
    except (gzip.BadGzipFile, EOFError, zlib.error):
        raise DataError(f"{path}: not a valid gzip file (truncated download?); fetch it again") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the file: {e.strerror}") from None


def read_text(path: Path) -> str:
    """The file's text (see read_bytes), a UTF-8 BOM dropped."""
    try:
        return read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file; convert it (e.g. iconv -f latin1 -t utf-8)") from None


class Table:
    """The rows of one CSV file as columns of strings (surrounding whitespace stripped)."""

    def __init__(self, path: Path, header: list[str], rows: list[list[str]], lines: list[int]) -> None:
        self.path = path
        self.header = header
        self._index = {name: i for i, name in enumerate(header)}
        self._rows = rows
        self.lines = lines  # the file's line number of each row, for error messages

    def __len__(self) -> int:
        return len(self._rows)

    def column(self, name: str) -> list[str]:
        i = self._index[name]
        return [row[i] for row in self._rows]

    def floats(self, name: str) -> np.ndarray:
        """The column as float64; an empty field is NaN, anything else that is not a number a DataError."""
        values = self.column(name)
        try:
            numbers = np.array([float(v) if v else np.nan for v in values], dtype=np.float64)
        except ValueError:
            row = next(i for i, v in enumerate(values) if v and not _is_float(v))
            raise DataError(
                f"{self.path}, line {self.lines[row]}, column {name!r}: {values[row]!r} is not a number"
            ) from None
        if np.isinf(numbers).any():
            row = int(np.flatnonzero(np.isinf(numbers))[0])
            raise DataError(f"{self.path}, line {self.lines[row]}, column {name!r}: {values[row]!r} is not a finite number")
        return numbers

    def ints(self, name: str) -> np.ndarray:
        """The column as int64; every field must be an integer."""
        values = self.column(name)
        try:
            return np.array([int(v) for v in values], dtype=np.int64)
        except ValueError:
            row = next(i for i, v in enumerate(values) if not is_int(v))
            raise DataError(
                f"{self.path}, line {self.lines[row]}, column {name!r}: {values[row]!r} is not an integer"
            ) from None

    def check_values(self, name: str, allowed: Sequence[str], fix: str) -> list[str]:
        """The column, every value one of `allowed`; DataError at the first that is not."""
        values = self.column(name)
        allowed_set = set(allowed)
        for row, value in enumerate(values):
            if value not in allowed_set:
                raise DataError(
                    f"{self.path}, line {self.lines[row]}, column {name!r}: {value!r} is not one of "
                    f"{', '.join(allowed)}; {fix}"
                )
        return values


def read_table(path: Path, columns: Sequence[str], what: str = "") -> Table:
    """The file's rows; DataError naming the file when it is empty, lacks one of `columns`, or
    has a row of the wrong width. `what` describes the expected file in the messages."""
    text = read_text(path)
    first_line = text.split("\n", 1)[0]
    # UCI ships this table with `;`; other copies replaced it by `,`. Take whichever the header uses.
    delimiter = ";" if first_line.count(";") > first_line.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    hint = f" ({what})" if what else ""
    header = [name.strip() for name in next(reader, [])]
    if not any(header):
        raise DataError(f"{path}: the file is empty{hint}")
    present = set(header)
    missing = [name for name in columns if name not in present]
    if missing:
        raise DataError(
            f"{path}, line 1: no column {missing[0]!r}{hint}; the columns are {', '.join(map(repr, header))}"
        )
    rows, lines = [], []
    for row in reader:
        if len(row) != len(header):
            if not "".join(row).strip():
                continue  # a blank line
            raise DataError(
                f"{path}, line {reader.line_num}: {len(row)} fields but the header has {len(header)}{hint}"
            )
        rows.append([field.strip() for field in row])
        lines.append(reader.line_num)
    if not rows:
        raise DataError(f"{path}: the file has a header but no rows{hint}")
    return Table(path, header, rows, lines)


def find_file(folder: Path, stem: str) -> Path:
    """`<folder>/<stem>.gz` or `<folder>/<stem>`, whichever exists; DataError naming both when neither does."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"{folder}: no {stem}.gz or {stem}; check datamodule.path")


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
