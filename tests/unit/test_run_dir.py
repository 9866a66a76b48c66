"""The parent side of `trainkit resume` and `trainkit test <run_dir>`: overrides on a run's own
config, and which checkpoint an evaluation takes (torch-free, on files written here)."""
from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from trainkit.errors import ConfigError
from trainkit.resume import _typed, apply_overrides, best_checkpoint


def _run(tmp_path, names, monitor="val/auc", mode="max", best=None):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in names:
        (folder / name).mkdir()
    (folder / "last").symlink_to(names[-1])
    if best is not None:
        (tmp_path / "results.json").write_text(json.dumps({"status": "completed", "best": best}))
    callbacks = {"model_checkpoint": {"_target_": "trainkit.callbacks.ModelCheckpoint", "dirpath": str(folder),
                                      "monitor": monitor, "mode": mode}}
    return OmegaConf.create({"run_dir": str(tmp_path), "callbacks": callbacks}), folder


def test_the_best_checkpoint_by_the_names_scores_first_reached_wins_a_tie(tmp_path):
    cfg, folder = _run(tmp_path, ["epoch=0-step=10-val_auc=0.7000", "epoch=1-step=20-val_auc=0.7500",
                                  "epoch=2-step=30-val_auc=0.7500", "epoch=3-step=40"])
    path, how = best_checkpoint(cfg)
    assert path == str(folder / "epoch=1-step=20-val_auc=0.7500") and "best checkpoint by val/auc (max)" in how


def test_results_json_names_the_best_step_and_a_best_link_wins(tmp_path):
    cfg, folder = _run(tmp_path, ["epoch=0-step=10-val_auc=0.7000", "epoch=1-step=20"],
                       best={"metric": "val/auc", "mode": "max", "value": 0.71, "step": 20})
    assert best_checkpoint(cfg)[0] == str(folder / "epoch=1-step=20")
    (folder / "best").symlink_to("epoch=0-step=10-val_auc=0.7000")
    assert best_checkpoint(cfg)[0] == str(folder / "epoch=0-step=10-val_auc=0.7000")


def test_no_monitor_takes_last_and_says_so(tmp_path):
    cfg, folder = _run(tmp_path, ["epoch=0-step=10", "epoch=1-step=20"], monitor=None)
    path, how = best_checkpoint(cfg)
    assert path == str(folder / "epoch=1-step=20") and "monitors no metric" in how


def test_overrides_on_a_run_config_add_remove_and_check_types(tmp_path):
    saved = OmegaConf.create({"run_dir": str(tmp_path), "command": "fit", "model": {"_target_": "m.M", "size": 4},
                              "datamodule": {"_target_": "d.D"}, "optimizer": {"_target_": "o.O"},
                              "callbacks": {"kill": {"_target_": "k.K"}}})
    cfg = _typed(saved, str(tmp_path))
    apply_overrides(cfg, ["trainer.max_epochs=5", "~callbacks.kill", "+model.extra=1"], str(tmp_path))
    assert cfg.trainer.max_epochs == 5 and "kill" not in cfg.callbacks and cfg.model.extra == 1
    with pytest.raises(ConfigError, match="trainer.max_epochs"):
        apply_overrides(cfg, ["trainer.max_epochs=abc"], str(tmp_path))
    with pytest.raises(ConfigError, match=r"model.sizee is not a config key .*\+model.sizee"):
        apply_overrides(cfg, ["model.sizee=3"], str(tmp_path))
    with pytest.raises(ConfigError, match="one value per key"):
        apply_overrides(cfg, ["model.size=1,2"], str(tmp_path))


def test_a_folder_that_merely_holds_runs_is_not_a_sweep_to_resume(tmp_path, capsys):
    from trainkit.resume import from_run_dir

    run = tmp_path / "someone" / "run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("run_dir: x\n")
    assert from_run_dir("resume", [str(tmp_path)], False, False) == 2
    assert "nor a sweep directory" in capsys.readouterr().err


def test_the_callbacks_own_record_of_the_best_wins_over_names(tmp_path):
    import torch

    cfg, folder = _run(tmp_path, ["epoch=0-step=10-val_auc=0.7000", "epoch=1-step=20-val_auc=0.9000",
                                  "epoch=2-step=30"])
    # best_model_path as saved elsewhere (the run folder moved since): the name is found here
    torch.save({"callbacks": {"ModelCheckpoint": {"best_model_path": "/old/place/epoch=0-step=10-val_auc=0.7000"}}},
               folder / "epoch=2-step=30" / "trainer.pt")
    assert best_checkpoint(cfg)[0] == str(folder / "epoch=0-step=10-val_auc=0.7000")


def test_scores_in_templated_names(tmp_path):
    cfg, folder = _run(tmp_path, ["epoch=0-val_loss=0.90-step=10", "epoch=1-val_loss=0.50-step=20", "epoch=2-step=30"],
                       monitor="val/loss", mode="min")
    assert best_checkpoint(cfg)[0] == str(folder / "epoch=1-val_loss=0.50-step=20")
