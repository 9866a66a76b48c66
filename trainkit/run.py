"""The worker side of a run: what one process does with `<run_dir>/config.yaml`.

`run_worker` reads that file (never argv, never Hydra), makes the project importable (its root is
in the file), builds the datamodule, model, callbacks and loggers, and runs the command. Every
launcher ends here (trainkit.launch); with one device the parent is the worker. The parent side,
which writes the file, is trainkit.compose.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainkit.targets import check_targets
from trainkit.launch.env import from_environ
from trainkit.project import make_importable

log = logging.getLogger("trainkit")


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


def run_worker(config_path: str, cfg: DictConfig | None = None) -> dict[str, float]:
    """`cfg`: that file's content when the caller has read it already (a launcher), so that it is
    not read twice."""
    from trainkit.log_setup import setup_logging

    cfg = OmegaConf.load(config_path) if cfg is None else cfg
    run_dir = cfg.run_dir
    env = from_environ()
    setup_logging(run_dir if env.rank == 0 else None, is_global_zero=env.rank == 0)
    log.info("run directory: %s", run_dir)
    project = cfg.get("project") or {}
    if project.get("root"):
        make_importable(project["root"])  # the user's code, wherever this worker runs
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
    if t.resume in (None, "none"):  # the folder starts over: W&B / MLflow open a new run, not the recorded one
        for lg in loggers:
            if hasattr(lg, "start_new_run"):
                lg.start_new_run()
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
        results = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
        _report("final validation", results)
    elif command == "predict":
        predictions = trainer.predict(model, datamodule=datamodule)
        name = "predictions.pt" if env.world_size == 1 else f"predictions.rank{env.rank}.pt"  # each rank's shard
        out = os.path.join(run_dir, name)
        torch.save(predictions, out)
        log.info("predictions: %s (%d batches)", out, len(predictions))
        results = {}
    else:
        # one dict per loader; their names differ when there are several (".../dataloader_idx_<i>")
        per_loader = getattr(trainer, command)(model, datamodule=datamodule)
        results = {k: v for values in per_loader for k, v in values.items()}
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
