"""A tiny GPT: a decoder-only transformer trained to predict the next byte (nanoGPT's model.py).

Token + learnt position embeddings; `num_layers` pre-LN blocks, each causal self-attention
(torch's scaled_dot_product_attention, is_causal=True) and a 4x MLP with GELU, both residual;
a final LayerNorm; and a head that shares its weight with the token embedding. Linear layers
have no bias (nanoGPT's bias=False: a little faster, no worse). nanoGPT's names for the sizes:
n_embd = hidden_size, n_layer = num_layers, n_head = num_heads.

    trainkit fit experiment=tiny_gpt                                # the preset (configs/experiment/tiny_gpt.yaml)
    trainkit fit experiment=tiny_gpt model.num_layers=6 model.hidden_size=384 model.num_heads=6
    trainkit fit experiment=tiny_gpt model.activation_checkpointing=true   # recompute blocks in backward
    trainkit predict experiment=tiny_gpt trainer.resume=<checkpoint> datamodule.prompt="The derivative"

Logged: `train/loss` (mean cross-entropy per token, nats), `val/loss` and `val/ppl` (and `test/`):
the mean over every token of the whole split and its exponential, from sums over all batches and
all processes — not a mean of per-batch values. `trainkit predict` samples a continuation of each
prompt (temperature, top_k), logs it and returns it with the predictions.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .tokenizer import VOCAB_SIZE, decode
from trainkit.engine.module import TrainModule
from trainkit.errors import ConfigError
from trainkit.lm_metrics import IGNORE, SplitTotals
from trainkit.lm_sampling import next_token

log = logging.getLogger("trainkit")

Batch = dict[str, Any]  # input, target: LongTensor [B, T] (target IGNORE = -1 on padding); see datamodule.py


class CausalSelfAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(b, t, c)))


class MLP(nn.Module):
    def __init__(self, hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(hidden_size, 4 * hidden_size, bias=False)
        self.proj = nn.Linear(4 * hidden_size, hidden_size, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """One pre-LN transformer block; the unit FSDP shards (`strategy.wrap_modules=[Block]`) and
    activation checkpointing recomputes."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_size)
        self.attn = CausalSelfAttention(hidden_size, num_heads, dropout)
        self.ln_2 = nn.LayerNorm(hidden_size)
        self.mlp = MLP(hidden_size, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(TrainModule):
    def __init__(
        self,
        vocab_size: int = VOCAB_SIZE,
        block_size: int = 128,
        hidden_size: int = 128,
        num_layers: int = 4,
        num_heads: int = 4,
        dropout: float = 0.0,
        activation_checkpointing: bool = False,
        temperature: float = 0.8,
        top_k: int | None = 40,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ConfigError(
                f"model.hidden_size={hidden_size} must be a multiple of model.num_heads={num_heads} "
                "(each head gets hidden_size / num_heads dimensions)"
            )
        if temperature < 0:
            raise ConfigError(f"model.temperature={temperature} must be >= 0 (0 picks the most likely token)")
        if top_k is not None and top_k < 1:
            raise ConfigError(f"model.top_k={top_k} must be >= 1, or null to sample from the whole vocabulary")
        self.block_size = block_size
        self.activation_checkpointing = activation_checkpointing
        self.temperature, self.top_k = temperature, top_k
        self.tok_emb = nn.Embedding(vocab_size, hidden_size)
        self.pos_emb = nn.Embedding(block_size, hidden_size)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(hidden_size, num_heads, dropout) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying (Press & Wolf, 2017), as GPT-2
        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch's last layer gets std 0.02 / sqrt(2 * num_layers),
        # so the residual stream's variance does not grow with depth.
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * num_layers))
        self._eval_totals = SplitTotals()  # val/test loss sums (trainkit.lm_metrics)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        """Parameters, the tied embedding/head weight counted once (what nanoGPT reports, plus
        the position embedding)."""
        return sum(p.numel() for p in self.parameters())  # parameters() yields a shared tensor once

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, vocab] for tokens [B, T]: position t scores the token at t + 1 from 0..t."""
        t = tokens.shape[1]
        if t > self.block_size:
            raise ConfigError(f"a sequence of {t} tokens is longer than model.block_size={self.block_size}")
        x = self.drop(self.tok_emb(tokens) + self.pos_emb(torch.arange(t, device=tokens.device)))
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            # Non-reentrant checkpointing: the block's activations are dropped after the forward
            # and recomputed in the backward (with the same dropout masks: RNG state is kept).
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return self.head(self.ln_f(x))

    # -- training and evaluation ---------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        # Training windows are all full (block_size targets each), so every process holds the same
        # number of tokens and the mean per process is the mean of the global batch under DDP.
        logits = self(batch["input"])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["target"].flatten(), ignore_index=IGNORE)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def tokens_in_batch(self, batch: Batch) -> int:
        """What throughput/tokens_per_s counts: the input positions (every window is full)."""
        return batch["input"].numel()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._accumulate("val", batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._accumulate("test", batch)

    def on_validation_epoch_end(self) -> None:
        self._log_split("val")

    def on_test_epoch_end(self) -> None:
        self._log_split("test")

    def _accumulate(self, split: str, batch: Batch) -> None:
        self._eval_totals.add(split, self(batch["input"]), batch["target"])

    def _log_split(self, split: str) -> None:
        self._eval_totals.log(self, split)

    # -- generation ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self, tokens: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None
    ) -> torch.Tensor:
        """tokens [B, T] followed by max_new_tokens sampled ones, [B, T + max_new_tokens]. The
        context is the last block_size tokens; temperature 0 takes the most likely token."""
        for _ in range(max_new_tokens):
            chosen = next_token(self(tokens[:, -self.block_size :])[:, -1, :], temperature, top_k)
            tokens = torch.cat([tokens, chosen], dim=1)
        return tokens

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        """One sample per batch (datamodule.py's predict loader): the prompt, the generated text
        after it, and all tokens. Rank 0 logs what it generates."""
        prompt_tokens = batch["prompt_tokens"]
        out = self.generate(prompt_tokens, batch["max_new_tokens"], self.temperature, self.top_k)
        completion = decode(out[0, prompt_tokens.shape[1] :].tolist())
        if self.trainer.is_global_zero:
            log.info("sample %d:\n%s%s\n", batch["sample"], batch["prompt"], completion)
        return {"prompt": batch["prompt"], "sample": batch["sample"], "completion": completion, "tokens": out[0].cpu()}
