from __future__ import annotations

import numpy as np
import pytest

from trainkit.recipes.knowledge_tracing.kt_lines import KTSequence, read_kt_lines, write_kt_lines
from trainkit.errors import DataError


def _arrays(*values):
    return np.array(values, dtype=np.int64)


def test_round_trip(tmp_path):
    sequences = [KTSequence(_arrays(3, 1, 3), _arrays(0, 1, 1)), KTSequence(_arrays(7), _arrays(1)),
                 KTSequence(_arrays(0, 250), _arrays(1, 0))]
    path = tmp_path / "train.txt"
    write_kt_lines(path, sequences)
    assert path.read_text().splitlines()[:3] == ["3", "3,1,3", "0,1,1"]
    read = read_kt_lines(path)
    assert len(read) == len(sequences)
    for got, want in zip(read, sequences):
        assert got.skills.dtype == got.correct.dtype == np.int64
        np.testing.assert_array_equal(got.skills, want.skills)
        np.testing.assert_array_equal(got.correct, want.correct)
    assert [seq.student for seq in read] == ["0", "1", "2"] and read[0].questions is None


def test_tolerates_blank_lines_trailing_commas_and_whitespace(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("\n3\n1,2,3,\n0,1,1,\n\n\n 2 \r\n 4, 5 , \r\n1,0\t\n\n")
    (s1, c1), (s2, c2) = ((seq.skills, seq.correct) for seq in read_kt_lines(path))
    np.testing.assert_array_equal(s1, [1, 2, 3])
    np.testing.assert_array_equal(c1, [0, 1, 1])
    np.testing.assert_array_equal(s2, [4, 5])
    np.testing.assert_array_equal(c2, [1, 0])


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "train.txt"
    with pytest.raises(DataError, match="not found") as err:
        read_kt_lines(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("text", ["", "\n \n\t\n"])
def test_empty_file(tmp_path, text):
    path = tmp_path / "valid.txt"
    path.write_text(text)
    with pytest.raises(DataError, match="empty") as err:
        read_kt_lines(path)
    assert "valid.txt" in str(err.value)


GOOD = "2\n1,2\n0,1\n"


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        (GOOD + "3\n1,2\n0,1,1\n", 5, "has length 3 but this line has 2 skill ids"),
        (GOOD + "\n3\n1,2,3\n0,1\n", 7, "has length 3 but this line has 2 responses"),
        (GOOD + "2\n1,x\n0,1\n", 5, "item 2 is 'x'"),
        (GOOD + "2\n1,,2\n0,1\n", 5, "item 2 is ''"),
        (GOOD + "2\n1,2\n0,1.0\n", 6, "item 2 is '1.0'"),
        (GOOD + "two\n1,2\n0,1\n", 4, "item 1 is 'two'"),
        (GOOD + "2,3\n1,2\n0,1\n", 4, "expected a sequence length"),
        (GOOD + "0\n1\n1\n", 4, "expected a sequence length"),
        (GOOD + "2\n1,2\n0,2\n", 6, "response 2 is 2, not 0 or 1"),
        (GOOD + "\n2\n1,2\n", 5, "truncated record"),
        (GOOD + "2\n", 4, "truncated record"),
    ],
)
def test_malformed_record_names_file_and_line(tmp_path, text, line, what):
    path = tmp_path / "test.txt"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        read_kt_lines(path)
    message = str(err.value)
    assert f"test.txt, line {line}:" in message
    assert what in message
    assert "\n" not in message


def test_binary_file_is_a_data_error(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(DataError, match="not a UTF-8 text file"):
        read_kt_lines(path)
