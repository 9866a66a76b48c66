"""`datamodule.folds=k` runs every fold as its own run and reports mean ± std (trainkit/crossval.py)."""
from __future__ import annotations

import csv
import statistics

from tests.conftest import run_cli
from tests.recipe_data import TINY_DATA


def test_folds_run_one_after_another_and_are_summarized(tmp_path):
    data = TINY_DATA["uci_dropout"](tmp_path / "data")
    run = tmp_path / "run"
    result = run_cli("fit", "experiment=dropout_uci", *data, "datamodule.folds=3", "trainer.max_epochs=2",
                     f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr
    assert "cross-validation over 3 folds (mean ± std): " in result.stdout
    for k in range(3):
        assert (run / f"fold{k}" / "config.yaml").read_text().count(f"fold: {k}") == 1
        assert (run / f"fold{k}" / "metrics.csv").exists()
    with open(run / "cv_summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["fold"] for r in rows] == ["0", "1", "2", "mean", "std"]
    aucs = [float(r["val/auc"]) for r in rows[:3]]
    assert len(set(aucs)) > 1  # three different validation folds
    assert abs(float(rows[3]["val/auc"]) - statistics.fmean(aucs)) < 1e-12
    assert abs(float(rows[4]["val/auc"]) - statistics.pstdev(aucs)) < 1e-12
    one = run_cli("fit", "experiment=dropout_uci", *data, "datamodule.folds=3", "datamodule.fold=1",
                  "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'one'}")
    assert one.returncode == 0 and not (tmp_path / "one" / "fold0").exists()  # one fold asked: one run
