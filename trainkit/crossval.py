"""k-fold cross-validation as one command: `trainkit fit ... datamodule.folds=5`.

A datamodule takes part by having `folds` and `fold` keys (the tabular recipes do): `folds=k`
with `fold=null` asks for every fold. Each fold is a normal run in `<run_dir>/fold<k>` (its own
config.yaml, checkpoints, metrics.csv, log), started like any run (in place, several processes,
SLURM). At the end each fold contributes the validation metrics of its kept checkpoint (the row of
metrics.csv at the best step of the monitored metric; the last validation when nothing is
monitored), and their mean ± std (population, as numpy's `std`) is printed and written to
`<run_dir>/cv_summary.csv`. A fold that fails stops the cross-validation with its error.

A datamodule with `test_each_fold: true` (pyKT's protocol: a fixed test set next to the folds)
also has each fold's best checkpoint tested, as `trainkit test <fold run>` does (in
`<run_dir>/fold<k>/test_<time>`); the folds' test metrics join the summary, and a table of the
mean ± std of every metric is printed.
"""
from __future__ import annotations

import copy
import csv
import logging
import os
import statistics
from typing import Any, Callable

from omegaconf import DictConfig, open_dict

from trainkit.errors import ConfigError

log = logging.getLogger("trainkit")


def wants_all_folds(cfg: DictConfig) -> bool:
    datamodule = cfg.get("datamodule") or {}
    return cfg.command == "fit" and "fold" in datamodule and datamodule.get("fold") is None \
        and (datamodule.get("folds") or 0) > 1


def run_folds(cfg: DictConfig, run_one: Callable[[str, DictConfig], Any], outside_launcher: bool) -> dict[str, float]:
    """run_one(command, cfg) runs one command of one fold, as `trainkit <command>` would."""
    if outside_launcher:
        raise ConfigError("datamodule.folds with every fold runs the folds one after another; under torchrun or srun "
                          "start one fold per job instead (datamodule.fold=<k>)")
    from trainkit.log_setup import setup_logging

    folds, run_dir = int(cfg.datamodule.folds), os.path.abspath(cfg.run_dir)
    rows = []
    for k in range(folds):
        # Unresolved: every key that follows ${run_dir} (logs, checkpoints) lands in the fold's folder.
        fold_cfg = copy.deepcopy(cfg)
        with open_dict(fold_cfg):
            fold_cfg.datamodule.fold = k
            fold_cfg.run_dir = os.path.join(run_dir, f"fold{k}")
        log.info("cross-validation: fold %d of %d -> %s", k + 1, folds, fold_cfg.run_dir)
        run_one("fit", fold_cfg)
        rows.append({"fold": k, **_kept_validation(fold_cfg.run_dir)})
        if cfg.datamodule.get("test_each_fold"):
            rows[-1].update(_test_best(fold_cfg.run_dir, run_one))
    setup_logging(run_dir)  # the summary goes to the cross-validation's own log
    return _summarize(run_dir, rows, table=bool(cfg.datamodule.get("test_each_fold")), title=_title(cfg))


def _test_best(fold_dir: str, run_one: Callable[[str, DictConfig], Any]) -> dict[str, float]:
    """The test metrics of the fold's best checkpoint (`trainkit test <fold run>`)."""
    from trainkit.resume import prepare
    from trainkit.sweeps.results import read_results

    test_cfg = prepare("test", fold_dir, [])
    run_one("test", test_cfg)
    metrics = (read_results(test_cfg.run_dir) or {}).get("metrics") or {}
    return {k: float(v) for k, v in metrics.items() if k.startswith("test/")}


def _title(cfg: DictConfig) -> str:
    """The model option (what a table row compares), e.g. `akt`."""
    source = ((cfg.get("project") or {}).get("sources") or {}).get("model")
    return os.path.splitext(os.path.basename(source))[0] if source else str(cfg.model.get("_target_", "model"))


def _kept_validation(run_dir: str) -> dict[str, float]:
    """The validation metrics at the fold's best step (its kept checkpoint), else its last ones."""
    from trainkit.sweeps.results import read_results

    with open(os.path.join(run_dir, "metrics.csv")) as f:
        rows = [r for r in csv.DictReader(f) if any(k.startswith("val/") and v for k, v in r.items())]
    if not rows:
        raise ConfigError(f"cross-validation: {run_dir} logged no validation metrics; the folds need a validation split")
    best_step = ((read_results(run_dir) or {}).get("best") or {}).get("step")
    chosen = next((r for r in rows if best_step is not None and int(r["step"]) == best_step), rows[-1])
    return {"step": int(chosen["step"]), **{k: float(v) for k, v in chosen.items() if k.startswith("val/") and v}}


def _summarize(run_dir: str, rows: list[dict[str, Any]], table: bool = False, title: str = "") -> dict[str, float]:
    metrics = sorted({k for row in rows for k in row if k.startswith(("val/", "test/"))})
    means = {m: statistics.fmean(row[m] for row in rows if m in row) for m in metrics}
    stds = {m: statistics.pstdev([row[m] for row in rows if m in row]) for m in metrics}
    for row in rows:
        log.info("fold %d (step %d): %s", row["fold"], row["step"], "  ".join(f"{m}={row[m]:.4f}" for m in metrics if m in row))
    log.info("cross-validation over %d folds (mean ± std): %s", len(rows),
             "  ".join(f"{m}={means[m]:.4f} ± {stds[m]:.4f}" for m in metrics))
    path = os.path.join(run_dir, "cv_summary.csv")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["fold", "step", *metrics])
        writer.writeheader()
        writer.writerows(rows)
        writer.writerow({"fold": "mean", **means})
        writer.writerow({"fold": "std", **stds})
    log.info("cross-validation summary: %s", path)
    if table:
        shown = [m for m in metrics if m.startswith("test/")] + [m for m in metrics if m.startswith("val/")]
        lines = [f"| model | {' | '.join(shown)} |", f"|---|{'---|' * len(shown)}",
                 f"| {title} | {' | '.join(f'{means[m]:.4f} ± {stds[m]:.4f}' for m in shown)} |"]
        log.info("%d folds, each fold's best checkpoint tested (mean ± std):\n%s", len(rows), "\n".join(lines))
    return means
