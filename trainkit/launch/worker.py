"""One local worker process: `forked(<run_dir>/config.yaml, environ)`, in a process torch's elastic
agent forked from the local launcher's fork server (trainkit.launch.forkserver).

It runs the config file, never argv or Hydra (trainkit.run), reports a failure in one line (and to
the elastic agent's error file, so the parent can name the rank), and leaves through
`trainkit.exits.leave`, or, when the run finished, by returning to the agent.
"""
from __future__ import annotations

import os
import sys
import traceback


def main(config_path: str) -> int:
    from trainkit.errors import Interrupted, UserError
    from trainkit.exits import exit_code, record_worker_traceback
    from trainkit.launch.env import from_environ
    from trainkit.run import run_worker

    rank = from_environ().rank
    try:
        run_worker(config_path)
        return 0
    except KeyboardInterrupt as exc:
        return exit_code(exc)[0]
    except Interrupted as exc:
        print(f"trainkit (rank {rank}): {exc}", file=sys.stderr)
        return exit_code(exc)[0]
    except Exception as exc:  # noqa: BLE001 - the worker's one report
        _record(exc)
        print(f"trainkit: error (rank {rank}): {type(exc).__name__}: {exc}", file=sys.stderr)
        if not isinstance(exc, UserError):  # the traceback goes to the run's log, not to the console
            record_worker_traceback(os.path.dirname(config_path), rank)
        return exit_code(exc)[0]


def forked(config_path: str, environ: dict[str, str]) -> int:
    """The entry point of a worker forked by torch's elastic agent, `environ` the launching
    process's environment (trainkit.launch.forkserver). A failure leaves at once with
    its exit code (the agent reads it and the error file); a finished run closes its process group
    and returns 0 to the agent, which collects it, and multiprocessing then ends the process with
    `os._exit` (no interpreter shutdown under gloo: trainkit.exits.leave)."""
    from trainkit.exits import close_down, leave
    from trainkit.launch.forkserver import adopt_environment

    adopt_environment(environ)
    code = main(config_path)
    if code:
        leave(code)
    close_down()
    return 0


def _record(exc: BaseException) -> None:
    """The elastic agent's error file (the format its ErrorHandler writes), plus the precise time:
    when one rank fails and the others fail in turn on the collective it broke, the parent
    reports the one that failed first (the agent's own timestamp has whole seconds)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    import json
    import time

    data = {"message": {"message": f"{type(exc).__name__}: {exc}",
                        "extraInfo": {"py_callstack": traceback.format_exc(), "timestamp": str(int(time.time())),
                                      "trainkit_time": time.time()}}}
    with open(path + ".tmp", "w") as f:
        json.dump(data, f)
    os.replace(path + ".tmp", path)  # the agent may read it at any moment: never half-written
