"""`trainkit tune`: find a learning rate and a batch size before the real run.

    trainkit tune lr=true                       # LR range test -> optimizer.lr=...
    trainkit tune batch_size=true               # batch-size finder -> datamodule.batch_size=...
    trainkit tune lr=true batch_size=true       # the batch first, then the LR at that batch
    trainkit tune lr=true min_lr=1e-5 max_lr=0.1 num_training=200 model.hidden_size=128

Bare tuner keys (`lr=`, `batch_size=`, `min_lr=`, ...) are the `tuner` node's (`tuner.lr=true` is
the same); `trainkit tune` takes every other override `trainkit fit` takes. Both tuners drive the
real Trainer, strategy and precision for a few steps on a copy of the run's settings
(`lr_find.py`, `batch_size_find.py`; results are plain dataclasses) and leave the model,
optimizer, precision and RNG state as they found them. Their files go into the run directory:
`lr_find.csv` (+ `lr_find.png` with matplotlib), `batch_size_find.csv`. One process only: the
per-device batch and the learning rate they find are the ones to give a several-process run
(scale the LR yourself if the global batch grows).

This module is torch-free: the CLI uses `tuner_overrides` before anything else is imported.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

log = logging.getLogger("trainkit")


def tuner_overrides(overrides: list[str]) -> list[str]:
    """`lr=true` -> `tuner.lr=true` for every key of the tuner node given bare."""
    from trainkit.config import TunerConfig

    keys = {f.name for f in dataclasses.fields(TunerConfig)}
    out = []
    for arg in overrides:
        key, sep, value = arg.partition("=")
        out.append(f"tuner.{key}={value}" if sep and key in keys else arg)
    return out


def run_tune(cfg: Any, trainer: Any, model: Any, datamodule: Any, run_dir: str) -> dict[str, float]:
    """What `trainkit tune` does in its one process; returns the suggestions as numbers."""
    from trainkit.errors import ConfigError

    tu = cfg.tuner
    if not (tu.lr or tu.batch_size):
        raise ConfigError("trainkit tune needs something to tune: lr=true (learning rate) and/or batch_size=true")
    results: dict[str, float] = {}
    use = []
    if tu.batch_size:
        from trainkit.tuner.batch_size_find import batch_size_find

        found = batch_size_find(trainer, model, datamodule=datamodule, init_batch_size=tu.init_batch_size,
                                max_batch_size=tu.max_batch_size, steps_per_trial=tu.steps_per_trial)
        found.to_csv(os.path.join(run_dir, "batch_size_find.csv"))
        for line in found.report().splitlines():
            log.info("%s", line)
        datamodule.batch_size = found.batch_size  # the LR range test runs at the batch size found
        results["tuner/batch_size"] = float(found.batch_size)
        use.append(found.override())
    if tu.lr:
        from trainkit.tuner.lr_find import lr_find

        found = lr_find(trainer, model, datamodule=datamodule, min_lr=tu.min_lr, max_lr=tu.max_lr,
                        num_training=tu.num_training, early_stop_threshold=tu.early_stop_threshold)
        found.to_csv(os.path.join(run_dir, "lr_find.csv"))
        plotted = found.plot(os.path.join(run_dir, "lr_find.png"))
        for line in found.report().splitlines():
            log.info("%s", line)
        log.info("LR range test: %s", os.path.join(run_dir, "lr_find.png" if plotted else "lr_find.csv"))
        if found.suggestion is not None:
            results["tuner/lr"] = found.suggestion
            use.append(found.override())
    if use:
        overrides = " ".join(use)
        log.info("use: trainkit fit %s", overrides)
    return results
