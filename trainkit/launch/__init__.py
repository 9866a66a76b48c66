"""Launchers: the parent hands `<run_dir>/config.yaml` to one, and gets an `Outcome` back.

    InProcess     (local.py)  one process: this one is the worker; also each rank under an outside
                              torchrun or srun, which started the processes already
    LocalElastic  (local.py)  several processes on this machine through torch's elastic agent
    Slurm         (slurm.py)  one SLURM job of num_nodes x devices tasks, through submitit

A launcher raises what ended the run badly (`Interrupted` for a stop on a signal, `WorkerFailed`
naming the rank, `UserError` for bad input a worker found); `trainkit.exits` turns that into the
exit code. `env.py` says who a process is (rank, world size, rendezvous address), however it was
started; `rendezvous.py` holds its one store.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from omegaconf import DictConfig


@dataclass
class Outcome:
    """What a launch gave back: rank 0's final metrics; for a SLURM trial of a grid sweep, the job
    that still runs (`pending`: the CLI follows every trial's job together once all are submitted);
    for a job not followed (launcher.wait=false), its id."""
    metrics: dict[str, float] = field(default_factory=dict)
    pending: Any = None
    job_id: str | None = None


class Launcher(Protocol):
    def plan(self, cfg: DictConfig) -> str:
        """What `launch` would do, for --dry-run: nothing is started."""
        ...

    def launch(self, config_path: str, cfg: DictConfig) -> Outcome:
        """Run `config_path` to its end; `cfg` is that file's content, read once by the caller."""
        ...


def launcher_for(cfg: DictConfig, outside: bool, trials: list | None = None) -> Launcher:
    """The launcher of this config. `outside`: an outside torchrun or srun started this process as
    one of several ranks (it runs in place, whatever `launcher` says); `trials`: the SLURM jobs of
    the grid sweep this run is a trial of, followed by the CLI once all are submitted."""
    from trainkit.launch.local import InProcess, LocalElastic

    if outside:
        return InProcess()
    if cfg.launcher.name == "slurm":
        from trainkit.launch.slurm import Slurm

        return Slurm(trials)
    if cfg.trainer.devices * cfg.trainer.num_nodes == 1:
        return InProcess()
    return LocalElastic()
