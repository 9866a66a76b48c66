"""The tiny GPT recipe: tokenizer, model, text windows, perplexity, generation, data errors."""
from __future__ import annotations

import copy
import functools
import gzip
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import RandomSampler

from trainkit.recipes.tiny_gpt.baselines import ngram_perplexity
from trainkit.recipes.tiny_gpt.datamodule import EvalWindows, TextDataModule, TrainWindows, collate_windows, read_corpus, split_books
from trainkit.recipes.tiny_gpt.model import TinyGPT
from trainkit.lm_metrics import token_loss_sum
from trainkit.recipes.tiny_gpt.tokenizer import VOCAB_SIZE, decode, encode
from tests.recipe_data import tiny_corpus
from trainkit import Trainer
from trainkit.engine.samplers import GlobalBatchSampler, distribute_loader
from trainkit.errors import DataError

SMALL = dict(block_size=32, hidden_size=32, num_layers=2, num_heads=4)
ADAMW = functools.partial(torch.optim.AdamW, lr=3e-3)


def _model(**kwargs) -> TinyGPT:
    torch.manual_seed(0)
    return TinyGPT(**{**SMALL, **kwargs})


def _trainer(**kwargs) -> Trainer:
    kwargs.setdefault("enable_checkpointing", False)
    return Trainer(logger=False, enable_progress_bar=False, accelerator="cpu", optimizer=ADAMW, **kwargs)


@pytest.fixture
def corpus(tmp_path):
    return str(tiny_corpus(tmp_path / "text"))


def test_tokenizer_round_trips_any_text():
    text = "The derivative of x^2 is 2x. Naïve café — π ≈ 3.14, 数学 🙂\n\tend"
    tokens = encode(text)
    assert all(0 <= t < VOCAB_SIZE for t in tokens)
    assert len(tokens) == len(text.encode("utf-8"))
    assert decode(tokens) == text
    assert decode(encode("é")[:1]) == "\ufffd"  # a cut character decodes, as the replacement character


def test_future_tokens_do_not_change_past_logits():
    model = _model(dropout=0.1).eval()
    tokens = torch.randint(0, VOCAB_SIZE, (2, 32), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[:, 20:] = torch.randint(0, VOCAB_SIZE, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :20], b[:, :20], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a[:, 20:], b[:, 20:])


def test_loss_at_initialisation_is_that_of_a_uniform_guess():
    model = _model()
    tokens = torch.randint(0, VOCAB_SIZE, (8, 33), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
    assert abs(loss.item() - math.log(VOCAB_SIZE)) < 0.05


def test_parameter_count_counts_the_tied_head_once():
    model = _model()
    assert model.head.weight is model.tok_emb.weight
    per_block = 12 * 32 * 32 + 4 * 32  # qkv, proj, fc, proj; two LayerNorms
    assert model.num_parameters() == (VOCAB_SIZE + 32) * 32 + 2 * per_block + 2 * 32


def test_training_windows_are_fixed_by_seed_and_stay_inside_their_part():
    parts = [np.arange(0, 500, dtype=np.int64) % 251, np.arange(0, 70, dtype=np.int64) + 3, np.zeros(5, dtype=np.int64)]
    parts = [p.astype(np.uint8) for p in parts]
    a, b = TrainWindows(parts, 16, None, seed=0), TrainWindows(parts, 16, None, seed=0)
    assert len(a) == (500 + 70 + 5) // 16
    np.testing.assert_array_equal(a.starts, b.starts)
    assert not np.array_equal(a.starts, TrainWindows(parts, 16, None, seed=1).starts)
    bounds = [(0, 500), (500, 570)]  # the 5-token part is too short for a window of 17
    for i in range(len(a)):
        start = int(a.starts[i])
        assert any(lo <= start and start + 17 <= hi for lo, hi in bounds), start
        window = a[i]
        assert window["input"].shape == window["target"].shape == (16,)
        torch.testing.assert_close(window["target"][:-1], window["input"][1:])
    # Stratified: the starts are increasing, so together they sweep the text once.
    assert np.all(np.diff(a.starts) > 0)
    assert len(TrainWindows(parts, 16, 1000, seed=0)) == 1000


def test_evaluation_windows_predict_every_token_of_the_split_once():
    parts = [np.arange(100, dtype=np.uint8), np.arange(17, dtype=np.uint8), np.arange(1, dtype=np.uint8)]
    windows = EvalWindows(parts, block_size=16)
    targets = [w["target"] for w in windows]
    inputs = [w["input"] for w in windows]
    expected = np.concatenate([p[1:] for p in parts]).astype(np.int64)
    np.testing.assert_array_equal(torch.cat(targets).numpy(), expected)  # no overlap, no gap
    for x, y in zip(inputs, targets):
        assert len(x) == len(y) <= 16
        torch.testing.assert_close(x[1:], y[:-1])
    assert [len(t) for t in targets] == [16] * 6 + [3] + [16]  # the 1-token part has nothing to predict
    batch = collate_windows([windows[0], windows[6]])
    assert batch["input"].shape == (2, 16)
    assert (batch["target"][1, 3:] == -1).all() and (batch["target"][1, :3] >= 0).all()


def test_split_holds_out_the_end_of_every_book(corpus):
    books = read_corpus(corpus)
    assert [name for name, _ in books] == ["algebra.txt", "history.txt.gz"]
    parts = split_books(books, 0.1, 0.05)
    for (_, tokens), train, val, test in zip(books, parts["train"], parts["val"], parts["test"]):
        np.testing.assert_array_equal(np.concatenate([train, val, test]), tokens)
        assert len(val) == round(0.1 * len(tokens)) and len(test) == round(0.05 * len(tokens))


def test_train_loader_is_plain_so_trainkit_orders_it_on_any_number_of_processes(corpus):
    dm = TextDataModule(corpus, block_size=16, batch_size=4)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, RandomSampler)
    split = distribute_loader(loader, rank=1, world_size=2, seed=0, train=True)
    assert isinstance(split.batch_sampler, GlobalBatchSampler)
    one = [b["input"] for b in distribute_loader(loader, 0, 1, seed=0, train=True)]
    again = [b["input"] for b in distribute_loader(loader, 0, 1, seed=0, train=True)]
    assert all(torch.equal(x, y) for x, y in zip(one, again))


def test_perplexity_is_exp_of_the_mean_over_every_token_across_uneven_batches(corpus):
    dm = TextDataModule(corpus, block_size=16, batch_size=5, val_fraction=0.2)
    dm.setup("validate")
    windows = dm.datasets["val"]
    assert len(windows) % 5 and len(windows[len(windows) - 1]["input"]) < 16  # a short last batch, a padded window
    model = _model().eval()
    (metrics,) = _trainer().validate(model, datamodule=dm)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(windows)):  # one window at a time: no batching, no padding
            w = windows[i]
            total += F.cross_entropy(model(w["input"][None])[0], w["target"], reduction="sum").item()
            count += len(w["target"])
    assert metrics["val/loss"] == pytest.approx(total / count, rel=1e-6)
    assert metrics["val/ppl"] == pytest.approx(math.exp(total / count), rel=1e-6)
    # ... which is not the mean of per-batch perplexities.
    per_batch = []
    with torch.no_grad():
        for batch in dm.val_dataloader():
            loss_sum, n = token_loss_sum(model(batch["input"]), batch["target"])
            per_batch.append(math.exp(loss_sum.item() / n.item()))
    assert abs(np.mean(per_batch) - metrics["val/ppl"]) > 1e-4


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    tokens = torch.randint(0, VOCAB_SIZE, (4, 33), generator=torch.Generator().manual_seed(0))
    plain = _model(dropout=0.1)
    recomputed = copy.deepcopy(plain)
    recomputed.activation_checkpointing = True
    losses = []
    for model in (plain, recomputed):
        torch.manual_seed(3)  # the same dropout masks; checkpoint replays them in the backward
        loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7, msg=name)


def test_generation_adds_the_requested_number_of_tokens_beyond_the_block():
    model = _model().eval()
    prompt = torch.tensor([encode("The derivative")])
    out = model.generate(prompt, max_new_tokens=40, temperature=0.8, top_k=5)
    assert out.shape == (1, len(encode("The derivative")) + 40)  # longer than block_size=32: context cropped
    assert torch.equal(out[:, : prompt.shape[1]], prompt)
    greedy = [model.generate(prompt, 10, temperature=0.0) for _ in range(2)]
    assert torch.equal(greedy[0], greedy[1])


def test_predict_returns_each_prompt_and_its_continuation(tmp_path, caplog):
    # Generation needs no corpus: the path may be absent where a checkpoint is used.
    dm = TextDataModule(str(tmp_path / "absent"), prompt=["The median", "In 1776"], max_new_tokens=12, num_samples=2)
    with caplog.at_level("INFO", logger="trainkit"):
        predictions = _trainer().predict(_model(), datamodule=dm)
    assert [(p["prompt"], p["sample"]) for p in predictions] == [
        ("The median", 0), ("The median", 1), ("In 1776", 0), ("In 1776", 1)]
    for p in predictions:
        assert decode(p["tokens"].tolist()).startswith(p["prompt"])
        assert len(p["tokens"]) == len(encode(p["prompt"])) + 12
        assert p["completion"] == decode(p["tokens"][len(encode(p["prompt"])):].tolist())
    assert "The median" + predictions[0]["completion"] in caplog.text


def test_checkpoint_round_trip_keeps_the_tied_weights(corpus, tmp_path):
    dm = TextDataModule(corpus, block_size=32, batch_size=4)
    model = _model()
    trainer = _trainer(max_steps=3, enable_checkpointing=True, default_root_dir=str(tmp_path / "run"),
                       limit_val_batches=2)
    trainer.fit(model, datamodule=dm)
    trained = float(trainer.callback_metrics["val/loss"])  # a 0-d tensor, as Lightning gives it
    fresh = TinyGPT(**SMALL)
    (metrics,) = _trainer(resume=str(tmp_path / "run" / "checkpoints" / "last"), limit_val_batches=2).validate(
        fresh, datamodule=dm)
    assert fresh.head.weight is fresh.tok_emb.weight
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert metrics["val/loss"] == pytest.approx(trained, rel=1e-9)


def test_absent_or_empty_corpus_is_a_data_error(tmp_path):
    def setup(path, **kwargs):
        TextDataModule(str(path), **kwargs).setup("fit")

    with pytest.raises(DataError, match="no such file or folder.*datamodule.path"):
        setup(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("not a .txt file")
    with pytest.raises(DataError, match="no .txt or .txt.gz files"):
        setup(tmp_path / "empty")
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("")
    (tmp_path / "blank" / "b.txt.gz").write_bytes(gzip.compress(b""))
    with pytest.raises(DataError, match="corpus is empty"):
        setup(tmp_path / "blank")
    (tmp_path / "short.txt").write_text("too short")
    with pytest.raises(DataError, match="no training window fits.*block_size"):
        setup(tmp_path / "short.txt", block_size=64)
    (tmp_path / "bad.txt.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="bad.txt.gz: cannot be read as gzip"):
        setup(tmp_path / "bad.txt.gz")


def test_compiled_training_with_activation_checkpointing_matches_eager(corpus):
    """trainer.compile=true and model.activation_checkpointing=true together (one cold compile)."""
    dm = TextDataModule(corpus, block_size=16, batch_size=4)
    eager = _model(block_size=16, activation_checkpointing=True)
    compiled = copy.deepcopy(eager)
    _trainer(max_steps=3, limit_val_batches=0, seed=0).fit(eager, datamodule=dm)
    _trainer(max_steps=3, limit_val_batches=0, seed=0, compile=True).fit(compiled, datamodule=dm)
    assert compiled._compiled_call_impl is not None
    for a, b in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)  # Adam turns rounding differences into update-sized ones


@pytest.mark.parametrize("sizes,count", [
    (dict(num_layers=4, hidden_size=128, num_heads=4, block_size=128), 837_888),  # experiment=tiny_gpt
    (dict(num_layers=6, hidden_size=384, num_heads=6, block_size=256), 10_823_424),  # nanoGPT's shakespeare_char
    (dict(num_layers=12, hidden_size=768, num_heads=12, block_size=1024), 85_956_096),  # GPT-2 small's body
])
def test_parameter_counts_of_the_readme_presets(sizes, count):
    with torch.device("meta"):  # no memory for the weights
        assert TinyGPT(**sizes).num_parameters() == count


def test_ngram_baselines_on_a_text_that_alternates_two_bytes():
    text = np.frombuffer(b"ab" * 5000, dtype=np.uint8)
    held_out = [np.frombuffer(b"abababab", dtype=np.uint8)]
    assert ngram_perplexity([text], held_out, 1) == pytest.approx(2.0, rel=0.03)  # two equally likely bytes
    assert ngram_perplexity([text], held_out, 2) < 1.06  # the next byte is known from the last


def test_next_token_is_greedy_at_temperature_zero_and_sampled_within_top_k():
    from trainkit.lm_sampling import next_token

    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0]]).repeat(400, 1)
    assert next_token(logits, 0, None).flatten().tolist() == [1] * 400
    torch.manual_seed(0)
    drawn = next_token(logits, 1.0, 2).flatten()
    assert set(drawn.tolist()) == {1, 3}  # only the two most likely tokens, both drawn
    assert (drawn == 1).float().mean() > 0.6  # e^3 : e^2, about 0.73
