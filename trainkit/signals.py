"""Stop signals become a flag: the loop finishes its optimizer step, saves, and exits.

A handler that saved by itself could run in the middle of a step (half-updated weights, a
GradScaler between unscale and step) — the way other launchers lose checkpoints. This one only
records the signal; `Trainer` reads it at each step boundary. A second Ctrl-C stops at once.

Several processes must stop at the same step (saving a checkpoint is a collective), but a signal
reaches them at slightly different times (or only one of them): `StopVote` makes them agree.
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
    """The stop signal every rank acts on, and the step all of them stop at.

    The first rank to see a signal posts it to the group's rendezvous store with a target step
    (`compare_set`: the first post wins). Every rank reads the store at each EVERY-th step boundary
    (one small round trip) and stops when it reaches the target. Steps run in lockstep (each waits
    for every rank's gradients), so a post made at step s is visible at the first read after it,
    c = (s // EVERY + 1) * EVERY, and the target c + EVERY lies beyond that read: every rank knows it
    in time. The stop comes at most 2 * EVERY steps after the signal. (An all-reduce per step did
    the same at 15% of DDP's throughput on this 2-core machine; a store read per step at ~6%.)"""

    EVERY = 4

    def __init__(self, signals: StopSignals, store=None, key: str = "trainkit/stop") -> None:
        self.signals = signals
        self.store, self.key = store, key  # no store with one process: act on its own signal at once
        self._posted = False
        self._agreed: tuple[int, int] | None = None  # (signal, step to stop at)

    def poll(self, step: int) -> int | None:
        """Call at every step boundary; returns the signal to stop for, or None to go on."""
        if self.store is None:
            return self.signals.received
        if self.signals.received is not None and not self._posted:
            self._posted = True
            target = (step // self.EVERY + 2) * self.EVERY
            self.store.compare_set(self.key, "", f"{self.signals.received} {target}")
        if self._agreed is None and step % self.EVERY == 0 and self.store.check([self.key]):
            signum, at = self.store.get(self.key).decode().split()
            self._agreed = (int(signum), int(at))
        if self._agreed is not None and step >= self._agreed[1]:
            return self._agreed[0]
        return None
