"""The local workers' fork server (trainkit.launch.forkserver): what it imports before forking
must be safe to fork, and a worker forked from it must start with that work done."""
import json
import subprocess
import sys
import textwrap

import pytest

from trainkit.launch.forkserver import PRELOAD

# Runs in a fresh interpreter: every CUDA entry point that creates or queries a CUDA context
# records the call, then every preloaded module is imported. A context made before the fork
# would break every GPU worker forked after it ("Cannot re-initialize CUDA in forked subprocess").
CHECK = textwrap.dedent("""
    import sys, threading
    import torch
    calls = []
    for name in ("is_available", "device_count", "init", "_lazy_init", "current_device", "set_device",
                 "get_device_properties", "get_device_name", "get_device_capability", "is_bf16_supported",
                 "synchronize", "mem_get_info"):
        def record(*args, _name=name, **kwargs):
            calls.append(_name)
            raise RuntimeError(f"torch.cuda.{_name} called while preloading")
        setattr(torch.cuda, name, record)
    for module in sys.argv[1:]:
        __import__(module)
    assert not calls, calls
    assert not torch.cuda.is_initialized()
    assert threading.active_count() == 1, threading.enumerate()  # no Python thread to lose in the fork
    print("ok")
""")


def test_what_the_fork_server_preloads_touches_no_cuda_and_starts_no_thread():
    result = subprocess.run([sys.executable, "-c", CHECK, "trainkit.launch.server_preload"], capture_output=True,
                            text=True, timeout=120)  # the server's preload: every module of PRELOAD
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_a_forked_worker_starts_with_the_engine_imported_and_the_launchers_environment_now(tmp_path):
    """In workers forked through torch's elastic multiprocessing with the launcher's settings: the
    heavy modules were imported before the worker's code ran, and the environment is the launching
    process's at launch (changed after the server started) with the agent's variables over it."""
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent("""
        import gc, json, os, sys
        from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, start_processes
        from trainkit.launch import forkserver

        def probe(out, environ):
            found = sorted(sys.modules)  # as forked from the server, before this function imported anything
            forkserver.adopt_environment(environ)
            with open(out, "w") as f:
                json.dump({"modules": found, "env": dict(os.environ), "frozen": gc.get_freeze_count(),
                           "collecting": gc.isenabled()}, f)

        if __name__ == "__main__":
            os.environ["TK_GONE"] = "at the server's start"
            forkserver.start()
            del os.environ["TK_GONE"]
            os.environ["TK_LATER"] = os.environ["TK_AFTER"] = "set after"
            context = start_processes("probe", probe, args={i: (f"{sys.argv[1]}.{i}", dict(os.environ)) for i in (0, 1)},
                                      envs={i: {"RANK": str(i), "TK_LATER": "the agent's"} for i in (0, 1)},
                                      logs_specs=DefaultLogsSpecs(log_dir=sys.argv[2]), start_method="forkserver")
            result = context.wait()
            assert not result.is_failed(), result.failures
    """))
    out = tmp_path / "found"
    result = subprocess.run([sys.executable, str(script), str(out), str(tmp_path / "logs")], capture_output=True,
                            text=True, timeout=180, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        found = json.loads((tmp_path / f"found.{rank}").read_text())
        assert set(PRELOAD) <= set(found["modules"]), set(PRELOAD) - set(found["modules"])
        assert found["frozen"] > 100_000 and found["collecting"]  # the server froze what it imported
        env = found["env"]
        assert env["RANK"] == str(rank) and env["TK_LATER"] == "the agent's" and "TK_GONE" not in env
        assert env["TK_AFTER"] == "set after"


def test_without_fork_the_workers_are_spawned(monkeypatch):
    """Windows has no fork: the workers start as fresh interpreters (and import everything themselves)."""
    import multiprocessing
    from multiprocessing import forkserver as mp_forkserver

    from trainkit.launch import forkserver

    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    monkeypatch.setattr(mp_forkserver, "ensure_running", lambda: pytest.fail("no fork server without fork"))
    assert forkserver.start() == "spawn"
