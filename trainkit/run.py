"""One run: from the composed config to a finished command.

`run_composed` runs once in the parent, inside Hydra: resolve the config, check it, write
`<run_dir>/config.yaml`. `run_worker` is what a worker process does: it reads that file (never
argv, never Hydra), builds the datamodule, model, callbacks and loggers, and runs the command.
With one device the parent is the worker.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainkit import crossval
from trainkit.config import check_targets, check_values
from trainkit.errors import ConfigError
from trainkit.launch.env import from_environ

log = logging.getLogger("trainkit")


def run_composed(command: str, cfg: DictConfig, dry_run: bool = False) -> dict[str, float]:
    cfg.command = command
    if crossval.wants_all_folds(cfg):  # datamodule.folds=k: k runs, one per validation fold, then mean ± std
        return crossval.run_folds(cfg, lambda fold_cfg: run_composed(command, fold_cfg, dry_run),
                                  from_environ().is_worker)
    OmegaConf.resolve(cfg)
    check_values(cfg)
    run_dir = os.path.abspath(cfg.run_dir)
    cfg.run_dir = run_dir
    env = from_environ()
    if env.is_worker and env.rank != 0:  # started by torchrun or srun: rank 0's run directory is the run's
        return run_worker(_config_of_rank_zero(env, run_dir))
    on_slurm = cfg.launcher.name == "slurm" and not env.is_worker  # (inside `srun`, the tasks are the workers)
    if dry_run:
        _print_plan(cfg, on_slurm)
        if os.path.isdir(run_dir) and set(os.listdir(run_dir)) <= {".hydra"}:
            import shutil

            shutil.rmtree(run_dir)  # a dry run leaves no run directory behind
        return {}
    os.makedirs(run_dir, exist_ok=True)
    config_path = os.path.join(run_dir, "config.yaml")
    _keep_previous_config(config_path, cfg)
    OmegaConf.save(cfg, config_path)
    if env.is_worker:
        _config_of_rank_zero(env, run_dir, config_path)
    if on_slurm:
        return _run_on_slurm(config_path, cfg)
    processes = cfg.trainer.devices * cfg.trainer.num_nodes
    if processes == 1 or env.is_worker:  # one process, or started by torchrun already
        return run_worker(config_path)
    if cfg.trainer.num_nodes > 1:
        raise ConfigError(f"trainer.num_nodes={cfg.trainer.num_nodes}: the local launcher starts processes on this "
                          "machine only; use launcher=slurm, or run `torchrun --nnodes ... -m trainkit fit ...` "
                          "on each node")
    from trainkit.launch.local import launch
    from trainkit.log_setup import setup_logging

    setup_logging(None)
    log.info("run directory: %s", run_dir)
    launch(config_path, processes, cfg.trainer.max_restarts)  # rank 0 prints the results and the run dir
    from trainkit.sweeps.results import read_results

    return (read_results(run_dir) or {}).get("metrics", {})  # rank 0's final metrics


def _print_plan(cfg: DictConfig, on_slurm: bool) -> None:
    if on_slurm:
        from trainkit.launch.slurm import dry_run

        print(dry_run(cfg))
        return
    processes = cfg.trainer.devices * cfg.trainer.num_nodes
    how = "in this process" if processes == 1 else "as worker processes of torch's elastic agent"
    print(f"# dry run: {cfg.command} would run {processes} process(es) on this machine, {how}; nothing was run\n"
          + OmegaConf.to_yaml(cfg))


def _run_on_slurm(config_path: str, cfg: DictConfig) -> dict[str, float]:
    from trainkit.launch import slurm
    from trainkit.log_setup import setup_logging

    setup_logging(None)
    os.makedirs(os.path.join(cfg.run_dir, "slurm"), exist_ok=True)
    if cfg.launcher.wait and _in_grid_sweep():
        slurm.submit_trial(config_path, cfg)  # the sweep follows its jobs together once all are submitted
        return {}
    submitted = slurm.submit(config_path, cfg)
    if not cfg.launcher.wait:
        print(slurm.follow_hint(submitted))
        return {}
    return slurm.follow(submitted)


def _in_grid_sweep() -> bool:
    """A multirun of Hydra's basic sweeper: its trials do not depend on each other's results (an
    Optuna search does: it waits for each)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    return hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.sweeper._target_.endswith(".BasicSweeper")


def _config_of_rank_zero(env, own_run_dir: str, config_path: str | None = None) -> str:
    """Under an outside launcher (torchrun, srun) every rank ran Hydra; rank 0 publishes its config
    file through the rendezvous store, the others take it and drop the folder Hydra made for them
    (one run, one directory)."""
    import shutil

    from trainkit.launch.rendezvous import rendezvous_store

    store = rendezvous_store(env)
    key = f"trainkit/config/attempt{env.restart_count}"
    if config_path is not None:
        store.set(key, config_path)
        return config_path
    shared = store.get(key).decode()
    if os.path.dirname(shared) != own_run_dir and set(os.listdir(own_run_dir)) <= {".hydra"}:
        shutil.rmtree(own_run_dir, ignore_errors=True)
    return shared


def _keep_previous_config(path: str, cfg: DictConfig) -> None:
    """A run directory reused (to resume, or for another command) keeps every config it ran with."""
    if os.path.exists(path) and OmegaConf.load(path) != cfg:
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(os.path.getmtime(path)))
        os.replace(path, os.path.join(os.path.dirname(path), f"config.{stamp}.yaml"))


def exactness_settings(cfg: DictConfig) -> dict[str, Any]:
    """The config values a resumed run must share with its checkpoint to continue it exactly."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}", value)
        else:
            flat[prefix] = node

    container = OmegaConf.to_container(cfg)
    for group in ("model", "datamodule", "optimizer", "scheduler"):
        walk(group, container.get(group) or {})
    # num_workers and cache_dir change the speed, not the numbers; the per-process batch size may
    # change with the number of processes (the Trainer compares the global batch instead).
    for key in ("num_workers", "cache_dir", "batch_size"):
        flat.pop(f"datamodule.{key}", None)
    flat["trainer.seed"] = cfg.trainer.seed
    flat["trainer.limit_train_batches"] = cfg.trainer.limit_train_batches
    flat["precision.mode"] = str(cfg.precision.mode)
    return flat


def run_worker(config_path: str) -> dict[str, float]:
    from trainkit.log_setup import setup_logging

    cfg = OmegaConf.load(config_path)
    run_dir = cfg.run_dir
    env = from_environ()
    setup_logging(run_dir if env.rank == 0 else None, is_global_zero=env.rank == 0)
    log.info("run directory: %s", run_dir)
    check_targets(cfg)  # imports the recipe (and torch): before any data or model work

    import torch
    from hydra.utils import instantiate

    from trainkit.engine.seed import seed_everything
    from trainkit.engine.trainer import Trainer
    from trainkit.precision import Precision
    from trainkit.strategies import make_strategy

    t = cfg.trainer
    if t.seed is not None:
        seed_everything(t.seed)  # before the model exists: its initial weights follow the seed
    datamodule = instantiate(cfg.datamodule)
    model = instantiate(cfg.model)
    s = cfg.strategy
    strategy = make_strategy(s.name, t.accelerator, t.devices, t.num_nodes, env, s.find_unused_parameters, s.timeout_s,
                             str(cfg.precision.mode), list(s.wrap_modules), s.cpu_offload)
    precision = Precision(
        str(cfg.precision.mode), strategy.root_device.type, cfg.precision.init_scale, cfg.precision.growth_interval
    )
    callbacks = [instantiate(node) for node in _targets(cfg, "callbacks")]
    from trainkit.sweeps.results import TrialRecord, clear_results, write_results

    record = TrialRecord.from_config(cfg)  # the best value of the sweep metric; reports to Optuna in a search
    callbacks.append(record)
    if env.rank == 0:
        clear_results(run_dir)  # a reused run directory: results.json says how *this* command ended
    loggers = [instantiate(node) for node in _targets(cfg, "logger")]
    trainer_args = {k: v for k, v in OmegaConf.to_container(t).items()
                    if k not in ("accelerator", "devices", "num_nodes", "max_restarts")}
    trainer = Trainer(
        **trainer_args,
        strategy=strategy,
        precision=precision,
        callbacks=callbacks,
        logger=loggers or False,
        enable_checkpointing=False,  # the `callbacks` config says which checkpoints to keep
        enable_progress_bar=False,  # ... and whether to show progress
        default_root_dir=run_dir,
        optimizer=instantiate(cfg.optimizer) if cfg.optimizer else None,
        scheduler=instantiate(cfg.scheduler) if cfg.scheduler else None,
        hparams=exactness_settings(cfg),
    )
    for lg in trainer.loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg))

    command = cfg.command
    if command == "tune":
        from trainkit.tuner import run_tune

        results = run_tune(cfg, trainer, model, datamodule, run_dir)
    elif command == "fit":
        trainer.fit(model, datamodule=datamodule)
        results = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val")}
        _report("final validation", results)
    elif command == "predict":
        predictions = trainer.predict(model, datamodule=datamodule)
        name = "predictions.pt" if env.world_size == 1 else f"predictions.rank{env.rank}.pt"  # each rank's shard
        out = os.path.join(run_dir, name)
        torch.save(predictions, out)
        log.info("predictions: %s (%d batches)", out, len(predictions))
        results = {}
    else:
        results = getattr(trainer, command)(model, datamodule=datamodule)[0]
        _report(command, results)
    if env.rank == 0:  # the parent of several processes, sweeps and their summary read it
        write_results(run_dir, record.result(command, results, trainer))
    log.info("run directory: %s", run_dir)
    return results


def _targets(cfg: DictConfig, group: str) -> list[DictConfig]:
    """The callback or logger nodes to build. A node with settings but no `_target_` was set by an
    experiment whose group option the command line then removed (`callbacks=none`): skip it."""
    nodes = []
    for name, node in (cfg.get(group) or {}).items():
        if node and "_target_" not in node:
            log.warning("%s.%s has settings but nothing to build (no _target_); ignored", group, name)
        elif node:
            nodes.append(node)
    return nodes


def _report(title: str, metrics: dict[str, Any]) -> None:
    if metrics:
        log.info("%s: %s", title, "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
