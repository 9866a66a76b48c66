"""SLURM preflight: what the job gave against what the config asks, in every task, before any
process group forms.

A layout that cannot work otherwise waits at the rendezvous for ranks that never come, or trains
on fewer devices than were paid for without a word (Lightning #19883: several tasks per node
stall; #20391: SLURM_NTASKS != nodes x tasks per node; #18650: `python` instead of `srun` in the
batch script). Each check names what SLURM gave, what the config asked, and the fix; a mismatch is
a `ConfigError` (exit 2).

`check_slurm_task`: a task started by srun (launcher=slurm's tasks, `srun trainkit fit` in your own
script): nodes, tasks, tasks on this node, GPUs this task sees.
`check_not_in_batch_script`: a command inside a job's batch script (or salloc shell) not started by
srun, which the local launcher would run on the first node alone.
"""
from __future__ import annotations

from typing import Callable, Mapping

from trainkit.errors import ConfigError
from trainkit.launch.env import expand_counts

GPU_ACCELERATORS = ("gpu", "cuda")


def check_slurm_task(environ: Mapping[str, str], devices: int, num_nodes: int, accelerator: str,
                     visible_gpus: Callable[[], int]) -> None:
    """`visible_gpus`: how many GPUs this task sees (asked only where GPUs are wanted)."""
    job = environ.get("SLURM_JOB_ID", "?")
    nodes = int(environ.get("SLURM_STEP_NUM_NODES") or environ.get("SLURM_JOB_NUM_NODES")
                or environ.get("SLURM_NNODES") or 1)
    tasks = int(environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS") or 1)
    per_node = expand_counts(environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE") or "1")
    asked = devices * num_nodes
    if tasks != asked or nodes != num_nodes or any(count != devices for count in per_node):
        layout = ", ".join(map(str, per_node))
        fit = f"trainer.num_nodes={nodes} trainer.devices={per_node[0]}" if len(set(per_node)) == 1 else None
        fix = (f"ask for --nodes={num_nodes} --ntasks-per-node={devices} and no other task count (launcher=slurm "
               "does, unless launcher.additional_parameters sets one)")
        raise ConfigError(
            f"SLURM job {job} started {tasks} task(s) on {nodes} node(s) ({layout} per node; SLURM_NTASKS={tasks}), "
            f"but the config asks trainer.num_nodes={num_nodes} x trainer.devices={devices} = {asked} task(s), "
            f"{devices} on each node: {fix}" + (f", or set {fit}" if fit else ""))
    if accelerator in GPU_ACCELERATORS or accelerator == "auto":
        seen = visible_gpus()
        if seen == 0 and accelerator == "auto":
            return  # a CPU job
        node = int(environ.get("SLURM_NODEID", "0"))
        here = per_node[node] if node < len(per_node) else per_node[-1]
        host = environ.get("SLURMD_NODENAME", "this node")
        shown = environ.get("CUDA_VISIBLE_DEVICES")
        cvd = f" (CUDA_VISIBLE_DEVICES={shown})" if shown is not None else ""
        if seen == 0:
            raise ConfigError(f"SLURM job {job}: task {environ.get('SLURM_PROCID', '?')} on {host} sees no GPU{cvd}, "
                              f"but trainer.accelerator={accelerator}: ask for {devices} GPU(s) per node "
                              f"(launcher.gpus_per_node={devices}, or --gpus-per-node={devices}), or set "
                              "trainer.accelerator=cpu")
        if 1 < seen < here:  # one GPU each (bound per task) works, as do all of the node's
            raise ConfigError(f"SLURM job {job}: the {here} tasks on {host} see {seen} GPUs{cvd}, but each needs "
                              f"its own: ask for {here} GPUs per node (launcher.gpus_per_node={here}, or "
                              f"--gpus-per-node={here}), or set trainer.devices={seen}")


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def check_not_in_batch_script(environ: Mapping[str, str], devices: int, num_nodes: int) -> None:
    """A command in a job's batch script or salloc shell, not an srun step, asking for several nodes."""
    if "SLURM_JOB_ID" not in environ or "SLURM_STEP_ID" in environ or "RANK" in environ:
        return
    if num_nodes > 1:
        job = environ["SLURM_JOB_ID"]
        gave = f"{environ.get('SLURM_NTASKS', '?')} task(s) on {environ.get('SLURM_JOB_NUM_NODES', '?')} node(s)"
        raise ConfigError(
            f"inside SLURM job {job} ({gave}) but not started by srun: trainer.num_nodes={num_nodes} x "
            f"trainer.devices={devices} needs a task per device on every node, and this command alone runs on the "
            f"first node; start it with `srun trainkit fit ...` in the batch script (--ntasks-per-node={devices}), "
            "or submit it from a login node with launcher=slurm")
