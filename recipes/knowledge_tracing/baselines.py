"""Reference scores that tell whether a knowledge-tracing model learnt more than skill difficulty."""
from __future__ import annotations

import numpy as np
import torch

from .kt_lines import KTSequence
from trainkit.metrics import binary_auroc


def per_skill_prior_auc(train_seqs: list[KTSequence], eval_seqs: list[KTSequence]) -> float:
    """AUC of predicting each response by its skill's correct rate on train_seqs (the global rate
    for a skill train_seqs lacks), history ignored. Skill ids must be non-negative (the ids that
    KTDataModule remaps are).

    Pass as eval_seqs the windows the model is scored on (`make_windows`): like DKT, every step
    but the first of each window is a target, the first having no history to predict from.
    """
    train_skills = np.concatenate([seq.skills for seq in train_seqs])
    train_correct = np.concatenate([seq.correct for seq in train_seqs])
    size = int(max(train_skills.max(), max(seq.skills.max() for seq in eval_seqs))) + 1
    attempts = np.bincount(train_skills, minlength=size)
    successes = np.bincount(train_skills, weights=train_correct, minlength=size)
    rate = np.where(attempts > 0, successes / np.maximum(attempts, 1), train_correct.mean())
    target_skills = np.concatenate([seq.skills[1:] for seq in eval_seqs])
    labels = np.concatenate([seq.correct[1:] for seq in eval_seqs])
    return float(binary_auroc(torch.from_numpy(rate[target_skills]), torch.from_numpy(labels)))
