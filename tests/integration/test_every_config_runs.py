"""Every option of every config group runs a short `trainkit fit` (in-process, real CLI entry).

A model or datamodule option runs with its recipe partner (tests/recipe_data.py), an experiment
preset with the datamodule it selects; everything else with the default recipe.
"""
from __future__ import annotations

import pytest
from omegaconf import DictConfig, OmegaConf

from tests.recipe_data import RECIPE_PAIRS, TINY_DATA
from trainkit.cli import CONFIG_DIR, main

SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2"]
OPTIONS = [
    (group.name, path.stem)
    for group in sorted(CONFIG_DIR.iterdir())
    if group.is_dir()
    for path in sorted(group.glob("*.yaml"))
]


def _datamodule_of(group: str, option: str) -> tuple[list[str], str]:
    """The extra overrides for this option and the datamodule option it ends up reading."""
    if group == "model":
        return [f"datamodule={RECIPE_PAIRS[option]}"], RECIPE_PAIRS[option]
    if group == "datamodule":
        return [f"model={RECIPE_PAIRS[option]}"], option
    if group == "experiment":
        defaults = OmegaConf.load(CONFIG_DIR / group / f"{option}.yaml").get("defaults", [])
        for entry in defaults:
            if isinstance(entry, DictConfig) and "override /datamodule" in entry:
                return [], entry["override /datamodule"]
        for entry in defaults:  # an experiment built on another one reads that one's datamodule
            if isinstance(entry, str) and entry != "_self_":
                return _datamodule_of(group, entry)
    return [], "kt_lines"


def test_every_recipe_option_has_a_partner_and_tiny_data():
    for group, option in OPTIONS:
        if group in ("model", "datamodule"):
            assert option in RECIPE_PAIRS, f"add {group}={option} to RECIPE_PAIRS in tests/recipe_data.py"
        if group == "datamodule":
            assert option in TINY_DATA, f"add datamodule={option} to TINY_DATA in tests/recipe_data.py"


def _tracker(option: str, request, monkeypatch) -> list[str]:
    """The external trackers log offline (W&B) or to the session's MLflow server on loopback."""
    if option == "wandb":
        monkeypatch.setenv("WANDB_MODE", "offline")
        monkeypatch.setenv("WANDB_SILENT", "true")
    if option == "mlflow":
        return [f"logger.mlflow.tracking_uri={request.getfixturevalue('mlflow_server')}"]
    return []


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_runs(group, option, tmp_path, request, monkeypatch):
    limits = [] if group == "debug" else SHORT  # debug options are short already; keep their limits
    if group == "logger":
        limits = [*limits, *_tracker(option, request, monkeypatch)]
    partner, datamodule = _datamodule_of(group, option)
    data = TINY_DATA[datamodule](tmp_path / "data")
    run = tmp_path / "run"
    # An hparams_search option is a search (a multirun): one trial of it, in a sweep directory.
    search = [f"hydra.sweep.dir={run}", "hydra.sweeper.n_trials=1"] if group == "hparams_search" else []
    code = main(["fit", f"{group}={option}", *partner, *data, *limits, f"hydra.run.dir={run}", *search])
    assert code == 0
    run = run / "0" if search else run
    assert (run / "config.yaml").exists()
    if group != "logger" or option in ("csv", "default"):
        assert (run / "metrics.csv").exists()
    if group == "logger" and option in ("mlflow", "wandb"):
        assert (run / f"{option}_run.json").exists()
