"""The layers the tabular models share: the encoder of a row's features and blocks of Linear -> ReLU -> Dropout."""
from __future__ import annotations

import torch
from torch import nn


class FeatureEncoder(nn.Module):
    """numeric [B, Fn] and categorical [B, Fc] -> [B, out_features]: the numbers, then one
    embedding per categorical column (all columns share one table, each with its own rows)."""

    def __init__(self, num_numeric: int, num_categorical: int, max_categories: int, embed_dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_categorical * max_categories, embed_dim) if num_categorical else None
        self.register_buffer("offsets", torch.arange(num_categorical) * max_categories, persistent=False)
        self.out_features = num_numeric + num_categorical * embed_dim

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        if self.embed is None:
            return numeric
        return torch.cat([numeric, self.embed(categorical + self.offsets).flatten(1).to(numeric.dtype)], dim=-1)


def mlp(in_features: int, hidden_size: int, num_layers: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_layers):
        layers += [nn.Linear(in_features if i == 0 else hidden_size, hidden_size), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)
