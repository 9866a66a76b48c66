"""The local launchers.

`InProcess`: this process is the worker (one device; or one rank of an outside torchrun or srun).

`LocalElastic`: `devices` worker processes on this machine through torch's elastic agent
(torchrun's own machinery): the same environment contract as torchrun (RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT, TORCHELASTIC_RESTART_COUNT), restarts of the whole group
after a failure (each restart resumes from `checkpoints/last`), and no hang: when one worker dies
the agent stops the others. Each worker is forked from the launcher's fork server, which imported
torch and the engine once (trainkit.launch.forkserver), and runs
`trainkit.launch.worker.forked(<run_dir>/config.yaml)`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from trainkit import run_lock
from trainkit.errors import ConfigError, Interrupted, UserError
from trainkit.exits import WorkerFailed
from trainkit.launch import Outcome, forkserver, worker

log = logging.getLogger("trainkit")


class InProcess:
    def plan(self, cfg: DictConfig) -> str:
        return f"# dry run: {cfg.command} would run 1 process on this machine, in this process; nothing was run\n" \
            + OmegaConf.to_yaml(cfg)

    def launch(self, config_path: str, cfg: DictConfig) -> Outcome:
        from trainkit.run import run_worker

        return Outcome(run_worker(config_path, cfg))


class LocalElastic:
    def plan(self, cfg: DictConfig) -> str:
        processes = cfg.trainer.devices * cfg.trainer.num_nodes
        return (f"# dry run: {cfg.command} would run {processes} process(es) on this machine, as worker processes "
                "of torch's elastic agent; nothing was run\n" + OmegaConf.to_yaml(cfg))

    def launch(self, config_path: str, cfg: DictConfig) -> Outcome:
        if cfg.trainer.num_nodes > 1:
            raise ConfigError(f"trainer.num_nodes={cfg.trainer.num_nodes}: the local launcher starts processes on this "
                              "machine only; use launcher=slurm, or run `torchrun --nnodes ... -m trainkit fit ...` "
                              "on each node")
        from trainkit.log_setup import setup_logging
        from trainkit.sweeps.results import read_results

        setup_logging(None)
        log.info("run directory: %s", cfg.run_dir)
        launch(config_path, cfg.trainer.devices, cfg.trainer.max_restarts)  # rank 0 prints the results and the run dir
        return Outcome((read_results(cfg.run_dir) or {}).get("metrics", {}))  # rank 0's final metrics


def launch(config_path: str, nproc: int, max_restarts: int) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if (os.cpu_count() or 1) < nproc:
        log.warning("trainer.devices=%d processes on %d CPU cores: they will share cores", nproc, os.cpu_count())
    start_method = forkserver.start()  # each worker forked with torch and the engine imported
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"trainkit-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port, as `torchrun --standalone`
        max_restarts=max_restarts,
        monitor_interval=0.2,
        start_method=start_method,
    )
    log.info("starting %d worker processes (max_restarts=%d)", nproc, max_restarts)
    run_dir = os.path.dirname(config_path)
    stop = _Stop()
    try:
        with _restart_notes(run_dir, max_restarts, stop), _stop_signals(stop), _one_line_failures():
            elastic_launch(config, worker.forked)(config_path, dict(os.environ))
    except ChildFailedError as exc:
        stopped = _stopped_by_signal(exc.failures, run_dir)
        raise stopped or _describe(*_first_failure(exc.failures)) from None
    except SignalException as exc:  # the agent itself got the signal and forwarded it to the workers
        raise _stop_report(int(exc.sigval), run_dir, stop) from None


@contextlib.contextmanager
def _one_line_failures():
    """torch's multiprocessing context logs a worker's failure with the agent's own traceback; the
    failure is reported here, in one line (and the worker's traceback is in the run's log)."""
    torch_log = logging.getLogger("torch.distributed.elastic.multiprocessing.api")

    def without_traceback(record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True

    torch_log.addFilter(without_traceback)
    try:
        yield
    finally:
        torch_log.removeFilter(without_traceback)


@dataclass
class _Stop:
    """A stop signal to this launcher: when it came, whether a second Ctrl-C followed, the workers."""
    signum: int | None = None
    at: float = 0.0
    at_once: bool = False
    pids: list[int] = field(default_factory=list)


@contextlib.contextmanager
def _stop_signals(stop: _Stop):
    """The agent's handler of stop signals, for this launch: the first one goes to the agent as
    before (it forwards the signal to the workers, which save, and waits for them); a second Ctrl-C
    is passed on to the workers, which then stop at once without saving. (Left to torch, a second
    signal would send the workers SIGTERM, which a worker saving already ignores.)"""
    from torch.distributed.elastic.multiprocessing import api

    original = api._terminate_process_handler

    def handler(signum, frame):
        if stop.signum is None:
            stop.signum, stop.at = signum, time.time()
            original(signum, frame)  # raises SignalException
        if signum == signal.SIGINT and not stop.at_once:
            stop.at_once = True
            for pid in stop.pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGINT)

    api._terminate_process_handler = handler  # PContext.start installs it by this name
    try:
        yield
    finally:
        api._terminate_process_handler = original


def _stop_report(signum: int, run_dir: str, stop: _Stop) -> Interrupted:
    """The stop said as one process says it: the step and the checkpoint saved for it, or, when
    none was (a second Ctrl-C, workers killed before they finished saving), the intact one."""
    from trainkit.checkpoint import step_of

    name = signal.Signals(signum).name
    last = os.path.join(run_dir, "checkpoints", "last")
    saved = os.path.lexists(last) and os.lstat(last).st_mtime >= stop.at  # `last` moves only once complete
    path = os.path.realpath(last)
    if saved and not stop.at_once:
        return Interrupted(signum, f"stopped by {name} at step {step_of(path)}; checkpoint saved: {path}")
    how = "stopped at once by a second Ctrl-C" if stop.at_once else f"stopped by {name} before a checkpoint was saved"
    intact = f"last checkpoint: {path} (step {step_of(path)})" if os.path.exists(last) else "no checkpoint yet"
    return Interrupted(signum, f"{how}; {intact}")


def _stopped_by_signal(failures: dict, run_dir: str) -> Interrupted | None:
    """Every worker left with 128 + N after saving at the same step (trainkit.signals): not a
    failure but a stop, reported like a single process's."""
    codes = {failure.exitcode for failure in failures.values()}
    if len(codes) != 1 or not 128 < next(iter(codes)) < 128 + 65:
        return None
    from trainkit.checkpoint import step_of  # (it imports torch.distributed.checkpoint: seconds)

    signum = next(iter(codes)) - 128
    last = os.path.realpath(os.path.join(run_dir, "checkpoints", "last"))
    return Interrupted(signum, f"stopped by {signal.Signals(signum).name} at step {step_of(last)}; "
                       f"checkpoint saved: {last}")


def _first_failure(failures: dict) -> tuple[int, object]:
    """The earliest failure is the cause; the others usually failed on the collective it broke."""
    return min(failures.items(), key=lambda item: (_failed_at(item[1]), item[0]))


@contextlib.contextmanager
def _restart_notes(run_dir: str, max_restarts: int, stop: _Stop):
    """Say in the console and in the run's log which rank failed, how, and where the restarted
    group resumes from. The agent learns of a failure in `_monitor_workers` and restarts the group
    without reporting it; this wraps that one method of torch's LocalElasticAgent, for this launch
    (and keeps the workers' pids for `_stop_signals` and the run folder's lock)."""
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

    monitor = LocalElasticAgent._monitor_workers
    restarts = [0]

    def noting(agent, group):
        result = monitor(agent, group)
        if result.is_failed():
            _add_other_failures(agent, group, result.failures)
        pids = [worker.id for worker in group.workers if worker.id is not None]
        if pids != stop.pids and run_lock.held(run_dir):  # the run folder stays locked while its workers live
            run_lock.held(run_dir).add_processes(pids)
        stop.pids = pids
        if result.is_failed() and agent._remaining_restarts > 0:
            restarts[0] += 1
            rank, failure = _first_failure(result.failures)
            last = os.path.join(run_dir, "checkpoints", "last")
            start = f"resumes from {os.path.realpath(last)}" if os.path.exists(last) else "starts over (no checkpoint yet)"
            cause = str(_describe(rank, failure)).replace("; the other workers were stopped", "")
            note = f"restart {restarts[0]} of {max_restarts}: {cause}; the new group {start}"
            log.warning(note)
            with open(os.path.join(run_dir, "trainkit.log"), "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} WARNING {note}\n")
        return result

    LocalElasticAgent._monitor_workers = noting
    try:
        yield
    finally:
        LocalElasticAgent._monitor_workers = monitor


def _add_other_failures(agent, group, failures: dict) -> None:
    """Workers forked by the agent (a MultiprocessContext) come back with the first failure its
    join saw, not the first that happened: when one rank is killed and the others then fail on the
    collective it broke, any of them may be seen first. Every worker has ended by then (the join
    stopped the rest), so add each one's failure, with its error file, and `_first_failure`
    chooses from all of them, as it does for workers started as subprocesses."""
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    context = getattr(agent._pcontext, "_pc", None)  # torch.multiprocessing's ProcessContext
    if context is None:
        return
    for each in group.workers:
        process = context.processes[each.local_rank]
        if each.global_rank not in failures and process.exitcode not in (0, None):
            failures[each.global_rank] = ProcessFailure(each.local_rank, process.pid, process.exitcode,
                                                        agent._pcontext.error_files[each.local_rank])


def _failed_at(failure) -> float:
    if failure.exitcode < 0:
        # Killed: by SIGTERM most likely the agent stopping it after another failed; by anything
        # else (SIGKILL, SIGSEGV, the OOM killer) it is the cause.
        return float("inf") if failure.exitcode == -signal.SIGTERM else float("-inf")
    try:
        return float(failure.error_file_data["message"]["extraInfo"]["trainkit_time"])
    except (KeyError, TypeError, ValueError):
        return float("inf")  # failed before it could say why: the others say more


def _describe(rank: int, failure) -> Exception:
    from trainkit.heartbeat import stalled_message

    stalled = stalled_message(failure)  # a stalled rank, ended by the hang watch (it may have been killed)
    if stalled:
        return WorkerFailed(stalled, 1)
    if failure.exitcode < 0:
        name = signal.Signals(-failure.exitcode).name
        return WorkerFailed(f"worker rank {rank} was killed by {name}; the other workers were stopped", 1)
    message = failure.message.get("message", "") if isinstance(failure.message, dict) else str(failure.message or "")
    detail = f": {message.splitlines()[0]}" if message else ""
    if failure.exitcode == 2:  # bad input: the worker said which, in one line
        return UserError(f"worker rank {rank}{detail}")
    return WorkerFailed(f"worker rank {rank} failed with exit code {failure.exitcode}{detail}; "
                        "the other workers were stopped", failure.exitcode if failure.exitcode > 128 else 1)
