"""The LLM fine-tuning recipe in real processes, on the tiny GPT-2 of tests/recipe_data.py: a
LoRA run killed with SIGKILL and resumed is the uninterrupted run bit for bit; FSDP on two
processes (decoder layers found from the model) logs the one-process validation losses;
`trainkit export --merged` writes a folder transformers loads with the checkpoint's logits."""
from __future__ import annotations

import signal

import pytest
import torch

from tests.conftest import final_weights, metric_rows, run_cli, train_losses
from tests.recipe_data import tiny_corpus, tiny_hf_model
from trainkit.cli import main

pytest.importorskip("transformers", reason="the hf extra (pip install -e '.[hf]') is not installed")
pytest.importorskip("peft", reason="the hf extra (pip install -e '.[hf]') is not installed")

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # exactness is claimed for deterministic kernels: one thread each


def _base(tmp_path) -> list[str]:
    return [
        "experiment=llm_finetune", f"model.pretrained={tiny_hf_model()}", "model.lora.dropout=0.0",
        f"datamodule.path={tiny_corpus(tmp_path / 'text')}", f"datamodule.cache_dir={tmp_path / 'cache'}",
        "datamodule.block_size=32", "datamodule.val_fraction=0.1", "datamodule.test_fraction=0.1",
        "optimizer.lr=0.01", "scheduler.warmup_steps=2", "trainer.max_steps=8", "trainer.val_check_interval=4",
        "trainer.log_every_n_steps=1", "trainer.checkpoint_every_n_steps=3", "logger=csv",
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted one-process run (in this process, one thread)."""
    tmp_path = tmp_path_factory.mktemp("llm_reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["fit", *_base(tmp_path), "datamodule.batch_size=4", f"hydra.run.dir={tmp_path / 'run'}"]) == 0
    finally:
        torch.set_num_threads(threads)
    return tmp_path, tmp_path / "run"


def test_sigkill_then_resume_equals_the_uninterrupted_lora_run(reference, tmp_path):
    base_dir, a = reference
    b = tmp_path / "b"
    killer = ["+callbacks.kill._target_=tests.integration.chaos.SignalAt", "+callbacks.kill.batch=5"]
    result = run_cli("fit", *_base(base_dir), "datamodule.batch_size=4", *killer, f"hydra.run.dir={b}", env=ONE_THREAD)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert 3 <= max(train_losses(b)) < 8  # what was logged up to its last flush; the run did not end
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["resume", str(b)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert train_losses(a) == train_losses(b)  # every step's loss, as the exact strings logged
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys() and all("lora_" in k for k in wa)  # the adapters alone were checkpointed
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_fsdp_on_two_processes_logs_the_one_process_losses(reference, tmp_path):
    base_dir, a = reference
    f = tmp_path / "fsdp"
    result = run_cli("fit", *_base(base_dir), "strategy=fsdp", "trainer.devices=2", "datamodule.batch_size=2",
                     f"hydra.run.dir={f}", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    assert "sharding each GPT2Block (from the model's _no_split_modules" in (f / "trainkit.log").read_text()
    one, two = metric_rows(a), metric_rows(f)
    val_steps = [s for s, row in one.items() if row.get("val/loss")]
    assert val_steps == [s for s, row in two.items() if row.get("val/loss")] and len(val_steps) == 2
    for step in val_steps:
        assert float(two[step]["val/loss"]) == pytest.approx(float(one[step]["val/loss"]), rel=1e-5)


def test_export_merged_writes_a_folder_transformers_loads_with_the_checkpoints_logits(reference, tmp_path):
    from transformers import AutoModelForCausalLM

    from trainkit import checkpoint
    from trainkit.recipes.llm_finetune.model import HFCausalLM

    _, a = reference
    out = tmp_path / "merged"
    assert main(["export", str(a / "checkpoints" / "last"), str(out), "--merged"]) == 0
    model = HFCausalLM(str(tiny_hf_model()), lora={"r": 8, "alpha": 16, "dropout": 0.0}).eval()
    checkpoint.load_model_weights(checkpoint.resolve(str(a / "checkpoints")), model)
    tokens = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
        torch.testing.assert_close(loaded(tokens).logits, model(tokens).logits, rtol=1e-5, atol=1e-5)
    assert main(["export", str(a / "checkpoints" / "last"), str(out), "--adapter"]) == 2  # not an empty folder
