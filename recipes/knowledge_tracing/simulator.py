"""Student simulator: the knowledge-tracing recipe's default dataset.

The recipe must train out of the box, without downloading anything, on data where history
matters: a model that tracks what each student has learnt (DKT) should clearly beat one that only
knows how hard each skill is. Random labels would teach nothing, so we simulate students.

Dynamics
--------
Skills. Skills 0..K-1 are numbered in curriculum order, which is also a topological order of a
prerequisite DAG: the first `num_root_skills` skills have none; every later skill has 1 or 2
prerequisites drawn among the `prereq_window` skills just before it (a chapter builds on the last
few). Skill k has a difficulty b_k ~ Normal(difficulty_mean, difficulty_std).

Students. Student s has an ability theta_s ~ Normal(0, ability_std) (as in item response theory)
and a learning rate r_s ~ LogNormal(log(learning_rate_median), learning_rate_sigma).

Mastery. m[s, k] in [0, 1] starts at 0, and each attempt at skill k moves it towards 1:

    m <- m + r_s * readiness * (1 - m)
    readiness = prereq_floor + (1 - prereq_floor) * min(mastery of k's prerequisites)

(readiness is 1 for root skills), so a skill whose prerequisites are not mastered is learnt slowly.

Answers. With m the mastery before the attempt (the student learns from answering):

    P(correct) = guess + (1 - guess - slip) * sigmoid(theta_s + mastery_gain * m - b_k)

Schedule. A student works in blocks of attempts on one skill. A block introduces the next new
skill in curriculum order (length 1 + Poisson(block_mean - 1)) or, with probability
`revisit_prob`, reviews a skill introduced earlier (length 1 + Poisson(revisit_block_mean - 1));
once every skill is introduced, all blocks are reviews. Most students start at skill 0; a fraction
`late_start_prob` joins late, at a skill in the first half of the curriculum, without having
practised the earlier ones: they struggle where they skipped the prerequisites.

Lengths. Each student answers round(LogNormal(log(length_median), length_sigma)) questions,
clipped to [min_length, max_length].

Files
-----
`cached_dataset` writes the students once per config, in the format of the datamodule that asks
(kt_lines, kt_pykt or kt_interactions; see FORMATS), so that each loader reads real files.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .kt_csv import write_interactions_csv, write_pykt_csv
from .kt_lines import KTSequence, write_kt_lines
from trainkit.errors import ConfigError

# Part of the cache key: bump it when the dynamics change, so that no run reuses a dataset that
# an older simulator generated under the same config.
SIMULATOR_VERSION = 1

SPLITS = ("train", "valid", "test")
# The simulated datasets' file names in the CSV formats (pyKT's own names for its two files).
PYKT_TRAIN_VALID, PYKT_TEST = "train_valid_sequences.csv", "test_sequences.csv"
PYKT_FOLDS = 5
INTERACTIONS_FILE = "interactions.csv"


@dataclass(frozen=True)
class SimulatorConfig:
    num_students: int = 4000
    num_skills: int = 50
    seed: int = 0
    # Sequence lengths.
    length_median: float = 80.0
    length_sigma: float = 0.8
    min_length: int = 10
    max_length: int = 300
    # Skills and their prerequisite DAG.
    num_root_skills: int = 3
    prereq_window: int = 5
    two_prereq_prob: float = 0.5
    difficulty_mean: float = 0.0
    difficulty_std: float = 1.0
    # Students.
    ability_std: float = 1.2
    learning_rate_median: float = 0.25
    learning_rate_sigma: float = 0.5
    # Learning and answering.
    prereq_floor: float = 0.1
    mastery_gain: float = 3.0
    guess: float = 0.1
    slip: float = 0.05
    # Schedule.
    block_mean: float = 5.0
    revisit_prob: float = 0.25
    revisit_block_mean: float = 2.0
    late_start_prob: float = 0.2

    def __post_init__(self) -> None:
        # Ten students give every split at least one; two skills give late joiners somewhere to start.
        if self.num_students < 10:
            raise ConfigError(f"num_students={self.num_students}: the simulator needs at least 10 students")
        if self.num_skills < 2:
            raise ConfigError(f"num_skills={self.num_skills}: the simulator needs at least 2 skills")
        if not 1 <= self.min_length <= self.max_length:
            raise ConfigError(f"need 1 <= min_length <= max_length, got {self.min_length} and {self.max_length}")


def simulate(cfg: SimulatorConfig) -> list[KTSequence]:
    """One (skill ids, 0/1 responses) pair of int64 arrays per student, fully determined by cfg."""
    rng = np.random.default_rng(cfg.seed)
    n, k_skills = cfg.num_students, cfg.num_skills
    prereqs = _padded_prerequisites(cfg)
    difficulty = rng.normal(cfg.difficulty_mean, cfg.difficulty_std, k_skills)
    ability = rng.normal(0.0, cfg.ability_std, n)
    rate = np.exp(rng.normal(np.log(cfg.learning_rate_median), cfg.learning_rate_sigma, n))
    lengths = _lengths(cfg, rng)
    late = rng.random(n) < cfg.late_start_prob
    # Late joiners start in the first half, so that they still have a curriculum ahead of them.
    start = np.where(late, rng.integers(1, k_skills // 2 + 1, n), 0)

    horizon = int(lengths.max())
    skills = np.empty((n, horizon), dtype=np.int64)
    correct = np.empty((n, horizon), dtype=np.int64)
    # An extra column pinned at 1 is where missing prerequisites point (_padded_prerequisites), so
    # the minimum over a skill's prerequisites needs no special case.
    mastery = np.zeros((n, k_skills + 1))
    mastery[:, k_skills] = 1.0
    frontier = start.copy()  # the next skill each student has not yet been introduced to
    current = np.zeros(n, dtype=np.int64)
    left = np.zeros(n, dtype=np.int64)  # attempts left in the current block
    rows = np.arange(n)
    # Step all students together (vectorised over students); students past their length are
    # simulated too and cut off at the end, which is cheaper than masking them out.
    for t in range(horizon):
        _start_blocks(left == 0, frontier, start, current, left, cfg, rng)
        m = mastery[rows, current]
        logit = ability + cfg.mastery_gain * m - difficulty[current]
        p = cfg.guess + (1.0 - cfg.guess - cfg.slip) / (1.0 + np.exp(-logit))
        skills[:, t] = current
        correct[:, t] = rng.random(n) < p
        prereq_mastery = mastery[rows[:, None], prereqs[current]].min(axis=1)
        readiness = cfg.prereq_floor + (1.0 - cfg.prereq_floor) * prereq_mastery
        mastery[rows, current] = m + rate * readiness * (1.0 - m)
        left -= 1
    return [(skills[s, : lengths[s]].copy(), correct[s, : lengths[s]].copy()) for s in range(n)]


def prerequisites(cfg: SimulatorConfig) -> list[list[int]]:
    """The prerequisite DAG that simulate(cfg) uses: graph[k] lists skill k's prerequisites."""
    # A stream of its own, so that the graph is known without simulating (tests, analyses).
    rng = np.random.default_rng([cfg.seed, 1])
    graph: list[list[int]] = [[] for _ in range(min(cfg.num_root_skills, cfg.num_skills))]
    for k in range(cfg.num_root_skills, cfg.num_skills):
        candidates = np.arange(max(0, k - cfg.prereq_window), k)
        count = min(len(candidates), 1 + int(rng.random() < cfg.two_prereq_prob))
        graph.append(sorted(rng.choice(candidates, size=count, replace=False).tolist()))
    return graph


def _padded_prerequisites(cfg: SimulatorConfig) -> np.ndarray:
    """[num_skills, 2] prerequisite ids, padded with num_skills (the pinned mastery column)."""
    padded = np.full((cfg.num_skills, 2), cfg.num_skills, dtype=np.int64)
    for k, prereqs in enumerate(prerequisites(cfg)):
        padded[k, : len(prereqs)] = prereqs
    return padded


def _lengths(cfg: SimulatorConfig, rng: np.random.Generator) -> np.ndarray:
    raw = rng.lognormal(np.log(cfg.length_median), cfg.length_sigma, cfg.num_students)
    return np.clip(np.round(raw), cfg.min_length, cfg.max_length).astype(np.int64)


def _start_blocks(
    need: np.ndarray,
    frontier: np.ndarray,
    start: np.ndarray,
    current: np.ndarray,
    left: np.ndarray,
    cfg: SimulatorConfig,
    rng: np.random.Generator,
) -> None:
    """Give the students flagged in `need` their next block (updates the arrays in place)."""
    idx = np.flatnonzero(need)
    introduced = frontier[idx] - start[idx]  # skills start..frontier-1 have been introduced
    finished = frontier[idx] >= cfg.num_skills
    revisit = (introduced > 0) & (finished | (rng.random(len(idx)) < cfg.revisit_prob))
    review_skill = start[idx] + (rng.random(len(idx)) * introduced).astype(np.int64)
    current[idx] = np.where(revisit, review_skill, frontier[idx])
    frontier[idx] += ~revisit
    new_len = 1 + rng.poisson(cfg.block_mean - 1.0, len(idx))
    review_len = 1 + rng.poisson(cfg.revisit_block_mean - 1.0, len(idx))
    left[idx] = np.where(revisit, review_len, new_len)


def generate_dataset(out_dir: Path, cfg: SimulatorConfig, data_format: str = "kt_lines") -> None:
    """Simulate and write the students into out_dir in data_format (a key of FORMATS).

    Atomic: the files are written to a temporary folder next to out_dir, which is then renamed,
    so a reader never sees a half-written dataset, whether the writer is killed or races another.
    Raises FileExistsError, leaving the existing folder untouched, when out_dir already exists.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _, write = FORMATS[data_format]
    students = simulate(cfg)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        write(tmp_dir, students, cfg)
        try:
            tmp_dir.rename(out_dir)
        except OSError:
            if out_dir.exists():
                raise FileExistsError(f"{out_dir} already exists") from None
            raise
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)


def split_students(students: list[KTSequence]) -> dict[str, list[KTSequence]]:
    """80/10/10 train/valid/test. Students are i.i.d. draws, so contiguous slices are random
    (and deterministic) splits."""
    n_train, n_valid = int(0.8 * len(students)), int(0.1 * len(students))
    return {
        "train": students[:n_train],
        "valid": students[n_train : n_train + n_valid],
        "test": students[n_train + n_valid :],
    }


def _write_kt_lines(folder: Path, students: list[KTSequence], cfg: SimulatorConfig) -> None:
    """train.txt, valid.txt and test.txt."""
    for name, sequences in split_students(students).items():
        write_kt_lines(folder / f"{name}.txt", sequences)


def _write_pykt(folder: Path, students: list[KTSequence], cfg: SimulatorConfig) -> None:
    """pyKT's two files: the train and valid students in 5 folds of (nearly) equal size, as
    pyKT's preprocessing splits them, and the test students (fold -1)."""
    splits = split_students(students)
    train_valid = splits["train"] + splits["valid"]
    folds = np.arange(len(train_valid)) * PYKT_FOLDS // len(train_valid)
    write_pykt_csv(folder / PYKT_TRAIN_VALID, zip(folds.tolist(), train_valid))
    write_pykt_csv(folder / PYKT_TEST, [(-1, student) for student in splits["test"]])


def _write_interactions(folder: Path, students: list[KTSequence], cfg: SimulatorConfig) -> None:
    """All students in one file (the loader splits them), one row per answer. order_id counts up
    through each student's answers and the rows are shuffled, so that every run exercises the
    loader's grouping by student and sorting by order_id."""
    user = np.concatenate([np.full(len(skills), s) for s, (skills, _) in enumerate(students)])
    skill = np.concatenate([skills for skills, _ in students])
    correct = np.concatenate([correct for _, correct in students])
    rows = np.stack([user, skill, correct, np.arange(len(user))], axis=1)
    shuffle = np.random.default_rng([cfg.seed, 2]).permutation(len(rows))  # a stream of its own
    write_interactions_csv(folder / INTERACTIONS_FILE, rows[shuffle].tolist())


# Format name -> (its folder in the cache, its writer).
FORMATS = {
    "kt_lines": ("kt_simulator", _write_kt_lines),
    "kt_pykt": ("kt_simulator_pykt", _write_pykt),
    "kt_interactions": ("kt_simulator_interactions", _write_interactions),
}


def cached_dataset(cfg: SimulatorConfig, cache_dir: str | None, data_format: str = "kt_lines") -> Path:
    """The folder `<cache_dir>/<format's folder>/<hash of cfg>/`, generated on first use.

    cache_dir None means $TRAINKIT_CACHE if set, else ~/.cache/trainkit.
    """
    folder, _ = FORMATS[data_format]
    out_dir = cache_root(cache_dir) / folder / config_hash(cfg)
    # The folder only ever appears complete (generate_dataset renames it into place).
    if not out_dir.exists():
        try:
            generate_dataset(out_dir, cfg, data_format)
        except FileExistsError:
            pass  # another process generated the same data first
    return out_dir


def cache_root(cache_dir: str | None) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get("TRAINKIT_CACHE") or str(Path.home() / ".cache" / "trainkit")
    return Path(cache_dir).expanduser()


def config_hash(cfg: SimulatorConfig) -> str:
    """Short stable hash of every cfg field and the simulator version."""
    key = json.dumps({"version": SIMULATOR_VERSION, **dataclasses.asdict(cfg)}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]
