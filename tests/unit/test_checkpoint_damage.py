"""Checkpoints that match their manifest but cannot be loaded are damage: skipped by resume=auto for
the previous intact one, refused by name when asked for explicitly; no code in them runs."""
from __future__ import annotations

import os
import pickle

import pytest
from torch.utils.data import DataLoader

from tests.unit.test_trainer import Regressor, make_data, quiet_trainer
from trainkit import checkpoint
from trainkit.callbacks import ModelCheckpoint
from trainkit.engine import trainer_state
from trainkit.errors import UserError


class _RunsCode:
    """Unpickled by plain pickle, this would create `marker`: proof when it is absent that nothing ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _fit(folder, max_steps: int, resume: str | None = None):
    ckpt = ModelCheckpoint(dirpath=str(folder), every_n_train_steps=2, save_top_k=-1)
    trainer = quiet_trainer(max_steps=max_steps, callbacks=[ckpt], resume=resume)
    trainer.fit(Regressor(), train_dataloaders=DataLoader(make_data(n=64), batch_size=16))
    return trainer


@pytest.fixture
def two_checkpoints(tmp_path):
    folder = tmp_path / "checkpoints"
    _fit(folder, max_steps=4)
    older, newest = sorted((p for p in folder.iterdir() if p.name != "last"), key=lambda p: checkpoint.step_of(str(p)))
    assert (folder / "last").resolve() == newest
    return folder, older, newest


def _rewrite_manifest(path) -> None:
    os.remove(path / checkpoint.MANIFEST)
    checkpoint._write_manifest(str(path))  # damage that passes the manifest check
    assert checkpoint.verify(str(path)) is None


def test_metadata_the_unpickler_refuses_is_skipped_for_the_previous_checkpoint(two_checkpoints, tmp_path):
    folder, older, newest = two_checkpoints
    marker = tmp_path / "code-ran"
    (newest / "state" / ".metadata").write_bytes(pickle.dumps(_RunsCode(str(marker))))
    _rewrite_manifest(newest)

    problem = checkpoint.damage(str(newest))
    assert problem.startswith(f"{newest / 'state' / '.metadata'} cannot be read") and "posix.system" in problem
    path, problems = checkpoint.find_resumable(str(folder))
    assert path == str(older) and problems == [problem]
    with pytest.raises(UserError, match=f"trainer.resume={newest}: .*metadata cannot be read"):
        trainer_state.checkpoint_to_load(quiet_trainer(resume=str(newest)))
    trainer = _fit(folder, max_steps=6, resume="auto")  # resumes from the older one and trains on
    assert trainer.global_step == 6
    assert not marker.exists()


def test_a_missing_shard_is_damage_and_none_loadable_names_every_file(two_checkpoints):
    folder, older, newest = two_checkpoints
    for path in (older, newest):
        shard = next((path / "state").glob("*.distcp"))
        shard.unlink()
        _rewrite_manifest(path)
    assert checkpoint.damage(str(newest)) == f"{shard} is missing (named by {newest / 'state' / '.metadata'})"
    with pytest.raises(UserError, match="no intact checkpoint") as info:
        trainer_state.checkpoint_to_load(quiet_trainer(resume="auto", default_root_dir=str(folder.parent)))
    assert str(older / "state") in str(info.value) and str(newest / "state") in str(info.value)
