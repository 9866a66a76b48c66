"""AKT end to end: pyKT's 5-fold protocol in one command, knowledge states from `trainkit predict`,
two processes equal to one, exact resume. Tiny simulated data with question ids, few steps."""
from __future__ import annotations

import csv
import json

import torch

from tests.conftest import final_weights, train_losses
from tests.conftest import run_cli as _run_cli
from trainkit.cli import main

TINY_AKT = ["model=akt", "model.hidden_size=16", "model.num_heads=2", "model.num_layers=1", "model.ff_size=16",
            "model.output_size=16", "datamodule.max_len=30", "datamodule.batch_size=16"]


def test_the_pykt_protocol_tests_each_folds_best_checkpoint_and_predict_writes_knowledge_states(tmp_path):
    run = tmp_path / "run"
    code = main(["fit", "experiment=kt_pykt", *TINY_AKT, "datamodule.num_students=60", "datamodule.questions_per_skill=3",
                 "trainer.max_epochs=1", "trainer.limit_train_batches=2", f"datamodule.cache_dir={tmp_path / 'cache'}",
                 f"hydra.run.dir={run}"])
    assert code == 0
    with open(run / "cv_summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["fold"] for r in rows] == ["0", "1", "2", "3", "4", "mean", "std"]
    for name in ("test/auc", "test/acc", "test/question_auc", "val/auc"):
        values = [float(r[name]) for r in rows[:5]]
        assert abs(float(rows[5][name]) - sum(values) / 5) < 1e-9
    assert len({r["val/auc"] for r in rows[:5]}) > 1  # five different validation folds, one test file
    for k in range(5):  # each fold's best checkpoint (the val/auc monitor's), tested
        (test_dir,) = (run / f"fold{k}").glob("test_*")
        result = json.loads((test_dir / "results.json").read_text())
        assert result["command"] == "test" and result["metrics"]["test/auc"] == float(rows[k]["test/auc"])
    log = (run / "trainkit.log").read_text()
    assert "each fold's best checkpoint tested (mean ± std)" in log and "| akt | " in log

    assert main(["predict", str(run / "fold0")]) == 0
    (states,) = (run / "fold0").glob("predict_*/knowledge_states.csv")
    with open(states) as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["student", "concept", "probability"]
    students = {r["student"] for r in table}
    concepts = {r["concept"] for r in table}
    assert len(students) == 6 and concepts == {str(k) for k in range(50)}  # the 6 test students × every concept
    assert len(table) == len(students) * len(concepts)
    assert all(0 < float(r["probability"]) < 1 for r in table)


ONE_THREAD = {"OMP_NUM_THREADS": "1"}
BASE = ["datamodule=kt_akt", *TINY_AKT, "datamodule.num_students=60", "datamodule.questions_per_skill=3",
        "trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.log_every_n_steps=1", "model.dropout=0.0"]


def test_two_processes_train_akt_like_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    cache = f"datamodule.cache_dir={tmp_path / 'cache'}"
    assert _run_cli("fit", *BASE, cache, "datamodule.batch_size=16", f"hydra.run.dir={one}", env=ONE_THREAD).returncode == 0
    result = _run_cli("fit", *BASE, cache, "trainer.devices=2", "datamodule.batch_size=8", f"hydra.run.dir={two}",
                      env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    la, lb = train_losses(one), train_losses(two)
    assert la.keys() == lb.keys() and len(la) == 4
    for step in la:
        assert abs(float(la[step]) - float(lb[step])) <= 1e-4 * abs(float(la[step])), step
    wa, wb = final_weights(one), final_weights(two)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-5)


def test_akt_resumes_exactly(tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    args = [*BASE, "model.dropout=0.2", f"datamodule.cache_dir={tmp_path / 'cache'}", "trainer.checkpoint_every_n_steps=2"]
    assert main(["fit", *args, f"hydra.run.dir={whole}"]) == 0
    assert main(["fit", *args, "trainer.max_steps=2", f"hydra.run.dir={parts}"]) == 0
    assert main(["resume", str(parts), "trainer.max_steps=-1"]) == 0
    assert train_losses(whole) == train_losses(parts)  # every step, as exact strings (dropout on)
    wa, wb = final_weights(whole), final_weights(parts)
    assert all(torch.equal(wa[name], wb[name]) for name in wa)
