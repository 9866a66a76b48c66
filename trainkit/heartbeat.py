"""A stalled rank, named in minutes: each rank's progress, watched by a thread beside the loop.

The loop marks what it does (`mark("forward")`: two attribute writes and a clock read, nothing
else on the hot path). A thread of each rank wakes every `interval` seconds, writes the rank's
record (host, pid, step, phase, when it last progressed, the time of this beat) to
`<run_dir>/.heartbeat/rank<R>.json` (several processes only), and when its own rank has made no
progress for its limit, reads every rank's record and decides which rank holds the group:

  * only once every rank is past its limit: while one progresses, the others wait for it (slow,
    not stalled);
  * a rank whose beat stopped (its process does not run: SIGSTOP, a frozen node) comes first;
    else the rank that progressed least recently (the others went on from the collective they
    last shared, until they had to wait for it);
  * the limit is `trainer.hang_timeout_s`, times SLOW while a process has not finished the first
    optimizer step of its fit loop (the sanity check, compilation) and while a rank saves or loads
    a checkpoint; the set-up before the loop (data preparation, a download) is not judged.

Then the run ends with one message naming that rank, its host, its last step and phase, and with
its Python stack in `<run_dir>/trainkit.log` (faulthandler: a rank stalled by itself writes its
own; a frozen rank is sent DUMP_SIGNAL and SIGCONT by a live rank of its host, then SIGKILL). The
message goes into the stalled rank's error file of torch's elastic agent, so the launcher names
it, and `trainer.max_restarts` restarts the group as for a dead worker.

Why not torch's own watchdogs: the elastic agent's FileTimerServer kills a worker whose timer
expired without saying where it was (and it costs a FIFO write per scope); NCCL's watchdog and
flight recorder see collectives on GPUs only, not a rank stuck in its data loader or a stopped
process. (On GPUs they still run, with strategy.timeout_s.)
"""
from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainkit.engine.trainer import Trainer

log = logging.getLogger("trainkit")

PHASES = ("setup", "data", "forward", "backward", "optimizer", "collective", "validation", "checkpoint")
SLOW = 4  # the first optimizer step of a process and a checkpoint may take this many limits
# `kill -<n> <pid>` writes that worker's stack into trainkit.log (Linux has real-time signals to spare)
DUMP_SIGNAL = signal.SIGRTMIN + 4 if hasattr(signal, "SIGRTMIN") else None


@dataclass
class Record:
    """One rank's progress, as its heartbeat file holds it."""
    rank: int
    host: str
    pid: int
    attempt: str
    step: int
    phase: str
    at: float  # wall clock of the last progress
    beat: float  # wall clock of this record
    limit: float  # seconds without progress before this rank is stalled
    error_file: str | None = None  # torch's elastic agent reads why the worker failed from it

    def stalled(self, now: float) -> bool:
        return now - self.at > self.limit

    def frozen(self, now: float, interval: float) -> bool:
        """Its heartbeat thread stopped: the process does not run (or is gone)."""
        return now - self.beat > max(3 * interval, 2.0)


class Heartbeat:
    def __init__(self) -> None:
        self.phase = "setup"
        self.at = time.time()
        self.begin_step: int | None = None  # the step this process's fit loop started from
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def mark(self, phase: str) -> None:
        """The loop moved on (the hot path: keep this to two stores and a clock read)."""
        self.phase = phase
        self.at = time.time()

    def begin(self, step: int) -> None:
        """The fit loop starts at `step` (after any resume): the first step ends the slow allowance."""
        self.begin_step = step
        self.mark("setup")

    @contextlib.contextmanager
    def watching(self, trainer: Trainer, timeout_s: float | None):
        """Watch this rank (and through the files, the others) while the body runs."""
        if not timeout_s or timeout_s <= 0:
            yield
            return
        self._trainer, self.timeout_s = trainer, float(timeout_s)
        self.interval = min(max(self.timeout_s / 10, 0.2), 5.0)
        self.world, self.rank = trainer.world_size, trainer.global_rank
        self.folder = os.path.join(trainer.default_root_dir, ".heartbeat")
        self.log_path = os.path.join(trainer.default_root_dir, "trainkit.log")
        os.makedirs(self.folder if self.world > 1 else trainer.default_root_dir, exist_ok=True)
        self._log = open(self.log_path, "a")  # noqa: SIM115 - faulthandler writes into it until the process ends
        if DUMP_SIGNAL is not None:
            faulthandler.register(DUMP_SIGNAL, file=self._log, all_threads=True)
        self.host, self.attempt = socket.gethostname(), _attempt()
        self.begin_step = None
        self.mark("setup")
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="trainkit-heartbeat", daemon=True)
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join()
            if DUMP_SIGNAL is not None:
                faulthandler.unregister(DUMP_SIGNAL)
            self._log.close()

    # -- the thread ------------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            now = time.time()
            own = self._record(now)
            if self.world > 1:
                self._publish(own)
            if not own.stalled(now):
                continue
            records = [own] if self.world == 1 else self._read(own, now)
            culprit = holding(records, now, self.interval)
            if culprit is None:
                continue
            if os.path.exists(self._ending()):
                continue  # another rank ends the group (and may have continued this one to dump its stack)
            if culprit.rank == self.rank:
                self._end(culprit, records, now)
            elif culprit.frozen(now, self.interval) or now - culprit.at > culprit.limit + 10 * self.interval:
                # Its own thread cannot act: the lowest live rank of its host does (else of all).
                live = [r for r in records if not r.frozen(now, self.interval)]
                same_host = [r for r in live if r.host == culprit.host]
                if min(r.rank for r in (same_host or live)) == self.rank:
                    self._end(culprit, records, now)
            # else: the culprit runs and sees it is the one; it ends the run itself

    def _ending(self) -> str:
        """A rank that ends this attempt says so here; the others leave it to that one."""
        return os.path.join(self.folder, f"ending.{self.attempt.replace('/', '_')}")

    def _record(self, now: float) -> Record:
        state = self._trainer.state
        if self.begin_step is None:  # set-up before the loop (data preparation, a download): not judged
            limit = math.inf
        else:
            slow = state.global_step <= self.begin_step or self.phase == "checkpoint"
            limit = self.timeout_s * (SLOW if slow else 1)
        return Record(self.rank, self.host, os.getpid(), self.attempt, state.global_step, self.phase, self.at, now,
                      limit, os.environ.get("TORCHELASTIC_ERROR_FILE"))

    def _publish(self, record: Record) -> None:
        path = os.path.join(self.folder, f"rank{self.rank}.json")
        with contextlib.suppress(OSError):  # a full disk must not end the run from here
            with open(path + ".tmp", "w") as f:
                json.dump(asdict(record), f)
            os.replace(path + ".tmp", path)

    def _read(self, own: Record, now: float) -> list[Record]:
        records = []
        for rank in range(self.world):
            if rank == self.rank:
                records.append(own)
                continue
            try:
                with open(os.path.join(self.folder, f"rank{rank}.json")) as f:
                    record = Record(**json.load(f))
            except (OSError, ValueError, TypeError):
                record = None
            if record is None or record.attempt != self.attempt:  # never reported in this attempt
                record = Record(rank, "?", 0, self.attempt, -1, "setup", 0.0, 0.0, own.limit)
            records.append(record)
        return records

    def _end(self, culprit: Record, records: list[Record], now: float) -> None:
        """Say who stalled, put the stacks into the log, and end this process (and a frozen culprit
        of this host): the launcher ends or restarts the group."""
        message = describe(culprit, records, now, self.interval, self.timeout_s, self.log_path)
        with contextlib.suppress(OSError):  # the other ranks leave the ending to this one
            open(self._ending(), "w").close()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._write(f"{stamp} ERROR {message}\n")
        if culprit.rank != self.rank and culprit.host == self.host and culprit.pid and DUMP_SIGNAL is not None:
            self._dump_and_kill(culprit, message, stamp)
        # This rank is stalled too (it only decides once it is): where it waits, for the log.
        self._write(f"{stamp} ERROR Python stack of rank {self.rank} (pid {os.getpid()}, phase {self.phase}):\n")
        faulthandler.dump_traceback(file=self._log, all_threads=True)
        print(f"trainkit: error{f' (rank {self.rank})' if self.world > 1 else ''}: {message}", file=sys.stderr,
              flush=True)
        error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
        _write_error_file(error_file, message)
        if error_file is None and self.world == 1:  # this process is the run: its record, as cli's
            from trainkit.exits import record_failure

            record_failure(Stalled(message), self._trainer.default_root_dir)
        logging.shutdown()
        os._exit(1)  # the main thread is stuck: nothing else can end this process

    def _dump_and_kill(self, culprit: Record, message: str, stamp: str) -> None:
        """A stopped process runs its signal handlers once continued: faulthandler writes its stack,
        then it is killed before it runs on."""
        self._write(f"{stamp} ERROR Python stack of rank {culprit.rank} (pid {culprit.pid}, phase {culprit.phase}):\n")
        with contextlib.suppress(ProcessLookupError):
            os.kill(culprit.pid, DUMP_SIGNAL)
            os.kill(culprit.pid, signal.SIGCONT)
            size, deadline = -1, time.monotonic() + 2.0
            while time.monotonic() < deadline:  # until its stack is written: the log grew, then settled
                time.sleep(0.2)
                grown = os.path.getsize(self.log_path)
                if grown == size:
                    break
                size = grown
            _write_error_file(culprit.error_file, message)  # the launcher names the stall, not the kill
            os.kill(culprit.pid, signal.SIGKILL)

    def _write(self, text: str) -> None:
        with contextlib.suppress(OSError):
            self._log.write(text)
            self._log.flush()


class Stalled(Exception):
    """A rank made no progress for trainer.hang_timeout_s (the message names it)."""


def holding(records: list[Record], now: float, interval: float) -> Record | None:
    """The rank that holds the group up, once every rank is past its limit (while one progresses,
    the others wait for it: slow, not stalled); None until then. A rank whose process does not
    run comes first; else the one that progressed least recently (the others went on from the
    same collective until they had to wait for it)."""
    if not all(r.stalled(now) for r in records):
        return None
    frozen = [r for r in records if r.frozen(now, interval)]
    return min(frozen or records, key=lambda r: (r.at, r.rank))


def describe(culprit: Record, records: list[Record], now: float, interval: float, timeout_s: float,
             log_path: str) -> str:
    slow = culprit.limit > timeout_s
    allowance = f" (trainer.hang_timeout_s={timeout_s:g}, x{SLOW} for a first step or a checkpoint)" if slow \
        else f" (trainer.hang_timeout_s={timeout_s:g})"
    if culprit.step < 0:
        what = f"rank {culprit.rank} never reported progress in this attempt{allowance}"
    else:
        what = (f"rank {culprit.rank} (host {culprit.host}, pid {culprit.pid}) made no progress for "
                f"{now - culprit.at:.0f} s{allowance}: last at step {culprit.step} in phase {culprit.phase}")
    if culprit.step >= 0 and culprit.frozen(now, interval):
        what += "; its process does not run (stopped, or its machine froze)"
    waiting = [f"rank {r.rank} in {r.phase} at step {r.step}" for r in records
               if r.rank != culprit.rank and r.step >= 0 and r.stalled(now)]
    if waiting:
        what += "; waiting for it: " + ", ".join(waiting)
    return f"{what}; its Python stack: {log_path}"


def _attempt() -> str:
    return f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/" \
           f"{os.environ.get('SLURM_JOB_ID', '')}.{os.environ.get('SLURM_RESTART_COUNT', '0')}"


def _write_error_file(path: str | None, message: str) -> None:
    """The error file of torch's elastic agent (the format trainkit.launch.worker writes), with the
    stall: the launcher reports it as the cause instead of the kill."""
    if not path:
        return
    now = time.time()
    data = {"message": {"message": f"Stalled: {message}",
                        "extraInfo": {"py_callstack": "", "timestamp": str(int(now)), "trainkit_time": now,
                                      "trainkit_stalled": message}}}
    with contextlib.suppress(OSError):
        with open(path + ".tmp", "w") as f:
            json.dump(data, f)
        os.replace(path + ".tmp", path)


def stalled_message(failure: Any) -> str | None:
    """The stall a heartbeat recorded in a failed worker's error file, if any (trainkit.launch.local)."""
    try:
        return failure.error_file_data["message"]["extraInfo"]["trainkit_stalled"]
    except (KeyError, TypeError, AttributeError):
        return None
