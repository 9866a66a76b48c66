"""The one rendezvous store of a worker process.

Under torchrun the elastic agent hosts it; under srun rank 0 does, on the first node of the step.
A process makes it once and everything shares it: the config hand-over of `srun trainkit fit`
(every rank composed a config; rank 0's wins) and the process group. A second store on the same
port would fail to bind.
"""
from __future__ import annotations

from datetime import timedelta

from trainkit.launch.env import DistEnv

_STORE = None


def rendezvous_store(env: DistEnv, timeout_s: float = 300.0):
    import torch.distributed as dist

    global _STORE
    if _STORE is None:
        _STORE = dist.TCPStore(env.master_addr, env.master_port, is_master=env.rank == 0 and not env.agent_store,
                               timeout=timedelta(seconds=timeout_s))
    return _STORE
