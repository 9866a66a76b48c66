"""Hydra instantiates sweepers only from the `hydra_plugins` namespace package: this names
trainkit's Optuna sweeper there (`hydra/sweeper=trainkit_optuna`; the code is in
trainkit/sweeps/optuna_sweeper.py). Importing it is cheap: Hydra imports every plugin module at
start-up, also for `trainkit --help`-fast paths such as `--cfg job`."""
from trainkit.sweeps.optuna_sweeper import OptunaSweeper


class TrainkitOptunaSweeper(OptunaSweeper):
    pass
