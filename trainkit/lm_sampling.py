"""The next token of a causal language model's generation, shared by the recipes that generate
(tiny_gpt, llm_finetune): greedy at temperature 0, else sampled from the temperature-scaled
distribution, cut to the `top_k` most likely tokens when given."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def next_token(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    """logits [B, V] of the last position -> the chosen token ids, [B, 1]."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
