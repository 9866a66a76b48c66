"""Every shipped config composes against the schema and its targets instantiate (the
lightning-hydra-template pattern), without running anything."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from tests.recipe_data import NEEDS_PRETRAINED, RECIPE_PAIRS, tiny_hf_model
from trainkit.cli import CONFIG_DIR, RUN_ID
from trainkit.config import check_values, register_configs
from trainkit.targets import check_targets, target_nodes

GROUPS = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir())
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONFIG_DIR / g).glob("*.yaml"))]


def compose_fit(overrides: list[str], run_dir: Path):
    register_configs()
    OmegaConf.register_new_resolver("run_id", lambda: RUN_ID, replace=True)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("fit", overrides=overrides)
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)  # ${hydra:...} only resolves inside a Hydra run
    OmegaConf.resolve(cfg)
    return cfg


def test_every_group_has_options_and_each_file_starts_with_its_command():
    assert {"model", "datamodule", "optimizer", "scheduler", "trainer", "strategy", "precision",
            "callbacks", "logger", "debug", "experiment"} <= set(GROUPS)
    for path in [CONFIG_DIR / "fit.yaml", *CONFIG_DIR.glob("*/*.yaml")]:
        head = "\n".join(path.read_text().splitlines()[:3])
        assert "trainkit " in head, f"{path} should start with the command that uses it"


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(group, option, tmp_path):
    # A model or datamodule option composes with its recipe partner (its sizes come from the data).
    partner = {"model": "datamodule", "datamodule": "model"}.get(group)
    pair = [f"{partner}={RECIPE_PAIRS[option]}"] if partner else []
    if option in NEEDS_PRETRAINED:
        pair.append(f"model.pretrained={tiny_hf_model()}")
    cfg = compose_fit([f"{group}='{option}'", *pair], tmp_path)
    check_values(cfg)
    check_targets(cfg)
    for key, node in target_nodes(cfg):
        obj = instantiate(node)
        assert obj is not None, key
