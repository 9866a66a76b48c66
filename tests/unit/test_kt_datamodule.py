from __future__ import annotations

import math
import typing

import numpy as np
import pytest
import torch
from torch.utils.data import RandomSampler, SequentialSampler

from trainkit.recipes.knowledge_tracing.baselines import per_skill_prior_auc
from trainkit.recipes.knowledge_tracing.datamodule import KTDataModule, collate_kt, make_windows
from trainkit.recipes.knowledge_tracing.kt_lines import KTSequence, write_kt_lines
from trainkit.errors import ConfigError, DataError


def _seq(skills, correct):
    return KTSequence(np.array(skills, dtype=np.int64), np.array(correct, dtype=np.int64))


def _write_splits(folder, train, valid, test):
    folder.mkdir(exist_ok=True)
    for name, sequences in (("train", train), ("valid", valid), ("test", test)):
        write_kt_lines(folder / f"{name}.txt", sequences)
    return folder


@pytest.fixture
def sparse_ids(tmp_path):
    """Skill ids 5, 40, 900 (spread over the files), to be remapped to 0, 1, 2."""
    return _write_splits(
        tmp_path / "data",
        train=[_seq([900, 5, 5], [1, 0, 1]), _seq([5, 900], [0, 0])],
        valid=[_seq([40, 5], [1, 1])],
        test=[_seq([900, 40, 40, 5], [0, 1, 1, 1])],
    )


def test_constructor_annotations_match_the_config_types():
    hints = typing.get_type_hints(KTDataModule.__init__)
    assert hints == {
        "path": str | None,
        "questions": bool,
        "num_skills": int | None,
        "num_questions": int | None,
        "max_len": int,
        "batch_size": int,
        "num_workers": int,
        "num_students": int,
        "seed": int,
        "cache_dir": str | None,
        "questions_per_skill": int,
        "return": type(None),
    }


def test_skill_ids_are_remapped_over_all_files(sparse_ids):
    data = KTDataModule(path=str(sparse_ids), num_skills=3)
    data.setup("fit")
    (valid,) = list(data.val_dataloader())
    assert valid["skills"][0].tolist() == [1, 0]  # 40 -> 1, 5 -> 0
    data.setup("test")
    (test,) = list(data.test_dataloader())
    assert test["skills"][0].tolist() == [2, 1, 1, 0]
    assert test["correct"][0].tolist() == [0, 1, 1, 1]


def test_num_skills_too_small(sparse_ids):
    data = KTDataModule(path=str(sparse_ids), num_skills=2)
    with pytest.raises(DataError, match="set datamodule.num_skills=3"):
        data.setup("fit")


def test_missing_folder_names_it(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="no such folder") as err:
        KTDataModule(path=str(missing)).prepare_data()
    assert str(missing) in str(err.value)


def test_missing_file_names_it(sparse_ids):
    (sparse_ids / "test.txt").unlink()
    with pytest.raises(DataError, match="not found") as err:
        KTDataModule(path=str(sparse_ids), num_skills=3).setup("test")
    assert str(sparse_ids / "test.txt") in str(err.value)


def test_bad_max_len_is_a_config_error():
    with pytest.raises(ConfigError, match="max_len"):
        KTDataModule(max_len=1)


@pytest.mark.parametrize("length", [1, 2, 99, 100, 101, 199, 250, 300])
def test_windows_keep_every_interaction_once(length):
    skills = np.arange(length, dtype=np.int64)
    windows = make_windows([KTSequence(skills, skills % 2)], max_len=100)
    assert all(2 <= len(w) <= 100 for w in windows)
    assert len(windows) == length // 100 + (length % 100 >= 2)
    covered = np.concatenate([w.skills for w in windows]) if windows else np.array([], dtype=np.int64)
    dropped = 1 if length % 100 == 1 else 0  # a 1-step tail has no next step to predict
    np.testing.assert_array_equal(covered, skills[: length - dropped])
    for w in windows:
        np.testing.assert_array_equal(w.correct, w.skills % 2)


def test_batches_are_padded_with_a_mask(tmp_path):
    lengths = [3, 7, 2, 5]
    sequences = [_seq(np.arange(n) % 4, np.ones(n)) for n in lengths]
    folder = _write_splits(tmp_path / "data", sequences, sequences, sequences)
    data = KTDataModule(path=str(folder), num_skills=4, batch_size=4)
    data.setup("validate")
    (batch,) = list(data.val_dataloader())
    assert batch["skills"].shape == batch["correct"].shape == batch["mask"].shape == (4, 7)
    assert batch["skills"].dtype == batch["correct"].dtype == torch.long
    assert batch["mask"].dtype == torch.bool
    assert batch["mask"].sum(1).tolist() == lengths
    padding = ~batch["mask"]
    assert not batch["skills"][padding].any() and not batch["correct"][padding].any()
    assert batch["correct"][batch["mask"]].all()


def test_collate_pads_to_the_longest_in_the_batch():
    batch = collate_kt([_seq([1, 2], [1, 0]), _seq([3, 3, 3], [0, 1, 1])])
    assert batch["skills"].tolist() == [[1, 2, 0], [3, 3, 3]]
    assert batch["correct"].tolist() == [[1, 0, 0], [0, 1, 1]]
    assert batch["mask"].tolist() == [[True, True, False], [True, True, True]]


def test_only_training_shuffles(sparse_ids):
    data = KTDataModule(path=str(sparse_ids), num_skills=3)
    data.setup("fit")
    data.setup("test")
    assert isinstance(data.train_dataloader().sampler, RandomSampler)
    assert not data.train_dataloader().drop_last
    for loader in (data.val_dataloader(), data.test_dataloader(), data.predict_dataloader()):
        assert isinstance(loader.sampler, SequentialSampler)


def test_stage_loads_only_its_splits(sparse_ids):
    data = KTDataModule(path=str(sparse_ids), num_skills=3)
    data.setup("test")
    assert len(list(data.test_dataloader())) == 1
    with pytest.raises(RuntimeError, match="setup"):
        data.train_dataloader()


def test_default_data_comes_from_the_simulator_cache(tmp_path):
    data = KTDataModule(num_skills=10, num_students=50, max_len=20, batch_size=8, cache_dir=str(tmp_path))
    data.prepare_data()
    (folder,) = (tmp_path / "kt_simulator").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["test.txt", "train.txt", "valid.txt"]
    data.setup("fit")
    batches = list(data.train_dataloader())
    assert all(batch["skills"].shape[1] <= 20 for batch in batches)
    assert max(int(batch["skills"].max()) for batch in batches) < 10


def test_workers_can_load_batches(tmp_path):
    data = KTDataModule(num_skills=10, num_students=50, batch_size=16, num_workers=1, cache_dir=str(tmp_path))
    data.prepare_data()
    data.setup("validate")
    assert sum(int(batch["mask"].sum()) for batch in data.val_dataloader()) > 0


def test_prior_baseline_scores_every_step_but_the_first_of_each_window():
    # Skill 0 is always right and skill 1 always wrong on train: a perfect prior, except on the
    # first step of each eval window, which must not be scored.
    train = [_seq([0, 1, 0, 1], [1, 0, 1, 0])]
    windows = [_seq([0, 1, 0], [0, 0, 1]), _seq([1, 0], [1, 1]), _seq([1, 1], [1, 0])]
    assert per_skill_prior_auc(train, windows) == 1.0
    # A skill missing from train gets train's global rate, 0.5 here: between the others.
    unseen = windows + [_seq([0, 7], [1, 1]), _seq([0, 7], [1, 0])]
    assert math.isclose(per_skill_prior_auc(train, unseen), 8.5 / 9)
