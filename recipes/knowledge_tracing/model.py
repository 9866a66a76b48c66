"""DKT — Deep Knowledge Tracing (Piech et al., NeurIPS 2015).

Each interaction (skill s, correct c) becomes one token `s + num_skills * c`; an LSTM reads the
student's history, and a linear layer gives, after step t, the probability of a correct answer
on every skill. The loss and the metrics (objective.py, shared with SAKT) use the probability
for the skill actually asked at t + 1: masked BCE over all real next steps (padding never
counts), AUC and accuracy over every such prediction of the epoch (exact, not an average of
per-batch AUCs).

    trainkit fit model=knowledge_tracing model.hidden_size=128 model.num_layers=2
"""
from __future__ import annotations

import torch
from torch import nn

from .objective import Batch, KTObjective
from trainkit.engine.module import TrainModule


class DKT(TrainModule):
    def __init__(self, num_skills: int, hidden_size: int = 64, num_layers: int = 1, dropout: float = 0.2) -> None:
        super().__init__()
        self.num_skills = num_skills
        self.embed = nn.Embedding(2 * num_skills, hidden_size)
        self.lstm = nn.LSTM(
            hidden_size, hidden_size, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, num_skills)
        self.objective = KTObjective()

    def forward(self, skills: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
        """Logits [B, T-1]: entry t predicts the answer at step t+1 from steps 0..t."""
        hidden = self._lstm(self.embed(skills + self.num_skills * correct))
        logits = self.head(self.dropout(hidden))[:, :-1]
        return logits.gather(-1, skills[:, 1:].unsqueeze(-1)).squeeze(-1)

    def _lstm(self, x: torch.Tensor) -> torch.Tensor:
        # oneDNN has no fp16 LSTM kernel on most CPUs ("could not create a primitive descriptor"):
        # under CPU fp16 autocast (precision=16-mixed) the LSTM runs in fp32; everything else,
        # and every GPU and bf16 run, keeps the autocast dtype.
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.float16:
            with torch.autocast("cpu", enabled=False):
                return self.lstm(x.float())[0]
        return self.lstm(x)[0]

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
