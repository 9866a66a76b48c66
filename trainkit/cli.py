"""`trainkit <command> [overrides]`: compose the config once, write it, run it; report errors.

    trainkit fit                                   # the default recipe
    trainkit fit model.hidden_size=128 optimizer.lr=3e-3
    trainkit fit --cfg job                         # print the composed config, run nothing
    trainkit resume outputs/<model>/<run>          # continue a stopped run from its own config.yaml
    trainkit resume outputs/<model>/<run> trainer.max_epochs=20             # ... and train it longer
    trainkit resume multirun/<sweep>               # the trials of a sweep that did not complete
    trainkit test outputs/<model>/<run>            # evaluate a run with its best checkpoint (validate, predict)
    trainkit test trainer.resume=outputs/<model>/<run>/checkpoints/last     # any checkpoint, composed config
    trainkit export outputs/<model>/<run>/checkpoints/last model.pt          # plain state_dict
    trainkit export outputs/<model>/<run>/checkpoints/last hf_dir --merged   # a folder the model writes (HF)
    trainkit fit -m model.hidden_size=64,128 optimizer.lr=1e-3,3e-3          # a sweep: 4 trials
    trainkit fit hparams_search=kt_dkt                                       # an Optuna search
    trainkit sweep-summary multirun/<sweep>        # the table of a sweep's trials, rebuilt from its files
    trainkit tune lr=true batch_size=true          # LR range test, batch-size finder (= tuner.lr=true ...)

Run inside a project (a folder with configs/ and your code, found from the current folder up;
`--config-dir DIR` or TRAINKIT_CONFIG_DIR name it), its options are layered over the built-in
ones (trainkit.project) and its root is importable in every worker.

The flow of one run: this module (arguments) -> trainkit.project (which configs) -> Hydra composes
once -> trainkit.compose (check, write <run_dir>/config.yaml) -> a launcher (trainkit.launch:
in place, torch's elastic agent, SLURM) -> in each worker trainkit.run (reads config.yaml, builds,
runs) -> trainkit.exits (exit codes, failure records, how a process leaves). `trainkit resume`
and `trainkit test <run_dir>` (trainkit.resume) start from a run's config.yaml instead of Hydra.

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

import contextlib
import os
import re
import secrets
import sys
import time
import traceback
from pathlib import Path

from trainkit import forked_compose
from trainkit.choices import COMMANDS
from trainkit.errors import Interrupted, RunDirLocked, UserError
from trainkit.exits import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, exit_code, record_failure
from trainkit.project import Project, activate, builtin_config_dir, find_project, record

CONFIG_DIR = builtin_config_dir()  # trainkit's own configs (a project's are layered over them)
RUN_ID = secrets.token_hex(3)  # one per process: two runs started in the same second differ
EVALUATE = ("validate", "test", "predict")


def main(argv: list[str] | None = None, fork: bool = False) -> int:
    """The command line. `fork` (the console command only, never a caller's process such as a test
    or a notebook: a forked copy of those would run their code twice) composes in a forked child."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("HYDRA_FULL_ERROR"))
    dry_run = "--dry-run" in argv
    argv = [a for a in argv if a not in ("--debug", "--dry-run")]
    if argv[:1] in (["--completion"], ["--complete"]):
        return _completion(argv)
    argv, config_dir = _take_config_dir(argv)
    try:
        project = find_project(config_dir=config_dir)
    except UserError as exc:
        return _fail(EXIT_BAD_INPUT, str(exc))
    activate(project)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(project))
        return EXIT_OK
    command, overrides = argv[0], [_quote_group_option(a, project) for a in argv[1:]]
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
    if command == "plot":
        return _plot(argv[1:])
    if command == "resume" or (command in EVALUATE and overrides and _is_run_dir(overrides[0])):
        from trainkit.resume import from_run_dir

        return from_run_dir(command, overrides, debug, dry_run)
    if command == "tune":
        from trainkit.tuner import tuner_overrides

        overrides = tuner_overrides(overrides)  # lr=true -> tuner.lr=true, batch_size=true -> tuner.batch_size=true
    if command not in COMMANDS:
        return _fail(EXIT_BAD_INPUT, f"unknown command {command!r}; choose one of: {', '.join(COMMANDS)}, export, "
                     "resume (trainkit --help lists them)")
    if fork and forked_compose.wanted(overrides, dry_run):  # Hydra composes in a child while torch is imported here
        composer = forked_compose.fork_composer()
        if composer is not None:
            return _launch_handed_over(composer, debug)
    failures: list[tuple[BaseException, str | None]] = []
    trials: list = []  # SLURM jobs of a grid sweep's trials, followed together below
    started = time.time()
    try:
        with _hydra_reraises():
            _run_hydra(command, overrides, failures, project, trials, dry_run)
    except _SweepStopped:
        pass  # a trial was stopped by a signal (reported below); no further trial started
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, "interrupted")
    except Exception as exc:  # noqa: BLE001 - Hydra could not compose the config: a bad override
        from trainkit.storage import refused_write

        refused = refused_write(exc)
        if refused is not None:  # Hydra's .hydra/ files or config.yaml on a full disk: not bad input
            where = f": {refused.filename}" if refused.filename else ""
            return _fail(EXIT_FAILED, f"could not write the run directory ({refused.strerror}{where}); nothing was "
                         "trained; free space, or set another hydra.run.dir", debug, exc)
        return _fail(EXIT_BAD_INPUT, _hydra_message(exc, project), debug, exc)
    if trials:
        from trainkit.launch.slurm import follow_trials

        for exc, run_dir in follow_trials(trials):
            failures.append((exc, run_dir))
            record_failure(exc, run_dir)
    from trainkit.sweeps.summary import finished_sweep

    sweep_dir = finished_sweep()
    codes = [report_failure(exc, run_dir, debug, sweep_dir) for exc, run_dir in failures]
    if sweep_dir is not None and not dry_run:
        return end_of_sweep(sweep_dir, failures, codes, started)
    return codes[0] if codes else EXIT_OK


def _launch_handed_over(composer: forked_compose.Composer, debug: bool) -> int:
    """The parent of a forked composition: launch the config.yaml the child handed over (with the
    child's handling of failures), or leave with the child's code when it did the whole command."""
    config_path, code = composer.wait()
    if config_path is None or code != EXIT_OK:
        forked_compose.leave(code)
    from omegaconf import OmegaConf

    from trainkit import run_lock
    from trainkit.launch import launcher_for

    cfg = OmegaConf.load(config_path)
    lock = run_lock.adopt(cfg.run_dir)
    try:
        launcher_for(cfg, outside=False).launch(config_path, cfg)
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, "interrupted")
    except Exception as exc:  # noqa: BLE001 - as the task in _run_hydra reports it
        record_failure(exc, cfg.run_dir)
        return report_failure(exc, cfg.run_dir, debug)
    finally:
        if lock is not None:
            lock.release()
    return EXIT_OK


def _take_config_dir(argv: list[str]) -> tuple[list[str], str | None]:
    """`--config-dir DIR` (or `-cd DIR`, `--config-dir=DIR`): the project's configs, taken here so
    that they are layered over the built-in ones (Hydra's own flag would put them after)."""
    rest, config_dir, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            config_dir, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config-dir="):
            config_dir = arg.partition("=")[2]
        else:
            rest.append(arg)
        i += 1
    return rest, config_dir


def _is_run_dir(arg: str) -> bool:
    """A folder, not an override (those have `=`, or start with `~`) nor a flag."""
    return "=" not in arg and not arg.startswith(("-", "~"))


@contextlib.contextmanager
def _hydra_reraises():
    """Hydra re-raises instead of printing its own report (we print one short message instead).
    Set for the Hydra run only: left in os.environ it would reach later commands of this process
    and the processes it starts, which read a user's HYDRA_FULL_ERROR=1 as --debug."""
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["HYDRA_FULL_ERROR"]
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


class _SweepStopped(BaseException):
    """Raised out of the task of a trial stopped by a signal: Hydra would start the next trial."""


def end_of_sweep(sweep_dir: str, failures: list, codes: list[int], started: float) -> int:
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


def _completion(argv: list[str]) -> int:
    """`--completion SHELL` prints the script to source; the script calls `--complete LINE`."""
    from trainkit import completion

    if argv[0] == "--complete":
        print("\n".join(completion.complete(argv[1] if len(argv) > 1 else "")))
        return EXIT_OK
    text = completion.script(argv[1] if len(argv) > 1 else "")
    if text is None:
        return _fail(EXIT_BAD_INPUT, "usage: trainkit --completion bash|zsh|fish (prints a script to source)")
    print(text, end="")
    return EXIT_OK


def _plot(args: list[str]) -> int:
    from trainkit.plot import plot_command

    try:
        print(plot_command(args))
    except UserError as exc:
        return _fail(EXIT_BAD_INPUT, str(exc))
    return EXIT_OK


def _run_hydra(command: str, overrides: list[str], failures: list, project: Project, trials: list,
               dry_run: bool = False) -> None:
    import hydra
    from omegaconf import OmegaConf

    from trainkit.config import register_configs

    register_configs()
    OmegaConf.register_new_resolver("run_id", lambda: RUN_ID, replace=True)

    @hydra.main(config_path=str(project.main_dir), config_name="fit", version_base="1.3")
    def task(cfg):
        from hydra.core.hydra_config import HydraConfig

        from trainkit.compose import run_composed
        from trainkit.sweeps.results import task_return

        cfg.project = record(project, OmegaConf.to_container(HydraConfig.get().runtime.choices))
        try:
            metrics = run_composed(command, cfg, dry_run, trials).metrics
        except Exception as exc:  # noqa: BLE001 - reported by main() once Hydra returns
            failures.append((exc, cfg.get("run_dir")))
            record_failure(exc, cfg.get("run_dir"))  # here: a trial may run in another process (joblib)
            if isinstance(exc, Interrupted):
                raise _SweepStopped from exc
            return None
        return task_return(cfg, metrics)  # with sweep.metric set: its best value, for Optuna

    sys.argv = [f"trainkit {command}", *overrides]
    task()


def _quote_group_option(arg: str, project: Project) -> str:
    """Values Hydra's override grammar would misread, quoted: `precision=32` -> `precision='32'` (a
    group option is a name, not an int), and a path with `=` in it, as checkpoint names have
    (`trainer.resume=.../epoch=3-step=120`)."""
    key, sep, value = arg.partition("=")
    if sep and project.is_group(key.lstrip("+~")) and value.replace(".", "", 1).isdigit():
        return f"{key}='{value}'"
    if sep and "=" in value and "/" in value and value[:1] not in "'\"[":
        return f"{key}='{value}'"
    return arg


def _export(args: list[str], debug: bool) -> int:
    from trainkit.export import FLAGS, export

    flags = [a for a in args if a in FLAGS]
    paths = [a for a in args if a not in FLAGS]
    if len(paths) != 2 or len(flags) > 1 or any(a.startswith("-") for a in paths):
        return _fail(EXIT_BAD_INPUT, "usage: trainkit export <checkpoint> <output file or folder> [--adapter | --merged]")
    try:
        print(export(paths[0], paths[1], FLAGS[flags[0]] if flags else None))
    except UserError as exc:
        return _fail(EXIT_BAD_INPUT, str(exc), debug, exc)
    return EXIT_OK


def report_failure(exc: BaseException, run_dir: str | None, debug: bool, sweep_dir: str | None = None) -> int:
    """One line for the console (the whole story is in the run directory), and the exit code."""
    if isinstance(exc, Interrupted):
        resume = f"; resume with: trainkit resume {run_dir}" if run_dir else ""
        if sweep_dir is not None:  # every trial that did not complete continues from its own checkpoints
            resume = f"; resume the sweep with: trainkit resume {sweep_dir}"
        print(f"trainkit: {exc}{resume}", file=sys.stderr)
        return exit_code(exc)[0]
    code, message = exit_code(exc)
    if run_dir and os.path.isdir(run_dir) and not isinstance(exc, RunDirLocked):  # record_failure wrote it there
        message += f"\n  log: {os.path.join(run_dir, 'trainkit.log')}"
    return _fail(code, message, debug, exc)


def _fail(code: int, message: str, debug: bool = False, exc: BaseException | None = None) -> int:
    if debug and exc is not None:
        traceback.print_exception(exc)
    print(f"trainkit: error: {message}", file=sys.stderr)
    if code == EXIT_FAILED and not debug:
        print("trainkit: run again with --debug for the full traceback", file=sys.stderr)
    return code


def _hydra_message(exc: BaseException, project: Project) -> str:
    """One line from Hydra's and OmegaConf's reports, with the fix."""
    text = str(exc)
    missing = re.search(r"Could not find '([\w/-]+)/([^']+)'", text)
    if missing and project.is_group(missing[1]):
        group, name = missing[1], missing[2]
        options = ", ".join(project.options(group))
        searched = " or ".join(str(d / group) for d in project.search_path)
        return f"{group}={name} is not an option of the '{group}' group (searched {searched}); choose one of: {options}"
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


def usage(project: Project | None = None) -> str:
    project = project or Project()
    groups = project.groups()
    width = max(11, *map(len, groups))
    lines = [
        "usage: trainkit {fit,validate,test,predict,tune} [key=value ...] [group=option ...] [--cfg job] [-m] "
        "[--dry-run] [--debug] [--config-dir DIR]",
        "       trainkit resume <run or sweep directory> [key=value ...]",
        "       trainkit {validate,test,predict} <run directory> [key=value ...]",
        "       trainkit export <checkpoint> <file.pt | folder> [--adapter | --merged]",
        "       trainkit sweep-summary <sweep directory>",
        "       trainkit plot <run or sweep directory> [...] [--out FILE.png]",
        "       trainkit --completion bash|zsh|fish      a shell completion script to source (see the README)",
        "",
        "commands:",
        "  fit        train the model (validating as it goes)",
        "  resume     continue a stopped run from its folder, with its own config (extend it with",
        "             trainer.max_steps=... or trainer.max_epochs=...); a sweep folder: its trials that did not complete",
        "  validate   evaluate on the validation split: of <run directory> with its best checkpoint, or",
        "             trainer.resume=<checkpoint> with the composed config",
        "  test       evaluate on the test split (the same two forms)",
        "  predict    write predictions.pt for the predict split (the same two forms)",
        "  tune       lr=true: LR range test (suggests optimizer.lr); batch_size=true: the largest batch that fits",
        "             (and its samples/s); bare tuner keys: min_lr, max_lr, num_training, max_batch_size, ...",
        "  export     write a checkpoint's model weights as a plain state_dict file (.pt), or as the folder",
        "             the model writes itself (model=hf_causal_lm: a Hugging Face folder, LoRA adapter or merged)",
        "  sweep-summary  the table of a sweep's trials (overrides, best metric, status), rebuilt from its files",
        "  plot       training and validation curves of runs (a sweep: one line per trial) as a PNG (pip install '.[plot]')",
        "",
    ]
    if project.config_dir is not None:
        lines += [f"project: {project.root} (configs: {project.config_dir}); * = an option of the project",
                  f"         (searched first; trainkit's own: {builtin_config_dir()})", ""]
    lines.append("config groups (pick one with group=option):")
    for group in groups:
        options = [f"{name}*" if mine else name for name, mine in project.options(group).items()]
        lines.append(f"  {group:<{width}} {', '.join(options)}")
    lines += [
        "",
        "examples:",
        "  trainkit fit                                   train the default recipe (DKT, simulated students)",
        "  trainkit fit model.hidden_size=128 optimizer.lr=3e-3 precision=bf16-mixed",
        "  trainkit fit --cfg job                         print the composed config",
        "  trainkit fit -m optimizer.lr=1e-3,3e-3         a sweep (Hydra multirun): a table of trials at the end",
        "  trainkit fit hparams_search=kt_dkt             an Optuna search (pip install -e '.[tune]')",
        "  trainkit tune lr=true                          find a learning rate",
        "  trainkit resume outputs/<model>/<run>          continue a stopped run from its folder",
        "  trainkit resume outputs/<model>/<run> trainer.max_epochs=20   ... and train it longer",
        "  trainkit test outputs/<model>/<run>            test a run with its best checkpoint",
        "",
        "trainkit <command> --help shows Hydra's options.",
    ]
    return "\n".join(lines)


def entry_point() -> None:
    from trainkit.exits import distributed, leave

    code = main(fork=True)
    if distributed():  # a torchrun or srun worker: close its process group, leave as every worker does
        leave(code)
    sys.exit(code)
