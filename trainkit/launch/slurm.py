"""`launcher=slurm`: submit the run as one SLURM job through submitit, and follow it.

The run directory and its `config.yaml` exist before submission (the filesystem must be shared
with the nodes); submitit's files go to `<run_dir>/slurm/`. The job has `num_nodes` nodes and
`devices` tasks per node, one task per device; each task runs `SlurmTask` (trainkit.launch.slurm_task),
the same worker code as the local launcher, with its rank taken from SLURM.

Following a job prints its state changes and rank 0's log lines (`<run_dir>/trainkit.log`) as
they come, and ends with the job's result: the final metrics, or the error of the rank that
failed first with the last lines of its log. A requeued job (preemption, time limit) keeps the
same job id, so following it simply continues.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from trainkit import run_lock
from trainkit.errors import ConfigError, Interrupted, UserError
from trainkit.exits import WorkerFailed
from trainkit.launch import Outcome

log = logging.getLogger("trainkit")

POLL_S = 1.0  # how often the log is read
STATE_POLL_S = 3.0  # how often sacct is asked for the job's state


@dataclass
class SubmittedRun:
    job: Any  # submitit.slurm.slurm.SlurmJob
    run_dir: str
    submitted_at: float = field(default_factory=time.time)
    lock: Any = None  # the run folder's lock (trainkit.run_lock), handed to the job


def executor_for(cfg: DictConfig):
    """A submitit SlurmExecutor with the launcher's parameters (torch-free, submits nothing)."""
    import submitit

    lc, t = cfg.launcher, cfg.trainer
    executor = submitit.SlurmExecutor(folder=os.path.join(cfg.run_dir, "slurm"), max_num_timeout=lc.max_num_timeout)
    gpus = lc.gpus_per_node if lc.gpus_per_node is not None else (t.devices if t.accelerator == "gpu" else None)
    params = {
        "job_name": lc.job_name or f"trainkit-{os.path.basename(os.path.dirname(cfg.run_dir)) or 'run'}",
        "nodes": t.num_nodes,
        "ntasks_per_node": t.devices,
        "time": lc.timeout_min,
        "signal_delay_s": lc.signal_delay_s,
        "partition": lc.partition,
        "account": lc.account,
        "qos": lc.qos,
        "cpus_per_task": lc.cpus_per_task,
        "gpus_per_node": gpus,
        "mem": f"{int(lc.mem_gb * 1024)}MB" if lc.mem_gb else None,
        "constraint": lc.constraint,
        "exclude": lc.exclude,
        "setup": list(lc.setup) or None,
        "additional_parameters": dict(lc.additional_parameters) or None,
        # A task that fails ends the others at once, instead of leaving them waiting at a collective.
        "srun_args": ["--kill-on-bad-exit=1"],
    }
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def dry_run(cfg: DictConfig) -> str:
    """The sbatch script that would be submitted and the rank layout; nothing is submitted."""
    executor = executor_for(cfg)
    script = executor._make_submission_file_text(executor._submitit_command_str, "<job>")  # submitit's own text
    t = cfg.trainer
    lines = [f"# sbatch script for {cfg.run_dir} (dry run: nothing submitted)", script.rstrip(), "",
             f"# rank layout: {t.num_nodes} node(s) x {t.devices} task(s) = world size {t.num_nodes * t.devices}; "
             "rank 0 on the first node hosts the rendezvous"]
    for node in range(t.num_nodes):
        ranks = range(node * t.devices, (node + 1) * t.devices)
        lines.append(f"#   node {node}: ranks {', '.join(map(str, ranks))} (local ranks 0..{t.devices - 1})")
    return "\n".join(lines)


def submit(config_path: str, cfg: DictConfig) -> SubmittedRun:
    from trainkit.launch.slurm_task import SlurmTask

    if shutil.which("sbatch") is None:
        raise ConfigError("launcher=slurm, but SLURM was not found (no `sbatch` on PATH): run on a SLURM login "
                          "node, or on this machine with launcher=local (the default)")
    executor = executor_for(cfg)
    lock = run_lock.held(cfg.run_dir)
    try:
        job = executor.submit(SlurmTask(config_path, lock.token if lock else ""))
    except Exception as exc:  # noqa: BLE001 - submitit raises FailedJobError with sbatch's stderr
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"SLURM rejected the job: {message} (check the launcher.* settings; "
                        "--dry-run prints the sbatch script)") from None
    if lock is not None:
        lock.hand_to_job(job.job_id)  # the job's rank 0 holds the run folder from now on
    log.info("submitted SLURM job %s (%d node(s) x %d task(s)); run directory: %s", job.job_id,
             cfg.trainer.num_nodes, cfg.trainer.devices, cfg.run_dir)
    return SubmittedRun(job, cfg.run_dir, lock=lock)


def follow_hint(run: SubmittedRun) -> str:
    return (f"job {run.job.job_id} submitted; run directory: {run.run_dir}\n"
            f"  follow it: tail -f {os.path.join(run.run_dir, 'trainkit.log')}    (squeue -j {run.job.job_id}; "
            f"stop it: scancel {run.job.job_id})")


def follow(run: SubmittedRun) -> dict[str, float]:
    """Print the job's state changes and rank 0's log lines until it ends; return its metrics."""
    job, log_path = run.job, os.path.join(run.run_dir, "trainkit.log")
    offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0  # a resumed run: only new lines
    state, last_state_check = None, 0.0

    def report_state() -> None:
        nonlocal state
        info = job.get_info(mode="force")
        new_state = info.get("State") or "PENDING"
        if new_state != state:
            where = f" on {info['NodeList']}" if info.get("NodeList") not in (None, "", "None assigned") else ""
            log.info("SLURM job %s: %s%s", job.job_id, new_state, where)
            state = new_state

    try:
        while True:
            offset = _print_new_lines(log_path, offset)
            if time.time() - last_state_check >= STATE_POLL_S:
                last_state_check = time.time()
                report_state()
            if job.done():
                break
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        raise Interrupted(2, f"stopped following; SLURM job {job.job_id} keeps running (scancel {job.job_id} "
                             f"stops it; tail -f {log_path} follows it)") from None
    time.sleep(POLL_S)  # the last lines may land after the result file
    _print_new_lines(log_path, offset)
    report_state()  # a short job can end between two polls (sacct lags): its final state is always said
    return outcome(run)


class Slurm:
    """The launcher of `launcher=slurm`. In a grid sweep (Hydra's basic sweeper: trials that do not
    depend on each other's results) each trial's job is submitted at once, keeping at most
    `launcher.array_parallelism` unfinished, and `trials` collects them: the CLI follows them all
    together at the end (`follow_trials`). Alone, or in an Optuna search (which waits for each
    result), a run's job is followed to its end."""

    def __init__(self, trials: list | None = None) -> None:
        self.trials = trials

    def plan(self, cfg: DictConfig) -> str:
        return dry_run(cfg)

    def launch(self, config_path: str, cfg: DictConfig) -> Outcome:
        from trainkit.log_setup import setup_logging

        setup_logging(None)
        os.makedirs(os.path.join(cfg.run_dir, "slurm"), exist_ok=True)
        if cfg.launcher.wait and self.trials is not None and _in_grid_sweep():
            while sum(not run.job.done() for run in self.trials) >= cfg.launcher.array_parallelism:
                time.sleep(STATE_POLL_S)
            submitted = submit(config_path, cfg)
            self.trials.append(submitted)
            return Outcome(pending=submitted, job_id=submitted.job.job_id)
        submitted = submit(config_path, cfg)
        if not cfg.launcher.wait:
            print(follow_hint(submitted))
            return Outcome(job_id=submitted.job.job_id)
        try:
            return Outcome(follow(submitted), job_id=submitted.job.job_id)
        finally:
            if submitted.lock is not None and submitted.job.done():  # (stopped following: the job keeps it)
                submitted.lock.job_ended()


def _in_grid_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():  # trainkit resume: no Hydra run
        return False
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.sweeper._target_.endswith(".BasicSweeper")


def follow_trials(trials: list[SubmittedRun]) -> list[tuple[BaseException, str]]:
    """Wait for every trial submitted by this sweep; one line per trial as it ends; the failures."""
    pending, failures = list(trials), []
    trials.clear()
    if pending:
        log.info("following %d SLURM jobs: %s", len(pending), " ".join(run.job.job_id for run in pending))
    try:
        while pending:
            for run in [run for run in pending if run.job.done()]:
                pending.remove(run)
                if run.lock is not None:
                    run.lock.job_ended()
                try:
                    metrics = outcome(run)
                    shown = "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
                    log.info("SLURM job %s done: %s  (%s)", run.job.job_id, shown or "no metrics", run.run_dir)
                except Exception as exc:  # noqa: BLE001 - reported with the sweep's other failures
                    log.info("SLURM job %s failed: %s", run.job.job_id, _first_line(str(exc)))
                    failures.append((exc, run.run_dir))
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        ids = " ".join(run.job.job_id for run in pending)
        raise Interrupted(2, f"stopped following; SLURM jobs {ids} keep running (scancel {ids} stops them)") from None
    return failures


def outcome(run: SubmittedRun) -> dict[str, float]:
    """The finished job's rank-0 result, or the failure of the rank that failed first."""
    job = run.job
    try:
        return job.results()[0] or {}  # every task wrote its result: rank 0's metrics
    except Exception as exc:  # noqa: BLE001 - failed, stopped, cancelled, killed
        errors, reason = _errors(run), _first_line(str(exc))
    if not errors:  # killed before it could say why (cancelled while loading, out of memory, node failure)
        state = job.get_info(mode="force").get("State", "UNKNOWN")
        raise WorkerFailed(f"SLURM job {job.job_id} ended {state} without a result: {reason}{_log_tail(run, 0)}", 1)
    first = min(errors, key=lambda e: (e["signum"] is not None, e["time"]))  # signals follow the real cause
    where = f"rank {first['rank']} (on {first.get('host', '?')})"
    if first["signum"] is not None:
        raise Interrupted(first["signum"], f"SLURM job {job.job_id}, {where}: {first['message']}")
    if first["code"] == 2:
        raise UserError(f"{where}: {first['message']}")
    raise WorkerFailed(f"{where} failed: {first['message']}{_log_tail(run, first['rank'])}", 1)


def _errors(run: SubmittedRun) -> list[dict]:
    found = []
    for path in glob.glob(os.path.join(run.run_dir, "slurm", "error.rank*.json")):
        with open(path) as f:
            error = json.load(f)
        if error["time"] >= run.submitted_at:  # not left by an earlier job in this run directory
            found.append(error)
    return found


def _log_tail(run: SubmittedRun, rank: int, lines: int = 12) -> str:
    path = os.path.join(run.run_dir, "slurm", f"{run.job.job_id}_{rank}_log.err")
    if not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        tail = [line.rstrip() for line in f.readlines()[-lines:] if line.strip()]
    if not tail:
        return f"\n  log: {path}"
    body = "\n".join(f"    {line}" for line in tail)
    return f"\n  last lines of rank {rank}'s log:\n{body}\n  log: {path}"


def _print_new_lines(path: str, offset: int) -> int:
    if not os.path.exists(path) or os.path.getsize(path) <= offset:
        return offset
    with open(path, errors="replace") as f:
        f.seek(offset)
        text = f.read()
    complete = text[: text.rfind("\n") + 1]  # a half-written line waits for the next poll
    if complete:
        print(complete, end="", flush=True)
    return offset + len(complete.encode())


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no details"
