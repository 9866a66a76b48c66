"""Who am I? The rank layout of this process, from the environment its launcher set.

Two launchers are recognised:
  * torchrun and torch's elastic agent (trainkit's local launcher) set RANK, LOCAL_RANK,
    WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT and TORCHELASTIC_RESTART_COUNT;
  * `srun` (a job step: SLURM_STEP_ID is set; a batch script alone is not a step) sets SLURM_PROCID,
    SLURM_LOCALID, SLURM_STEP_NUM_TASKS, SLURM_NODEID and the step's node list: rank 0 lives on
    the list's first node, which hosts the rendezvous store.
torchrun's variables win when both are present (`srun torchrun ...`). A process with none of them
is a single process of its own.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 0
    restart_count: int = 0  # how many times the agent restarted this worker group (or SLURM requeued the job)
    agent_store: bool = False  # the rendezvous store is hosted by the elastic agent, not by rank 0
    launcher: str = ""  # "torchrun", "slurm", or "" for a process of its own

    @property
    def is_worker(self) -> bool:
        """True when a launcher started this process as one of several."""
        return self.world_size > 1


def from_environ(environ: dict[str, str] | None = None) -> DistEnv:
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            local_rank=int(env.get("LOCAL_RANK", env["RANK"])),
            world_size=int(env["WORLD_SIZE"]),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", "0")),
            restart_count=int(env.get("TORCHELASTIC_RESTART_COUNT", "0")),
            agent_store=env.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true",
            launcher="torchrun",
        )
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:
        return _from_slurm_step(env)
    return DistEnv()


def _from_slurm_step(env) -> DistEnv:
    job_id = int(env.get("SLURM_JOB_ID", "0"))
    step_id = int(env.get("SLURM_STEP_ID", "0")) if env.get("SLURM_STEP_ID", "").isdigit() else 0
    per_node = expand_counts(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", "1"))
    node = int(env.get("SLURM_NODEID", "0"))
    # One port per job step, the same on every task without talking to each other; an explicit
    # MASTER_PORT wins. Two steps of one job, or two jobs on one node, get different ports.
    port = int(env.get("MASTER_PORT") or 20000 + (job_id * 7 + step_id) % 20000)
    return DistEnv(
        rank=int(env["SLURM_PROCID"]),
        local_rank=int(env.get("SLURM_LOCALID", "0")),
        world_size=int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS", "1")),
        local_world_size=per_node[node] if node < len(per_node) else per_node[-1],
        master_addr=env.get("MASTER_ADDR") or expand_hostlist(env.get("SLURM_STEP_NODELIST")
                                                              or env.get("SLURM_JOB_NODELIST", "localhost"))[0],
        master_port=port,
        restart_count=int(env.get("SLURM_RESTART_COUNT", "0")),
        launcher="slurm",
    )


def expand_counts(spec: str) -> list[int]:
    """SLURM's task counts per node: "2(x3),1" -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for part in spec.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if match:
            counts += [int(match[1])] * int(match[2] or 1)
    return counts or [1]


def expand_hostlist(nodelist: str) -> list[str]:
    """SLURM's compressed node list: "n[1-2],gpu[01,03]" -> ["n1", "n2", "gpu01", "gpu03"]."""
    from submitit.slurm.slurm import _parse_node_list  # submitit's parser (a core dependency)

    return _parse_node_list(nodelist)
