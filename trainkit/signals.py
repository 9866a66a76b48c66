"""Stop signals become a flag: the loop finishes its optimizer step, saves, and exits.

A handler that saved by itself could run in the middle of a step (half-updated weights, a
GradScaler between unscale and step) — the way other launchers lose checkpoints. This one only
records the signal; `Trainer` reads it at each step boundary. A second Ctrl-C stops at once.

Several processes must stop at the same step (saving a checkpoint is a collective), but a signal
reaches them at slightly different times. `StopVote` sums every rank's flag in the background while
the next step runs, and all ranks act on that sum at the following step boundary: they agree,
one step after the first rank saw the signal, and no step waits on an extra collective.
"""
from __future__ import annotations

import signal
import sys
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


class StopSignals:
    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without saving
        if self.received is None:
            self.received = signum
            sys.stderr.write(f"\ntrainkit: received {signal.Signals(signum).name}: finishing this step, "
                             "saving a checkpoint, then stopping (Ctrl-C again to stop at once)\n")
            sys.stderr.flush()


class StopVote:
    """The stop signal that every rank acts on, agreed one step boundary later."""

    def __init__(self, signals: StopSignals, all_reduce_sum_async=None) -> None:
        self.signals = signals
        self.reduce = all_reduce_sum_async  # None with one process: act on its own signal at once
        self._pending = None

    def poll(self) -> int | None:
        """Call at every step boundary; returns the signal to stop for, or None to go on."""
        if self.reduce is None:
            return self.signals.received
        import torch

        agreed = None
        if self._pending is not None:
            votes = self._pending.wait().tolist()
            seen = [sig for sig, count in zip(STOP_SIGNALS, votes) if count > 0]
            agreed = seen[0] if seen else None  # the same on every rank
        mine = torch.tensor([float(self.signals.received == sig) for sig in STOP_SIGNALS])
        self._pending = self.reduce(mine)
        return agreed

    def reset(self) -> None:
        """Drop the vote in flight (call when the loop ends without stopping)."""
        if self._pending is not None:
            self._pending.wait()  # every rank started it; every rank finishes it
        self._pending = None
