"""The LLM fine-tuning recipe on a tiny random GPT-2 built here (no download): full and LoRA
fine-tuning learn, LoRA trains and checkpoints only its adapters, exports load in transformers
with the same logits, prompts are masked, generation matches transformers' own, hub ids fail
fast offline. In-process; the real processes (kill -9, FSDP) are in
tests/integration/test_llm_finetune_runs.py."""
from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
import torch

from tests.recipe_data import tiny_corpus, tiny_hf_model
from trainkit import Trainer, checkpoint
from trainkit.errors import ConfigError
from trainkit.lm_metrics import IGNORE
from trainkit.strategies.single import SingleDeviceStrategy

pytest.importorskip("transformers", reason="the hf extra (pip install -e '.[hf]') is not installed")
pytest.importorskip("peft", reason="the hf extra (pip install -e '.[hf]') is not installed")

from trainkit.recipes.llm_finetune.datamodule import LMDataModule  # noqa: E402
from trainkit.recipes.llm_finetune.model import HFCausalLM  # noqa: E402


@pytest.fixture(scope="session")
def pretrained():
    return str(tiny_hf_model())


@pytest.fixture(autouse=True)
def one_thread():
    # Two threads on this shared 2-core machine ran a step ~10x slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _datamodule(path, pretrained, tmp_path, **kwargs):
    return LMDataModule(str(path), pretrained, **{"block_size": 32, "batch_size": 4, "val_fraction": 0.1,
                                                 "test_fraction": 0.1, "cache_dir": str(tmp_path / "cache"), **kwargs})


def _trainer(tmp_path, **kwargs):
    return Trainer(logger=False, enable_progress_bar=False, accelerator="cpu", default_root_dir=str(tmp_path),
                   optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2), enable_checkpointing=False,
                   seed=0, **kwargs)


def _fine_tune(pretrained, tmp_path, r):
    model = HFCausalLM(pretrained, lora={"r": r, "alpha": 16, "dropout": 0.0})
    dm = _datamodule(tiny_corpus(tmp_path / "text"), pretrained, tmp_path)
    trainer = _trainer(tmp_path, max_steps=12, val_check_interval=12, num_sanity_val_steps=0)
    (before,) = trainer.validate(model, datamodule=dm)
    trainer.fit(model, datamodule=dm)
    return model, trainer, before["val/loss"], float(trainer.callback_metrics["val/loss"])


@pytest.fixture(scope="module")
def lora_run(pretrained, tmp_path_factory):
    torch.set_num_threads(1)
    return _fine_tune(pretrained, tmp_path_factory.mktemp("lora"), r=8)


def test_full_fine_tuning_lowers_the_validation_loss(pretrained, tmp_path):
    model, _, before, after = _fine_tune(pretrained, tmp_path, r=0)
    assert all(p.requires_grad for p in model.parameters())
    assert after < before - 0.3, (before, after)


def test_lora_lowers_the_validation_loss_training_only_its_adapters(lora_run, pretrained):
    from transformers import AutoModelForCausalLM

    model, _, before, after = lora_run
    assert after < before - 0.15, (before, after)  # 5.76 -> 5.50 here (4k adapter weights, 12 steps)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    base = AutoModelForCausalLM.from_pretrained(pretrained).state_dict()
    tuned = model.base_model().state_dict()
    for name, value in base.items():  # peft keeps the original weight under base_layer
        key = name if name in tuned else name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(tuned[key], value), name
    changed = {n for n, p in model.named_parameters() if "lora_B" in n and p.abs().sum() > 0}
    assert changed  # lora_B starts at zero: it moved


def test_a_lora_checkpoint_holds_the_adapters_only_and_loads_back(lora_run, pretrained, tmp_path):
    model, trainer, _, _ = lora_run
    path = trainer.save_checkpoint(str(tmp_path / "ckpt" / "step=12"))
    saved = checkpoint.read_model_weights(path)
    assert saved and all("lora_" in k for k in saved)
    assert sum(v.numel() for v in saved.values()) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    fresh = HFCausalLM(pretrained, lora={"r": 8, "alpha": 16, "dropout": 0.0})
    checkpoint.load_model_weights(path, fresh)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name


def test_exports_load_in_transformers_with_the_same_logits(lora_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, _, _, _ = lora_run
    tokens = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        expected = model(tokens).logits
        model.export_pretrained(str(tmp_path / "adapter"), merged=False)
        base = AutoModelForCausalLM.from_pretrained(model.pretrained)
        adapter = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
        assert torch.equal(adapter(tokens).logits, expected)  # the same computation: bit for bit
        merged_in_memory = model.model.merge_and_unload()
        merged_logits = merged_in_memory(tokens).logits
        merged_in_memory.save_pretrained(str(tmp_path / "merged"))
        loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
        assert torch.equal(loaded(tokens).logits, merged_logits)  # the folder is the merged model exactly
        torch.testing.assert_close(merged_logits, expected, rtol=1e-5, atol=1e-5)  # W + BA vs Wx + BAx: rounding
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 8


def test_prompt_response_pairs_score_the_response_only(pretrained, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pretrained)
    pairs = [{"prompt": f"What is the derivative in section {i}?", "response": f" The median of {i}."} for i in range(30)]
    jsonl = tmp_path / "qa.jsonl"
    jsonl.write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    dm = _datamodule(jsonl, pretrained, tmp_path, block_size=64)
    dm.setup("fit")
    block = dm.datasets["train"][0]
    prompt = tok(pairs[0]["prompt"])["input_ids"]
    response = tok(pairs[0]["response"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    n = len(prompt) + len(response)
    assert block["input"][:n].tolist() == prompt + response
    # target t is token t + 1: prompt tokens are never targets, every response token (and EOS) is
    assert (block["target"][: len(prompt) - 1] == IGNORE).all()
    assert block["target"][len(prompt) - 1 : n - 1].tolist() == response
    next_prompt = tok(pairs[1]["prompt"])["input_ids"]
    assert block["input"][n : n + len(next_prompt)].tolist() == next_prompt
    assert (block["target"][n - 1 : n - 1 + len(next_prompt)] == IGNORE).all()  # the next pair's prompt
    # The training loss is the mean over response tokens only: changing only prompt targets' logits changes nothing.
    model = HFCausalLM(pretrained, lora={"r": 0})
    # training_step asks its trainer for the number of processes and sums the token count over them
    object.__setattr__(model, "_trainer", SimpleNamespace(world_size=1, strategy=SingleDeviceStrategy(torch.device("cpu"))))
    batch = {"input": block["input"][None], "target": block["target"][None]}
    with torch.no_grad():
        logits = model(batch["input"]).logits
        scored = batch["target"] != IGNORE
        expected = torch.nn.functional.cross_entropy(logits[scored], batch["target"][scored])
    model.log = lambda *a, **k: None
    with torch.no_grad():
        assert torch.allclose(model.training_step(batch, 0), expected)
    # the validation split is the last records, whole: val loss counts only their responses
    assert sum((w["target"] != IGNORE).sum().item() for w in dm.datasets["val"]) == 3 * len(response)


def test_tokenized_once_then_read_from_the_cache(pretrained, tmp_path, monkeypatch):
    import trainkit.recipes.llm_finetune.datamodule as datamodule

    corpus = tiny_corpus(tmp_path / "text")
    _datamodule(corpus, pretrained, tmp_path).setup("fit")
    calls = []
    monkeypatch.setattr(datamodule, "encode_record", lambda *a: calls.append(a))
    dm = _datamodule(corpus, pretrained, tmp_path, block_size=16)  # another block size: the same cache
    dm.setup("fit")
    assert not calls and len(dm.datasets["train"]) > 0
    (corpus / "algebra.txt").write_text("A changed book. " * 40)
    with pytest.raises(TypeError):  # the changed file is tokenized again (by the stub, which fails)
        _datamodule(corpus, pretrained, tmp_path).setup("fit")
    assert len(calls) == 1


def test_greedy_generation_matches_transformers_generate(pretrained):
    from transformers import AutoModelForCausalLM

    model = HFCausalLM(pretrained, lora={"r": 0}).eval()
    prompt = torch.tensor([model.tokenizer("The derivative")["input_ids"]])
    ours = model.generate(prompt, max_new_tokens=8, temperature=0)
    theirs = AutoModelForCausalLM.from_pretrained(pretrained).generate(
        prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=model.tokenizer.eos_token_id)
    assert torch.equal(ours, theirs)
    torch.manual_seed(0)
    sampled = model.generate(prompt, max_new_tokens=8, temperature=1.0, top_k=5)
    torch.manual_seed(0)
    assert torch.equal(sampled, model.generate(prompt, max_new_tokens=8, temperature=1.0, top_k=5))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(pretrained):
    tokens = torch.randint(0, 300, (2, 33), generator=torch.Generator().manual_seed(0))
    grads = []
    for recompute in (False, True):
        model = HFCausalLM(pretrained, gradient_checkpointing=recompute, lora={"r": 0}).train()
        loss = torch.nn.functional.cross_entropy(model(tokens[:, :-1]).logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_fsdp_finds_the_decoder_layer_class_from_the_model(pretrained):
    from trainkit.strategies.fsdp import layer_classes

    assert layer_classes(HFCausalLM(pretrained, lora={"r": 8})) == {"GPT2Block"}


def test_a_hub_id_out_of_reach_fails_at_once_naming_hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ConfigError, match="HF_HOME") as exc:
        HFCausalLM("nobody/no-such-model")
    assert "save_pretrained" in str(exc.value) and time.monotonic() - started < 5
    with pytest.raises(ConfigError, match="no such folder"):
        HFCausalLM(str(tmp_path / "missing"))


def test_predict_continues_each_prompt_and_reads_no_text(pretrained, tmp_path):
    model = HFCausalLM(pretrained, lora={"r": 8}, temperature=0)
    dm = _datamodule(tmp_path / "no_such_folder", pretrained, tmp_path, block_size=4096,  # neither is read
                     prompt=["The derivative", "In section"], max_new_tokens=5)
    out = _trainer(tmp_path).predict(model, datamodule=dm)
    assert [o["prompt"] for o in out] == ["The derivative", "In section"]
    for o in out:
        prompt_len = len(model.tokenizer(o["prompt"])["input_ids"])
        assert len(o["tokens"]) == prompt_len + 5
        new, eos = o["tokens"][prompt_len:].tolist(), model.tokenizer.eos_token_id
        assert o["completion"] == model.tokenizer.decode(new[: new.index(eos)] if eos in new else new)  # cut at EOS
