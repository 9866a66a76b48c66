"""`lightning.pytorch`'s names on trainkit: `from trainkit.pytorch import LightningModule, Trainer`.

Mirrors the layout Lightning code imports from (`trainkit.pytorch.callbacks`,
`trainkit.pytorch.loggers`), so changing `lightning` to `trainkit` in the imports is the whole port.
"""
from trainkit.engine.callback import Callback
from trainkit.engine.data import LightningDataModule
from trainkit.engine.module import LightningModule
from trainkit.engine.seed import seed_everything
from trainkit.engine.trainer import Trainer
from trainkit.pytorch import callbacks, loggers

__all__ = ["Callback", "LightningDataModule", "LightningModule", "Trainer", "callbacks", "loggers", "seed_everything"]
