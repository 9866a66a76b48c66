"""The default recipe learns the simulated students clearly: DKT's validation AUC beats the
per-skill-prior floor (a model that knows each skill's difficulty and nothing of the student)."""
from __future__ import annotations

import csv

from trainkit.recipes.knowledge_tracing.baselines import per_skill_prior_auc
from trainkit.recipes.knowledge_tracing.datamodule import make_windows
from trainkit.recipes.knowledge_tracing.kt_lines import read_kt_lines
from trainkit.recipes.knowledge_tracing.simulator import SimulatorConfig, cached_dataset
from tests.conftest import run_cli


def test_dkt_beats_the_per_skill_prior(tmp_path):
    run = tmp_path / "run"
    result = run_cli("fit", "datamodule.num_students=1200", "trainer.max_epochs=4", "callbacks=none",
                     f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr
    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r["val/auc"]]
    dkt_auc = float(rows[-1]["val/auc"])

    data = cached_dataset(SimulatorConfig(num_students=1200, num_skills=50, seed=0), None)
    floor = per_skill_prior_auc(read_kt_lines(data / "train.txt"), make_windows(read_kt_lines(data / "valid.txt"), 100))
    print(f"DKT val/auc {dkt_auc:.4f}, per-skill prior {floor:.4f}")
    assert 0.55 < floor < 0.70
    assert dkt_auc > floor + 0.06
