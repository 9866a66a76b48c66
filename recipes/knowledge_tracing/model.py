"""DKT — Deep Knowledge Tracing (Piech et al., NeurIPS 2015).

Each interaction (skill s, correct c) becomes one token `s + num_skills * c`; an LSTM reads the
student's history, and a linear layer gives, after step t, the probability of a correct answer
on every skill. The loss and the metrics (objective.py, shared with SAKT and AKT) use the
probability for the skill actually asked at t + 1: masked BCE over all real next steps (padding
never counts), AUC and accuracy over every such prediction of the epoch (exact, not an average of
per-batch AUCs). Question ids, when the data has them, are not used.

num_skills None (the config's default): the datamodule's count, read from the data; the layers
are then built in configure_model, once the datamodule is set up.

    trainkit fit model=knowledge_tracing model.hidden_size=128 model.num_layers=2
"""
from __future__ import annotations

import torch
from torch import nn

from .objective import KTModel


class DKT(KTModel):
    def __init__(self, num_skills: int | None = None, hidden_size: int = 64, num_layers: int = 1,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.hidden_size, self.num_layers, self.dropout_p = hidden_size, num_layers, dropout
        if num_skills is not None:
            self.build(num_skills, 0)

    def make_layers(self) -> None:
        self.embed = nn.Embedding(2 * self.num_skills, self.hidden_size)
        self.lstm = nn.LSTM(self.hidden_size, self.hidden_size, self.num_layers, batch_first=True,
                            dropout=self.dropout_p if self.num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(self.dropout_p)
        self.head = nn.Linear(self.hidden_size, self.num_skills)

    def forward(self, skills: torch.Tensor, correct: torch.Tensor, questions: torch.Tensor | None = None,
                first: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T-1]: entry t predicts the answer at step t+1 from steps 0..t, or with
        `first` from the steps before its question's first step (objective.py)."""
        hidden = self.dropout(self._lstm(self.embed(skills + self.num_skills * correct)))
        if first is None:
            hidden = hidden[:, :-1]
        else:  # the state after the previous question's last step
            before = (first[:, 1:] - 1).clamp(min=0)
            hidden = hidden.gather(1, before.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return self.head(hidden).gather(-1, skills[:, 1:].unsqueeze(-1)).squeeze(-1)

    def _lstm(self, x: torch.Tensor) -> torch.Tensor:
        # oneDNN has no fp16 LSTM kernel on most CPUs ("could not create a primitive descriptor"):
        # under CPU fp16 autocast (precision=16-mixed) the LSTM runs in fp32; everything else,
        # and every GPU and bf16 run, keeps the autocast dtype.
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.float16:
            with torch.autocast("cpu", enabled=False):
                return self.lstm(x.float())[0]
        return self.lstm(x)[0]
