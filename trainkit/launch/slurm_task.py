"""What each task of a SLURM job runs (submitit pickles a `SlurmTask` and calls it in every task).

The task reads its rank from SLURM (trainkit.launch.env) and runs the same worker code as the local
launcher on the run's `config.yaml`. Stopping is the Trainer's flag-and-save: on SIGUSR2 (sent by
SLURM `signal_delay_s` before the time limit, and on preemption) every rank finishes its step and
the checkpoint is saved; then rank 0 requeues the job with `scontrol requeue` and the requeued job
resumes from `checkpoints/last` in the same run directory (`trainer.resume=auto`).

A failing or stopped rank writes `<run_dir>/slurm/error.rank<N>.json` (exit code, message, time) so
the submitting process can name the rank that failed first, as the local launcher does.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time

from omegaconf import OmegaConf

from trainkit import run_lock
from trainkit.errors import Interrupted
from trainkit.exits import close_process_group, exit_code, leave
from trainkit.launch import preflight
from trainkit.launch.env import from_environ

log = logging.getLogger("trainkit")

REQUEUE_SIGNAL = signal.SIGUSR2  # submitit's sbatch scripts ask for it: --signal=USR2@<signal_delay_s>


class SlurmTask:
    def __init__(self, config_path: str, lock_token: str = "") -> None:
        self.config_path = config_path
        self.lock_token = lock_token  # the submitting command's lock of the run folder, taken over by rank 0

    def __call__(self) -> dict[str, float]:
        from trainkit.run import run_worker

        env, lock = from_environ(), None
        try:
            if env.rank == 0:  # the job writes the run folder now (trainkit.run_lock), also after a requeue
                lock = run_lock.acquire(os.path.dirname(os.path.abspath(self.config_path)), self.lock_token,
                                        f"rank 0 of SLURM job {os.environ.get('SLURM_JOB_ID')}")
            t = OmegaConf.load(self.config_path).trainer  # the job's layout, before any rank waits for another
            preflight.check_slurm_task(os.environ, t.devices, t.num_nodes, t.accelerator, preflight.visible_gpus)
            results = run_worker(self.config_path)
        except Interrupted as exc:
            requeued = exc.signum == REQUEUE_SIGNAL and self._requeued(env, str(exc))
            # No result file: a requeued job (by us, or by SLURM after its SIGTERM) is followed on
            # to its end; a cancelled one ends CANCELLED, and this record says where it stopped.
            self._record(env, 128 + exc.signum, str(exc), signum=exc.signum)
            if lock is not None and not requeued:  # a requeued job keeps the run folder
                lock.release()
            leave(128 + exc.signum)  # without submitit's result file, which would mark the job finished
        except BaseException as exc:
            self._record(env, exit_code(exc)[0], f"{type(exc).__name__}: {exc}")
            if lock is not None:
                lock.release()
            raise
        if lock is not None:
            lock.release()
        close_process_group(barrier=True)  # gloo can abort at interpreter exit after a clean run
        return results

    def checkpoint(self, *args, **kwargs):
        """submitit calls this on SIGUSR2 outside training (loading data, evaluating): nothing to save
        there; the requeued job starts this same task, which resumes from checkpoints/last."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(SlurmTask(self.config_path, self.lock_token))

    # -- requeue -------------------------------------------------------------------------------
    def _requeued(self, env, reason: str) -> bool:
        """Rank 0 decides and requeues; every rank waits for the decision, so none leaves before it."""
        decision = [False]
        if env.rank == 0:
            decision[0] = self._requeue(reason)
        if env.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.broadcast_object_list(decision, src=0)
        return decision[0]

    def _requeue(self, reason: str) -> bool:
        cfg = OmegaConf.load(self.config_path)
        job_id = os.environ.get("SLURM_JOB_ID", "")
        history_path = os.path.join(cfg.run_dir, "slurm", "requeues.jsonl")
        history = _read_jsonl(history_path)
        timed_out = _seconds_left(job_id) <= cfg.launcher.signal_delay_s + 60  # else preempted
        timeouts = sum(1 for entry in history if entry["cause"] == "time limit") + timed_out
        if timed_out and timeouts > cfg.launcher.max_num_timeout:
            log.warning("not requeued: the job reached its time limit %d times (launcher.max_num_timeout=%d); "
                        "continue with the same command and trainer.resume=auto", timeouts, cfg.launcher.max_num_timeout)
            return False
        entry = {"time": time.time(), "job_id": job_id, "cause": "time limit" if timed_out else "preemption",
                 "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0")), "reason": reason}
        try:
            subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            log.error("could not requeue job %s: %s", job_id, getattr(exc, "stderr", None) or exc)
            return False
        with open(history_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        log.info("requeued job %s (requeue %d, %s): %s", job_id, len(history) + 1, entry["cause"], reason)
        return True

    # -- failures ------------------------------------------------------------------------------
    def _record(self, env, code: int, message: str, signum: int | None = None) -> None:
        try:
            run_dir = OmegaConf.load(self.config_path).run_dir
            path = os.path.join(run_dir, "slurm", f"error.rank{env.rank}.json")
            with open(path, "w") as f:
                json.dump({"rank": env.rank, "code": code, "message": message, "signum": signum, "time": time.time(),
                           "host": os.environ.get("SLURMD_NODENAME") or os.uname().nodename}, f)
        except OSError:
            pass  # the exception itself still reaches submitit's log and result file


def _seconds_left(job_id: str) -> float:
    """Time left before the job's limit, from squeue (`%L`: [days-]hours:minutes:seconds)."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%L"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return float("inf")
    return parse_time_left(out)


def parse_time_left(text: str) -> float:
    """squeue's `%L`: "[days-][hours:]minutes:seconds", or UNLIMITED / NOT_SET / INVALID (inf)."""
    if not text or not text[0].isdigit():
        return float("inf")
    days, _, clock = text.rpartition("-")
    seconds = 0
    for part in clock.split(":"):
        seconds = seconds * 60 + int(part)
    return seconds + int(days or 0) * 86400


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
