"""Writes the machine refuses: a full disk, a quota, permission denied, a read-only or vanished folder.

These are neither bad input (exit 2) nor a bug in the run; the run ends with exit 1 and one line
naming the file, the step, and the checkpoint that is intact (trainkit.errors.StorageError).
`refusal` tells them from other failures: an OSError of that kind anywhere in what was raised
(torch's zip writer turns ENOSPC into a RuntimeError without errno, DCP wraps each rank's error in a
CheckpointException), or else the folder itself: gone, not writable, or out of space.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os

from trainkit.errors import StorageError

REFUSALS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR,
            errno.ESTALE, errno.EIO}
LOW_SPACE = 1 << 20  # bytes: a write that failed with less than this free ran out of space


def refusal(exc: BaseException, folder: str) -> str | None:
    """Why the machine refused a write into `folder` (a file and a reason), or None when `exc` is
    not that kind of failure."""
    found = refused_write(exc)
    if found is not None:
        where = f": {found.filename}" if found.filename else f" (in {folder})"
        return f"{found.strerror or os.strerror(found.errno)}{where}"
    existing = folder
    while existing and not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    if existing != folder:
        return f"{folder} no longer exists"
    if not os.access(folder, os.W_OK):
        return f"permission denied: {folder}"
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    if free < LOW_SPACE:
        return f"no space left on device: {folder} ({free // 1024} KiB free)"
    return None


def refused_write(exc: BaseException | None, seen: set[int] | None = None) -> OSError | None:
    """The OSError of a refused write in `exc`, its causes, or the ranks' failures DCP gathered."""
    seen = set() if seen is None else seen
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in REFUSALS:
            return exc
        for wrapped in (getattr(exc, "failures", None) or {}).values():  # DCP: {rank: (exception, traceback)}
            inner = refused_write(wrapped[0] if isinstance(wrapped, tuple) else wrapped, seen)
            if inner is not None:
                return inner
        exc = exc.__cause__ or exc.__context__
    return None


def intact(checkpoint_dir: str) -> str:
    """Which checkpoint a run can continue from, in words."""
    last = os.path.join(checkpoint_dir, "last")
    if os.path.exists(last):
        return f"intact checkpoint: {os.path.realpath(last)} (`last`; trainer.resume=auto continues from it)"
    return f"no checkpoint was saved before (in {checkpoint_dir})"


@contextlib.contextmanager
def logging_step(step: int, checkpoint_dir: str, failing: bool = False):
    """Around the loggers' writes: a refused write ends the run naming the file, the step and the
    intact checkpoint. While the run is failing already (`failing`), the logs' last flush must not
    hide why: it is noted in the log instead."""
    try:
        yield
    except OSError as exc:
        refused = refusal(exc, os.path.dirname(exc.filename) if exc.filename else checkpoint_dir)
        if refused is None:
            raise
        message = f"writing the logs of step {step} failed: {refused}; what was logged before is intact"
        if failing:
            logging.getLogger("trainkit").warning(message)
            return
        raise StorageError(f"{message}; {intact(checkpoint_dir)}") from exc
