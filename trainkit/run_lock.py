"""One writer per run folder: `<run_dir>/trainkit.lock`, held for the run's lifetime.

Who holds it:
  * a local run: the command (`trainkit fit ...`), from before it writes config.yaml to its end,
    however it ends; it records its workers' pids too (trainkit.launch.local), so a folder whose
    launcher was killed stays locked while its workers still write;
  * under an outside torchrun or srun: rank 0;
  * `launcher=slurm`: the submitting command, which hands it to the job (its id goes into the
    lock); the job's rank 0 takes it over as its own, again after each requeue, and releases it
    when the job ends (a requeue keeps it).
A lock whose owner is gone (no process of it left on its host; its SLURM job no longer queued or
running) is stale: the next command takes it over and says so. A live owner stops a second
command with exit 2 (`RunDirLocked`), naming the owner and the fix. An owner on another host
without a SLURM job cannot be checked from here: it counts as live, and the message says what to
remove if that host is gone.

The lock file is created whole (written aside, then hard-linked into place: it exists complete or
not at all) and replaced atomically.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

from trainkit.errors import RunDirLocked

LOCK = "trainkit.lock"
_HELD: dict[str, "RunLock"] = {}  # run_dir -> the lock this process holds there
_GONE_STATES = ("BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                "PREEMPTED", "TIMEOUT")


@dataclass
class Owner:
    pid: int
    host: str
    started: float
    command: str
    job: str | None = None  # the SLURM job that owns the folder
    restart: int = 0  # SLURM_RESTART_COUNT of the job's start that holds it (-1: submitted, not started)
    pids: list[list[int]] = field(default_factory=list)  # [pid, start ticks] of the run's processes on `host`
    token: str = ""

    @classmethod
    def me(cls, command: str | None = None) -> "Owner":
        pid = os.getpid()
        if command is None:  # under Hydra, argv[0] is "trainkit <command>" (trainkit.cli)
            command = " ".join([sys.argv[0] if sys.argv[0].startswith("trainkit ") else "trainkit", *sys.argv[1:]])
        return cls(pid, _host(), time.time(), command, os.environ.get("SLURM_JOB_ID"),
                   int(os.environ.get("SLURM_RESTART_COUNT", "0")), [[pid, _start_ticks(pid)]], secrets.token_hex(8))

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        job = f", SLURM job {self.job}" if self.job else ""
        return f"pid {self.pid} on {self.host}{job}, started {when}: {self.command}"


@dataclass
class RunLock:
    path: str
    owner: Owner
    handed_over: bool = False

    def add_processes(self, pids: list[int]) -> None:
        """The run's worker processes (on this host), so that the lock outlives a killed launcher."""
        known = {pid for pid, _ in self.owner.pids}
        if set(pids) <= known:
            return
        self.owner.pids += [[pid, _start_ticks(pid)] for pid in pids if pid not in known]
        _write(self.path, self.owner)

    @property
    def token(self) -> str:
        return self.owner.token

    def hand_to_job(self, job_id: str) -> None:
        """A submitted SLURM job owns the folder now: its rank 0 takes the lock over (given the
        token); till then the lock lives as long as the job. This command may end, or stop
        following the job, without releasing it."""
        self.handed_over = True
        _HELD.pop(os.path.dirname(self.path), None)
        current = _read(self.path)
        if current is not None and current.token == self.owner.token:  # else the job has it already
            self.owner.job, self.owner.restart, self.owner.pids = job_id, -1, []
            _write(self.path, self.owner)

    def job_ended(self) -> None:
        """The job this lock was handed to has ended: gone with it, unless its rank 0 took it over
        (then rank 0 released it, or a crash left it to be found stale)."""
        current = _read(self.path)
        if self.handed_over and current is not None and current.token == self.owner.token:
            os.unlink(self.path)

    def hand_to(self, pid: int) -> None:
        """The parent of a forked composition owns the folder now (trainkit.forked_compose): it
        takes the lock over with `adopt`; this process ends without releasing it."""
        self.handed_over = True
        _HELD.pop(os.path.dirname(self.path), None)
        self.owner.pid, self.owner.pids = pid, [[pid, _start_ticks(pid)]]
        _write(self.path, self.owner)

    def release(self) -> None:
        _HELD.pop(os.path.dirname(self.path), None)
        if self.handed_over:
            return
        current = _read(self.path)
        if current is not None and current.token == self.owner.token:  # never another run's lock
            os.unlink(self.path)


def acquire(run_dir: str, inherit: str = "", command: str | None = None) -> RunLock:
    """The lock of `run_dir` for this process, or `RunDirLocked` naming the run that holds it.
    `inherit`: the token of the lock of the command that submitted this SLURM job (`RunLock.token`);
    `command`: what the owner runs, as the message to a second command shows it (default: argv)."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK)
    me = Owner.me(command)
    for _ in range(3):  # another command may take over a stale lock at the same moment: look again
        if _create(path, me):
            break
        owner = _read(path)
        if owner is None:  # removed since, or not ours to read: try again
            continue
        if (inherit and owner.token == inherit) or (me.job and owner.job == me.job and owner.restart != me.restart):
            pass  # the job's own lock, from the command that submitted it or from before its requeue
        elif _alive(owner) is False:
            _say(run_dir, f"run folder {run_dir} was locked by {owner.describe()}, which is gone: taking the lock over")
        else:
            raise RunDirLocked(
                f"run folder {run_dir} is in use by another run: {owner.describe()}. Wait for it to end, or "
                f"stop it ({_how_to_stop(owner)}), or write to another folder (hydra.run.dir=...); if that "
                f"run is gone (its host is down), remove {path}")
        _write(path, me)
        if (_read(path) or me).token == me.token:
            break
    else:
        raise RunDirLocked(f"run folder {run_dir}: could not take its lock {path} (other commands took it "
                           "at the same moment); run again")
    lock = RunLock(path, me)
    _HELD[run_dir] = lock
    return lock


def adopt(run_dir: str) -> RunLock | None:
    """The lock of `run_dir` that a forked child handed to this process (`RunLock.hand_to`)."""
    path = os.path.join(run_dir, LOCK)
    owner = _read(path)
    if owner is None or owner.pid != os.getpid():
        return None
    lock = RunLock(path, owner)
    _HELD[run_dir] = lock
    return lock


def held(run_dir: str) -> RunLock | None:
    """The lock this process holds on `run_dir`, if any."""
    return _HELD.get(run_dir)


def _say(run_dir: str, line: str) -> None:
    """To the console and the run's log (this runs before logging is set up)."""
    print(f"trainkit: {line}", file=sys.stderr, flush=True)
    with open(os.path.join(run_dir, "trainkit.log"), "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} WARNING {line}\n")


def _how_to_stop(owner: Owner) -> str:
    return f"scancel {owner.job}" if owner.job else f"kill -TERM {owner.pid} on {owner.host}"


def _alive(owner: Owner) -> bool | None:
    """Whether the owning run still runs: False when it is gone, None when this host cannot tell.
    On the owner's host its processes say; elsewhere its SLURM job's state, when it has one."""
    if owner.pids and owner.host == _host():
        return any(_process_alive(pid, ticks) for pid, ticks in owner.pids)
    if owner.job:
        state = _job_state(owner.job)
        if state is not None:
            return state not in _GONE_STATES
    return None


def _job_state(job_id: str) -> str | None:
    """The job's state from squeue ("" once it left the queue), None without SLURM here."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return "" if "Invalid job id" in out.stderr else None
    return out.stdout.strip().split("\n")[0]


def _process_alive(pid: int, ticks: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user's
    state, now = _stat(pid)
    if state in ("Z", "X"):  # killed, not yet reaped by its parent
        return False
    return ticks < 0 or now in (ticks, -1)  # the same process, not a new one with its pid


def _start_ticks(pid: int) -> int:
    return _stat(pid)[1]


def _stat(pid: int) -> tuple[str, int]:
    """The process's state and when it started (clock ticks since boot: /proc/<pid>/stat fields 3
    and 22), or ("", -1) where that cannot be read. The start tells a live owner from a new
    process that got its pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return "", -1


def _host() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def _create(path: str, owner: Owner) -> bool:
    aside = f"{path}.{owner.token}"
    with open(aside, "w") as f:
        json.dump(asdict(owner), f)
    try:
        os.link(aside, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(aside)


def _write(path: str, owner: Owner) -> None:
    aside = f"{path}.{owner.token}"
    with open(aside, "w") as f:
        json.dump(asdict(owner), f)
    os.replace(aside, path)


def _read(path: str) -> Owner | None:
    try:
        with open(path) as f:
            return Owner(**json.load(f))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):  # not a lock this version wrote: nobody can own it
        return Owner(pid=0, host=_host(), started=time.time(), command="(an unreadable lock file)",
                     pids=[[0, -1]])
