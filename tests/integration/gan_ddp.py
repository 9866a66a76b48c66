"""A worker for test_distributed's GAN test:
`torchrun --nproc-per-node=2 -m tests.integration.gan_ddp OUT MAX_STEPS ddp|fsdp` trains the manual-optimization
GAN of tests/unit/test_optimization.py on 2 processes and checkpoints its last step in OUT/checkpoints; under
ddp each rank also writes its final weights to OUT/rank<N>.pt."""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from tests.unit.test_optimization import GAN, gan_loader
from trainkit import Trainer
from trainkit.launch.env import from_environ
from trainkit.strategies import make_strategy


def main(out: str, max_steps: int, strategy: str) -> None:
    torch.manual_seed(0)
    module = GAN(noise_from_rng=False)
    # FSDP: each network its own unit, since training_step calls them and not the root's forward;
    # its backward leaves the discriminator's sharded gradients as FSDP keeps them (not checked).
    module.check_toggle = strategy == "ddp"
    trainer = Trainer(accelerator="cpu", devices=2, max_steps=max_steps, seed=0, logger=False,
                      strategy=make_strategy(strategy, "cpu", 2, 1, from_environ(), wrap_modules=["Sequential"]),
                      enable_progress_bar=False, default_root_dir=out, checkpoint_every_n_steps=max_steps,
                      resume="none")
    trainer.fit(module, train_dataloaders=gan_loader(batch_size=4))  # 2 x 4: the global batch of 8
    if strategy == "ddp":
        torch.save({"state": module.state_dict(), "global_step": trainer.global_step},
                   os.path.join(out, f"rank{trainer.strategy.global_rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # gloo sometimes aborts in interpreter shutdown (FINDINGS.md)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
