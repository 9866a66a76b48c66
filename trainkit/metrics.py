"""Exact metrics over whole evaluation sets (not averages of per-batch values).

`BinaryMetrics` keeps every (score, label) pair of an epoch so that AUC is the exact
Mann-Whitney statistic over all predictions — the number a paper would report.
"""
from __future__ import annotations

import torch


def binary_auroc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve, exact, with ties counted as one half.

    Equals the probability that a random positive scores above a random negative
    (the Mann-Whitney U statistic divided by n_pos * n_neg). NaN when a class is absent.
    """
    scores = scores.detach().flatten().double()
    labels = labels.detach().flatten().bool()
    n_pos = int(labels.sum())
    n_neg = labels.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return torch.tensor(float("nan"), dtype=torch.float64)
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    # Average ranks (1-based) over groups of tied scores.
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg_rank = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(scores)
    ranks[order] = avg_rank[inverse]
    rank_sum_pos = ranks[labels].sum()
    u = rank_sum_pos - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


class BinaryMetrics:
    """Accumulates probabilities and 0/1 labels over an epoch; `compute()` gives AUC and accuracy."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        self._scores: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        self._scores.append(probs.detach().flatten().float())
        self._labels.append(labels.detach().flatten())

    def compute(self) -> dict[str, torch.Tensor]:
        """Over every prediction of the epoch — of all processes, when there are several."""
        if not self._scores:  # keep the collectives in step: an empty rank still takes part
            self._scores, self._labels = [torch.empty(0)], [torch.empty(0, dtype=torch.long)]
        scores = _gather(torch.cat(self._scores)).cpu()
        labels = _gather(torch.cat(self._labels)).cpu()
        acc = ((scores >= self.threshold) == labels.bool()).double().mean()
        return {"auc": binary_auroc(scores, labels), "acc": acc}


def _gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D tensor of any length over all processes (identity in one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    size = torch.tensor([tensor.numel()], device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=tensor.dtype, device=device)
    padded[: tensor.numel()] = tensor.to(device)
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(n.item())] for part, n in zip(parts, sizes)])
