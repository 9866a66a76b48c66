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

Questions (questions_per_skill > 0; 0 gives skill ids only). Skill k has questions_per_skill
questions, numbered k * questions_per_skill + j, each with a difficulty beta_q ~ Normal(0,
question_difficulty_std); a practice step draws one of its skill's questions uniformly. With
probability multi_concept_prob a question also needs a second concept, the first prerequisite of
its skill (root skills have none). Then, with m the mean mastery of the question's concepts,

    P(correct) = guess + (1 - guess - slip) * sigmoid(theta_s + mastery_gain * m - b_k - beta_q)

and the attempt teaches each of its concepts. The sequences hold one step per concept (the second
concept's step right after the first, with the same question and response: pyKT's expansion).

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

from .kt_csv import INTERACTION_COLUMNS, write_interactions_csv, write_pykt_csv
from .kt_lines import KTSequence, write_kt_lines
from trainkit.errors import ConfigError

# Part of the cache key: bump it when the dynamics change, so that no run reuses a dataset that
# an older simulator generated under the same config.
SIMULATOR_VERSION = 1  # questions_per_skill=0 simulates exactly what version 1 did

SPLITS = ("train", "valid", "test")
# The simulated datasets' file names in the CSV formats (pyKT's own names for its two files).
PYKT_TRAIN_VALID, PYKT_TEST = "train_valid_sequences.csv", "test_sequences.csv"
PYKT_FOLDS = 5
INTERACTIONS_FILE = "interactions.csv"
QUESTION_COLUMN = "problem_id"  # ASSISTments' name, in the simulated interaction CSV


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
    # Question ids (0: skill ids only).
    questions_per_skill: int = 0
    question_difficulty_std: float = 1.0
    multi_concept_prob: float = 0.2

    def __post_init__(self) -> None:
        # Ten students give every split at least one; two skills give late joiners somewhere to start.
        if self.num_students < 10:
            raise ConfigError(f"num_students={self.num_students}: the simulator needs at least 10 students")
        if self.num_skills < 2:
            raise ConfigError(f"num_skills={self.num_skills}: the simulator needs at least 2 skills")
        if not 1 <= self.min_length <= self.max_length:
            raise ConfigError(f"need 1 <= min_length <= max_length, got {self.min_length} and {self.max_length}")
        if self.questions_per_skill < 0:
            raise ConfigError(f"questions_per_skill={self.questions_per_skill}: must be 0 (no question ids) or more")


def simulate(cfg: SimulatorConfig) -> list[KTSequence]:
    """One sequence per student (student ids "0", "1", ...), fully determined by cfg."""
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
    bank = _QuestionBank(cfg, prereqs) if cfg.questions_per_skill else None
    if bank is not None:
        asked = np.empty((n, horizon), dtype=np.int64)
        question_rng = np.random.default_rng([cfg.seed, 3])  # a stream of its own: the schedule stays version 1's
    frontier = start.copy()  # the next skill each student has not yet been introduced to
    current = np.zeros(n, dtype=np.int64)
    left = np.zeros(n, dtype=np.int64)  # attempts left in the current block
    rows = np.arange(n)
    # Step all students together (vectorised over students); students past their length are
    # simulated too and cut off at the end, which is cheaper than masking them out.
    for t in range(horizon):
        _start_blocks(left == 0, frontier, start, current, left, cfg, rng)
        m = mastery[rows, current]
        if bank is None:
            logit = ability + cfg.mastery_gain * m - difficulty[current]
        else:
            asked[:, t] = question = bank.draw(current, question_rng)
            second = bank.second[question]  # num_skills (the pinned column) when none
            has_second = second < k_skills
            m_question = np.where(has_second, (m + mastery[rows, second]) / 2, m)
            logit = ability + cfg.mastery_gain * m_question - difficulty[current] - bank.difficulty[question]
        p = cfg.guess + (1.0 - cfg.guess - cfg.slip) / (1.0 + np.exp(-logit))
        skills[:, t] = current
        correct[:, t] = rng.random(n) < p
        _learn(mastery, rows, current, rate, prereqs, cfg)
        if bank is not None:
            _learn(mastery, rows[has_second], second[has_second], rate[has_second], prereqs, cfg)
        left -= 1
    if bank is None:
        return [KTSequence(skills[s, : lengths[s]].copy(), correct[s, : lengths[s]].copy(), student=str(s))
                for s in range(n)]
    return [bank.expand(skills[s, : lengths[s]], correct[s, : lengths[s]], asked[s, : lengths[s]], str(s))
            for s in range(n)]


def _learn(mastery: np.ndarray, rows: np.ndarray, skill: np.ndarray, rate: np.ndarray, prereqs: np.ndarray,
           cfg: SimulatorConfig) -> None:
    """One attempt at `skill` by each student in rows moves its mastery towards 1 (in place)."""
    m = mastery[rows, skill]
    prereq_mastery = mastery[rows[:, None], prereqs[skill]].min(axis=1)
    readiness = cfg.prereq_floor + (1.0 - cfg.prereq_floor) * prereq_mastery
    mastery[rows, skill] = m + rate * readiness * (1.0 - m)


class _QuestionBank:
    """The questions of the simulated curriculum: difficulty and second concept of each."""

    def __init__(self, cfg: SimulatorConfig, prereqs: np.ndarray) -> None:
        rng = np.random.default_rng([cfg.seed, 4])
        self.per_skill = cfg.questions_per_skill
        count = cfg.num_skills * self.per_skill
        self.difficulty = rng.normal(0.0, cfg.question_difficulty_std, count)
        skill = np.arange(count) // self.per_skill
        two = rng.random(count) < cfg.multi_concept_prob
        # prereqs[k, 0] is num_skills (none) for a root skill: such a question keeps one concept.
        self.second = np.where(two, prereqs[skill, 0], cfg.num_skills)
        self.num_skills = cfg.num_skills

    def draw(self, skill: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return skill * self.per_skill + rng.integers(0, self.per_skill, len(skill))

    def expand(self, skills: np.ndarray, correct: np.ndarray, questions: np.ndarray, student: str) -> KTSequence:
        """One step per concept: a question's second concept right after its first."""
        second = self.second[questions]
        count = 1 + (second < self.num_skills)
        index = np.repeat(np.arange(len(skills)), count)
        is_second = np.zeros(len(index), dtype=bool)
        is_second[np.cumsum(count)[count == 2] - 1] = True
        expanded_skills = np.where(is_second, second[index], skills[index])
        first = np.repeat(np.cumsum(count) - count, count)
        return KTSequence(expanded_skills, correct[index].copy(), questions[index].copy(), first, student)


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
    """train.txt, valid.txt and test.txt (skill ids only: the 3-line format has no questions)."""
    for name, sequences in split_students(students).items():
        write_kt_lines(folder / f"{name}.txt", sequences)


def _write_akt_lines(folder: Path, students: list[KTSequence], cfg: SimulatorConfig) -> None:
    """train.txt, valid.txt and test.txt in AKT's 4-line format (the simulator needs questions_per_skill)."""
    for name, sequences in split_students(students).items():
        write_kt_lines(folder / f"{name}.txt", sequences, questions=True)


def _write_pykt(folder: Path, students: list[KTSequence], cfg: SimulatorConfig) -> None:
    """pyKT's two files: the train and valid students in 5 folds of (nearly) equal size, as
    pyKT's preprocessing splits them, and the test students (fold -1)."""
    splits = split_students(students)
    train_valid = splits["train"] + splits["valid"]
    folds = np.arange(len(train_valid)) * PYKT_FOLDS // len(train_valid)
    questions = cfg.questions_per_skill > 0
    write_pykt_csv(folder / PYKT_TRAIN_VALID, zip(folds.tolist(), train_valid), questions=questions)
    write_pykt_csv(folder / PYKT_TEST, [(-1, student) for student in splits["test"]], questions=questions)


def _write_interactions(folder: Path, students: list[KTSequence], cfg: SimulatorConfig) -> None:
    """All students in one file (the loader splits them), one row per answer. order_id counts up
    through each student's answers and the rows are shuffled, so that every run exercises the
    loader's grouping by student and sorting by order_id. With questions, a problem_id column,
    and a two-concept question's concepts in one cell joined by `_`, as pyKT's ASSIST2009 has."""
    shuffle_rng = np.random.default_rng([cfg.seed, 2])  # a stream of its own
    if cfg.questions_per_skill == 0:
        user = np.concatenate([np.full(len(seq), s) for s, seq in enumerate(students)])
        skill = np.concatenate([seq.skills for seq in students])
        correct = np.concatenate([seq.correct for seq in students])
        rows = np.stack([user, skill, correct, np.arange(len(user))], axis=1)
        write_interactions_csv(folder / INTERACTIONS_FILE, rows[shuffle_rng.permutation(len(rows))].tolist())
        return
    rows = []
    for s, seq in enumerate(students):
        heads = np.flatnonzero(seq.first == np.arange(len(seq)))
        for head, end in zip(heads, [*heads[1:], len(seq)]):
            cell = "_".join(str(k) for k in seq.skills[head:end])
            rows.append((s, cell, int(seq.correct[head]), len(rows), int(seq.questions[head])))
    rows = [rows[i] for i in shuffle_rng.permutation(len(rows))]
    write_interactions_csv(folder / INTERACTIONS_FILE, rows, (*INTERACTION_COLUMNS, QUESTION_COLUMN))


# Format name -> (its folder in the cache, its writer).
FORMATS = {
    "kt_lines": ("kt_simulator", _write_kt_lines),
    "kt_akt": ("kt_simulator_akt", _write_akt_lines),
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
