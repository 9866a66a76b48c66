"""The parent side of a run: from the composed config to a launched run.

`run_composed` runs once in the parent, inside Hydra (or from `trainkit resume`, on a run's own
config): resolve the config, check it, write `<run_dir>/config.yaml` with the project it comes from,
and hand that file to the launcher of `cfg.launcher` (trainkit.launch). The worker side
(trainkit.run) reads only that file.

Under an outside launcher (torchrun, srun) every rank composed a config; rank 0's file is the
run's, and each rank runs it in place.
"""
from __future__ import annotations

import os
import time

from omegaconf import DictConfig, OmegaConf

from trainkit import crossval, forked_compose, run_lock
from trainkit.config import check_values
from trainkit.errors import UserError
from trainkit.launch import Outcome, launcher_for, preflight
from trainkit.launch.env import from_environ


def run_composed(command: str, cfg: DictConfig, dry_run: bool = False, trials: list | None = None) -> Outcome:
    """`trials`: the SLURM jobs of the grid sweep this run belongs to (trainkit.launch.launcher_for)."""
    cfg.command = command
    if crossval.wants_all_folds(cfg):  # datamodule.folds=k: k runs, one per validation fold, then mean ± std
        forked_compose.keep_here()
        metrics = crossval.run_folds(cfg, lambda each, fold_cfg: run_composed(each, fold_cfg, dry_run, trials).metrics,
                                     from_environ().is_worker)
        return Outcome(metrics)
    OmegaConf.resolve(cfg)
    check_values(cfg)
    run_dir = os.path.abspath(cfg.run_dir)
    cfg.run_dir = run_dir
    env = from_environ()
    _slurm_preflight(cfg, env)
    launcher = launcher_for(cfg, outside=env.is_worker, trials=trials)
    if env.is_worker and env.rank != 0:  # started by torchrun or srun: rank 0's run directory is the run's
        shared = _config_of_rank_zero(env, run_dir)
        return launcher.launch(shared, OmegaConf.load(shared))
    if dry_run:
        print(launcher.plan(cfg))
        if os.path.isdir(run_dir) and set(os.listdir(run_dir)) <= {".hydra"}:
            import shutil

            shutil.rmtree(run_dir)  # a dry run leaves no run directory behind
        return Outcome()
    try:
        lock = run_lock.acquire(run_dir)  # one writer per run folder: before anything is written into it
    except UserError as exc:
        if env.is_worker:  # the other ranks wait for rank 0's config: they stop with the same message
            _config_of_rank_zero(env, run_dir, refused=str(exc))
        raise
    try:
        config_path = write_config(cfg)
        if env.is_worker:
            _config_of_rank_zero(env, run_dir, config_path)
        if forked_compose.hand_over(config_path, launcher, lock):  # the parent launches it, holding the lock
            return Outcome()
        # The file's content, not Hydra's object: what every worker (and every other rank) runs.
        return launcher.launch(config_path, OmegaConf.load(config_path))
    finally:
        lock.release()  # (a SLURM job or the parent of a forked composition that took it over keeps it)


def _slurm_preflight(cfg: DictConfig, env) -> None:
    """In every task of an srun step, before any rank waits for another (trainkit.launch.preflight)."""
    t = cfg.trainer
    if env.launcher == "slurm":
        preflight.check_slurm_task(os.environ, t.devices, t.num_nodes, t.accelerator, preflight.visible_gpus)
    elif cfg.launcher.name != "slurm":  # (launcher=slurm inside a job submits a job of its own)
        preflight.check_not_in_batch_script(os.environ, t.devices, t.num_nodes)


def write_config(cfg: DictConfig) -> str:
    """`<run_dir>/config.yaml`, the one file every worker reads; an earlier one is kept aside."""
    os.makedirs(cfg.run_dir, exist_ok=True)
    config_path = os.path.join(cfg.run_dir, "config.yaml")
    _keep_previous_config(config_path, cfg)
    OmegaConf.save(cfg, config_path)
    return config_path


def _config_of_rank_zero(env, own_run_dir: str, config_path: str | None = None, refused: str = "") -> str:
    """Under an outside launcher (torchrun, srun) every rank ran Hydra; rank 0 publishes its config
    file through the rendezvous store, the others take it and drop the folder Hydra made for them
    (one run, one directory). `refused`: why rank 0 will not run (the others raise it too)."""
    import shutil

    from trainkit.launch.rendezvous import rendezvous_store

    store = rendezvous_store(env)
    key = f"trainkit/config/attempt{env.restart_count}"
    if config_path is not None or refused:
        store.set(key, f"!{refused}" if refused else config_path)
        return config_path or ""
    shared = store.get(key).decode()
    if shared.startswith("!"):
        raise UserError(f"rank 0: {shared[1:]}")
    if os.path.dirname(shared) != own_run_dir and set(os.listdir(own_run_dir)) <= {".hydra"}:
        shutil.rmtree(own_run_dir, ignore_errors=True)
    return shared


def _keep_previous_config(path: str, cfg: DictConfig) -> None:
    """A run directory reused (to resume, or for another command) keeps every config it ran with."""
    if os.path.exists(path) and OmegaConf.load(path) != cfg:
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(os.path.getmtime(path)))
        os.replace(path, os.path.join(os.path.dirname(path), f"config.{stamp}.yaml"))
