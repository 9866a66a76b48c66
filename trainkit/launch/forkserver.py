"""The local workers' fork server: one process that imports torch and the engine once, from which
torch's elastic agent forks every worker (multiprocessing's "forkserver" start method).

A worker started as a fresh interpreter spends its first seconds importing torch, the engine and
what DDP's constructor pulls in (torch._dynamo); with N workers that is N times the same work on
the same cores. Forked from a server that did it once, a worker starts at the run's own code.
`start()` is idempotent: the forked CLI calls it as soon as the composing child says the run takes
several processes (the server imports while this process still imports torch, on the core the
child freed), and the launcher calls it again before starting the workers. A sweep's trials all
fork from the one server. multiprocessing gives each worker the launching process's current folder
and sys.path; `adopt_environment` gives it that process's current environment (a trial's
`hydra.job.env_set` included), which the server, started earlier, does not have.

Only torch and trainkit are imported before the fork, never the user's code (the worker imports
that after it, from the run's config), and nothing preloaded may touch CUDA: a CUDA context does
not survive a fork (tests/unit/test_forkserver.py checks it).
"""
from __future__ import annotations

import os

# What every local worker imports before its first step (the server imports them through
# server_preload.py). A module missing here is still imported, in each worker after the fork.
PRELOAD = [
    "torch",
    "torch._dynamo",  # imported by DDP's constructor and the first optimizer step: about 0.9 s
    "torch.nn.parallel",
    "hydra.utils",  # instantiate
    "trainkit.launch.forkserver",  # reads the server's environment (adopt_environment)
    "trainkit.launch.worker",
    "trainkit.run",
    "trainkit.engine.trainer",
]


def start() -> str:
    """Start the fork server, if it is not running, with `PRELOAD` and this process's sys.path
    and environment (the project's root and TRAINKIT_PROJECT included). Returns the start method
    for the workers: "forkserver", or "spawn" where the platform has no fork (Windows)."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return "spawn"  # each worker imports everything itself
    from multiprocessing import forkserver

    multiprocessing.set_forkserver_preload(["trainkit.launch.server_preload"])  # PRELOAD, frozen
    forkserver.ensure_running()
    return "forkserver"


# Imported by the server's preload: the environment every worker is forked with, and the process
# that read it (a worker that imported this module itself, after the fork, cannot tell them apart).
_SERVER_ENV, _SERVER_PID = dict(os.environ), os.getpid()


def adopt_environment(environ: dict[str, str]) -> None:
    """In a forked worker: `environ` (the launching process's, at launch) with the variables torch's
    elastic agent set for this worker (RANK, WORLD_SIZE, TORCHELASTIC_ERROR_FILE, ...) over it."""
    if os.getpid() == _SERVER_PID:  # not forked from the server that read _SERVER_ENV: keep what was inherited
        return
    from_agent = {key: value for key, value in os.environ.items() if _SERVER_ENV.get(key) != value}
    os.environ.clear()
    os.environ.update(environ)
    os.environ.update(from_agent)
