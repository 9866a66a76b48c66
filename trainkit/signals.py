"""Stop signals become a flag: the loop finishes its optimizer step, saves, and exits.

A handler that saved by itself could run in the middle of a step (half-updated weights, a
GradScaler between unscale and step) — the way other launchers lose checkpoints. This one only
records the signal; `Trainer` reads `received` at each step boundary. A second Ctrl-C stops at once.
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
