"""An early-warning GRU over a student's daily VLE activity (recipes/engagement/datamodule.py).

The GRU reads the days in order (step 0: everything before the module start, then one step per
day); its last hidden state, concatenated with the encoded static features (the at-risk table's
demographics, trainkit.tabular.layers.FeatureEncoder; none when the lists are empty), goes through
one Linear -> ReLU -> Dropout block to a logit per class. Loss and metrics are the tabular
model's (trainkit/tabular/objective.py), so val/auc means the same for both.

    trainkit fit experiment=engagement model.hidden_size=128
    trainkit fit experiment=engagement datamodule.numeric=[] datamodule.categorical=[]   # clicks only
"""
from __future__ import annotations

import torch
from torch import nn

from trainkit.engine.module import TrainModule
from trainkit.errors import ConfigError
from trainkit.tabular.layers import FeatureEncoder, mlp
from trainkit.tabular.objective import Batch, ClassifierObjective
from trainkit.tabular.oulad import DAY_FEATURES


class EngagementGRU(TrainModule):
    def __init__(
        self,
        numeric: list[str],
        categorical: list[str],
        classes: list[str],
        max_categories: int = 64,
        embed_dim: int = 8,
        hidden_size: int = 32,
        num_layers: int = 1,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"model.num_layers={num_layers}: must be at least 1")
        self.gru = nn.GRU(len(DAY_FEATURES), hidden_size, num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.encoder = FeatureEncoder(len(numeric), len(categorical), max_categories, embed_dim)
        self.body = mlp(hidden_size + self.encoder.out_features, hidden_size, 1, dropout)
        self.head = nn.Linear(hidden_size, len(classes))
        self.objective = ClassifierObjective(len(classes))

    def forward(self, days: torch.Tensor, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes] from days [B, T, 4] and the static features."""
        last = self._gru(days)[:, -1]
        return self.head(self.body(torch.cat([last, self.encoder(numeric, categorical).to(last.dtype)], dim=-1)))

    def _gru(self, x: torch.Tensor) -> torch.Tensor:
        # As DKT's LSTM: oneDNN has no fp16 recurrent kernel on most CPUs, so under CPU fp16
        # autocast (precision=16-mixed) the GRU runs in fp32; every other case keeps the autocast dtype.
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.float16:
            with torch.autocast("cpu", enabled=False):
                return self.gru(x.float())[0]
        return self.gru(x)[0]

    def _logits(self, batch: Batch) -> torch.Tensor:
        return self(batch["days"], batch["numeric"], batch["categorical"])

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
