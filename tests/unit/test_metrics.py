import itertools

import torch

from trainkit.metrics import BinaryMetrics, binary_auroc


def brute_force_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_matches_pairwise_definition_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 10, (300,), generator=g).float() / 10  # many ties
    labels = (torch.rand(300, generator=g) < scores).long()
    assert abs(float(binary_auroc(scores, labels)) - brute_force_auc(scores.tolist(), labels.tolist())) < 1e-12


def test_auroc_extremes_and_missing_class():
    labels = torch.tensor([0, 0, 1, 1])
    assert float(binary_auroc(torch.tensor([0.1, 0.2, 0.8, 0.9]), labels)) == 1.0
    assert float(binary_auroc(torch.tensor([0.9, 0.8, 0.2, 0.1]), labels)) == 0.0
    assert torch.isnan(binary_auroc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1])))


def test_binary_metrics_over_batches_equals_one_shot():
    g = torch.Generator().manual_seed(1)
    scores, labels = torch.rand(1000, generator=g), (torch.rand(1000, generator=g) < 0.6).long()
    m = BinaryMetrics()
    for chunk in range(0, 1000, 64):
        m.update(scores[chunk : chunk + 64], labels[chunk : chunk + 64])
    out = m.compute()
    assert float(out["auc"]) == float(binary_auroc(scores, labels))
    assert float(out["acc"]) == float(((scores >= 0.5) == labels.bool()).double().mean())
