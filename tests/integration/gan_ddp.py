"""A worker for test_distributed's GAN test: `torchrun --nproc-per-node=2 -m tests.integration.gan_ddp OUT MAX_STEPS`
trains the manual-optimization GAN of tests/unit/test_optimization.py under strategy=ddp and writes each
rank's final weights to OUT/rank<N>.pt (its checkpoint lands in OUT/checkpoints)."""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from tests.unit.test_optimization import GAN, gan_loader
from trainkit import Trainer
from trainkit.launch.env import from_environ
from trainkit.strategies import make_strategy


def main(out: str, max_steps: int) -> None:
    torch.manual_seed(0)
    module = GAN(noise_from_rng=False)
    trainer = Trainer(accelerator="cpu", devices=2,
                      strategy=make_strategy("ddp", "cpu", 2, 1, from_environ()), max_steps=max_steps, seed=0, logger=False,
                      enable_progress_bar=False, default_root_dir=out, checkpoint_every_n_steps=max_steps,
                      resume="none")
    trainer.fit(module, train_dataloaders=gan_loader(batch_size=4))  # 2 x 4: the global batch of 8
    torch.save({"state": module.state_dict(), "global_step": trainer.global_step},
               os.path.join(out, f"rank{trainer.strategy.global_rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # gloo sometimes aborts in interpreter shutdown (FINDINGS.md)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
