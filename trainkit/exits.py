"""How a run ends: exit codes, the failure record in the run directory, and how a process leaves.

Every process of a run ends through here, whichever side it is on:
  * the parent (`trainkit fit ...`) turns what its launcher raised into an exit code and one line
    (`exit_code`), after `record_failure` wrote the whole story into the run directory;
  * a worker (`trainkit.launch.worker` under the elastic agent, a SLURM task, a process started by
    an outside torchrun) turns what the run raised into its own exit code (`exit_code` again), and
    leaves with `leave`.

Exit codes: 0 done; 1 training failed (the message says where); 2 bad config or input (the message
names the key or file and the fix); 128 + N stopped by signal N after saving a checkpoint (143 for
SIGTERM, 130 for Ctrl-C).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from pathlib import Path

from trainkit.errors import Interrupted, RunDirLocked, StorageError, UserError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class WorkerFailed(Exception):
    """A worker process (or SLURM task) failed; the message names its rank and what happened."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def exit_code(exc: BaseException) -> tuple[int, str]:
    """The exit code of a run that raised `exc`, and the one line that says why."""
    if isinstance(exc, Interrupted):
        return 128 + exc.signum, str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, WorkerFailed):
        return exc.exit_code, str(exc)
    if isinstance(exc, UserError):
        return EXIT_BAD_INPUT, str(exc)
    if isinstance(exc, StorageError):  # the message says it all; the traceback is in the log
        return EXIT_FAILED, str(exc)
    return EXIT_FAILED, where(exc)


def where(exc: BaseException) -> str:
    """`training failed: ExcType: message (at file:line in function)`, the innermost frame of trainkit
    or of the project when there is one."""
    frames = traceback.extract_tb(exc.__traceback__)
    roots = [str(Path(__file__).resolve().parent.parent)]
    project = os.environ.get("TRAINKIT_PROJECT")  # set by trainkit.project for the run's own code
    if project:
        roots.insert(0, project)
    for root in roots:
        ours = [f for f in frames if f.filename.startswith(root + os.sep)]
        if ours:
            break
    else:
        root, ours = roots[-1], frames
    place = f" (at {os.path.relpath(ours[-1].filename, root)}:{ours[-1].lineno} in {ours[-1].name})" if ours else ""
    return f"training failed: {type(exc).__name__}: {exc}{place}"


def record_failure(exc: BaseException, run_dir: str | None) -> None:
    """The run directory keeps the whole story: the error and its traceback in trainkit.log, the
    status in results.json (what the sweep summary and `trainkit resume` of a sweep read)."""
    if not run_dir or not os.path.isdir(run_dir) or isinstance(exc, RunDirLocked):  # not this command's folder
        return
    from trainkit.sweeps.results import record_failure as write_status

    code, message = exit_code(exc)
    stopped = isinstance(exc, Interrupted)
    with contextlib.suppress(OSError):  # on a full disk or a folder gone the console line still says why
        if not stopped:
            with open(os.path.join(run_dir, "trainkit.log"), "a") as f:
                f.write(f"error: {message}\n" + "".join(traceback.format_exception(exc)))
        write_status(run_dir, code, message, "interrupted" if stopped else "failed")


def record_worker_traceback(run_dir: str, rank: int) -> None:
    """A worker's traceback, into the run's log (the console gets one line)."""
    with contextlib.suppress(OSError):  # on a full disk or a folder gone the console line still says why
        with open(os.path.join(run_dir, "trainkit.log"), "a") as f:
            f.write(f"rank {rank} failed:\n{traceback.format_exc()}")


def close_process_group(barrier: bool = False) -> None:
    """Close the process group, if this process has one, before it leaves."""
    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def leave(code: int) -> None:
    """End this process now with `code`: logs and streams flushed, the process group closed, then
    `os._exit`. gloo can abort at interpreter exit after a clean run (FINDINGS: 6 of 32 runs with
    destroy_process_group() alone, 0 of 40 with os._exit after it), which would turn a finished run
    into a failed one; a SLURM task also must not write submitit's result file when it stops."""
    try:
        close_down()
    finally:
        os._exit(code)


def close_down() -> None:
    """What a process does before it leaves: logs and streams flushed, its process group closed."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    close_process_group()


def distributed() -> bool:
    """Whether this process runs a process group (then it leaves with `leave`)."""
    if "torch.distributed" not in sys.modules:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()
