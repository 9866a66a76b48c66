"""`trainkit <command> [overrides]`: compose the config once, write it, run it; report errors.

    trainkit fit                                   # the default recipe
    trainkit fit model.hidden_size=128 optimizer.lr=3e-3
    trainkit fit --cfg job                         # print the composed config, run nothing
    trainkit test ckpt_path=outputs/.../checkpoints/last.pt

Nothing here imports torch: `--help` and `--cfg job` stay fast. Exit codes: 0 done, 2 bad config
or input (the message names the key or file and the fix), 1 training failed, 130 interrupted.
"""
from __future__ import annotations

import os
import secrets
import sys
import traceback
from pathlib import Path

from trainkit.choices import COMMANDS
from trainkit.errors import UserError

CONFIG_DIR = Path(os.environ.get("TRAINKIT_CONFIG_DIR", Path(__file__).resolve().parent.parent / "configs"))
RUN_ID = secrets.token_hex(3)  # one per process: two runs started in the same second differ

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("HYDRA_FULL_ERROR"))
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return EXIT_OK
    command, overrides = argv[0], argv[1:]
    if command not in COMMANDS:
        return _fail(EXIT_BAD_INPUT, f"unknown command {command!r}; choose one of: {', '.join(COMMANDS)} "
                     "(trainkit --help lists them)")
    # Hydra re-raises instead of printing its own report; we print one short message instead.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    stage = {"task_started": False}
    try:
        _run_hydra(command, overrides, stage)
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, "interrupted")
    except UserError as exc:
        return _fail(EXIT_BAD_INPUT, str(exc), debug)
    except Exception as exc:  # noqa: BLE001 - the one place every failure is reported
        if not stage["task_started"]:  # Hydra could not compose the config: a bad override
            return _fail(EXIT_BAD_INPUT, _hydra_message(exc), debug)
        return _fail(EXIT_FAILED, _where(exc), debug)
    return EXIT_OK


def _run_hydra(command: str, overrides: list[str], stage: dict) -> None:
    import hydra
    from omegaconf import OmegaConf

    from trainkit.config import register_configs

    register_configs()
    OmegaConf.register_new_resolver("run_id", lambda: RUN_ID, replace=True)

    @hydra.main(config_path=str(CONFIG_DIR), config_name="fit", version_base="1.3")
    def task(cfg):
        stage["task_started"] = True
        from trainkit.run import run_composed

        return run_composed(command, cfg)

    sys.argv = [f"trainkit {command}", *overrides]
    task()


def _fail(code: int, message: str, debug: bool = False) -> int:
    if debug and code != EXIT_INTERRUPTED:
        traceback.print_exc()
    print(f"trainkit: error: {message}", file=sys.stderr)
    if code == EXIT_FAILED and not debug:
        print("trainkit: run again with --debug for the full traceback", file=sys.stderr)
    return code


def _hydra_message(exc: BaseException) -> str:
    """Hydra's and OmegaConf's messages, without their stack and search-path listings."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    cause = exc.__cause__
    if cause is not None and str(cause) not in str(exc):
        lines += [line for line in str(cause).splitlines() if line.strip()]
    keep = []
    for line in lines:
        if line.startswith("Config search path") or line.strip().startswith(("provider=", "object_type=")):
            break
        keep.append(line.strip())
    message = "; ".join(keep) or type(exc).__name__
    if "Could not override" in message or "not in struct" in message:
        message += " (trainkit fit --cfg job shows every key)"
    return message


def _where(exc: BaseException) -> str:
    """`ExcType: message (at file:line in function)` for the innermost frame of the project."""
    frames = traceback.extract_tb(exc.__traceback__)
    root = str(Path(__file__).resolve().parent.parent)
    ours = [f for f in frames if f.filename.startswith(root)] or frames
    place = f" (at {os.path.relpath(ours[-1].filename, root)}:{ours[-1].lineno} in {ours[-1].name})" if ours else ""
    return f"training failed: {type(exc).__name__}: {exc}{place}"


def usage() -> str:
    groups = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "hydra")
    lines = [
        "usage: trainkit {fit,validate,test,predict} [key=value ...] [group=option ...] [--cfg job] [-m] [--debug]",
        "",
        "commands:",
        "  fit        train the model (validating as it goes)",
        "  validate   evaluate on the validation split (ckpt_path=... to load weights)",
        "  test       evaluate on the test split (ckpt_path=...)",
        "  predict    write predictions.pt for the predict split (ckpt_path=...)",
        "",
        "config groups (pick one with group=option):",
    ]
    for group in groups:
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        lines.append(f"  {group:<11} {', '.join(options)}")
    lines += [
        "",
        "examples:",
        "  trainkit fit                                   train the default recipe (DKT, simulated students)",
        "  trainkit fit model.hidden_size=128 optimizer.lr=3e-3 precision=bf16-mixed",
        "  trainkit fit --cfg job                         print the composed config",
        "  trainkit fit -m optimizer.lr=1e-3,3e-3         a sweep (Hydra multirun)",
        "  trainkit test ckpt_path=outputs/<run>/checkpoints/last.pt",
        "",
        "trainkit <command> --help shows Hydra's options.",
    ]
    return "\n".join(lines)


def entry_point() -> None:
    sys.exit(main())
