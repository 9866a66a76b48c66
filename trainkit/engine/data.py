"""The DataModule API (alias `LightningDataModule`): where a recipe's data comes from.

Subclass it and override what you need. The Trainer calls `prepare_data()` once (rank 0: download
or generate files), then `setup(stage)` with stage in {"fit", "validate", "test", "predict"}, asks
for the loaders of that stage, and calls `teardown(stage)` at the end. A `*_dataloader()` may
return one loader, or a list or dict of them (validation, test and predict run each in turn; see
the Trainer's `dataloader_idx`).

Datasets you already have make a DataModule in one line, as in Lightning:

    dm = DataModule.from_datasets(train, val_dataset=[val_a, val_b], batch_size=32, num_workers=2)
"""
from __future__ import annotations

import inspect
from typing import Any

from trainkit.engine.batch_transfer import BatchTransferHooks
from trainkit.engine.hparams import HyperparametersMixin, load_datamodule
from trainkit.errors import ConfigError, UserError


class DataModule(BatchTransferHooks, HyperparametersMixin):
    # Set by the Trainer while it runs this DataModule (a class attribute: subclasses need not
    # call super().__init__()).
    trainer: Any = None

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str, **overrides: Any):
        """The datamodule rebuilt from a checkpoint's saved datamodule hyper-parameters."""
        return load_datamodule(cls, checkpoint_path, overrides)

    def prepare_data(self) -> None:
        """Download or generate files. Runs once per machine, before `setup`."""

    def setup(self, stage: str) -> None:
        """Build the datasets that `stage` needs."""

    def teardown(self, stage: str) -> None:
        """Release what `setup` built."""

    def train_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no train_dataloader()")

    def val_dataloader(self) -> Any:
        return None

    def test_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no test_dataloader()")

    def predict_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no predict_dataloader()")

    @classmethod
    def from_datasets(
        cls,
        train_dataset: Any = None,
        val_dataset: Any = None,
        test_dataset: Any = None,
        predict_dataset: Any = None,
        batch_size: int = 1,
        num_workers: int = 0,
        **kwargs: Any,
    ) -> DataModule:
        """A DataModule whose loaders wrap these datasets (each a Dataset, or a list or dict of them).

        The training loader shuffles (unless its dataset is an IterableDataset), the others keep
        their order. `kwargs` that `cls.__init__` takes go to it, as in Lightning (so do
        `batch_size` and `num_workers` when it takes them); the others go to every `DataLoader`
        (`drop_last`, `pin_memory`, `collate_fn`, ...).
        """
        from torch.utils.data import DataLoader, IterableDataset

        own = inspect.signature(cls.__init__).parameters if cls.__init__ is not object.__init__ else {}
        takes_any = any(p.kind is p.VAR_KEYWORD for p in own.values())
        init_kwargs = {k: v for k, v in kwargs.items() if k in own or takes_any}
        loader_kwargs = {k: v for k, v in kwargs.items() if k not in init_kwargs}
        accepted = inspect.signature(DataLoader.__init__).parameters
        unknown = sorted(set(loader_kwargs) - set(accepted))
        if unknown:
            raise ConfigError(f"DataModule.from_datasets: {', '.join(unknown)} is neither a parameter of "
                              f"{cls.__name__}.__init__ nor of torch's DataLoader")
        for name, value in (("batch_size", batch_size), ("num_workers", num_workers)):
            if name in own:
                init_kwargs[name] = value

        def loader(ds: Any, shuffle: bool) -> DataLoader:
            return DataLoader(ds, batch_size=batch_size, shuffle=shuffle and not isinstance(ds, IterableDataset),
                              num_workers=num_workers, **loader_kwargs)

        def loaders_of(datasets: Any, stage: str, shuffle: bool) -> Any:
            if datasets is None:
                raise UserError(f"this DataModule was made by from_datasets without a {stage}_dataset: pass "
                                f"{stage}_dataset=... to have a {stage}_dataloader()")
            if isinstance(datasets, dict):
                return {key: loader(ds, shuffle) for key, ds in datasets.items()}
            if isinstance(datasets, (list, tuple)):
                return [loader(ds, shuffle) for ds in datasets]
            return loader(datasets, shuffle)

        datamodule = cls(**init_kwargs)
        datamodule.train_dataloader = lambda: loaders_of(train_dataset, "train", True)
        # No val_dataset means no validation (not an error), as for any DataModule.
        datamodule.val_dataloader = lambda: None if val_dataset is None else loaders_of(val_dataset, "val", False)
        datamodule.test_dataloader = lambda: loaders_of(test_dataset, "test", False)
        datamodule.predict_dataloader = lambda: loaders_of(predict_dataset, "predict", False)
        return datamodule


LightningDataModule = DataModule
