"""Commands on a run directory: continue it, or evaluate it, with its own `config.yaml`.

    trainkit resume <run_dir> [key=value ...]        continue a stopped run; nothing retyped
    trainkit resume <run_dir> trainer.max_epochs=20  ... and train it longer (said so)
    trainkit resume <sweep_dir>                      the trials that did not complete, and only those
    trainkit test <run_dir> [key=value ...]          (validate, predict) with the run's best checkpoint

The run's config.yaml is taken as it is (no Hydra composition: config files edited since do not
change the run) and the overrides are applied to it, in Hydra's override syntax (`key=value`,
`+key=value` adds, `~key` removes). An override that would break an exact continuation is refused
with the settings check of the checkpoints (`exactness_settings`: model, data, optimizer,
schedule, seed, precision, the global batch and accumulation), unless trainer.resume_strict=false.
Then the parent side runs as for `trainkit fit` (trainkit.compose): same launcher, same run
directory for `resume`; an evaluation writes into `<run_dir>/<command>_<time>/`.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from trainkit.errors import ConfigError, UserError
from trainkit.exits import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, record_failure

log = logging.getLogger("trainkit")

EXTENDING = ("trainer.max_steps", "trainer.max_epochs")  # change how far the run goes, not where it is
DONE = ("completed", "pruned")  # results.json statuses of a trial that needs nothing more


def from_run_dir(command: str, args: list[str], debug: bool, dry_run: bool) -> int:
    from trainkit.cli import _fail

    if not args or "=" in args[0] or args[0].startswith("-"):
        return _fail(EXIT_BAD_INPUT, f"usage: trainkit {command} <run directory> [key=value ...] (the folder a run "
                     "printed as its run directory, with its config.yaml)")
    target, overrides = args[0], args[1:]
    from trainkit.sweeps.summary import trial_dirs

    try:
        if command == "resume" and not os.path.isfile(os.path.join(target, "config.yaml")):
            if _is_sweep(target) and trial_dirs(target):
                return _resume_sweep(target, overrides, debug, dry_run)
            raise UserError(f"{target} is not a run directory (no config.yaml in it) nor a sweep directory; give the "
                            "folder a run printed as its run directory")
        cfg = prepare(command, target, overrides)
    except UserError as exc:
        return _fail(EXIT_BAD_INPUT, str(exc), debug, exc)
    if cfg is None:
        return EXIT_OK
    return _launch(cfg, debug, dry_run)


def _launch(cfg: DictConfig, debug: bool, dry_run: bool, sweep_dir: str | None = None) -> int:
    from trainkit.cli import report_failure
    from trainkit.compose import run_composed

    try:
        run_composed(cfg.command, cfg, dry_run)
    except KeyboardInterrupt:
        from trainkit.cli import _fail

        return _fail(EXIT_INTERRUPTED, "interrupted")
    except Exception as exc:  # noqa: BLE001 - one report, as for trainkit fit
        record_failure(exc, cfg.run_dir)
        return report_failure(exc, cfg.run_dir, debug, sweep_dir)
    return EXIT_OK


def prepare(command: str, run_dir: str, overrides: list[str]) -> DictConfig | None:
    """The config to run: the run's own, the overrides applied, checked; None when a resume has
    nothing left to do."""
    run_dir = os.path.abspath(run_dir)
    saved = load_run_config(run_dir)
    cfg = _typed(saved, run_dir)  # a copy: `saved` stays what the checkpoints were made with
    apply_overrides(cfg, overrides, run_dir)
    if command == "resume":
        if (saved.get("command") or "fit") != "fit":
            raise UserError(f"{run_dir} is a `trainkit {saved.command}` run: nothing to resume (resume continues "
                            "training runs)")
        if not any(o.lstrip("+").startswith("trainer.resume=") for o in overrides):
            cfg.trainer.resume = "auto"  # its own checkpoints/last
        _check_continuation(_typed(saved, run_dir), cfg, run_dir)
        from trainkit.sweeps.results import read_results

        status = (read_results(run_dir) or {}).get("status")
        if status in DONE and not _extended(saved, cfg):
            print(f"trainkit: {run_dir} completed already (results.json); nothing to continue. Train it longer with "
                  "trainer.max_epochs=... or trainer.max_steps=...")
            return None
        if cfg.sweep.optuna_trial is not None:  # the study closed this trial when it stopped: report to nothing
            cfg.sweep.optuna_trial = cfg.sweep.optuna_storage = cfg.sweep.optuna_study = None
            print(f"trainkit: {run_dir} is a trial of an Optuna search; resumed on its own, it no longer reports to "
                  "the study")
        cfg.command = "fit"
        return cfg
    path, how = best_checkpoint(cfg)
    print(f"trainkit: {command} of {run_dir} with {how}: {path}")
    cfg.trainer.resume = path
    new_dir = os.path.join(run_dir, f"{command}_{time.strftime('%Y-%m-%d_%H-%M-%S')}_{os.urandom(3).hex()}")
    _move_outputs(cfg, run_dir, new_dir)
    cfg.command = command
    return cfg


def load_run_config(run_dir: str) -> DictConfig:
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        raise UserError(f"{run_dir} is not a run directory (no config.yaml in it)")
    cfg = OmegaConf.load(path)
    if os.path.abspath(str(cfg.get("run_dir", ""))) != run_dir:
        # A run directory moved or copied elsewhere: its files are here now.
        _move_outputs(cfg, os.path.abspath(str(cfg.run_dir)), run_dir)
    project = cfg.get("project") or {}
    if project.get("root"):
        from trainkit.project import make_importable

        make_importable(project["root"])
    return cfg


def _typed(cfg: DictConfig, run_dir: str) -> DictConfig:
    """The config on trainkit's schema: unknown keys and wrong types fail as in `trainkit fit`."""
    from trainkit.config import RunConfig

    try:
        typed = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
    except Exception as exc:  # noqa: BLE001 - a config.yaml of another trainkit version
        raise ConfigError(f"{run_dir}/config.yaml does not fit this trainkit's config schema ({exc})") from None
    OmegaConf.set_struct(typed, True)
    return typed


def apply_overrides(cfg: DictConfig, overrides: list[str], run_dir: str) -> None:
    """Hydra's override syntax on a composed config: key=value, +key=value, ++key=value, ~key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise ConfigError(f"{str(exc).splitlines()[0]} (write overrides as key=value)") from None
    groups = [Path(d) for d in ((cfg.get("project") or {}).get("config_dirs") or [])]
    for o in parsed:
        key, text = o.key_or_group, o.input_line
        if o.is_sweep_override():
            raise ConfigError(f"{text}: one value per key here (a sweep is started with trainkit fit -m)")
        if "." not in key and any((d / key).is_dir() for d in groups) and isinstance(o.value(), str):
            raise ConfigError(f"{text}: choosing a group option composes a new config; this run continues its own "
                              f"config.yaml. Set its keys ({key}.<key>=...), or start a new run with trainkit fit {text}")
        exists = OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT
        try:
            if o.is_delete():
                if not exists:
                    raise ConfigError(f"{text}: {key} is not in {run_dir}/config.yaml")
                parent, _, leaf = key.rpartition(".")
                node = OmegaConf.select(cfg, parent) if parent else cfg
                with open_dict(node):
                    node.pop(leaf)
            elif o.is_add() and exists:
                raise ConfigError(f"{text}: {key} is in the config already; set it with {key}=...")
            elif o.is_add() or o.is_force_add():
                with open_dict(cfg):
                    OmegaConf.update(cfg, key, o.value(), force_add=True)
            else:
                if not exists:
                    raise ConfigError(f"{key} is not a config key of {run_dir}/config.yaml; check the spelling, or add "
                                      f"a new key with +{key}=...")
                OmegaConf.update(cfg, key, o.value(), merge=False)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - OmegaConf's validation: the key and the reason
            reason = str(getattr(exc, "msg", exc)).splitlines()[0]
            raise ConfigError(f"{key}: {reason}") from None


_ABSENT = object()


def _check_continuation(saved: DictConfig, cfg: DictConfig, run_dir: str) -> None:
    """Refuse what would not continue the run exactly (the settings its checkpoints were saved
    with); say what changes otherwise."""
    before, after = _settings(saved), _settings(cfg)
    differ = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if differ:
        listing = ", ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in differ)
        if cfg.trainer.resume_strict:
            raise ConfigError(f"cannot resume {run_dir} exactly: {listing} differs from the run's checkpoints; drop "
                              "that override, or add trainer.resume_strict=false to continue anyway (not an exact "
                              "continuation)")
        log.warning("resuming although settings differ (%s): not an exact continuation", listing)
        print(f"trainkit: resuming although settings differ ({listing}): not an exact continuation", file=sys.stderr)
    extended = [f"{k} {OmegaConf.select(saved, k)} -> {OmegaConf.select(cfg, k)}" for k in EXTENDING
                if OmegaConf.select(saved, k) != OmegaConf.select(cfg, k)]
    if extended:
        print(f"trainkit: extending {run_dir}: {', '.join(extended)} (allowed: the continuation stays exact)")
    changed = _changed_keys(saved, cfg, exclude=(*EXTENDING, "trainer.resume", "command", *differ))
    if changed:
        print(f"trainkit: resuming with {', '.join(changed)} (no effect on the numbers)")


def _settings(cfg: DictConfig) -> dict[str, Any]:
    """exactness_settings plus what the Trainer adds: the global batch and the accumulation."""
    from trainkit.run import exactness_settings

    t = cfg.trainer
    return {**exactness_settings(cfg),
            "global batch size": (cfg.datamodule.get("batch_size") or 0) * t.devices * t.num_nodes or None,
            "trainer.accumulate_grad_batches": t.accumulate_grad_batches}


def _extended(saved: DictConfig, cfg: DictConfig) -> bool:
    return any(OmegaConf.select(saved, k) != OmegaConf.select(cfg, k) for k in EXTENDING)


def _changed_keys(a: DictConfig, b: DictConfig, exclude: tuple[str, ...]) -> list[str]:
    flat_a, flat_b = _flat(OmegaConf.to_container(a)), _flat(OmegaConf.to_container(b))
    keys = sorted(k for k in flat_a.keys() | flat_b.keys() if flat_a.get(k, _ABSENT) != flat_b.get(k, _ABSENT))
    return [f"{k}={flat_b.get(k, '(removed)')}" for k in keys if not any(k == e or k.startswith(e + ".") for e in exclude)]


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


# -- evaluation ----------------------------------------------------------------------------------
def best_checkpoint(cfg: DictConfig) -> tuple[str, str]:
    """(path, how it was chosen) of the checkpoint to evaluate: the best by the ModelCheckpoint
    monitor, or `last` when the run monitors nothing."""
    node = next((n for n in (cfg.get("callbacks") or {}).values()
                 if n and str(n.get("_target_", "")).endswith("ModelCheckpoint")), None)
    folder = str(node.dirpath) if node is not None and node.get("dirpath") else os.path.join(cfg.run_dir, "checkpoints")
    last = os.path.join(folder, "last")
    monitor = node.get("monitor") if node is not None else None
    if monitor:
        mode = str(node.get("mode") or "min")
        found = _best_in(folder, cfg.run_dir, str(monitor), mode)
        if found is not None:
            return found, f"its best checkpoint by {monitor} ({mode})"
    if not os.path.exists(last):
        raise UserError(f"{cfg.run_dir} has no checkpoint to evaluate ({last} does not exist)")
    how = "its last checkpoint (the run monitors no metric)" if not monitor else \
        f"its last checkpoint (no checkpoint scored by {monitor} was kept)"
    return os.path.realpath(last), how


def _best_in(folder: str, run_dir: str, monitor: str, mode: str) -> str | None:
    """The best checkpoint, from what the run left: a `best` link in the checkpoint folder; else the
    callback's own record (`best_model_path` in the newest checkpoint's state); else the step of
    the best value in results.json; else the scores in the checkpoint names."""
    import re

    best = os.path.join(folder, "best")
    if os.path.exists(best):
        return os.path.realpath(best)
    recorded = _recorded_best(folder)
    if recorded is not None:
        return recorded
    names = [n for n in os.listdir(folder) if not n.startswith(".") and n not in ("last", "best")] \
        if os.path.isdir(folder) else []
    from trainkit.sweeps.results import read_results

    record = (read_results(run_dir) or {}).get("best") or {}
    if record.get("metric") == monitor and record.get("step") is not None:
        at_step = [n for n in names if re.search(rf"(^|-)step={record['step']}(-|$)", n)]
        if at_step:
            return os.path.join(folder, sorted(at_step, key=len)[-1])
    key = re.escape(monitor.replace("/", "_"))
    scored = []
    for name in names:
        match = re.search(rf"(?:^|-){key}=(-?\d+(?:\.\d+)?(?:e-?\d+)?)(?=-|\.ckpt$|$)", name)
        step = re.search(r"step=(\d+)", name)
        if match and step:
            scored.append((float(match[1]), int(step[1]), name))
    if not scored:
        return None
    # The first to reach the best value wins a tie, as the callback keeps it.
    pick = (max if mode == "max" else min)(scored, key=lambda s: (s[0], -s[1]) if mode == "max" else (s[0], s[1]))
    return os.path.join(folder, pick[2])


def _recorded_best(folder: str) -> str | None:
    """ModelCheckpoint's `best_model_path`, as saved in the newest checkpoint's trainer state."""
    state_file = os.path.join(folder, "last", "trainer.pt")
    if not os.path.isfile(state_file):
        return None
    import torch

    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        path = str(state["callbacks"]["ModelCheckpoint"]["best_model_path"] or "")
    except (KeyError, TypeError, RuntimeError, OSError):  # no such callback, or another layout
        return None
    here = os.path.join(folder, os.path.basename(path))  # the run directory may have moved since
    return here if path and os.path.exists(here) else None


def _move_outputs(cfg: DictConfig, old: str, new: str) -> None:
    """Point what a run writes (run_dir, callbacks, loggers) at `new` instead of `old`."""
    cfg.run_dir = new

    def move(node: Any) -> Any:
        if isinstance(node, DictConfig):
            for key in list(node.keys()):
                value = node[key]
                if isinstance(value, str) and (value == old or value.startswith(old + os.sep)):
                    node[key] = new + value[len(old):]
                elif isinstance(value, DictConfig):
                    move(value)
        return node

    for group in ("callbacks", "logger"):
        if isinstance(cfg.get(group), DictConfig):
            move(cfg[group])


# -- sweeps --------------------------------------------------------------------------------------
def _is_sweep(folder: str) -> bool:
    """A folder trainkit or Hydra made for several runs: a multirun's (Hydra's multirun.yaml, or
    the sweep table), or a cross-validation's (its .hydra/ and fold<k>/ runs). Never any folder that
    happens to hold run directories somewhere below it."""
    path = Path(folder)
    if (path / "multirun.yaml").is_file() or (path / "sweep_summary.csv").is_file():
        return True
    return (path / ".hydra").is_dir() and any(p.name.startswith("fold") for p in path.iterdir() if p.is_dir())


def _resume_sweep(sweep_dir: str, overrides: list[str], debug: bool, dry_run: bool) -> int:
    from trainkit.sweeps.results import read_results
    from trainkit.sweeps.summary import summarize, trial_dirs

    sweep_dir = os.path.abspath(sweep_dir)
    trials = trial_dirs(sweep_dir)
    todo = [t for t in trials if (read_results(str(t)) or {}).get("status") not in DONE]
    if not todo:
        print(f"trainkit: every trial of {sweep_dir} completed; nothing to resume")
        return EXIT_OK
    print(f"trainkit: resuming {len(todo)} of {len(trials)} trials of {sweep_dir} (those that did not complete): "
          + " ".join(str(t.relative_to(sweep_dir)) for t in todo))
    codes = []
    for trial in todo:
        try:
            cfg = prepare("resume", str(trial), overrides)
        except UserError as exc:
            from trainkit.cli import _fail

            return _fail(EXIT_BAD_INPUT, f"trial {trial.relative_to(sweep_dir)}: {exc}", debug, exc)
        if cfg is None:
            continue
        code = _launch(cfg, debug, dry_run, sweep_dir)
        if code > 128:  # stopped by a signal: no further trial starts
            return code
        codes.append(code)
    if dry_run:
        return EXIT_OK
    rows = summarize(sweep_dir)
    failed = sum(1 for r in rows if r.status == "failed" and Path(r.run_dir) in todo)
    if failed or any(codes):
        print(f"trainkit: {max(failed, sum(c != 0 for c in codes))} of {len(todo)} resumed trials failed "
              "(the table above says why)", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
