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

Why SAKT rather than AKT (Ghosh et al., 2020), the stronger attention model in pyKT's
benchmark: SAKT is one attention layer over a plain causal mask — few moving parts to get wrong
or tune — while AKT adds monotonic (distance-decayed) attention, Rasch question embeddings and
separate question and knowledge encoders. Loss, metrics and logs are DKT's (objective.py), so
their numbers compare directly.

    trainkit fit model=sakt model.hidden_size=128 model.num_heads=8
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .objective import Batch, KTObjective
from trainkit.engine.module import TrainModule
from trainkit.errors import ConfigError


class SAKT(TrainModule):
    def __init__(
        self,
        num_skills: int,
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
        self.num_skills = num_skills
        self.max_len = max_len
        self.interaction_embed = nn.Embedding(2 * num_skills, hidden_size)
        self.position_embed = nn.Embedding(max_len, hidden_size)
        self.skill_embed = nn.Embedding(num_skills, hidden_size)
        self.blocks = nn.ModuleList(_Block(hidden_size, num_heads, dropout) for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, 1)
        self.objective = KTObjective()

    def forward(self, skills: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
        """Logits [B, T-1]: entry t predicts the answer at step t+1 from steps 0..t."""
        if skills.shape[1] > self.max_len:
            raise ConfigError(
                f"a batch of {skills.shape[1]} steps is longer than model.max_len={self.max_len}; "
                f"set model.max_len to at least datamodule.max_len"
            )
        past = self.interaction_embed(skills[:, :-1] + self.num_skills * correct[:, :-1])
        hidden = past + self.position_embed(torch.arange(past.shape[1], device=skills.device))
        query = self.skill_embed(skills[:, 1:])
        for block in self.blocks:
            hidden = block(query, hidden)
        return self.head(self.dropout(hidden)).squeeze(-1)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self.objective.training_step(lambda: self(batch["skills"], batch["correct"]), batch, self)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.objective.evaluation_step(self(batch["skills"], batch["correct"]), batch, "val", self.log)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.objective.evaluation_step(self(batch["skills"], batch["correct"]), batch, "test", self.log)

    def on_validation_epoch_end(self) -> None:
        self.objective.evaluation_epoch_end("val", self.log)

    def on_test_epoch_end(self) -> None:
        self.objective.evaluation_epoch_end("test", self.log)

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self.objective.predict_step(self(batch["skills"], batch["correct"]), batch)


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

    def forward(self, query: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        hidden = self.attention_norm(query + self.attention_dropout(self._attend(query, past)))
        return self.feed_forward_norm(hidden + self.feed_forward(hidden))

    def _attend(self, query: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        batch, steps, hidden_size = query.shape
        head_size = hidden_size // self.num_heads
        # [B, T, H] -> [B, heads, T, head_size]; keys and values come from one projection.
        q = self.query_proj(query).view(batch, steps, self.num_heads, head_size).transpose(1, 2)
        kv = self.key_value_proj(past).view(batch, steps, 2, self.num_heads, head_size)
        k, v = kv.permute(2, 0, 3, 1, 4)
        # is_causal: query t (the skill asked at t+1) sees the interactions 0..t. No dropout on
        # the [B, heads, T, T] attention weights: on CPU it triples the attention's cost; the
        # dropout on its output regularises enough.
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(attended.transpose(1, 2).reshape(batch, steps, hidden_size))
