"""User-facing errors.

A `UserError` is bad input — a config key, a value, a file — that the user can fix. The CLI prints
its message alone (no traceback) and exits with code 2. Everything else that escapes a run is a
training failure: exit code 1, with the place it happened.
"""


class UserError(Exception):
    """Bad input the user can fix. The message names the problem and the fix."""


class ConfigError(UserError):
    """A config value is unknown, of the wrong type, or inconsistent with another."""


class DataError(UserError):
    """A data file is missing or malformed. The message names the file (and line)."""


class RunDirLocked(UserError):
    """Another run writes this run folder (trainkit.run_lock); nothing is written into it."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf."""


class StorageError(Exception):
    """The machine refused a write (disk full, permission denied, a folder gone): exit 1, with the
    file, the step and the intact checkpoint in the message (trainkit.storage)."""


class LossSpikeError(RuntimeError):
    """More loss spikes than `spike_guard.max_skips` were skipped."""


class Interrupted(Exception):
    """Training stopped on a signal after saving a checkpoint (exit code 128 + the signal)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
