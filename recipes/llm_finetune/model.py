"""A Hugging Face causal language model, fine-tuned whole or through LoRA adapters (peft).

    trainkit fit experiment=llm_finetune model.pretrained=~/models/gpt2                  # LoRA (r=8)
    trainkit fit experiment=llm_finetune model.pretrained=~/models/gpt2 model.lora.r=0   # every weight trains
    trainkit fit experiment=llm_finetune model.pretrained=~/models/qwen strategy=fsdp trainer.devices=4 \
        precision=bf16-mixed model.gradient_checkpointing=true
    trainkit predict experiment=llm_finetune model.pretrained=... trainer.resume=<checkpoint> datamodule.prompt="The cell"
    trainkit export <checkpoint> <folder> [--merged]      # a folder from_pretrained loads: the adapter, or merged

`model.pretrained`: a folder written by `save_pretrained`, or a hub id (pretrained.py). The model's
own tokenizer (the datamodule reads the same folder). `model.dtype`: the weights' dtype
(float32, bfloat16, float16, or auto: the folder's own); mixed precision is `precision=...`.
`model.gradient_checkpointing`: each decoder layer's activations are recomputed in the backward
(transformers' own, non-reentrant). `model.lora.r` > 0 wraps the model in LoRA adapters (`alpha`,
`dropout`, `target_modules`: null takes peft's default for the architecture, e.g. c_attn for
GPT-2, q_proj/v_proj for Llama); only the adapters train, and checkpoints hold only them
(`model.save_frozen_weights=true` keeps everything). The base weights come from
`model.pretrained` again on resume: keep that folder unchanged while a run uses it.

Logged: `train/loss` (mean cross-entropy over the scored tokens of the global batch, nats),
`val/loss`, `val/ppl` (and `test/`): over every scored token of the whole split and all processes
(trainkit.lm_metrics), as in the tiny GPT recipe. Under strategy=fsdp every decoder layer (the
model's `_no_split_modules`) is its own FSDP unit unless strategy.wrap_modules names others.
"""
from __future__ import annotations

import inspect
import logging
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from .pretrained import from_pretrained, load_tokenizer, peft, transformers
from trainkit.engine.module import TrainModule
from trainkit.errors import ConfigError
from trainkit.lm_metrics import IGNORE, SplitTotals
from trainkit.lm_sampling import next_token

log = logging.getLogger("trainkit")

Batch = dict[str, Any]  # input, target: LongTensor [B, T] (target IGNORE where not scored); see datamodule.py
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}
LORA_KEYS = ("r", "alpha", "dropout", "target_modules")


class HFCausalLM(TrainModule):
    def __init__(
        self,
        pretrained: str,
        dtype: str = "float32",
        gradient_checkpointing: bool = False,
        lora: dict[str, Any] | None = None,
        save_frozen_weights: bool = False,
        temperature: float = 0.8,
        top_k: int | None = 40,
    ) -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise ConfigError(f"model.dtype={dtype!r} is not one of {', '.join(DTYPES)}")
        if temperature < 0:
            raise ConfigError(f"model.temperature={temperature} must be >= 0 (0 picks the most likely token)")
        if top_k is not None and top_k < 1:
            raise ConfigError(f"model.top_k={top_k} must be >= 1, or null to sample from the whole vocabulary")
        lora = dict(lora or {})
        unknown = sorted(set(lora) - set(LORA_KEYS))
        if unknown:
            raise ConfigError(f"model.lora.{unknown[0]} is not a LoRA setting (valid: {', '.join(LORA_KEYS)})")
        self.pretrained, self.temperature, self.top_k = pretrained, temperature, top_k
        self.tokenizer = load_tokenizer(pretrained)
        model = from_pretrained(transformers().AutoModelForCausalLM, pretrained, dtype=DTYPES[dtype])
        if gradient_checkpointing:
            _checkpoint_layers(model)
        self.lora_r = int(lora.get("r") or 0)
        if self.lora_r < 0:
            raise ConfigError(f"model.lora.r={self.lora_r} must be >= 0 (0: full fine-tuning)")
        if self.lora_r:
            model = _with_lora(model, self.lora_r, lora)
        self.model = model
        self.checkpoint_frozen_parameters = save_frozen_weights or not self.lora_r
        self._cache_arg = _cache_argument(self.base_model())
        self._eval_totals = SplitTotals()

    def base_model(self) -> torch.nn.Module:
        """The transformers model (inside peft's wrappers under LoRA)."""
        return self.model.get_base_model() if self.lora_r else self.model

    @property
    def max_positions(self) -> int | None:
        return getattr(self.base_model().config, "max_position_embeddings", None)

    def forward(self, tokens: torch.Tensor, cache: Any = None) -> Any:
        """The transformers output for tokens [B, T] (`.logits` [B, T, vocab]). Called as the module
        itself, so that FSDP's root unit gathers its parameters around it."""
        if cache is None:
            return self.model(input_ids=tokens, use_cache=False)
        return self.model(input_ids=tokens, use_cache=True, **{self._cache_arg: cache})

    def setup(self, stage: str) -> None:
        if stage == "predict":  # generation reads no blocks
            return
        block = getattr(self.trainer.datamodule, "block_size", None)
        if block and self.max_positions and block > self.max_positions:
            raise ConfigError(f"datamodule.block_size={block} is longer than the model's context "
                              f"({self.max_positions} positions); lower datamodule.block_size")

    # -- training and evaluation ---------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        targets = batch["target"]
        # Prompts leave a varying number of scored tokens per process: divide by the global count
        # (times the processes, which the gradient average divides by again) so that the gradient
        # is that of the global batch's mean, as on one process. The count's sum overlaps the forward.
        local_count = (targets != IGNORE).sum()
        count = self.sum_over_processes(local_count, async_op=True)
        logits = self(batch["input"]).logits
        loss_sum = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE,
                                   reduction="sum")
        self.log("train/loss", loss_sum.detach() / local_count.clamp(min=1), prog_bar=True)  # this process's mean
        return loss_sum * self.trainer.world_size / count.wait().clamp(min=1)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_totals.add("val", self(batch["input"]).logits, batch["target"])

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_totals.add("test", self(batch["input"]).logits, batch["target"])

    def on_validation_epoch_end(self) -> None:
        self._eval_totals.log(self, "val")

    def on_test_epoch_end(self) -> None:
        self._eval_totals.log(self, "test")

    # -- generation ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, tokens: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None) -> torch.Tensor:
        """tokens [B, T] followed by max_new_tokens sampled ones (temperature 0: the most likely),
        through the model's key-value cache. Always max_new_tokens steps, EOS or not: under FSDP
        every step is a collective, and the caller cuts at EOS."""
        if self.max_positions:
            if max_new_tokens >= self.max_positions:
                raise ConfigError(f"datamodule.max_new_tokens={max_new_tokens} leaves no room for the prompt in the "
                                  f"model's context ({self.max_positions} positions); lower it")
            tokens = tokens[:, -(self.max_positions - max_new_tokens):]  # the prompt's end, if it is too long
        cache = transformers().DynamicCache()
        step_input = tokens
        for _ in range(max_new_tokens):
            out = self(step_input, cache=cache)
            step_input = next_token(out.logits[:, -1, :], temperature, top_k)
            tokens = torch.cat([tokens, step_input], dim=1)
        return tokens

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        """One sample per batch: the prompt, the text generated after it (up to the first EOS),
        and all tokens. Rank 0 logs what it generates."""
        prompt_tokens = batch["prompt_tokens"]
        out = self.generate(prompt_tokens, batch["max_new_tokens"], self.temperature, self.top_k)
        new = out[0, prompt_tokens.shape[1]:].tolist()
        eos = self.tokenizer.eos_token_id
        if eos is not None and eos in new:
            new = new[: new.index(eos)]
        completion = self.tokenizer.decode(new, skip_special_tokens=True)
        if self.trainer.is_global_zero:
            log.info("sample %d:\n%s%s\n", batch["sample"], batch["prompt"], completion)
        return {"prompt": batch["prompt"], "sample": batch["sample"], "completion": completion, "tokens": out[0].cpu()}

    # -- export ---------------------------------------------------------------------------------
    def export_pretrained(self, directory: str, merged: bool | None = None) -> str:
        """Write a folder `from_pretrained` loads, with the tokenizer: the LoRA adapter alone
        (peft's adapter_config.json + adapter_model.safetensors, naming model.pretrained as its
        base), or the whole model with the adapters merged in (merged=True; what a full
        fine-tuning always writes). Returns what was written."""
        if merged is None:
            merged = not self.lora_r
        if not merged and not self.lora_r:
            raise ConfigError("--adapter: this run fine-tuned every weight (model.lora.r=0): there is no adapter; "
                              "export the whole model (--merged, the default)")
        model = self.model.merge_and_unload() if (merged and self.lora_r) else self.model
        model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        return "the merged model" if merged and self.lora_r else ("the LoRA adapter" if self.lora_r else "the model")


def _with_lora(model: torch.nn.Module, r: int, settings: dict[str, Any]) -> torch.nn.Module:
    pf = peft()
    targets = settings.get("target_modules")
    config = pf.LoraConfig(r=r, lora_alpha=settings.get("alpha", 2 * r), lora_dropout=settings.get("dropout", 0.0),
                           target_modules=list(targets) if targets else None, task_type="CAUSAL_LM")
    try:
        with warnings.catch_warnings():
            # GPT-2's Conv1D layers: peft sets fan_in_fan_out itself and says so on every layer
            warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")  # peft asks
            return pf.get_peft_model(model, config)
    except ValueError as exc:  # peft names the modules it could not find
        raise ConfigError(f"model.lora: {str(exc).splitlines()[0]}; set model.lora.target_modules to names of "
                          "the model's linear layers") from None


def _checkpoint_layers(model: torch.nn.Module) -> None:
    """Recompute each decoder layer in the backward (non-reentrant: frozen inputs under LoRA need
    no requires_grad trick). transformers 5 renamed the method; 4.x has only the old name."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _cache_argument(model: torch.nn.Module) -> str:
    """The forward argument that takes a key-value cache: `cache` in recent transformers,
    `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
