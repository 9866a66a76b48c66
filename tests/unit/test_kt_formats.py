"""The pyKT and interaction CSV formats: readers, writers, their datamodules and their errors."""
from __future__ import annotations

import typing

import numpy as np
import pytest
import torch

from trainkit.recipes.knowledge_tracing.datamodule import (
    InteractionsDataModule,
    KTDataModule,
    PyKTDataModule,
    random_split,
)
from trainkit.recipes.knowledge_tracing.kt_csv import (
    read_interactions_csv,
    read_pykt_csv,
    write_interactions_csv,
    write_pykt_csv,
)
from trainkit.recipes.knowledge_tracing.kt_lines import KTSequence, write_kt_lines
from trainkit.recipes.knowledge_tracing.simulator import SimulatorConfig, simulate
from trainkit.errors import DataError

# pyKT's own layout: extra columns, quoted lists, -1 padding to its maxlen (5 here).
PYKT_TRAIN_VALID = """fold,uid,questions,concepts,responses,timestamps,selectmasks
0,u1,"1,2,3,4,-1","7,7,9,12,-1","1,0,1,1,-1","1,2,3,4,-1","1,1,1,1,-1"
1,u2,"5,6,7,-1,-1","9,12,12,-1,-1","0,0,1,-1,-1","5,6,7,-1,-1","1,1,1,-1,-1"
2,u3,"1,1,2,3,3","7,7,9,12,12","1,1,1,0,1","1,2,3,4,5","1,1,1,1,1"
2,u3,"4,5,6,-1,-1","7,40,40,-1,-1","0,1,1,-1,-1","6,7,8,-1,-1","1,1,1,-1,-1"
"""
PYKT_TEST = """fold,uid,questions,concepts,responses,timestamps,selectmasks
-1,u4,"1,2,3,-1,-1","40,9,7,-1,-1","1,1,0,-1,-1","1,2,3,-1,-1","1,1,1,-1,-1"
"""


def _seq(skills, correct):
    return KTSequence(np.array(skills, dtype=np.int64), np.array(correct, dtype=np.int64))


def _assert_sequences_equal(got, want):
    """got: sequences; want: sequences or (skills, correct) pairs."""
    assert len(got) == len(want)
    for seq, expected in zip(got, want):
        want_skills, want_correct = (expected.skills, expected.correct) if isinstance(expected, KTSequence) else expected
        np.testing.assert_array_equal(seq.skills, want_skills)
        np.testing.assert_array_equal(seq.correct, want_correct)


def _pykt_folder(tmp_path, train_valid=PYKT_TRAIN_VALID, test=PYKT_TEST):
    folder = tmp_path / "pykt"
    folder.mkdir()
    (folder / "train_valid_sequences.csv").write_text(train_valid)
    (folder / "test_sequences.csv").write_text(test)
    return folder


def _values(loader, key):
    """Each window's real values of `key`, over the loader's batches."""
    return [row[mask].tolist() for batch in loader for row, mask in zip(batch[key], batch["mask"])]


def test_constructor_annotations_match_the_config_types():
    common = {"path": str | None, "num_skills": int | None, "num_questions": int | None, "max_len": int,
              "batch_size": int, "num_workers": int, "num_students": int, "seed": int, "cache_dir": str | None,
              "questions_per_skill": int, "return": type(None)}
    assert typing.get_type_hints(PyKTDataModule.__init__) == {
        **common, "fold": int | None, "folds": int, "test_each_fold": bool
    }
    assert typing.get_type_hints(InteractionsDataModule.__init__) == {
        **common, "user_col": str, "skill_col": str, "correct_col": str, "order_col": str | None,
        "question_col": str | None,
    }


# -- pyKT --------------------------------------------------------------------------------------
def test_pykt_reads_pykt_files_and_drops_the_padding(tmp_path):
    folder = _pykt_folder(tmp_path)
    rows = read_pykt_csv(folder / "train_valid_sequences.csv")
    assert [fold for fold, _ in rows] == [0, 1, 2, 2]
    _assert_sequences_equal([seq for _, seq in rows], [
        _seq([7, 7, 9, 12], [1, 0, 1, 1]),
        _seq([9, 12, 12], [0, 0, 1]),
        _seq([7, 7, 9, 12, 12], [1, 1, 1, 0, 1]),
        _seq([7, 40, 40], [0, 1, 1]),
    ])


@pytest.mark.parametrize("length", [3, 5, 12, 13])
def test_pykt_round_trip_windows_as_pykt_does(tmp_path, length):
    skills = np.arange(length, dtype=np.int64) % 4
    path = tmp_path / "seqs.csv"
    write_pykt_csv(path, [(3, KTSequence(skills, skills % 2))], max_len=5)
    # Windows of 5; a last window shorter than 3 is dropped, as in pyKT's preprocessing.
    want = [skills[start : start + 5] for start in range(0, length, 5) if length - start >= 3]
    rows = read_pykt_csv(path)
    assert [fold for fold, _ in rows] == [3] * len(want)
    _assert_sequences_equal([seq for _, seq in rows], [(w, w % 2) for w in want])


def test_pykt_writer_pads_with_minus_one_as_pykt(tmp_path):
    path = tmp_path / "seqs.csv"
    write_pykt_csv(path, [(0, _seq([4, 5, 6], [1, 0, 1])), (1, _seq([7, 8], [1, 1]))], max_len=5)
    assert path.read_text().splitlines() == [
        "fold,uid,concepts,responses,selectmasks",
        '0,0,"4,5,6,-1,-1","1,0,1,-1,-1","1,1,1,-1,-1"',  # the 2-step student is dropped
    ]


@pytest.mark.parametrize("fold", [0, 1, 2])
def test_pykt_fold_picks_the_validation_rows(tmp_path, fold):
    data = PyKTDataModule(path=str(_pykt_folder(tmp_path)), fold=fold, num_skills=4, batch_size=8)
    data.setup("fit")
    data.setup("test")
    valid_lengths = {0: [4], 1: [3], 2: [5, 3]}[fold]
    assert sorted(len(c) for c in _values(data.val_dataloader(), "correct")) == sorted(valid_lengths)
    assert len(_values(data.train_dataloader(), "correct")) == 4 - len(valid_lengths)
    # Ids 7, 9, 12, 40 -> 0..3 over all files; the test row is 40, 9, 7.
    assert _values(data.test_dataloader(), "skills") == [[3, 1, 0]]


def test_pykt_fold_not_in_the_file(tmp_path):
    with pytest.raises(DataError, match="datamodule.fold=7 .*choose one of 0, 1, 2"):
        PyKTDataModule(path=str(_pykt_folder(tmp_path)), fold=7, num_skills=4).setup("fit")


def test_pykt_accepts_the_files_before_windowing(tmp_path):
    folder = _pykt_folder(tmp_path)
    (folder / "train_valid_sequences.csv").rename(folder / "train_valid.csv")
    (folder / "test_sequences.csv").rename(folder / "test.csv")
    data = PyKTDataModule(path=str(folder), num_skills=4)
    data.setup("test")
    assert _values(data.test_dataloader(), "skills") == [[3, 1, 0]]


def test_pykt_drops_windows_shorter_than_3(tmp_path):
    test = "fold,questions,concepts,responses\n-1,\"1,2\",\"1,2\",\"1,0\"\n-1,\"1,2,3\",\"1,2,3\",\"1,0,0\"\n"
    data = PyKTDataModule(path=str(_pykt_folder(tmp_path, test=test)), num_skills=7)
    data.setup("test")
    assert _values(data.test_dataloader(), "correct") == [[1, 0, 0]]


def test_pykt_gives_the_same_batches_as_kt_lines(tmp_path):
    sequences = [_seq(np.arange(n) % 6 * 10, np.arange(n) % 2) for n in (3, 8, 17, 4, 30)]
    lines = tmp_path / "lines"
    lines.mkdir()
    for name, seqs in (("train", sequences[:3]), ("valid", sequences[3:]), ("test", sequences)):
        write_kt_lines(lines / f"{name}.txt", seqs)
    pykt = tmp_path / "pykt"
    pykt.mkdir()
    # kt_lines' train is fold 1 here, its valid fold 0 (the validation fold).
    folds = [(1, s) for s in sequences[:3]] + [(0, s) for s in sequences[3:]]
    write_pykt_csv(pykt / "train_valid_sequences.csv", folds)
    write_pykt_csv(pykt / "test_sequences.csv", [(-1, s) for s in sequences])
    loaders = []
    for data in (KTDataModule(path=str(lines), num_skills=6, max_len=10, batch_size=3),
                 PyKTDataModule(path=str(pykt), num_skills=6, max_len=10, batch_size=3)):
        data.setup("fit")
        data.setup("test")
        loaders.append((list(data.val_dataloader()), list(data.test_dataloader())))
    for lines_batches, pykt_batches in zip(*loaders):
        assert len(lines_batches) == len(pykt_batches)
        for a, b in zip(lines_batches, pykt_batches):
            assert all(torch.equal(a[key], b[key]) for key in ("skills", "correct", "mask"))


PYKT_ERRORS = {  # case: (the file, what the error says after its path)
    "missing column": (
        'fold,uid,concepts\n0,1,"1,2"\n',
        "line 1: no column 'responses'; the columns are fold, uid, concepts",
    ),
    "response not 0/1": (
        'fold,concepts,responses\n0,"1,2","1,0"\n0,"1,2","1,2"\n',
        "line 3: a response is 2, not 0 or 1",
    ),
    "lengths differ": ('fold,concepts,responses\n\n0,"1,2,3","1,0"\n', "line 3: 3 concepts but 2 responses"),
    "not an integer": ('fold,concepts,responses\n0,"1,x,3","1,0,1"\n', "line 2: concepts must be .* item 2 is 'x'"),
    "empty file": ("", "the file is empty"),
    "header only": ("fold,concepts,responses\n", "the file has a header but no rows"),
    "fields": ("fold,concepts,responses\n0,1,2,1,0\n", "line 2: 5 fields but the header has 3"),
}


@pytest.mark.parametrize("case", PYKT_ERRORS)
def test_pykt_malformed_file_names_file_and_line(tmp_path, case):
    text, message = PYKT_ERRORS[case]
    path = tmp_path / "train_valid_sequences.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        read_pykt_csv(path)
    assert str(err.value).startswith(str(path))


def test_pykt_missing_files_are_named(tmp_path):
    folder = _pykt_folder(tmp_path)
    (folder / "test_sequences.csv").unlink()
    with pytest.raises(DataError, match="no test_sequences.csv or test.csv") as err:
        PyKTDataModule(path=str(folder), num_skills=4).setup("test")
    assert str(folder) in str(err.value)
    with pytest.raises(DataError, match="no such folder"):
        PyKTDataModule(path=str(tmp_path / "nope")).prepare_data()


# -- interactions ------------------------------------------------------------------------------
def test_interactions_round_trip_groups_and_sorts_per_student(tmp_path):
    students = [_seq([3, 1, 3, 2], [0, 1, 1, 1]), _seq([2, 2], [1, 0]), _seq([1, 3, 3], [0, 0, 1])]
    rows = [(user, int(s), int(c), 100 * user + t) for user, seq in enumerate(students)
            for t, (s, c) in enumerate(zip(seq.skills, seq.correct))]
    shuffled = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    path = tmp_path / "answers.csv"
    write_interactions_csv(path, shuffled)
    got = read_interactions_csv(path, "user_id", "skill_id", "correct", "order_id")
    first_seen = list(dict.fromkeys(user for user, *_ in shuffled))
    _assert_sequences_equal(got, [students[user] for user in first_seen])


def test_interactions_keep_file_order_without_an_order_column(tmp_path):
    path = tmp_path / "answers.csv"
    path.write_text("student,time,kc,ok,extra\nb,9,x,1,?\na,5,y,0,?\nb,1,y,0,?\na,5,x,1,?\n")
    in_file_order = read_interactions_csv(path, "student", "kc", "ok", None)
    _assert_sequences_equal(in_file_order, [(np.array(["x", "y"]), [1, 0]), (np.array(["y", "x"]), [0, 1])])
    by_time = read_interactions_csv(path, "student", "kc", "ok", "time")
    # b's answers sorted by time; a's two equal times keep file order (a stable sort).
    _assert_sequences_equal(by_time, [(np.array(["y", "x"]), [0, 1]), (np.array(["y", "x"]), [0, 1])])


def test_interactions_sort_timestamps_as_text_and_numbers_as_numbers(tmp_path):
    path = tmp_path / "answers.csv"
    path.write_text("user_id,skill_id,correct,t\n1,1,1,10\n1,2,1,9\n1,3,0,100\n")
    (numeric,) = read_interactions_csv(path, "user_id", "skill_id", "correct", "t")
    assert numeric.skills.tolist() == [2, 1, 3]
    path.write_text("user_id,skill_id,correct,t\n1,1,1,2012-09-01 10:00\n1,2,1,2012-08-31 23:00\n")
    (text,) = read_interactions_csv(path, "user_id", "skill_id", "correct", "t")
    assert text.skills.tolist() == [2, 1]


def test_interactions_string_skill_ids_are_remapped_densely(tmp_path):
    path = tmp_path / "answers.csv"
    lines = ["user_id,skill_id,correct"] + [f"u{u},{skill},{(u + t) % 2}" for u in range(20)
                                             for t, skill in enumerate(["fractions", "algebra", "graphs"])]
    path.write_text("\n".join(lines) + "\n")
    data = InteractionsDataModule(path=str(path), num_skills=3, order_col=None, batch_size=64)
    data.setup("fit")
    data.setup("test")
    windows = [w for loader in (data.train_dataloader(), data.val_dataloader(), data.test_dataloader())
               for w in _values(loader, "skills")]
    assert windows == [[1, 0, 2]] * 20  # algebra 0, fractions 1, graphs 2: the sorted names


def test_interactions_split_by_student_is_seeded_80_10_10():
    students = [_seq([s], [1]) for s in range(50)]
    split = random_split(students, seed=0)
    assert [len(split[name]) for name in ("train", "valid", "test")] == [40, 5, 5]
    ids = [int(seq.skills[0]) for name in ("train", "valid", "test") for seq in split[name]]
    assert sorted(ids) == list(range(50))
    again = random_split(students, seed=0)
    assert all(a is b for name in split for a, b in zip(split[name], again[name]))
    other = random_split(students, seed=1)
    assert [seq.skills[0] for seq in other["valid"]] != [seq.skills[0] for seq in split["valid"]]


INTERACTION_ERRORS = {  # case: (the file, what the error says after its path)
    "missing column": (
        "user_id,skill,correct\n1,2,1\n",
        "line 1: no column 'skill_id'; the columns are user_id, skill, correct",
    ),
    "response not 0/1": ("user_id,skill_id,correct\n1,2,1\n1,2,TRUE\n", "line 3: correct is 'TRUE', not 0 or 1"),
    "empty skill": ("user_id,skill_id,correct\n1,2,1\n\n1,,1\n", "line 4: skill_id is empty"),
    "fields": ("user_id,skill_id,correct\n1,2,1,5\n", "line 2: 4 fields but the header has 3"),
    "empty file": ("\n", "the file is empty"),
    "header only": ("user_id,skill_id,correct\n\n", "the file has a header but no rows"),
}


@pytest.mark.parametrize("case", INTERACTION_ERRORS)
def test_interactions_malformed_file_names_file_and_line(tmp_path, case):
    text, message = INTERACTION_ERRORS[case]
    path = tmp_path / "answers.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        read_interactions_csv(path, "user_id", "skill_id", "correct", None)
    assert str(err.value).startswith(str(path))


def test_interactions_missing_file_is_named(tmp_path):
    missing = tmp_path / "answers.csv"
    with pytest.raises(DataError, match="no such file") as err:
        InteractionsDataModule(path=str(missing)).prepare_data()
    assert str(missing) in str(err.value)
    with pytest.raises(DataError, match="file not found"):
        read_interactions_csv(missing, "user_id", "skill_id", "correct", None)


# -- the simulated datasets, end to end ----------------------------------------------------------
SMALL = {"num_students": 100, "num_skills": 10}


def _all_sequences(data):
    data.setup("fit")
    data.setup("test")
    return {split: [(seq.skills.tolist(), seq.correct.tolist()) for seq in seqs] for split, seqs in data._sequences.items()}


def test_simulated_pykt_holds_the_simulated_students(tmp_path):
    students = [(seq.skills.tolist(), seq.correct.tolist()) for seq in simulate(SimulatorConfig(**SMALL))]
    assert sorted({skill for s, _ in students for skill in s}) == list(range(10))  # so remapping is identity

    def windows(group):  # pyKT's: 200 steps, a last one shorter than 3 dropped
        return [(s[i : i + 200], c[i : i + 200]) for s, c in group for i in range(0, len(s), 200) if len(s) - i >= 3]

    data = _all_sequences(PyKTDataModule(**SMALL, cache_dir=str(tmp_path)))
    # The simulator's 80/10/10 split: the first 90 students in 5 folds of 18, the last 10 test.
    assert data == {"train": windows(students[18:90]), "valid": windows(students[:18]), "test": windows(students[90:])}


def test_simulated_interactions_hold_the_simulated_students(tmp_path):
    students = [(seq.skills.tolist(), seq.correct.tolist()) for seq in simulate(SimulatorConfig(**SMALL))]
    data = _all_sequences(InteractionsDataModule(**SMALL, cache_dir=str(tmp_path)))
    assert [len(data[split]) for split in ("train", "valid", "test")] == [80, 10, 10]
    assert sorted(data["train"] + data["valid"] + data["test"]) == sorted(students)
