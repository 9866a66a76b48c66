"""SAKT — Self-Attentive Knowledge Tracing (Pandey & Karypis, EDM 2019).

Attention instead of DKT's recurrence: to predict the answer at step t+1, the embedding of the
skill asked at t+1 (the query) attends over the embeddings of the past interactions 0..t
(keys and values: the token `s + num_skills * c`, as in DKT, plus a learnt position); then a
residual + layer norm, a position-wise feed-forward layer with its own residual + layer norm,
and a linear layer to one logit. Causal attention keeps each query on its past. Padding always
follows a window's real steps (collate_kt), so causality also keeps every padded key away from
every real query: padding cannot change a real prediction (tested). With num_layers > 1
the blocks are stacked as in pyKT: the query stays the next skill, the keys and values become
the previous block's output.

SAKT is one attention layer over a plain causal mask — few moving parts to get wrong or tune;
AKT (akt.py) adds monotonic (distance-decayed) attention, Rasch question embeddings and separate
question and knowledge encoders. Loss, metrics and logs are DKT's (objective.py), so their
numbers compare directly. Question ids, when the data has them, are not used.

    trainkit fit model=sakt model.hidden_size=128 model.num_heads=8
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .objective import KTModel
from trainkit.errors import ConfigError


class SAKT(KTModel):
    def __init__(
        self,
        num_skills: int | None = None,
        hidden_size: int = 64,
        num_heads: int = 4,
        num_layers: int = 1,
        dropout: float = 0.2,
        max_len: int = 100,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ConfigError(
                f"model.hidden_size={hidden_size} must be a multiple of model.num_heads={num_heads} "
                f"(each head gets hidden_size / num_heads dimensions)"
            )
        self.hidden_size, self.num_heads, self.num_layers, self.dropout_p = hidden_size, num_heads, num_layers, dropout
        self.max_len = max_len
        if num_skills is not None:
            self.build(num_skills, 0)

    def make_layers(self) -> None:
        self.interaction_embed = nn.Embedding(2 * self.num_skills, self.hidden_size)
        self.position_embed = nn.Embedding(self.max_len, self.hidden_size)
        self.skill_embed = nn.Embedding(self.num_skills, self.hidden_size)
        self.blocks = nn.ModuleList(_Block(self.hidden_size, self.num_heads, self.dropout_p)
                                    for _ in range(self.num_layers))
        self.dropout = nn.Dropout(self.dropout_p)
        self.head = nn.Linear(self.hidden_size, 1)

    def forward(self, skills: torch.Tensor, correct: torch.Tensor, questions: torch.Tensor | None = None,
                first: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T-1]: entry t predicts the answer at step t+1 from steps 0..t, or with
        `first` from the steps before its question's first step (objective.py)."""
        if skills.shape[1] > self.max_len:
            raise ConfigError(
                f"a batch of {skills.shape[1]} steps is longer than model.max_len={self.max_len}; "
                f"set model.max_len to at least datamodule.max_len"
            )
        past = self.interaction_embed(skills[:, :-1] + self.num_skills * correct[:, :-1])
        hidden = past + self.position_embed(torch.arange(past.shape[1], device=skills.device))
        query = self.skill_embed(skills[:, 1:])
        allowed = None
        if first is not None:
            # query t (step t+1) sees the interactions before its question; one with none sees
            # interaction 0 (SDPA gives NaN for a row with nothing to see; it is not scored)
            keys = torch.arange(past.shape[1], device=skills.device)
            allowed = (keys[None, None, :] < first[:, 1:, None]) | (keys == 0)
            allowed = allowed.unsqueeze(1)  # [B, 1, T-1, T-1]: every head
        for block in self.blocks:
            hidden = block(query, hidden, allowed)
        return self.head(self.dropout(hidden)).squeeze(-1)


class _Block(nn.Module):
    """Multi-head attention of the queries over the past, then the feed-forward layer; each with
    a residual connection and a layer norm (post-norm, as in the paper). Dropout where pyKT's
    SAKT has it: on the attention output and inside the feed-forward layer."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query_proj = nn.Linear(hidden_size, hidden_size)
        self.key_value_proj = nn.Linear(hidden_size, 2 * hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        self.attention_dropout = nn.Dropout(dropout)
        self.attention_norm = nn.LayerNorm(hidden_size)
        self.feed_forward = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_size, hidden_size)
        )
        self.feed_forward_norm = nn.LayerNorm(hidden_size)

    def forward(self, query: torch.Tensor, past: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.attention_norm(query + self.attention_dropout(self._attend(query, past, allowed)))
        return self.feed_forward_norm(hidden + self.feed_forward(hidden))

    def _attend(self, query: torch.Tensor, past: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        batch, steps, hidden_size = query.shape
        head_size = hidden_size // self.num_heads
        # [B, T, H] -> [B, heads, T, head_size]; keys and values come from one projection.
        q = self.query_proj(query).view(batch, steps, self.num_heads, head_size).transpose(1, 2)
        kv = self.key_value_proj(past).view(batch, steps, 2, self.num_heads, head_size)
        k, v = kv.permute(2, 0, 3, 1, 4)
        # is_causal: query t (the skill asked at t+1) sees the interactions 0..t. No dropout on
        # the [B, heads, T, T] attention weights: on CPU it triples the attention's cost; the
        # dropout on its output regularises enough.
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=allowed is None)
        return self.out_proj(attended.transpose(1, 2).reshape(batch, steps, hidden_size))
