"""Where a pretrained model comes from: a local folder, the Hugging Face cache, or the hub.

`model.pretrained` is a folder written by `save_pretrained` (config.json, the weights, the
tokenizer's files), or a hub id such as `gpt2` or `Qwen/Qwen2.5-0.5B`. A hub id is looked up in
the local cache first (HF_HOME, by default ~/.cache/huggingface); only when it is not there is the
hub asked, and a machine that cannot reach it gets one clear message at once instead of a wait
through retries and a traceback. transformers is imported here, only when the recipe is used.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from trainkit.errors import ConfigError

INSTALL = "pip install 'trainkit[hf]' (transformers, peft, safetensors, tokenizers)"


def transformers() -> Any:
    try:
        import transformers as tf
    except ImportError:
        raise ConfigError(f"model=hf_causal_lm needs the Hugging Face libraries: {INSTALL}") from None
    tf.utils.logging.disable_progress_bar()  # bars of loading shards: noise in a training log
    return tf


def peft() -> Any:
    try:
        import peft as pf
    except ImportError:
        raise ConfigError(f"model.lora.r > 0 needs peft: {INSTALL}; or set model.lora.r=0 (full fine-tuning)") from None
    return pf


def source(name: str) -> tuple[str, bool]:
    """(what to give from_pretrained, whether it is a local folder). A path that does not exist,
    or a folder without config.json, is refused here."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.pretrained={name}: the folder has no config.json; point it at a folder written "
                              "by save_pretrained (config.json, model.safetensors, the tokenizer's files)")
        return str(path.resolve()), True
    if name.startswith((".", "/", "~")) or path.exists() or name.count("/") > 1:
        raise ConfigError(f"model.pretrained={name}: no such folder; give a folder written by save_pretrained "
                          "or a Hugging Face hub id (e.g. gpt2)")
    return name, False


def from_pretrained(loader: Any, name: str, **kwargs: Any) -> Any:
    """`loader.from_pretrained(name)` from a folder, the local cache, or the reachable hub."""
    where, local = source(name)
    if local:
        return loader.from_pretrained(where, **kwargs)
    try:
        return loader.from_pretrained(where, local_files_only=True, **kwargs)
    except OSError:
        pass  # not in the cache: the hub, if this machine reaches it
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or not _reachable(endpoint):
        raise ConfigError(
            f"model.pretrained={name}: not a local folder, not in the Hugging Face cache (HF_HOME={hf_home}), and "
            f"the hub ({endpoint}) cannot be reached from this machine; point model.pretrained at a folder written "
            "by save_pretrained (copy one here), or download it where the hub is reachable into the HF_HOME this "
            "machine reads (huggingface-cli download <id>)"
        )
    try:
        return loader.from_pretrained(where, **kwargs)
    except OSError as exc:
        raise ConfigError(f"model.pretrained={name}: {str(exc).splitlines()[0]}") from None


def _reachable(url: str, timeout_s: float = 3.0) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def load_tokenizer(name: str) -> Any:
    return from_pretrained(transformers().AutoTokenizer, name)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """What decides the token ids of a text (for the cache key): the fast tokenizer's whole
    definition, else its class, vocabulary and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return f"{type(tokenizer).__name__}:{backend.to_str()}"
    return f"{type(tokenizer).__name__}:{sorted(tokenizer.get_vocab().items())}:{tokenizer.all_special_tokens}"
