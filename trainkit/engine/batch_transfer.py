"""Lightning's three batch-transfer hooks, shared by `TrainModule` and `DataModule` (as Lightning's
DataHooks are): override any of them on either; the loops call the DataModule's where it overrides
one, else the module's (trainkit.engine.hooks.Hooks.batch_transfer). Not overridden, none runs:
the strategy moves the batch itself."""
from __future__ import annotations

from typing import Any


class BatchTransferHooks:
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        """Move the tensors of `batch` to `device` (override for batches of your own types)."""
        from trainkit.engine.tensors import apply_to_tensors  # (imports torch; a DataModule need not)

        return apply_to_tensors(batch, lambda t: t.to(device, non_blocking=True))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch
