"""What every knowledge-tracing model of the recipe is trained and scored on: the next answer.

A model's forward `model(skills, correct, questions=None, first=None)` gives logits [B, T-1],
entry t predicting the answer at step t+1 from steps 0..t (from the steps of earlier questions
only, when `first` is given: see below). `KTObjective` turns them into the loss, the logged values
and the predictions: masked BCE over real next steps (padding never counts), AUC and accuracy over
every such prediction of the epoch (exact, not an average of per-batch AUCs). DKT, SAKT and AKT
each hold one and call it from their step methods, so that their numbers mean the same thing.

Multi-concept questions, as pyKT: training and the concept-level numbers (`val/auc`, ...) use
the expanded steps, one per concept. The question-level numbers (`val/question_auc`,
`val/question_acc`, logged when some question has several concepts) predict each concept of a
question from the steps of the earlier questions only (`first`: no concept of the question sees
its sibling's answer, which is its own), and score the question by the mean of its concepts'
probabilities (pyKT's "late fusion, mean"); a question starting a window has no history and is
not scored.

Knowledge states: after a student's last answer, the probability of a correct answer on each
concept, asked next (a question of unknown difficulty, for a model with question ids): the CSV
that `trainkit predict` writes (write_knowledge_states).
"""
from __future__ import annotations

import csv
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from trainkit.engine.module import TrainModule
from trainkit.errors import ConfigError
from trainkit.metrics import BinaryMetrics

Batch = dict[str, torch.Tensor]  # skills, correct, mask, ...: see datamodule.py
Log = Callable[..., None]  # the model's TrainModule.log
KNOWLEDGE_STATES = "knowledge_states.csv"


def logits_of(model: TrainModule, batch: Batch, by_question: bool = False) -> torch.Tensor:
    return model(batch["skills"], batch["correct"], batch.get("questions"), batch["first"] if by_question else None)


def next_step_targets(logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits of the real next steps, their 0/1 targets (in the logits' dtype), and the
    [B, T-1] mask that selected them."""
    mask = batch["mask"][:, 1:]
    targets = batch["correct"][:, 1:][mask].to(logits.dtype)
    return logits[mask], targets, mask


def late_mean(logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Question-level probabilities and 0/1 targets: per question with history (its first step
    t >= 1), the mean over its concepts' steps of sigmoid(logit). logits: [B, T-1] as a model's
    forward gives them with `first`."""
    first = batch["first"][:, 1:]  # the first step of each target step's question
    batch_size, steps = batch["first"].shape
    scored = batch["mask"][:, 1:] & (first >= 1)
    group = (torch.arange(batch_size, device=first.device)[:, None] * steps + first)[scored]
    probs = torch.sigmoid(logits.float())[scored]
    sums = torch.zeros(batch_size * steps, dtype=probs.dtype, device=probs.device).index_add_(0, group, probs)
    counts = torch.zeros_like(sums).index_add_(0, group, torch.ones_like(probs))
    target_step = torch.arange(1, steps, device=first.device)[None, :]
    heads = scored & (first == target_step)  # a question's first step holds its response
    head_group = (torch.arange(batch_size, device=first.device)[:, None] * steps + target_step).expand_as(first)[heads]
    return sums[head_group] / counts[head_group], batch["correct"][:, 1:][heads].float()


class KTModel(TrainModule):
    """The step methods the recipe's models share (all through KTObjective), and their sizes.

    A model sets its settings, then calls `build(num_skills, num_questions)` when num_skills is
    given; with num_skills None (the configs' default) the datamodule's counts, read from the
    data by its setup, are used: configure_model builds the layers then. A model implements
    `make_layers()` (the sizes are set) and `forward`, and may add a `penalty()` to the loss.
    """

    def __init__(self) -> None:
        super().__init__()
        self.num_skills: int | None = None
        self.num_questions = 0
        self.objective = KTObjective()
        self._built = False

    def build(self, num_skills: int, num_questions: int) -> None:
        self.num_skills, self.num_questions = num_skills, num_questions
        self.make_layers()
        self._built = True

    def make_layers(self) -> None:
        raise NotImplementedError

    def penalty(self, batch: Batch) -> torch.Tensor | None:
        return None

    def configure_model(self) -> None:
        if self._built:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if getattr(datamodule, "num_skills", None) is None:
            raise ConfigError("model.num_skills is null and no datamodule gives it: set model.num_skills (and "
                              "model.num_questions), or train with the recipe's datamodule, which counts them in the data")
        self.build(datamodule.num_skills, datamodule.num_questions or 0)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self.objective.training_step(lambda: logits_of(self, batch), batch, self, lambda: self.penalty(batch))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.objective.evaluation_step(self, batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.objective.evaluation_step(self, batch, "test")

    def on_validation_epoch_end(self) -> None:
        self.objective.evaluation_epoch_end("val", self.log, self._multi_concept())

    def on_test_epoch_end(self) -> None:
        self.objective.evaluation_epoch_end("test", self.log, self._multi_concept())

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self.objective.predict_step(self, batch)

    def on_predict_epoch_end(self) -> None:
        self.objective.write_knowledge_states(self)

    def _multi_concept(self) -> bool:
        return bool(getattr(self.trainer.datamodule, "multi_concept", False))


class KTObjective:
    """Loss, metrics and logs under the names every recipe config and callback expects:
    train/loss, then val/ and test/ loss, auc and acc (and question_auc, question_acc)."""

    def __init__(self) -> None:
        self.metrics = {stage: BinaryMetrics() for stage in ("val", "test", "val_question", "test_question")}
        self.states: list[tuple[torch.Tensor, torch.Tensor]] = []  # (student, [num_skills] probabilities)

    def training_step(self, forward: Callable[[], torch.Tensor], batch: Batch, module: TrainModule,
                      penalty: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """`forward()` gives the logits; it runs while the processes exchange their counts.
        `penalty()`, when given, is added as it is: a model scales it for the global batch."""
        # The mean over every real next step of the *global* batch: ranks hold different numbers
        # of real steps (padding), so each divides its sum by the count over all processes and
        # multiplies by their number (DDP averages gradients over ranks). One process: the plain mean.
        count = module.sum_over_processes(batch["mask"][:, 1:].sum(dtype=torch.float32), async_op=True)
        logits, targets, _ = next_step_targets(forward(), batch)
        loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") * (module.trainer.world_size / count.wait())
        extra = penalty() if penalty is not None else None
        if extra is not None:
            loss = loss + extra
        module.log("train/loss", loss, prog_bar=True)
        return loss

    def evaluation_step(self, module: TrainModule, batch: Batch, stage: str) -> None:
        """stage: "val" or "test"."""
        logits, targets, _ = next_step_targets(logits_of(module, batch), batch)
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float())
        # Weighted by the number of predictions: the epoch value is the exact mean over all of them.
        module.log(f"{stage}/loss", loss, prog_bar=True, batch_size=targets.numel())
        self.metrics[stage].update(torch.sigmoid(logits.float()), targets)
        if "first" in batch:
            self.metrics[f"{stage}_question"].update(*late_mean(logits_of(module, batch, by_question=True), batch))

    def evaluation_epoch_end(self, stage: str, log: Log, by_question: bool) -> None:
        """by_question: the data has multi-concept questions (the same on every process)."""
        for name, prefix in ((stage, ""), (f"{stage}_question", "question_")):
            if name != stage and not by_question:
                continue
            values = self.metrics[name].compute()
            self.metrics[name].reset()
            log(f"{stage}/{prefix}auc", values["auc"], prog_bar=not prefix)
            log(f"{stage}/{prefix}acc", values["acc"], prog_bar=not prefix)

    def predict_step(self, module: TrainModule, batch: Batch) -> dict[str, torch.Tensor]:
        """Probability of a correct answer at each next step (`mask` marks the real ones), and the
        knowledge state after each student's last window, kept for write_knowledge_states."""
        out = {"prob": torch.sigmoid(logits_of(module, batch).float()), "mask": batch["mask"][:, 1:]}
        last = batch["last"]
        if last.any():
            state = knowledge_state(module, {k: v[last] for k, v in batch.items()}, module.num_skills,
                                    getattr(module, "max_len", None))
            self.states.append((batch["student"][last].cpu(), state.cpu()))
        return out

    def write_knowledge_states(self, module: TrainModule) -> str | None:
        """<run_dir>/knowledge_states.csv (one per process when there are several): student,
        concept, probability; ids as the data names them. Written when the run has its folder
        (every CLI run; a script's Trainer without logger has none): None otherwise, or when
        nothing was predicted."""
        trainer = module.trainer
        if not self.states or not os.path.isdir(trainer.default_root_dir):
            self.states = []
            return None
        datamodule = getattr(trainer, "datamodule", None)
        students = getattr(datamodule, "student_ids", None)
        concepts = getattr(datamodule, "skill_ids", None)
        name = KNOWLEDGE_STATES if trainer.world_size == 1 else f"knowledge_states.rank{trainer.global_rank}.csv"
        path = os.path.join(trainer.default_root_dir, name)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["student", "concept", "probability"])
            for student_index, state in self.states:
                for s, probs in zip(student_index.tolist(), state.tolist()):
                    student = students[s] if students else s
                    writer.writerows((student, concepts[k] if concepts else k, f"{p:.6f}") for k, p in enumerate(probs))
        self.states = []
        return path


def knowledge_state(model: Any, batch: Batch, num_skills: int, max_len: int | None = None) -> torch.Tensor:
    """[B, num_skills]: for each window, the probability of a correct answer on each concept
    asked right after its last real step. Each window is repeated once per concept with that
    concept appended as a step of its own (question id -1: unknown), and the model's prediction
    for that step is read; a window of max_len steps keeps its last max_len - 1 as history."""
    lengths = batch["mask"].sum(1)
    keep = lengths if max_len is None else lengths.clamp(max=max_len - 1)
    steps = int(keep.max())
    offsets = torch.arange(steps, device=lengths.device)[None, :]
    index = ((lengths - keep)[:, None] + offsets).clamp(max=batch["skills"].shape[1] - 1)
    real = offsets < keep[:, None]

    def history(name: str) -> torch.Tensor:  # [B * K, steps + 1]: the kept steps, then room for the asked one
        values = batch[name].gather(1, index) * real
        return torch.cat([values, torch.zeros_like(values[:, :1])], 1).repeat_interleave(num_skills, 0)

    rows = torch.arange(len(lengths) * num_skills, device=lengths.device)
    at = keep.repeat_interleave(num_skills)  # where the asked concept goes
    skills, correct = history("skills"), history("correct")
    skills[rows, at] = torch.arange(num_skills, device=lengths.device).repeat(len(lengths))
    questions = None
    if "questions" in batch:
        questions = history("questions")
        questions[rows, at] = -1
    logits = model(skills, correct, questions, None)
    return torch.sigmoid(logits[rows, at - 1].float()).view(len(lengths), num_skills)
