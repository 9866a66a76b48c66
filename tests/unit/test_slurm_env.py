"""Reading SLURM's environment and output without a cluster: ranks from an srun step, node lists,
task counts, the time left before a job's limit."""
from __future__ import annotations

import math

from trainkit.launch.env import expand_counts, expand_hostlist, from_environ
from trainkit.launch.slurm_task import parse_time_left

STEP = {"SLURM_JOB_ID": "41", "SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
        "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
        "SLURM_RESTART_COUNT": "2"}


def test_an_srun_step_gives_the_rank_layout_and_rank_zeros_node():
    env = from_environ(STEP)
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size) == (3, 1, 4, 2)
    assert env.master_addr == "gpu07" and env.launcher == "slurm" and env.restart_count == 2
    assert 20000 <= env.master_port < 40000 and env.master_port == from_environ(STEP).master_port
    assert from_environ({**STEP, "MASTER_PORT": "29555"}).master_port == 29555


def test_a_batch_script_is_not_a_step_and_torchrun_wins():
    batch = {k: v for k, v in STEP.items() if k != "SLURM_STEP_ID"}
    assert from_environ(batch).world_size == 1  # `trainkit fit` in the batch script itself: one process
    torchrun = {**STEP, "RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1234"}
    assert from_environ(torchrun).launcher == "torchrun" and from_environ(torchrun).world_size == 2


def test_node_lists_and_task_counts_expand():
    assert expand_hostlist("n[1-2],gpu[01,03]") == ["n1", "n2", "gpu01", "gpu03"]
    assert expand_counts("2(x3),1") == [2, 2, 2, 1]


def test_time_left_before_the_limit():
    assert parse_time_left("1-02:03:04") == 93784
    assert parse_time_left("05:00") == 300 and parse_time_left("1:30:00") == 5400
    assert math.isinf(parse_time_left("UNLIMITED")) and math.isinf(parse_time_left(""))
