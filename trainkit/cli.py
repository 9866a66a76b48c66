"""`trainkit <command> [overrides]`: compose the config once, write it, run it; report errors.

    trainkit fit                                   # the default recipe
    trainkit fit model.hidden_size=128 optimizer.lr=3e-3
    trainkit fit --cfg job                         # print the composed config, run nothing
    trainkit fit trainer.resume=auto hydra.run.dir=outputs/<model>/<run>    # continue a stopped run
    trainkit test trainer.resume=outputs/<model>/<run>/checkpoints/last
    trainkit export outputs/<model>/<run>/checkpoints/last model.pt          # plain state_dict

Nothing here imports torch: `--help` and `--cfg job` stay fast. Exit codes: 0 done, 2 bad config
or input (the message names the key or file and the fix), 1 training failed, 128 + N stopped by
signal N after saving a checkpoint (143 for SIGTERM, 130 for Ctrl-C).
"""
from __future__ import annotations

import os
import re
import secrets
import sys
import traceback
from pathlib import Path

from trainkit.choices import COMMANDS
from trainkit.errors import Interrupted, UserError

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
    command, overrides = argv[0], [_quote_group_option(a) for a in argv[1:]]
    if command == "export":
        return _export(overrides, debug)
    if command not in COMMANDS:
        return _fail(EXIT_BAD_INPUT, f"unknown command {command!r}; choose one of: {', '.join(COMMANDS)}, export "
                     "(trainkit --help lists them)")
    # Hydra re-raises instead of printing its own report; we print one short message instead.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    failures: list[tuple[BaseException, str | None]] = []
    try:
        _run_hydra(command, overrides, failures)
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, "interrupted")
    except Exception as exc:  # noqa: BLE001 - Hydra could not compose the config: a bad override
        return _fail(EXIT_BAD_INPUT, _hydra_message(exc), debug, exc)
    if not failures:
        return EXIT_OK
    # A multirun reports every failed trial; the exit code is the first one's.
    codes = [_report_failure(exc, run_dir, debug) for exc, run_dir in failures]
    return codes[0]


def _run_hydra(command: str, overrides: list[str], failures: list) -> None:
    import hydra
    from omegaconf import OmegaConf

    from trainkit.config import register_configs

    register_configs()
    OmegaConf.register_new_resolver("run_id", lambda: RUN_ID, replace=True)

    @hydra.main(config_path=str(CONFIG_DIR), config_name="fit", version_base="1.3")
    def task(cfg):
        from trainkit.run import run_composed

        try:
            return run_composed(command, cfg)
        except Exception as exc:  # noqa: BLE001 - reported by main() once Hydra returns
            failures.append((exc, cfg.get("run_dir")))

    sys.argv = [f"trainkit {command}", *overrides]
    task()


def _quote_group_option(arg: str) -> str:
    """`precision=32` -> `precision='32'`: Hydra reads 32 as an int, but a group option is a name."""
    key, sep, value = arg.partition("=")
    if sep and (CONFIG_DIR / key.lstrip("+~")).is_dir() and value.replace(".", "", 1).isdigit():
        return f"{key}='{value}'"
    return arg


def _export(args: list[str], debug: bool) -> int:
    if len(args) != 2 or any(a.startswith("-") for a in args):
        return _fail(EXIT_BAD_INPUT, "usage: trainkit export <checkpoint> <output file>")
    from trainkit import checkpoint

    path = checkpoint.resolve(args[0])
    problem = checkpoint.verify(path)
    if problem is not None:
        return _fail(EXIT_BAD_INPUT, f"cannot export: {problem}")
    try:
        count = checkpoint.export_model(path, args[1])
    except UserError as exc:
        return _fail(EXIT_BAD_INPUT, str(exc), debug, exc)
    print(f"wrote {args[1]}: the model's state_dict ({count} tensors) from {path}")
    return EXIT_OK


def _report_failure(exc: BaseException, run_dir: str | None, debug: bool) -> int:
    if isinstance(exc, Interrupted):
        resume = f"; resume with: trainkit fit trainer.resume=auto hydra.run.dir={run_dir}" if run_dir else ""
        print(f"trainkit: {exc}{resume}", file=sys.stderr)
        return 128 + exc.signum
    from trainkit.launch.local import WorkerFailed

    if isinstance(exc, WorkerFailed):
        code, message = exc.exit_code, str(exc)
    elif isinstance(exc, UserError):
        code, message = EXIT_BAD_INPUT, str(exc)
    else:
        code, message = EXIT_FAILED, _where(exc)
    if run_dir and os.path.isdir(run_dir):  # the run directory keeps the whole story
        with open(os.path.join(run_dir, "trainkit.log"), "a") as f:
            f.write(f"error: {message}\n" + "".join(traceback.format_exception(exc)))
        message += f"\n  log: {os.path.join(run_dir, 'trainkit.log')}"
    return _fail(code, message, debug, exc)


def _fail(code: int, message: str, debug: bool = False, exc: BaseException | None = None) -> int:
    if debug and exc is not None:
        traceback.print_exception(exc)
    print(f"trainkit: error: {message}", file=sys.stderr)
    if code == EXIT_FAILED and not debug:
        print("trainkit: run again with --debug for the full traceback", file=sys.stderr)
    return code


def _hydra_message(exc: BaseException) -> str:
    """One line from Hydra's and OmegaConf's reports, with the fix."""
    text = str(exc)
    missing = re.search(r"Could not find '([\w/-]+)/([^']+)'", text)
    if missing and (CONFIG_DIR / missing[1]).is_dir():
        group, name = missing[1], missing[2]
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        return f"{group}={name} is not an option of the '{group}' group; choose one of: {', '.join(options)}"
    cause = exc.__cause__
    full_key = getattr(cause, "full_key", None)
    if full_key:
        reason = str(getattr(cause, "msg", cause)).splitlines()[0]
        if "not in" in reason or "not in struct" in reason:
            return (f"{full_key} is not a config key ({reason}); check the spelling "
                    f"(trainkit fit --cfg job shows every key), or add a new key with +{full_key}=...")
        return f"{full_key}: {reason}"
    message = "; ".join(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("See https"))
    if message.startswith("Error parsing override"):
        message += " (write overrides as key=value or group=option)"
    return message


def _where(exc: BaseException) -> str:
    """`ExcType: message (at file:line in function)` for the innermost frame of the project."""
    frames = traceback.extract_tb(exc.__traceback__)
    root = str(Path(__file__).resolve().parent.parent)
    ours = [f for f in frames if f.filename.startswith(root + os.sep)] or frames
    place = f" (at {os.path.relpath(ours[-1].filename, root)}:{ours[-1].lineno} in {ours[-1].name})" if ours else ""
    return f"training failed: {type(exc).__name__}: {exc}{place}"


def usage() -> str:
    groups = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "hydra")
    lines = [
        "usage: trainkit {fit,validate,test,predict} [key=value ...] [group=option ...] [--cfg job] [-m] [--debug]",
        "       trainkit export <checkpoint> <file>",
        "",
        "commands:",
        "  fit        train the model (validating as it goes)",
        "  validate   evaluate on the validation split (trainer.resume=<checkpoint> loads its weights)",
        "  test       evaluate on the test split (trainer.resume=<checkpoint>)",
        "  predict    write predictions.pt for the predict split (trainer.resume=<checkpoint>)",
        "  export     write a checkpoint's model weights as a plain state_dict file",
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
        "  trainkit fit trainer.resume=auto hydra.run.dir=outputs/<model>/<run>   continue a stopped run",
        "  trainkit test trainer.resume=outputs/<model>/<run>/checkpoints/last",
        "",
        "trainkit <command> --help shows Hydra's options.",
    ]
    return "\n".join(lines)


def entry_point() -> None:
    code = main()
    if "torch.distributed" in sys.modules:  # a torchrun worker: leave as trainkit.launch.worker does
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            sys.stdout.flush()
            sys.stderr.flush()
            dist.destroy_process_group()
            os._exit(code)  # gloo can abort at interpreter exit after a clean run
    sys.exit(code)
