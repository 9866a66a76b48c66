"""Every option of every config group runs a short `trainkit fit` (in-process, real CLI entry)."""
from __future__ import annotations

import pytest

from tests.conftest import SMALL_DATA
from trainkit.cli import CONFIG_DIR, main

SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2"]
OPTIONS = [
    (group.name, path.stem)
    for group in sorted(CONFIG_DIR.iterdir())
    if group.is_dir()
    for path in sorted(group.glob("*.yaml"))
]


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_runs(group, option, tmp_path):
    limits = [] if group == "debug" else SHORT  # debug options are short already; keep their limits
    code = main(["fit", f"{group}={option}", *SMALL_DATA, *limits, f"hydra.run.dir={tmp_path}"])
    assert code == 0
    assert (tmp_path / "config.yaml").exists()
    if group != "logger" or option in ("csv", "default"):
        assert (tmp_path / "metrics.csv").exists()
