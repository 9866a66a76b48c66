"""Tokens/s of the llm_finetune recipe against a hand-written loop over the same transformers model.

    python scripts/bench_llm_finetune.py                          # a random GPT-2 (4 layers, 256 wide), CPU
    python scripts/bench_llm_finetune.py --pretrained ~/models/gpt2 --device cuda --steps 100 --lora-r 0
    python scripts/bench_llm_finetune.py --device cuda --precision bf16-mixed   # the line in scripts/gpu_check.sh

Both sides train the same model (HFCausalLM: a save_pretrained folder, LoRA or full), on the same
packed blocks of the same text, with AdamW, batch x block tokens per step: (1) a plain loop —
next batch, forward, cross-entropy over the scored tokens, backward, step, zero_grad — and (2)
trainkit.Trainer with the recipe's datamodule, no logger, progress bar or checkpoint (logging its
loss every step as the recipe does). Rounds alternate the two; the figure is the median over rounds
of tokens per second of wall time after `--warmup` steps (the first steps build caches and, on
a GPU, kernels). Without --pretrained a random GPT-2 is written to a temporary folder (no download).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from trainkit import Callback, Trainer  # noqa: E402
from trainkit.lm_metrics import IGNORE  # noqa: E402
from trainkit.recipes.llm_finetune.datamodule import LMDataModule  # noqa: E402
from trainkit.recipes.llm_finetune.model import HFCausalLM  # noqa: E402


def random_gpt2(folder: Path, corpus: Path, layers: int, width: int) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([f.read_text() for f in sorted(corpus.glob("*.txt"))],
                            trainers.BpeTrainer(vocab_size=2000, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    eos = "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=eos, bos_token=eos, unk_token=eos)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=width, n_layer=layers, n_head=4,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, eos_token_id=tokenizer.eos_token_id,
                        bos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    words = ["derivative", "median", "fraction", "neuron", "treaty", "argument", "cell", "energy", "vote"]
    for book in range(2):
        lines = [f"The {words[(i * 7 + book) % 9]} in section {i} relates to the {words[(i * 3) % 9]} of example {i}."
                 for i in range(4000)]
        (folder / f"book{book}.txt").write_text("\n".join(lines))
    return folder


class StepClock(Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.seen, self.start, self.end = warmup, 0, 0.0, 0.0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        if self.seen == self.warmup:
            _sync()
            self.start = time.perf_counter()
        self.end = time.perf_counter()

    def on_train_end(self, trainer, module) -> None:
        _sync()
        self.end = time.perf_counter()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _autocast(device: str, precision: str):
    if precision == "bf16-mixed":
        return torch.autocast(device, dtype=torch.bfloat16)
    return torch.autocast(device, enabled=False)


def hand_loop(args, pretrained: str, dm: LMDataModule) -> float:
    torch.manual_seed(0)
    model = HFCausalLM(pretrained, lora={"r": args.lora_r, "alpha": 2 * args.lora_r, "dropout": 0.0}).model
    model.to(args.device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loader = torch.utils.data.DataLoader(dm.datasets["train"], batch_size=args.batch_size, shuffle=True,
                                         drop_last=True, collate_fn=dm.train_dataloader().collate_fn)
    steps, start = 0, 0.0
    while steps < args.steps:
        for batch in loader:
            inputs, targets = batch["input"].to(args.device), batch["target"].to(args.device)
            with _autocast(args.device, args.precision):
                logits = model(input_ids=inputs, use_cache=False).logits
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)
            loss.backward()
            opt.step()
            opt.zero_grad()
            steps += 1
            if steps == args.warmup:
                _sync()
                start = time.perf_counter()
            if steps == args.steps:
                break
    _sync()
    return (args.steps - args.warmup) * args.batch_size * args.block_size / (time.perf_counter() - start)


def recipe(args, pretrained: str, dm: LMDataModule) -> float:
    torch.manual_seed(0)
    model = HFCausalLM(pretrained, lora={"r": args.lora_r, "alpha": 2 * args.lora_r, "dropout": 0.0})
    clock = StepClock(args.warmup)
    trainer = Trainer(accelerator="gpu" if args.device == "cuda" else "cpu", precision=args.precision,
                      max_steps=args.steps, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                      enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock],
                      optimizer=lambda params: torch.optim.AdamW([p for p in params if p.requires_grad], lr=1e-4))
    trainer.fit(model, datamodule=dm)
    return (args.steps - args.warmup) * args.batch_size * args.block_size / (clock.end - clock.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", help="a save_pretrained folder (default: a random GPT-2 written here)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--lora-r", type=int, default=8, help="0: full fine-tuning")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed"])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 is steadiest on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_corpus(Path(tmp) / "text")
        pretrained = args.pretrained or str(random_gpt2(Path(tmp) / "model", corpus, args.layers, args.width))
        dm = LMDataModule(str(corpus), pretrained, block_size=args.block_size, batch_size=args.batch_size,
                          val_fraction=0.0, test_fraction=0.0, cache_dir=str(Path(tmp) / "cache"))
        dm.setup("fit")
        hand, ours = [], []
        for r in range(args.rounds):
            for name in (("hand", "recipe") if r % 2 == 0 else ("recipe", "hand")):
                (hand if name == "hand" else ours).append(
                    hand_loop(args, pretrained, dm) if name == "hand" else recipe(args, pretrained, dm))
        h, o = statistics.median(hand), statistics.median(ours)
        print(f"device {args.device}, precision {args.precision}, lora r={args.lora_r}, batch {args.batch_size} x "
              f"{args.block_size} tokens, {args.steps - args.warmup} timed steps, {args.rounds} rounds")
        print(f"hand-written loop: {h:,.0f} tokens/s   (rounds: {', '.join(f'{x:,.0f}' for x in hand)})")
        print(f"trainkit recipe:   {o:,.0f} tokens/s   (rounds: {', '.join(f'{x:,.0f}' for x in ours)})")
        print(f"recipe / hand: {o / h:.3f}")


if __name__ == "__main__":
    main()
