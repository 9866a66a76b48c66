"""A worker for test_distributed's single-file checkpoint test:
`torchrun --nproc-per-node=2 -m tests.integration.checkpoint_file_ddp OUT ddp|fsdp` trains a small module
with save_hyperparameters for 4 steps and saves its last step as a single `.ckpt` file (OUT/files) and as a
folder (OUT/checkpoints); under ddp with EMA weight averaging, each rank also writes its averaged weights
to OUT/rank<N>.pt."""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from tests.unit.test_lightning_callbacks import Base, loader
from trainkit import Trainer
from trainkit.callbacks import EMAWeightAveraging, ModelCheckpoint
from trainkit.launch.env import from_environ
from trainkit.strategies import make_strategy


def main(out: str, strategy: str) -> None:
    torch.manual_seed(0)
    module = Base(hidden=4, lr=0.3)
    ema = EMAWeightAveraging(decay=0.5)
    callbacks = [ModelCheckpoint(dirpath=os.path.join(out, "files"), every_n_train_steps=4, save_weights_only=True),
                 ModelCheckpoint(dirpath=os.path.join(out, "checkpoints"), every_n_train_steps=4)]
    if strategy == "ddp":
        callbacks.insert(0, ema)
    trainer = Trainer(accelerator="cpu", devices=2, max_steps=4, seed=0, logger=False, enable_progress_bar=False,
                      strategy=make_strategy(strategy, "cpu", 2, 1, from_environ(), wrap_modules=["Linear"]),
                      default_root_dir=out, callbacks=callbacks, resume="none")
    trainer.fit(module, train_dataloaders=loader(n=32, batch_size=4))
    if strategy == "ddp":
        torch.save({"average": ema.average_model.module.state_dict(), "current": module.state_dict()},
                   os.path.join(out, f"rank{trainer.strategy.global_rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # gloo sometimes aborts in interpreter shutdown (FINDINGS.md)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
