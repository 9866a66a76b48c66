from __future__ import annotations

import os

import numpy as np
import pytest

from trainkit.recipes.knowledge_tracing import simulator
from trainkit.recipes.knowledge_tracing.kt_lines import read_kt_lines
from trainkit.recipes.knowledge_tracing.simulator import (
    SimulatorConfig,
    cached_dataset,
    config_hash,
    generate_dataset,
    prerequisites,
    simulate,
)
from trainkit.errors import ConfigError

SMALL = SimulatorConfig(num_students=100, num_skills=20)


def test_same_seed_gives_same_data():
    first, second = simulate(SMALL), simulate(SMALL)
    assert len(first) == len(second) == SMALL.num_students
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.skills, b.skills)
        np.testing.assert_array_equal(a.correct, b.correct)


def test_other_seed_gives_other_data():
    first = simulate(SMALL)
    other = simulate(SimulatorConfig(num_students=100, num_skills=20, seed=1))
    assert any(len(a) != len(b) or not np.array_equal(a.correct, b.correct) for a, b in zip(first, other))


def test_sequences_are_in_range():
    cfg = SimulatorConfig(num_students=500, num_skills=20)
    for seq in simulate(cfg):
        skills, correct = seq.skills, seq.correct
        assert skills.dtype == correct.dtype == np.int64
        assert cfg.min_length <= len(skills) == len(correct) <= cfg.max_length
        assert skills.min() >= 0 and skills.max() < cfg.num_skills
        assert set(np.unique(correct)) <= {0, 1}


def test_lengths_have_the_configured_median():
    lengths = [len(seq) for seq in simulate(SimulatorConfig(num_students=1000, num_skills=20))]
    assert 70 <= np.median(lengths) <= 90


def test_every_skill_appears():
    cfg = SimulatorConfig(num_students=500)
    seen = np.unique(np.concatenate([seq.skills for seq in simulate(cfg)]))
    np.testing.assert_array_equal(seen, np.arange(cfg.num_skills))


def test_prerequisites_are_earlier_skills():
    cfg = SimulatorConfig()
    graph = prerequisites(cfg)
    assert len(graph) == cfg.num_skills
    assert all(graph[k] == [] for k in range(cfg.num_root_skills))
    for k in range(cfg.num_root_skills, cfg.num_skills):
        assert 1 <= len(graph[k]) <= 2
        assert all(k - cfg.prereq_window <= p < k for p in graph[k])


def test_too_few_students_is_a_config_error():
    with pytest.raises(ConfigError, match="num_students=5"):
        SimulatorConfig(num_students=5)


# -- the data carries signal ------------------------------------------------------------------


def _attempt_table(cfg: SimulatorConfig) -> dict[str, np.ndarray]:
    """Per attempt: correct minus its skill's mean (so skill difficulty does not confound the
    comparisons), past attempts on this skill, and the fewest past attempts on a prerequisite
    (-1 for root skills)."""
    graph = prerequisites(cfg)
    skill, correct, practice, prereq_practice = [], [], [], []
    for seq in simulate(cfg):
        skills, answers = seq.skills, seq.correct
        counts = np.zeros(cfg.num_skills, dtype=np.int64)
        for k, y in zip(skills, answers):
            skill.append(k)
            correct.append(y)
            practice.append(counts[k])
            prereq_practice.append(min((counts[p] for p in graph[k]), default=-1))
            counts[k] += 1
    skill, correct = np.array(skill), np.array(correct)
    skill_rate = np.bincount(skill, weights=correct) / np.bincount(skill)
    return {
        "residual": correct - skill_rate[skill],
        "practice": np.array(practice),
        "prereq_practice": np.array(prereq_practice),
    }


@pytest.fixture(scope="module")
def attempts() -> dict[str, np.ndarray]:
    return _attempt_table(SimulatorConfig(num_students=1000))


def test_correctness_rises_with_practice(attempts):
    residual, practice = attempts["residual"], attempts["practice"]
    assert residual[practice >= 5].mean() - residual[practice == 0].mean() > 0.1


def test_practised_prerequisites_help(attempts):
    # Early attempts on a skill with prerequisites, by how much the student practised them.
    residual, prereq_practice = attempts["residual"], attempts["prereq_practice"]
    early = (attempts["practice"] >= 1) & (attempts["practice"] <= 4)
    practised = residual[early & (prereq_practice >= 3)]
    skipped = residual[early & (prereq_practice == 0)]
    assert len(skipped) > 500
    assert practised.mean() - skipped.mean() > 0.04


# -- files and cache --------------------------------------------------------------------------


def test_generate_dataset_writes_80_10_10_splits(tmp_path):
    out = tmp_path / "data"
    generate_dataset(out, SMALL)
    students = simulate(SMALL)
    split = {name: read_kt_lines(out / f"{name}.txt") for name in ("train", "valid", "test")}
    assert [len(split[name]) for name in ("train", "valid", "test")] == [80, 10, 10]
    for got, want in zip(split["train"] + split["valid"] + split["test"], students):
        np.testing.assert_array_equal(got.skills, want.skills)
        np.testing.assert_array_equal(got.correct, want.correct)
    assert sorted(os.listdir(tmp_path)) == ["data"]  # no temporary folder left behind


def test_generate_dataset_refuses_an_existing_folder(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        generate_dataset(out, SMALL)
    assert os.listdir(out) == ["keep.txt"]
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    written = []

    def write_then_fail(path, sequences):
        if written:
            raise KeyboardInterrupt  # killed while writing the second file
        written.append(path)
        path.write_text("1\n0\n1\n")

    monkeypatch.setattr(simulator, "write_kt_lines", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "data", SMALL)
    assert os.listdir(tmp_path) == []


def test_cached_dataset_generates_once_then_reuses(tmp_path, monkeypatch):
    path = cached_dataset(SMALL, str(tmp_path))
    assert path == tmp_path / "kt_simulator" / config_hash(SMALL)
    assert sorted(os.listdir(path)) == ["test.txt", "train.txt", "valid.txt"]
    mtime = (path / "train.txt").stat().st_mtime_ns

    def fail(*args):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(simulator, "generate_dataset", fail)
    assert cached_dataset(SMALL, str(tmp_path)) == path
    assert (path / "train.txt").stat().st_mtime_ns == mtime


def test_cache_key_follows_the_config(tmp_path):
    other = SimulatorConfig(num_students=100, num_skills=20, seed=1)
    assert cached_dataset(SMALL, str(tmp_path)) != cached_dataset(other, str(tmp_path))
    assert config_hash(SMALL) == config_hash(SimulatorConfig(num_students=100, num_skills=20))


def test_cache_dir_defaults_to_trainkit_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINKIT_CACHE", str(tmp_path))
    assert cached_dataset(SMALL, None) == tmp_path / "kt_simulator" / config_hash(SMALL)


def test_cached_dataset_keeps_the_winner_of_a_race(tmp_path, monkeypatch):
    target = tmp_path / "kt_simulator" / config_hash(SMALL)
    real_simulate = simulator.simulate

    def another_process_finishes_first(cfg):
        target.mkdir(parents=True)
        (target / "train.txt").write_text("winner")
        return real_simulate(cfg)

    monkeypatch.setattr(simulator, "simulate", another_process_finishes_first)
    assert cached_dataset(SMALL, str(tmp_path)) == target
    assert os.listdir(target) == ["train.txt"]
    assert (target / "train.txt").read_text() == "winner"
    assert os.listdir(target.parent) == [target.name]
