"""A Trainer built from strings takes its ranks from the launcher that started the process, and
refuses, naming both numbers, a device count that does not match what the launcher started."""
from __future__ import annotations

import pytest

from trainkit import Trainer
from trainkit.engine.arguments import devices_count
from trainkit.errors import ConfigError

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "SLURM_STEP_ID", "SLURM_PROCID")


@pytest.fixture
def environ(monkeypatch):
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)

    def set_env(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_env


def test_devices_that_disagree_with_torchrun_name_both_counts_and_the_fix(environ):
    environ(RANK="0", LOCAL_RANK="0", WORLD_SIZE="4", LOCAL_WORLD_SIZE="4", MASTER_ADDR="127.0.0.1",
            MASTER_PORT="1")  # nothing listens there: the check must come before joining a group
    with pytest.raises(ConfigError, match=r"devices=2 x num_nodes=1 = 2 processes, but torchrun \(WORLD_SIZE\) "
                                          r"started 4; set devices=\"auto\""):
        Trainer(strategy="ddp", devices=2, accelerator="cpu")


def test_devices_that_disagree_with_an_srun_step(environ):
    environ(SLURM_JOB_ID="7", SLURM_STEP_ID="0", SLURM_PROCID="0", SLURM_STEP_NUM_TASKS="3",
            SLURM_STEP_TASKS_PER_NODE="3", SLURM_STEP_NODELIST="localhost")
    with pytest.raises(ConfigError, match=r"= 2 processes, but srun \(SLURM_STEP_NUM_TASKS\) started 3"):
        Trainer(strategy="ddp", devices=2, accelerator="cpu")


def test_auto_devices_are_the_processes_torchrun_started_on_this_node(environ):
    environ(RANK="1", LOCAL_RANK="1", WORLD_SIZE="4", LOCAL_WORLD_SIZE="2")
    assert devices_count("auto") == 2
    with pytest.raises(ConfigError, match=r"devices=2 x num_nodes=1 = 2 processes, but torchrun .* started 4"):
        Trainer(strategy="ddp", devices="auto", accelerator="cpu")  # two nodes of 2: num_nodes=2 is missing


def test_several_devices_without_a_launcher_say_how_to_start_them(environ):
    with pytest.raises(ConfigError, match=r"started alone; run it as `torchrun --nproc_per_node=2 <script>.py`.*"
                                          r"`trainkit fit trainer.devices=2`"):
        Trainer(strategy="ddp", devices=2, accelerator="cpu")


def test_a_strategy_from_strings_gets_the_precision_fsdp_mixes_in(environ, monkeypatch):
    import torch

    import trainkit.strategies as strategies

    built = {}

    class Recorded(strategies.SingleDeviceStrategy):
        def __init__(self, env, device, precision_mode, wrap_modules, cpu_offload, timeout_s):
            super().__init__(torch.device("cpu"))
            built["precision_mode"] = precision_mode

    monkeypatch.setattr(strategies, "FSDPStrategy", Recorded)  # no process group in this test process
    Trainer(strategy="fsdp", precision="bf16", accelerator="cpu", logger=False)  # Lightning's name
    assert built == {"precision_mode": "bf16-mixed"}
