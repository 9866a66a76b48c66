"""`trainkit <command> [overrides]`: compose the config once, write it, run it; report errors.

    trainkit fit                                   # the default recipe
    trainkit fit model.hidden_size=128 optimizer.lr=3e-3
    trainkit fit --cfg job                         # print the composed config, run nothing
    trainkit fit trainer.resume=auto hydra.run.dir=outputs/<model>/<run>    # continue a stopped run
    trainkit test trainer.resume=outputs/<model>/<run>/checkpoints/last
    trainkit export outputs/<model>/<run>/checkpoints/last model.pt          # plain state_dict
    trainkit fit -m model.hidden_size=64,128 optimizer.lr=1e-3,3e-3          # a sweep: 4 trials
    trainkit fit hparams_search=kt_dkt                                       # an Optuna search
    trainkit sweep-summary multirun/<sweep>        # the table of a sweep's trials, rebuilt from its files
    trainkit tune lr=true batch_size=true          # LR range test, batch-size finder (= tuner.lr=true ...)

Nothing here imports torch: `--help` and `--cfg job` stay fast. Exit codes: 0 done, 2 bad config
or input (the message names the key or file and the fix), 1 training failed, 128 + N stopped by
signal N after saving a checkpoint (143 for SIGTERM, 130 for Ctrl-C).

A multirun (-m, or hparams_search=...) runs every trial even when some fail; at the end it prints
each failure, the table of trials (saved as <sweep dir>/sweep_summary.csv) and, when trials
failed, the line "trainkit: K of N trials failed". Its exit code: 0 when no trial failed, 1 when
any failed (whatever each one's own code; the table says why), 128 + N when a signal stopped it
(the trial that got it saves a checkpoint, and no further trial starts). A config that does not
compose stops it before any trial, with 2.
"""
from __future__ import annotations

import os
import re
import secrets
import sys
import time
import traceback
from pathlib import Path

from trainkit import builtin
from trainkit.choices import COMMANDS
from trainkit.errors import Interrupted, UserError

CONFIG_DIR = Path(os.environ.get("TRAINKIT_CONFIG_DIR") or builtin.config_dir())
RUN_ID = secrets.token_hex(3)  # one per process: two runs started in the same second differ

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("HYDRA_FULL_ERROR"))
    dry_run = "--dry-run" in argv
    argv = [a for a in argv if a not in ("--debug", "--dry-run")]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return EXIT_OK
    command, overrides = argv[0], [_quote_group_option(a) for a in argv[1:]]
    if command == "init":
        from trainkit.scaffold import init_command

        try:
            return init_command(argv[1:])
        except UserError as exc:
            return _fail(EXIT_BAD_INPUT, str(exc))
    if command == "export":
        return _export(overrides, debug)
    if command == "sweep-summary":
        return _sweep_summary(overrides)
    if command == "tune":
        from trainkit.tuner import tuner_overrides

        overrides = tuner_overrides(overrides)  # lr=true -> tuner.lr=true, batch_size=true -> tuner.batch_size=true
    if command not in COMMANDS:
        return _fail(EXIT_BAD_INPUT, f"unknown command {command!r}; choose one of: {', '.join(COMMANDS)}, export "
                     "(trainkit --help lists them)")
    # Hydra re-raises instead of printing its own report; we print one short message instead.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    failures: list[tuple[BaseException, str | None]] = []
    started = time.time()
    try:
        _run_hydra(command, overrides, failures, dry_run)
    except _SweepStopped:
        pass  # a trial was stopped by a signal (reported below); no further trial started
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, "interrupted")
    except Exception as exc:  # noqa: BLE001 - Hydra could not compose the config: a bad override
        return _fail(EXIT_BAD_INPUT, _hydra_message(exc), debug, exc)
    if "trainkit.launch.slurm" in sys.modules:  # a sweep with launcher=slurm: its trials ran as SLURM jobs
        from trainkit.launch.slurm import follow_trials

        for exc, run_dir in follow_trials():
            failures.append((exc, run_dir))
            _keep_failure(exc, run_dir)
    from trainkit.sweeps.summary import finished_sweep

    sweep_dir = finished_sweep()
    codes = [_report_failure(exc, run_dir, debug, command, overrides, sweep_dir) for exc, run_dir in failures]
    if sweep_dir is not None and not dry_run:
        return _end_of_sweep(sweep_dir, failures, codes, started)
    return codes[0] if codes else EXIT_OK


class _SweepStopped(BaseException):
    """Raised out of the task of a trial stopped by a signal: Hydra would start the next trial."""


def _end_of_sweep(sweep_dir: str, failures: list, codes: list[int], started: float) -> int:
    """The table of trials, then the sweep's exit code (the rule is in the module docstring)."""
    from trainkit.sweeps.summary import summarize

    rows = summarize(sweep_dir)
    for (exc, _), code in zip(failures, codes):
        if isinstance(exc, Interrupted):
            return code
    # This command's trials: a sweep directory reused (a continued Optuna study) holds older ones.
    ours = [r for r in rows if _mtime(Path(r.run_dir) / ".hydra" / "overrides.yaml") >= started - 1]
    failed = sum(r.status == "failed" for r in ours)
    if failed:
        print(f"trainkit: {failed} of {len(ours)} trials failed (the table above says why)", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return float("inf")  # no record of when it started: count it


def _sweep_summary(args: list[str]) -> int:
    if len(args) != 1 or args[0].startswith("-"):
        return _fail(EXIT_BAD_INPUT, "usage: trainkit sweep-summary <sweep directory>")
    from trainkit.sweeps.summary import summarize, trial_dirs

    if not os.path.isdir(args[0]) or not trial_dirs(args[0]):
        return _fail(EXIT_BAD_INPUT, f"{args[0]} is not a sweep directory (no trial run directories in it); "
                     "it is the folder `trainkit fit -m ...` printed, by default multirun/<date>_<time>_<id>")
    summarize(args[0])
    return EXIT_OK


def _run_hydra(command: str, overrides: list[str], failures: list, dry_run: bool = False) -> None:
    import hydra
    from omegaconf import OmegaConf

    from trainkit.config import register_configs

    register_configs()
    OmegaConf.register_new_resolver("run_id", lambda: RUN_ID, replace=True)

    @hydra.main(config_path=str(CONFIG_DIR), config_name="fit", version_base="1.3")
    def task(cfg):
        from trainkit.run import run_composed
        from trainkit.sweeps.results import task_return

        try:
            metrics = run_composed(command, cfg, dry_run)
        except Exception as exc:  # noqa: BLE001 - reported by main() once Hydra returns
            failures.append((exc, cfg.get("run_dir")))
            _keep_failure(exc, cfg.get("run_dir"))  # here: a trial may run in another process (joblib)
            if isinstance(exc, Interrupted):
                raise _SweepStopped from exc
            return None
        return task_return(cfg, metrics)  # with sweep.metric set: its best value, for Optuna

    sys.argv = [f"trainkit {command}", *overrides]
    task()


def _quote_group_option(arg: str) -> str:
    """Values Hydra's override grammar would misread, quoted: `precision=32` -> `precision='32'` (a
    group option is a name, not an int), and a path with `=` in it, as checkpoint names have
    (`trainer.resume=.../epoch=3-step=120`)."""
    key, sep, value = arg.partition("=")
    if sep and (CONFIG_DIR / key.lstrip("+~")).is_dir() and value.replace(".", "", 1).isdigit():
        return f"{key}='{value}'"
    if sep and "=" in value and "/" in value and value[:1] not in "'\"[":
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


def _report_failure(exc: BaseException, run_dir: str | None, debug: bool, command: str = "fit",
                    overrides: tuple[str, ...] = (), sweep_dir: str | None = None) -> int:
    if isinstance(exc, Interrupted):
        same = [o for o in overrides if not o.startswith(("hydra.run.dir=", "-m", "--multirun"))]
        resume = f"; resume with: trainkit {' '.join([command, *same])} hydra.run.dir={run_dir}" if run_dir else ""
        if sweep_dir is not None:  # the same sweep again: every trial continues from its own checkpoints
            same = [o for o in overrides if not o.startswith("hydra.sweep.dir=")]
            resume = f"; resume the sweep with: trainkit {' '.join([command, *same])} hydra.sweep.dir={sweep_dir}"
        print(f"trainkit: {exc}{resume}", file=sys.stderr)
        return 128 + exc.signum
    code, message = _failure(exc)
    if run_dir and os.path.isdir(run_dir):  # _keep_failure wrote the whole story there
        message += f"\n  log: {os.path.join(run_dir, 'trainkit.log')}"
    return _fail(code, message, debug, exc)


def _failure(exc: BaseException) -> tuple[int, str]:
    from trainkit.launch.local import WorkerFailed

    if isinstance(exc, Interrupted):
        return 128 + exc.signum, str(exc)
    if isinstance(exc, WorkerFailed):
        return exc.exit_code, str(exc)
    if isinstance(exc, UserError):
        return EXIT_BAD_INPUT, str(exc)
    return EXIT_FAILED, _where(exc)


def _keep_failure(exc: BaseException, run_dir: str | None) -> None:
    """The run directory keeps the whole story: the error and its traceback in trainkit.log, the
    status in results.json (what the sweep summary reads)."""
    if not run_dir or not os.path.isdir(run_dir):
        return
    from trainkit.sweeps.results import record_failure

    code, message = _failure(exc)
    if not isinstance(exc, Interrupted):
        with open(os.path.join(run_dir, "trainkit.log"), "a") as f:
            f.write(f"error: {message}\n" + "".join(traceback.format_exception(exc)))
    record_failure(run_dir, code, message, "interrupted" if isinstance(exc, Interrupted) else "failed")


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
        "usage: trainkit {fit,validate,test,predict,tune} [key=value ...] [group=option ...] [--cfg job] [-m] "
        "[--dry-run] [--debug]",
        "       trainkit export <checkpoint> <file>",
        "       trainkit sweep-summary <sweep directory>",
        "",
        "commands:",
        "  fit        train the model (validating as it goes)",
        "  validate   evaluate on the validation split (trainer.resume=<checkpoint> loads its weights)",
        "  test       evaluate on the test split (trainer.resume=<checkpoint>)",
        "  predict    write predictions.pt for the predict split (trainer.resume=<checkpoint>)",
        "  tune       lr=true: LR range test (suggests optimizer.lr); batch_size=true: the largest batch that fits",
        "             (and its samples/s); bare tuner keys: min_lr, max_lr, num_training, max_batch_size, ...",
        "  export     write a checkpoint's model weights as a plain state_dict file",
        "  sweep-summary  the table of a sweep's trials (overrides, best metric, status), rebuilt from its files",
        "",
        "config groups (pick one with group=option):",
    ]
    for group in groups:
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        lines.append(f"  {group:<{max(11, *map(len, groups))}} {', '.join(options)}")
    lines += [
        "",
        "examples:",
        "  trainkit fit                                   train the default recipe (DKT, simulated students)",
        "  trainkit fit model.hidden_size=128 optimizer.lr=3e-3 precision=bf16-mixed",
        "  trainkit fit --cfg job                         print the composed config",
        "  trainkit fit -m optimizer.lr=1e-3,3e-3         a sweep (Hydra multirun): a table of trials at the end",
        "  trainkit fit hparams_search=kt_dkt             an Optuna search (pip install -e '.[tune]')",
        "  trainkit tune lr=true                          find a learning rate",
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
