"""Sweeps: what each trial records, the Optuna sweeper, and the summary of a sweep.

    trainkit fit -m model.hidden_size=64,128 optimizer.lr=1e-3,3e-3     # a grid: 4 trials
    trainkit fit hparams_search=kt_dkt                                   # an Optuna search
    trainkit sweep-summary multirun/<date>_<time>_<id>                   # the table, rebuilt

  results.py         each run's `results.json` (status, final metrics, best value of the sweep
                     metric and its step), written by rank 0; a failed trial's record
  optuna_sweeper.py  Hydra's Sweeper interface over a current Optuna (ask/tell), with pruning
  summary.py         one row per trial from the files of its run directory: table + CSV

Nothing here imports torch or optuna at module level: the CLI imports it before any work starts.
"""
