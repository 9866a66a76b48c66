"""AKT (akt.py), question-level scoring and knowledge states (objective.py)."""
from __future__ import annotations

import functools

import pytest
import torch

from trainkit.recipes.knowledge_tracing.akt import AKT, monotonic_weights
from trainkit.recipes.knowledge_tracing.datamodule import collate_kt
from trainkit.recipes.knowledge_tracing.kt_lines import KTSequence
from trainkit.recipes.knowledge_tracing.model import DKT
from trainkit.recipes.knowledge_tracing.objective import KTObjective, knowledge_state, late_mean
from trainkit.recipes.knowledge_tracing.sakt import SAKT
from trainkit.metrics import binary_auroc

SKILLS, QUESTIONS = 12, 30
MODELS = {
    "AKT": lambda: AKT(num_skills=SKILLS, num_questions=QUESTIONS, hidden_size=16, num_heads=2, num_layers=2,
                       ff_size=16, output_size=16),
    "AKT-concepts": lambda: AKT(num_skills=SKILLS, hidden_size=16, num_heads=2, num_layers=1, ff_size=16, output_size=16),
    "SAKT": lambda: SAKT(num_skills=SKILLS, hidden_size=16, num_heads=2, max_len=40),
    "DKT": lambda: DKT(num_skills=SKILLS, hidden_size=16),
}


def _windows(lengths, seed=0, two_concepts_every=0):
    """Random windows with question ids; with two_concepts_every=k every k-th question has a
    second concept (an extra step with the same question and response)."""
    g = torch.Generator().manual_seed(seed)
    windows = []
    for n in lengths:
        skills, correct, questions, first = [], [], [], []
        for q in range(n):
            answer, question = int(torch.randint(0, 2, (1,), generator=g)), int(torch.randint(0, QUESTIONS, (1,), generator=g))
            concepts = 2 if two_concepts_every and q % two_concepts_every == 1 else 1
            start = len(skills)
            for _ in range(concepts):
                skills.append(int(torch.randint(0, SKILLS, (1,), generator=g)))
                correct.append(answer)
                questions.append(question)
                first.append(start)
        windows.append(KTSequence(*(torch.tensor(v).numpy() for v in (skills, correct, questions, first))))
    return windows


def _forward(model, batch, by_question=False):
    return model(batch["skills"], batch["correct"], batch["questions"], batch["first"] if by_question else None)


# -- monotonic attention ---------------------------------------------------------------------------
def test_attention_to_a_concept_decays_with_the_time_since_it_was_seen():
    # One query, the same (positive) raw score for every key: without the decay the weights would be
    # uniform. Key 59 (seen 1 step before the query at 60) must weigh more than key 10 (50 steps before).
    steps = 61
    scores = torch.full((1, 1, steps, steps), 2.0)
    allowed = torch.ones(steps, steps).tril(-1).bool()[None, None]
    weak, strong = torch.tensor([[[-3.0]]]), torch.tensor([[[2.0]]])
    for decay in (weak, strong):
        weights = monotonic_weights(scores, allowed, decay)[0, 0, 60]
        assert weights[59] > weights[10]
        assert torch.all(weights[1:60] >= weights[:59])  # never more weight on an older step
        torch.testing.assert_close(weights.sum(), torch.tensor(1.0))
    ratio = {name: (w := monotonic_weights(scores, allowed, d)[0, 0, 60])[10] / w[59]
             for name, d in (("weak", weak), ("strong", strong))}
    assert ratio["strong"] < ratio["weak"] < 1.0  # a larger learnt theta forgets faster
    # A query that may see no key (the first step of the retriever) gets no weight at all.
    assert monotonic_weights(scores, allowed, weak)[0, 0, 0].abs().sum() == 0


# -- causality and padding -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["AKT", "AKT-concepts"])
def test_a_prediction_never_sees_its_own_answer_or_later_steps(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    batch = collate_kt(_windows([20]), questions=True)
    changed = {key: value.clone() for key, value in batch.items()}
    changed["correct"][0, 10:] = 1 - changed["correct"][0, 10:]  # answers from step 10 on
    changed["skills"][0, 11:] = (changed["skills"][0, 11:] + 1) % SKILLS  # what is asked after step 10
    changed["questions"][0, 11:] = (changed["questions"][0, 11:] + 1) % QUESTIONS
    with torch.no_grad():
        before, after = _forward(model, batch), _forward(model, changed)
    # Entry t predicts step t+1 from steps 0..t: entries 0..9 (answers 1..10) are unaffected.
    torch.testing.assert_close(after[0, :10], before[0, :10])
    assert not torch.allclose(after[0, 10:], before[0, 10:])


@pytest.mark.parametrize("name", list(MODELS))
def test_by_question_no_concept_sees_its_questions_answer(name):
    # With `first`, a step predicts from the steps before its question: the response of the question
    # (on its first concept's step) never reaches the prediction for its second concept.
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    batch = collate_kt(_windows([12], two_concepts_every=3), questions=True, first=True)
    second = [t for t in range(1, batch["first"].shape[1]) if batch["first"][0, t] < t]
    assert second
    for t in second:  # one question at a time: its answer may (and should) reach later questions
        changed = {key: value.clone() for key, value in batch.items()}
        changed["correct"][0, t - 1] = 1 - changed["correct"][0, t - 1]
        with torch.no_grad():
            before, after = _forward(model, batch, True), _forward(model, changed, True)
            plain = _forward(model, changed)
        torch.testing.assert_close(after[0, t - 1], before[0, t - 1])
    assert not torch.allclose(plain, after)  # without `first` the sibling's answer is seen (pyKT's training)


@pytest.mark.parametrize("name", ["AKT", "AKT-concepts"])
def test_padding_leaves_real_predictions_unchanged(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    windows = _windows([9, 25, 4])
    collate = functools.partial(collate_kt, questions=True)
    with torch.no_grad():
        together = _forward(model, collate(windows))
        for row, window in enumerate(windows):
            alone = _forward(model, collate([window]))[0]
            torch.testing.assert_close(together[row, : len(alone)], alone, rtol=1e-4, atol=1e-5)


def test_question_difficulty_enters_only_with_question_ids():
    torch.manual_seed(0)
    model = MODELS["AKT"]().eval()
    with torch.no_grad():
        model.difficulty.weight.normal_()
        model.difficulty.weight[0] = 0.0
    batch = collate_kt(_windows([15]), questions=True)
    with torch.no_grad():
        known = _forward(model, batch)
        unknown = model(batch["skills"], batch["correct"], torch.full_like(batch["questions"], -1))
        without = model(batch["skills"], batch["correct"])
    torch.testing.assert_close(unknown, without)  # id -1: a question of unknown difficulty, mu = 0
    assert not torch.allclose(known, without)


# -- question-level scores -----------------------------------------------------------------------
class _Fixed(torch.nn.Module):
    """Gives the same logits whatever it is asked (the by-question ones when `first` is passed)."""

    def __init__(self, logits, by_question):
        super().__init__()
        self.logits, self.by_question = logits, by_question

    def forward(self, skills, correct, questions=None, first=None):
        return self.logits if first is None else self.by_question


def test_question_level_auc_is_the_late_mean_by_hand():
    # Row 0: questions at steps 0-1 (2 concepts), 2, 3-4 (2 concepts), 5. Row 1: 0, 1-2 (2 concepts), 3.
    first = torch.tensor([[0, 0, 2, 3, 3, 5], [0, 1, 1, 3, 0, 0]])
    correct = torch.tensor([[1, 1, 0, 1, 1, 0], [0, 1, 1, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]).bool()
    by_question = torch.tensor([[9.0, -1.0, 0.5, -0.5, 2.0], [0.0, 1.0, 3.0, 5.0, 5.0]])
    batch = {"skills": torch.zeros_like(first), "correct": correct, "mask": mask, "first": first}
    sigmoid = lambda v: 1 / (1 + torch.exp(-torch.tensor(v)))  # noqa: E731
    # By hand: the question at step 1 of row 0 has no history (its first step is 0): not scored.
    want = [
        (sigmoid(-1.0), 0),  # row 0, question at step 2
        ((sigmoid(0.5) + sigmoid(-0.5)) / 2, 1),  # row 0, steps 3-4: the late mean
        (sigmoid(2.0), 0),  # row 0, step 5
        ((sigmoid(0.0) + sigmoid(1.0)) / 2, 1),  # row 1, steps 1-2
        (sigmoid(3.0), 0),  # row 1, step 3 (steps 4, 5 are padding)
    ]
    probs, targets = late_mean(by_question, batch)
    torch.testing.assert_close(probs, torch.stack([p for p, _ in want]).float())
    assert targets.tolist() == [t for _, t in want]
    # The AUC: positives 0.5 and 0.616 against negatives 0.269, 0.881 and 0.953: 2 of 6 pairs won.
    objective, logged = KTObjective(), {}
    module = _Fixed(torch.zeros(2, 5), by_question)
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
    objective.evaluation_step(module, batch, "test")
    objective.evaluation_epoch_end("test", module.log, by_question=True)
    assert logged["test/question_auc"] == pytest.approx(2 / 6)
    assert logged["test/question_auc"] == pytest.approx(float(binary_auroc(probs, targets)))
    assert logged["test/question_acc"] == pytest.approx(3 / 5)  # at 0.5: 0.269, 0.5 and 0.616 are right
    assert logged["test/auc"] == pytest.approx(0.5)  # the concept level: every logit 0


# -- knowledge states ------------------------------------------------------------------------------
def test_knowledge_state_is_the_next_step_prediction_for_every_concept():
    # DKT predicts every skill after each step: the state after a window's last step is its head's output.
    torch.manual_seed(0)
    model = MODELS["DKT"]().eval()
    batch = collate_kt(_windows([7, 3, 11]), questions=True)
    with torch.no_grad():
        state = knowledge_state(model, batch, SKILLS)
        hidden = model._lstm(model.embed(batch["skills"] + SKILLS * batch["correct"]))
        last = batch["mask"].sum(1) - 1
        want = torch.sigmoid(model.head(hidden[torch.arange(3), last]))
    torch.testing.assert_close(state, want)
    for name in ("AKT", "SAKT"):  # and every model gives one probability per concept, from the history
        with torch.no_grad():
            state = knowledge_state(MODELS[name]().eval(), batch, SKILLS, max_len=5)
        assert state.shape == (3, SKILLS) and ((state > 0) & (state < 1)).all()
