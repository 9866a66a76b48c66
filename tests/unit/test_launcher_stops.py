"""The local launcher of several processes says a stop as one process does, and passes a second
Ctrl-C on to its workers (the real signals to a real 2-process launcher: tests/integration/test_run_dir.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from torch.distributed.elastic.multiprocessing import api

from trainkit.launch.local import _Stop, _stop_report, _stop_signals


def test_a_second_ctrl_c_reaches_the_workers_and_a_repeated_sigterm_does_not():
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stop, torchs = _Stop(pids=[worker.pid]), api._terminate_process_handler
    try:
        with _stop_signals(stop):
            with pytest.raises(api.SignalException):  # the first goes to the agent, which forwards it
                api._terminate_process_handler(signal.SIGTERM, None)
            api._terminate_process_handler(signal.SIGTERM, None)  # the workers are saving: nothing more
            assert worker.poll() is None and not stop.at_once
            api._terminate_process_handler(signal.SIGINT, None)  # Ctrl-C while they save: stop at once
            assert worker.wait(timeout=10) != 0 and stop.at_once and stop.signum == signal.SIGTERM
        assert api._terminate_process_handler is torchs  # torch's own handler is back after the launch
    finally:
        worker.kill()


def _checkpoint(run_dir, name: str) -> None:
    (run_dir / "checkpoints" / name).mkdir(parents=True)
    last = run_dir / "checkpoints" / "last"
    if last.is_symlink():
        last.unlink()
    last.symlink_to(name)


def test_the_stop_line_names_the_step_saved_or_the_intact_checkpoint_when_none_was(tmp_path):
    assert str(_stop_report(signal.SIGTERM, str(tmp_path), _Stop(signal.SIGTERM, time.time()))) == \
        "stopped by SIGTERM before a checkpoint was saved; no checkpoint yet"
    _checkpoint(tmp_path, "epoch=0-step=4")
    after_it = _Stop(signal.SIGTERM, time.time() + 5)  # killed before they saved: `last` is older
    assert str(_stop_report(signal.SIGTERM, str(tmp_path), after_it)) == (
        f"stopped by SIGTERM before a checkpoint was saved; last checkpoint: "
        f"{tmp_path}{os.sep}checkpoints{os.sep}epoch=0-step=4 (step 4)")
    before = _Stop(signal.SIGINT, time.time() - 5)
    _checkpoint(tmp_path, "epoch=0-step=8")
    assert str(_stop_report(signal.SIGINT, str(tmp_path), before)) == \
        f"stopped by SIGINT at step 8; checkpoint saved: {tmp_path / 'checkpoints' / 'epoch=0-step=8'}"
    before.at_once = True
    assert str(_stop_report(signal.SIGINT, str(tmp_path), before)).startswith(
        "stopped at once by a second Ctrl-C; last checkpoint: ")
