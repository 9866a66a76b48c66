"""AKT — context-aware Attentive Knowledge Tracing (Ghosh, Heffernan & Lan, KDD 2020).

Embeddings, Rasch-style when the data has question ids. A step asks question q of concept c and
gets response r. With mu_q a learnt scalar difficulty per question, d_c a concept's "variation"
vector and f_r a response's:

    x = c_c + mu_q * d_c                     the question
    y = c_c + g_r + mu_q * (f_r + d_c)       the interaction (question and response)

Without question ids (num_questions 0, as pyKT runs AKT on ASSIST2015) mu is 0: x = c_c and
y = c_c + g_r. A question id of -1 (used for the knowledge states, objective.py) is a question of
unknown difficulty: mu = 0.

Three attention stacks, all with the monotonic attention below:
    knowledge encoder   num_layers layers of self-attention over y, each step seeing itself and
                        the past (it knows its own response);
    question encoder    self-attention over x, seeing itself and the past (questions only);
    knowledge retriever x attends with the keys x over the values y, each step seeing the past
                        only (not its own response); the first step sees nothing.
The question encoder and the retriever alternate, num_layers pairs, as in pyKT. The retriever's
output next to x goes through a 3-layer MLP to one logit: the answer at that step, from the
steps before it. A Rasch penalty rasch_l2 * sum(mu_q^2) over the batch's steps is added to the
loss (pyKT's l2).

Monotonic attention: a head's softmax weights over the keys it may see are recomputed with the
raw scores scaled by exp(-theta * d(t, tau)), theta = softplus of a learnt per-head value, and
d(t, tau) = sqrt(|t - tau| * (the attention mass of t on the keys after tau)): a key's weight
decays with how long ago it was seen and how much has been seen since. The distance is computed
without gradient, as in the paper's code. (The scaling multiplies the score, so a key with a
positive score loses weight with distance; tested.)

Loss, metrics, logs and the knowledge states are the recipe's (objective.py), so the numbers
compare with DKT's and SAKT's directly. The defaults are pyKT's for ASSIST2009 (d_model 256,
d_ff 512, 8 heads, 4 blocks, dropout 0.2, final layers 512 and 256).

    trainkit fit model=akt datamodule=kt_pykt datamodule.path=/data/pykt/assist2009
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .objective import Batch, KTModel
from trainkit.errors import ConfigError


class AKT(KTModel):
    def __init__(
        self,
        num_skills: int | None = None,
        num_questions: int | None = None,
        hidden_size: int = 256,
        num_heads: int = 8,
        num_layers: int = 4,
        ff_size: int = 512,
        output_size: int = 512,
        dropout: float = 0.2,
        rasch_l2: float = 1e-5,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ConfigError(
                f"model.hidden_size={hidden_size} must be a multiple of model.num_heads={num_heads} "
                f"(each head gets hidden_size / num_heads dimensions)"
            )
        self.hidden_size, self.num_heads, self.num_layers = hidden_size, num_heads, num_layers
        self.ff_size, self.output_size, self.dropout_p, self.rasch_l2 = ff_size, output_size, dropout, rasch_l2
        if num_skills is not None:
            self.build(num_skills, num_questions or 0)

    def make_layers(self) -> None:
        h = self.hidden_size
        self.concept_embed = nn.Embedding(self.num_skills, h)
        self.response_embed = nn.Embedding(2, h)
        if self.num_questions:
            # Index 0: a question of unknown difficulty (id -1), pinned at mu = 0.
            self.difficulty = nn.Embedding(self.num_questions + 1, 1, padding_idx=0)
            nn.init.zeros_(self.difficulty.weight)  # pyKT starts every question at the concept's mean
            self.concept_variation = nn.Embedding(self.num_skills, h)
            self.response_variation = nn.Embedding(2, h)
        layer = lambda feed_forward: _Layer(h, self.num_heads, self.ff_size, self.dropout_p, feed_forward)  # noqa: E731
        self.knowledge_encoder = nn.ModuleList(layer(True) for _ in range(self.num_layers))
        self.question_encoder = nn.ModuleList(layer(False) for _ in range(self.num_layers))
        self.retriever = nn.ModuleList(layer(True) for _ in range(self.num_layers))
        self.out = nn.Sequential(
            nn.Linear(2 * h, self.output_size), nn.ReLU(), nn.Dropout(self.dropout_p),
            nn.Linear(self.output_size, 256), nn.ReLU(), nn.Dropout(self.dropout_p),
            nn.Linear(256, 1),
        )

    def forward(self, skills: torch.Tensor, correct: torch.Tensor, questions: torch.Tensor | None = None,
                first: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T-1]: entry t predicts the answer at step t+1 from steps 0..t, or with
        `first` from the steps before its question's first step (objective.py)."""
        concept = self.concept_embed(skills)
        x, y = concept, concept + self.response_embed(correct)
        if self.num_questions and questions is not None:
            mu = self.difficulty(questions + 1)
            variation = self.concept_variation(skills)
            x = x + mu * variation
            y = y + mu * (self.response_variation(correct) + variation)
        steps = torch.arange(skills.shape[1], device=skills.device)
        upto = (steps[None, :] <= steps[:, None])[None, None]  # [1, 1, T, T]: itself and the past
        if first is None:
            before = (steps[None, :] < steps[:, None])[None, None]
        else:  # the steps before the question's first step
            before = (steps[None, None, :] < first[:, :, None]).unsqueeze(1)
        embedded = x
        for layer in self.knowledge_encoder:
            y = layer(y, y, y, upto)
        for question_layer, retrieval_layer in zip(self.question_encoder, self.retriever):
            x = question_layer(x, x, x, upto)
            x = retrieval_layer(x, x, y, before, empty_rows=True)
        return self.out(torch.cat([x, embedded], -1)).squeeze(-1)[:, 1:]

    def penalty(self, batch: Batch) -> torch.Tensor | None:
        """rasch_l2 * sum of mu^2 over the real steps of the global batch: each process adds its
        own sum times the number of processes (DDP averages the gradients)."""
        if not (self.num_questions and "questions" in batch and self.rasch_l2):
            return None
        mu = self.difficulty(batch["questions"] + 1).squeeze(-1)[batch["mask"]]
        return self.rasch_l2 * self.trainer.world_size * (mu**2).sum()


def monotonic_weights(scores: torch.Tensor, allowed: torch.Tensor, decay: torch.Tensor,
                      empty_rows: bool = True) -> torch.Tensor:
    """Attention weights [B, heads, T, T] from raw scores q.k/sqrt(d), with AKT's exponential decay.

    allowed: bool, broadcastable to scores; True where query t may see key tau. decay: [heads, 1,
    1], theta = softplus(decay). A query that may see no key gets all-zero weights; empty_rows
    False says there is none (it saves a pass over the weights).
    """
    steps = scores.shape[-1]
    positions = torch.arange(steps, device=scores.device)
    distance = (positions[None, :] - positions[:, None]).abs()  # |t - tau|
    lowest = torch.finfo(scores.dtype).min
    with torch.no_grad():
        plain = F.softmax(scores.masked_fill(~allowed, lowest), dim=-1) * allowed
        after = plain.sum(-1, keepdim=True) - plain.cumsum(-1)  # mass on the keys after tau
        context = (after * distance).clamp(min=0.0).sqrt()
    theta = F.softplus(decay).unsqueeze(0)
    effect = torch.exp(-theta * context).clamp(1e-5, 1e5)
    weights = F.softmax((scores * effect).masked_fill(~allowed, lowest), dim=-1)
    return weights * allowed.any(-1, keepdim=True) if empty_rows else weights


class _Attention(nn.Module):
    """Multi-head monotonic attention. Queries and keys share their projection (pyKT's
    kq_same=1). No dropout on the [B, heads, T, T] weights (pyKT has it): on CPU it costs a fifth
    of a step; the dropout on the attention's output regularises (as in the recipe's SAKT)."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_proj = nn.Linear(hidden_size, hidden_size)
        self.value_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        self.decay = nn.Parameter(torch.empty(num_heads, 1, 1))
        nn.init.xavier_uniform_(self.decay)
        for linear in (self.key_proj, self.value_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor,
                empty_rows: bool) -> torch.Tensor:
        batch, steps, hidden_size = query.shape
        head_size = hidden_size // self.num_heads

        def heads(x: torch.Tensor) -> torch.Tensor:  # [B, T, H] -> [B, heads, T, head_size]
            return x.view(batch, steps, self.num_heads, head_size).transpose(1, 2)

        q, k, v = heads(self.key_proj(query)), heads(self.key_proj(key)), heads(self.value_proj(value))
        weights = monotonic_weights(q @ k.transpose(-2, -1) / math.sqrt(head_size), allowed, self.decay, empty_rows)
        attended = weights @ v
        return self.out_proj(attended.transpose(1, 2).reshape(batch, steps, hidden_size))


class _Layer(nn.Module):
    """Attention, residual + layer norm; then (feed_forward) a position-wise feed-forward layer,
    residual + layer norm: pyKT's TransformerLayer."""

    def __init__(self, hidden_size: int, num_heads: int, ff_size: int, dropout: float, feed_forward: bool) -> None:
        super().__init__()
        self.attention = _Attention(hidden_size, num_heads)
        self.attention_dropout = nn.Dropout(dropout)
        self.attention_norm = nn.LayerNorm(hidden_size)
        self.feed_forward = nn.Sequential(
            nn.Linear(hidden_size, ff_size), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff_size, hidden_size),
            nn.Dropout(dropout),
        ) if feed_forward else None
        self.feed_forward_norm = nn.LayerNorm(hidden_size) if feed_forward else None

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor,
                empty_rows: bool = False) -> torch.Tensor:
        """empty_rows: some query may see no key (the retriever's)."""
        hidden = self.attention_norm(query + self.attention_dropout(self.attention(query, key, value, allowed, empty_rows)))
        if self.feed_forward is None:
            return hidden
        return self.feed_forward_norm(hidden + self.feed_forward(hidden))
