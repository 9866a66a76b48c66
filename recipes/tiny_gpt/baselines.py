"""Reference perplexities that say whether the GPT learnt more than byte frequencies.

    python -m trainkit.recipes.tiny_gpt.baselines                       # the OpenStax books, the default split
    python -m trainkit.recipes.tiny_gpt.baselines ~/my_texts 0.01 0.01  # path, val_fraction, test_fraction

Unigram (each byte's frequency) and bigram (the next byte's frequency given the previous one)
counts from the training split, add-one smoothed, scored on exactly the targets the model is
scored on (every byte of a held-out part but its first).
"""
from __future__ import annotations

import math
import sys

import numpy as np

from .datamodule import read_corpus, split_books
from .tokenizer import VOCAB_SIZE


def ngram_perplexity(train_parts: list[np.ndarray], eval_parts: list[np.ndarray], order: int) -> float:
    """exp(mean negative log-likelihood) of an add-one smoothed byte model of order 1 or 2."""
    if order not in (1, 2):
        raise ValueError(f"order={order}: 1 (unigram) or 2 (bigram)")
    counts = np.ones((VOCAB_SIZE,) * order)
    for part in train_parts:
        tokens = part.astype(np.int64)
        np.add.at(counts, (tokens,) if order == 1 else (tokens[:-1], tokens[1:]), 1)
    probs = counts / counts.sum(axis=-1, keepdims=True)
    targets = np.concatenate([p[1:] for p in eval_parts]).astype(np.int64)
    if order == 1:
        nll = -np.log(probs[targets])
    else:
        nll = -np.log(probs[np.concatenate([p[:-1] for p in eval_parts]).astype(np.int64), targets])
    return math.exp(nll.mean())


def main(argv: list[str]) -> None:
    from trainkit.builtin import data_dir

    path = argv[0] if argv else str(data_dir() / "openstax_text")
    val_fraction, test_fraction = (float(argv[1]), float(argv[2])) if len(argv) > 2 else (0.01, 0.01)
    parts = split_books(read_corpus(path), val_fraction, test_fraction)
    for split in ("val", "test"):
        unigram, bigram = (ngram_perplexity(parts["train"], parts[split], n) for n in (1, 2))
        print(f"{split}: unigram ppl {unigram:.2f}, bigram ppl {bigram:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
