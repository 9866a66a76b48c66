"""Small generated data for each datamodule option, so every recipe runs in tests in seconds.

`TINY_DATA[option](tmp_path)` writes tiny files in that datamodule's real format under tmp_path
(when it reads files) and returns the overrides that point the datamodule at them and keep it small.
`RECIPE_PAIRS` says which datamodule a model option trains on by default and the reverse, so the
every-config test can run each option with a partner it fits.
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Callable

from tests.conftest import SMALL_DATA


def _knowledge_tracing(tmp_path: Path) -> list[str]:
    return list(SMALL_DATA)  # the simulator writes these formats itself (path=null)


def _kt_pykt(tmp_path: Path) -> list[str]:
    # One fold: the experiments run pyKT's 5-fold protocol, which test_kt_protocol runs once, small.
    # Short windows and a narrow model: the pyKT experiments set AKT's and SAKT's full sizes.
    return [*SMALL_DATA, "datamodule.fold=0", "datamodule.max_len=50", "model.hidden_size=16"]


def _kt_questions(tmp_path: Path) -> list[str]:
    return [*SMALL_DATA, "datamodule.questions_per_skill=4", "datamodule.max_len=50", "model.hidden_size=16"]


def _uci_dropout(tmp_path: Path) -> list[str]:
    from trainkit.tabular.tiny_data import write_uci

    write_uci(tmp_path)
    return [f"datamodule.path={tmp_path}", "datamodule.batch_size=16"]


def _oulad(tmp_path: Path) -> list[str]:
    from trainkit.tabular.tiny_data import write_oulad

    write_oulad(tmp_path)
    return [f"datamodule.path={tmp_path}", "datamodule.batch_size=16"]


def tiny_corpus(folder: Path) -> Path:
    """Two small books (~3 KB each): one .txt, one .txt.gz, in the openstax_text format."""
    folder.mkdir(parents=True, exist_ok=True)
    topics = ["derivative", "median", "fraction", "neuron", "treaty", "argument"]
    for name, book in (("algebra", 0), ("history", 3)):
        lines = [f"# A Tiny Book of {name.title()}", ""]
        for chapter in range(4):
            lines += [f"## Chapter {chapter + 1}", ""]
            for i in range(12):
                topic = topics[(book + chapter + i) % len(topics)]
                lines += [f"The {topic} in section {chapter + 1}.{i + 1} is explained with example {i * 7 + book}.", ""]
        text = "\n".join(lines)
        if book:
            (folder / f"{name}.txt.gz").write_bytes(gzip.compress(text.encode()))
        else:
            (folder / f"{name}.txt").write_text(text)
    return folder


def _text(tmp_path: Path) -> list[str]:
    return [
        f"datamodule.path={tiny_corpus(tmp_path / 'text')}", "model.block_size=32", "datamodule.batch_size=8",
        # The default callbacks monitor val/auc, which a language model does not log; the
        # experiment presets set these themselves.
        "callbacks.model_checkpoint.monitor=val/loss", "callbacks.model_checkpoint.mode=min",
        "callbacks.early_stopping.monitor=val/loss", "callbacks.early_stopping.mode=min",
    ]


def tiny_hf_model() -> Path:
    """A random 2-layer, 64-wide GPT-2 with a byte-level BPE tokenizer trained here on the tiny
    corpus, written by save_pretrained into the session's cache (once per session; no download).
    Skips the calling test where the hf extra is not installed."""
    import os

    import pytest

    pytest.importorskip("transformers", reason="the hf extra (pip install -e '.[hf]') is not installed")
    pytest.importorskip("peft", reason="the hf extra (pip install -e '.[hf]') is not installed")
    folder = Path(os.environ["TRAINKIT_CACHE"]) / "tiny_hf_gpt2"
    if (folder / "config.json").is_file():
        return folder
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    corpus = tiny_corpus(folder.parent / "tiny_hf_corpus")
    texts = [gzip.decompress(f.read_bytes()).decode() if f.suffix == ".gz" else f.read_text()
             for f in sorted(corpus.iterdir())]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    eos = "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=eos, bos_token=eos, unk_token=eos)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=64, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}")
    GPT2LMHeadModel(config).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, folder)  # whole or not at all
    return folder


def _lm_text(tmp_path: Path) -> list[str]:
    return [
        f"model.pretrained={tiny_hf_model()}", f"datamodule.path={tiny_corpus(tmp_path / 'text')}",
        "datamodule.block_size=32", "datamodule.batch_size=4", "datamodule.val_fraction=0.1",
        "datamodule.test_fraction=0.1", f"datamodule.cache_dir={tmp_path / 'cache'}",
        "callbacks.model_checkpoint.monitor=val/loss", "callbacks.model_checkpoint.mode=min",
        "callbacks.early_stopping.monitor=val/loss", "callbacks.early_stopping.mode=min",
    ]


# Options that need a pretrained model folder (model.pretrained) to compose into something that runs.
NEEDS_PRETRAINED = {"hf_causal_lm", "lm_text", "llm_finetune"}


TINY_DATA: dict[str, Callable[[Path], list[str]]] = {
    "kt_lines": _knowledge_tracing,
    "kt_pykt": _kt_pykt,
    "kt_akt": _kt_questions,
    "kt_interactions": _knowledge_tracing,
    "uci_dropout": _uci_dropout,
    "oulad_at_risk": _oulad,
    "oulad_clicks": _oulad,
    "text": _text,
    "lm_text": _lm_text,
}

# model option -> the datamodule option it trains on; datamodule option -> a model that reads it.
RECIPE_PAIRS: dict[str, str] = {
    "knowledge_tracing": "kt_lines",
    "sakt": "kt_lines",
    "akt": "kt_akt",
    "kt_akt": "akt",
    "kt_lines": "knowledge_tracing",
    "kt_pykt": "knowledge_tracing",
    "kt_interactions": "knowledge_tracing",
    "dropout_mlp": "uci_dropout",
    "engagement": "oulad_clicks",
    "uci_dropout": "dropout_mlp",
    "oulad_at_risk": "dropout_mlp",
    "oulad_clicks": "engagement",
    "tiny_gpt": "text",
    "text": "tiny_gpt",
    "hf_causal_lm": "lm_text",
    "lm_text": "hf_causal_lm",
}
