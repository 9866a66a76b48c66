"""A tabular MLP for dropout and at-risk prediction.

Each categorical column's index (0 = a value training never saw) gets a learnt embedding; the
embeddings and the standardised numeric columns are concatenated and go through `num_layers`
blocks of Linear -> ReLU -> Dropout, then a linear layer to one logit per class (the layers:
trainkit/tabular/layers.py). Loss and metrics: trainkit/tabular/objective.py.

The model takes the datamodule's schema, not sizes: the config interpolates
`numeric: ${datamodule.numeric}`, `categorical: ${datamodule.categorical}`, `classes:
${datamodule.classes}` and `max_categories: ${datamodule.max_categories}`, and the input layer
has len(numeric) + len(categorical) * embed_dim inputs. So the model is complete when it is built
(no lazy layers: checkpoints, DDP and FSDP see every parameter from the start) and changing the
feature lists in the datamodule config changes the model with them.

    trainkit fit experiment=dropout_uci model.hidden_size=256 model.num_layers=3
"""
from __future__ import annotations

import torch
from torch import nn

from trainkit.engine.module import TrainModule
from trainkit.errors import ConfigError
from trainkit.tabular.layers import FeatureEncoder, mlp
from trainkit.tabular.objective import Batch, ClassifierObjective


class TabularMLP(TrainModule):
    def __init__(
        self,
        numeric: list[str],
        categorical: list[str],
        classes: list[str],
        max_categories: int = 64,
        embed_dim: int = 8,
        hidden_size: int = 128,
        num_layers: int = 2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if not numeric and not categorical:
            raise ConfigError("datamodule.numeric and datamodule.categorical are both empty: the model has no input")
        if num_layers < 1:
            raise ConfigError(f"model.num_layers={num_layers}: must be at least 1")
        self.encoder = FeatureEncoder(len(numeric), len(categorical), max_categories, embed_dim)
        self.body = mlp(self.encoder.out_features, hidden_size, num_layers, dropout)
        self.head = nn.Linear(hidden_size, len(classes))
        self.objective = ClassifierObjective(len(classes))

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes]."""
        return self.head(self.body(self.encoder(numeric, categorical)))

    def _logits(self, batch: Batch) -> torch.Tensor:
        return self(batch["numeric"], batch["categorical"])

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self.objective.training_step(lambda: self._logits(batch), batch, self)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.objective.evaluation_step(self._logits(batch), batch, "val", self.log)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.objective.evaluation_step(self._logits(batch), batch, "test", self.log)

    def on_validation_epoch_end(self) -> None:
        self.objective.evaluation_epoch_end("val", self.log, self)

    def on_test_epoch_end(self) -> None:
        self.objective.evaluation_epoch_end("test", self.log, self)

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self.objective.predict_step(self._logits(batch), batch)
