"""Start-up in two halves side by side: Hydra composes in a forked child while this process imports torch.

Composing the config (Hydra's import, about twenty files, the checks, config.yaml) takes about 0.7 s
of CPU and importing torch about 1.2 s; neither needs the other, so on two cores they can run at
the same time. The CLI calls `fork_composer()` before anything heavy is imported:

  child   composes exactly as without the fork (run directory, .hydra/, checks, config.yaml). Where
          its launcher would start the run from this machine (in place, or torch's elastic agent),
          it hands <run_dir>/config.yaml to the parent instead of launching (`hand_over`) and exits;
          anything else (a sweep, SLURM, cross-validation, a bad override) it finishes itself, and
          its exit code is the command's.
  parent  imports torch meanwhile, then launches the config it was handed: the
          process the user started is the one that trains (its pid, its terminal, the signals sent
          to it). Compose-once holds: the parent never runs Hydra. When the run takes several
          processes, the parent starts the workers' fork server (trainkit.launch.forkserver) the
          moment the child hands over: it imports torch and the engine on the core the child freed.

The fork happens only where it is safe and pays (`wanted`): os.fork exists, torch is not imported
yet (no threads to fork), every argument is an override (no Hydra flag such as -m or --cfg), and no
outside launcher (torchrun, srun) started this process.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading

# Passed on to the child while it composes. Ctrl-C reaches both from the terminal (one process
# group), so SIGINT is not: the child would see it twice.
_FORWARD = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)

_to_parent: int | None = None  # in the child: the write end of the pipe to the parent


def wanted(args: list[str], dry_run: bool) -> bool:
    """Whether to compose in a child; `args` are what follows the command."""
    if dry_run or not hasattr(os, "fork") or "torch" in sys.modules:
        return False
    if not all(("=" in a or a.startswith("~")) and not a.startswith("-") for a in args):
        return False
    from trainkit.launch.env import from_environ

    return not from_environ().is_worker


def fork_composer() -> "Composer | None":
    """Fork. The parent gets the `Composer`; the child gets None and goes on to compose."""
    global _to_parent
    sys.stdout.flush()
    sys.stderr.flush()  # else the child would write out the parent's buffered text a second time
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _to_parent = write_end
        return None
    os.close(write_end)
    return Composer(pid, read_end)


def hand_over(config_path: str, launcher: object, lock) -> bool:
    """In the child: give `config_path` to the parent to launch, with the run folder's `lock`
    (trainkit.run_lock), when the launcher starts the run from this machine and this is a single
    run (a sweep's trials stay in the child). True if given."""
    if _to_parent is None:
        return False
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from trainkit.launch.local import InProcess, LocalElastic

    if HydraConfig.get().mode != RunMode.RUN or not isinstance(launcher, (InProcess, LocalElastic)):
        return False
    lock.hand_to(os.getppid())
    os.write(_to_parent, json.dumps({
        "config": config_path,
        "elastic": isinstance(launcher, LocalElastic),  # the parent starts the workers' fork server at once
        "env_set": dict(HydraConfig.get().job.env_set),  # Hydra set these here, for the job: the parent runs it
    }).encode())
    keep_here()
    return True


def keep_here() -> None:
    """In the child: run whatever comes here (k runs of a cross-validation: all of them)."""
    global _to_parent
    if _to_parent is not None:
        os.close(_to_parent)
        _to_parent = None


class Composer:
    """The parent's side: the composing child, and a thread that takes its hand-over while this
    process imports torch in its main thread (in another thread glibc would serve that import's
    allocations from a thread arena, growing it one mprotect call at a time: about 15,000 calls and
    +0.07 to +0.2 s here)."""

    def __init__(self, pid: int, read_end: int) -> None:
        self.pid, self.read_end = pid, read_end
        self.handed: dict = {}
        # Signals sent to this process while the child composes are passed on to it.
        self._previous = {sig: signal.signal(sig, self._forward) for sig in _FORWARD}
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
        self._reader = threading.Thread(target=self._take_hand_over, name="trainkit-hand-over", daemon=True)
        self._reader.start()

    def wait(self) -> tuple[str | None, int]:
        """Import torch, then (the config path handed over, or None; the child's exit code)."""
        try:
            _import_torch()
            self._reader.join()  # a signal still reaches this thread's handlers while it waits here
            code = self._reap()
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
        return self.handed.get("config"), code

    def _take_hand_over(self) -> None:
        """In the thread: the child's record, the moment it is written. Where the child did the
        whole command (a sweep, a bad override), this process leaves with its exit code at once."""
        data = b""
        while chunk := os.read(self.read_end, 4096):
            data += chunk
        os.close(self.read_end)
        if not data:
            leave(self._reap())
        self.handed = json.loads(data)
        os.environ.update({str(key): str(value) for key, value in self.handed.get("env_set", {}).items()})
        if self.handed.get("elastic"):
            from trainkit.launch import forkserver

            # Early only to save time: where it cannot start (no room for its socket), the
            # launcher's own start() fails again and reports it as any launch failure.
            with contextlib.suppress(Exception):
                forkserver.start()

    def _reap(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        return 128 - code if code < 0 else code

    def _forward(self, signum: int, frame: object) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass


def leave(code: int) -> None:
    """The parent's exit when the child did the whole command: at once, from any thread, even in
    the middle of `import torch` (an interpreter shutting down under that import may crash)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _import_torch() -> None:
    """What every launch from this machine imports first (the rest depends on the launcher: the
    engine in place, torch's elastic agent for several processes), frozen (trainkit.frozen_imports).
    An error here shows again where the launch imports torch itself."""
    from trainkit.frozen_imports import import_frozen

    try:
        import_frozen(["torch"])
    except BaseException:  # noqa: BLE001
        pass
