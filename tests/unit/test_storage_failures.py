"""A full disk or a vanished folder while saving or logging: exit 1 naming the file, the step and the
intact checkpoint; nothing half-written published; the logs written so far stay readable."""
from __future__ import annotations

import csv
import errno
import os
import subprocess

import pytest
from torch.utils.data import DataLoader

from tests.unit.test_trainer import Regressor, make_data, quiet_trainer
from trainkit import Callback, checkpoint
from trainkit.callbacks import ModelCheckpoint
from trainkit.errors import StorageError
from trainkit.exits import exit_code
from trainkit.loggers import CSVLogger


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A 100 KiB tmpfs when this process may mount one (root): room for one checkpoint of the
    Regressor (68 KiB), not two. Elsewhere the writes of the second checkpoint fail with ENOSPC."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(disk)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        save_file = checkpoint._save_file

        def full_at_the_second_save(obj, path):
            if "step=4" in path:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            save_file(obj, path)

        monkeypatch.setattr(checkpoint, "_save_file", full_at_the_second_save)
    yield disk
    if mounted:
        subprocess.run(["umount", str(disk)], check=True)


def _fit(tmp_path, checkpoints, *callbacks):
    logger = CSVLogger(save_dir=str(tmp_path / "logs"))
    ckpt = ModelCheckpoint(dirpath=str(checkpoints), every_n_train_steps=2)
    trainer = quiet_trainer(max_steps=6, log_every_n_steps=1, logger=logger, callbacks=[ckpt, *callbacks])
    with pytest.raises(StorageError) as info:
        trainer.fit(Regressor(), train_dataloaders=DataLoader(make_data(n=128), batch_size=16))
    return str(info.value), info.value


def _logged_steps(tmp_path) -> list[int]:
    with open(tmp_path / "logs" / "metrics.csv", newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


def test_a_full_disk_while_saving_names_the_step_and_the_intact_checkpoint(tmp_path, small_disk):
    checkpoints = small_disk / "checkpoints"
    message, exc = _fit(tmp_path, checkpoints)
    previous = checkpoints / "epoch=0-step=2"
    assert message.startswith("saving the checkpoint of step 4 failed: No space left on device")
    assert str(checkpoints / ".tmp-epoch=0-step=4") in message  # the checkpoint being written
    assert f"intact checkpoint: {previous}" in message
    assert exit_code(exc) == (1, message)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch=0-step=2", "last"]  # no .tmp- folder
    assert (checkpoints / "last").resolve() == previous and checkpoint.damage(str(previous)) is None
    assert _logged_steps(tmp_path) == [1, 2, 3, 4]


class _HalfWrite:
    """A file whose next write puts half its bytes on disk, then fails as a full disk does."""

    def __init__(self, f) -> None:
        self.f = f

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def write(self, data: bytes) -> int:
        self.f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FillDiskAt(Callback):
    """From optimizer step `step` on, appends to metrics.csv hit a full disk."""

    def __init__(self, monkeypatch, step: int) -> None:
        self.monkeypatch, self.step = monkeypatch, step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            import builtins

            from trainkit.loggers import csv as csv_logger

            def full_open(path, mode="r", *args, **kwargs):
                f = builtins.open(path, mode, *args, **kwargs)
                return _HalfWrite(f) if "a" in mode else f

            self.monkeypatch.setattr(csv_logger, "open", full_open, raising=False)


def test_a_full_disk_while_logging_names_the_file_and_keeps_the_csv_whole(tmp_path, monkeypatch):
    checkpoints = tmp_path / "checkpoints"
    message, exc = _fit(tmp_path, checkpoints, _FillDiskAt(monkeypatch, step=3))
    metrics = tmp_path / "logs" / "metrics.csv"
    assert message.startswith(f"writing the logs of step 4 failed: No space left on device: {metrics}")
    assert f"intact checkpoint: {checkpoints / 'epoch=0-step=2'}" in message
    assert exit_code(exc) == (1, message)
    text = metrics.read_bytes()
    assert text.endswith(b"\r\n") and _logged_steps(tmp_path) == [1, 2]  # step 3's row failed whole, not half
