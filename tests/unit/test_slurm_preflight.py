"""SLURM preflight (trainkit.launch.preflight) on the environments SLURM gives a task. A real job
with a task count that does not match: tests/integration/test_slurm.py."""
from __future__ import annotations

import pytest

from trainkit.errors import ConfigError
from trainkit.launch.preflight import check_not_in_batch_script, check_slurm_task


def step(tasks: int, per_node: str, nodes: int, **more: str) -> dict[str, str]:
    """An srun step's environment (the variables of a real one on the local cluster)."""
    return {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_PROCID": "0", "SLURM_NODEID": "0",
            "SLURM_NTASKS": str(tasks), "SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_STEP_NUM_NODES": str(nodes),
            "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_STEP_TASKS_PER_NODE": per_node,
            "SLURMD_NODENAME": "n1", **more}


def no_gpu_asked() -> int:
    raise AssertionError("a CPU run must not look for GPUs")


def test_the_layout_the_config_asks_passes():
    check_slurm_task(step(4, "2(x2)", 2), devices=2, num_nodes=2, accelerator="cpu", visible_gpus=no_gpu_asked)
    check_slurm_task(step(4, "2(x2)", 2), 2, 2, "gpu", lambda: 2)  # the node's GPUs, one per local rank
    check_slurm_task(step(4, "2(x2)", 2), 2, 2, "gpu", lambda: 1)  # bound per task: its own one
    check_slurm_task(step(1, "1", 1), 1, 1, "auto", lambda: 0)  # auto on a CPU node


def test_a_task_count_that_is_not_nodes_times_devices_names_both_numbers():
    with pytest.raises(ConfigError) as err:
        check_slurm_task(step(3, "2,1", 2), devices=2, num_nodes=2, accelerator="cpu", visible_gpus=no_gpu_asked)
    message = str(err.value)
    assert "SLURM job 7 started 3 task(s) on 2 node(s) (2, 1 per node; SLURM_NTASKS=3)" in message
    assert "the config asks trainer.num_nodes=2 x trainer.devices=2 = 4 task(s), 2 on each node" in message
    assert "--nodes=2 --ntasks-per-node=2" in message and "or set" not in message  # uneven: no config fits


def test_several_tasks_per_node_for_one_device_and_too_few_nodes_are_refused():
    with pytest.raises(ConfigError, match=r"started 4 task\(s\) on 1 node\(s\) .* = 1 task\(s\).*or set "
                                          r"trainer.num_nodes=1 trainer.devices=4"):
        check_slurm_task(step(4, "4", 1), 1, 1, "cpu", no_gpu_asked)
    with pytest.raises(ConfigError, match=r"started 2 task\(s\) on 1 node\(s\).*trainer.num_nodes=2 x trainer.devices=1"):
        check_slurm_task(step(2, "2", 1), 1, 2, "cpu", no_gpu_asked)  # the right count on too few nodes


def test_gpus_a_task_cannot_use_are_refused_naming_what_it_sees():
    with pytest.raises(ConfigError, match=r"task 0 on n1 sees no GPU \(CUDA_VISIBLE_DEVICES=\), but "
                                          r"trainer.accelerator=gpu: ask for 2 GPU\(s\) per node"):
        check_slurm_task(step(2, "2", 1, CUDA_VISIBLE_DEVICES=""), 2, 1, "gpu", lambda: 0)
    with pytest.raises(ConfigError, match=r"the 4 tasks on n1 see 2 GPUs, but each needs its own: ask for 4 GPUs "
                                          r"per node \(launcher.gpus_per_node=4"):
        check_slurm_task(step(4, "4", 1), 4, 1, "gpu", lambda: 2)
    with pytest.raises(ConfigError, match="see 2 GPUs"):
        check_slurm_task(step(4, "4", 1), 4, 1, "auto", lambda: 2)  # auto on a GPU node: the same rule


def test_several_nodes_asked_from_a_batch_script_without_srun_are_refused():
    batch = {"SLURM_JOB_ID": "9", "SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "2"}
    with pytest.raises(ConfigError, match=r"inside SLURM job 9 \(4 task\(s\) on 2 node\(s\)\) but not started by "
                                          r"srun: .*`srun trainkit fit ...`.*--ntasks-per-node=2"):
        check_not_in_batch_script(batch, devices=2, num_nodes=2)
    check_not_in_batch_script(batch, devices=2, num_nodes=1)  # this node's processes: the local launcher's job
    check_not_in_batch_script({**batch, "SLURM_STEP_ID": "0"}, 2, 2)  # an srun step
    check_not_in_batch_script({**batch, "RANK": "0"}, 2, 2)  # srun torchrun ...
    check_not_in_batch_script({}, 2, 2)  # no SLURM at all
