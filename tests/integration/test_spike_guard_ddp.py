"""The spike guard under DDP (2 gloo processes under torchrun): a spike in rank 1's loss alone
skips the same step on both ranks, and the weights stay the same on both."""
from __future__ import annotations

import os
import subprocess
import sys

import torch

from tests.conftest import ROOT

SCRIPT = '''
import sys
import torch
import trainkit as L

SPIKE_AT = 20  # batch index (the 21st step) where rank 1's loss jumps


class Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.before = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.before[batch_idx] = self.layer.weight.detach().clone()
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        return loss * 1000 if self.global_rank == 1 and batch_idx == SPIKE_AT else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    out = sys.argv[1]
    L.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(240, 4, generator=g)
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True) + 0.1 * torch.randn(240, 1, generator=g))
    model = Regression()
    trainer = L.Trainer(strategy="ddp", devices=2, accelerator="cpu", max_steps=30, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        spike_guard={"warmup": 10, "k": 6}, default_root_dir=out)
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4))
    skipped = [i for i in sorted(model.before)[:-1] if torch.equal(model.before[i], model.before[i + 1])]
    torch.save({"skipped_batches": skipped, "count": trainer.spike_guard.skipped,
                "weight": model.layer.weight.detach()}, f"{out}/rank{trainer.global_rank}.pt")
'''


def test_a_spike_on_one_rank_skips_the_same_step_on_both(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script), str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 21: a spike on another rank: optimizer step skipped" in result.stderr  # rank 0 saw no spike itself
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for saved in ranks:
        assert saved["skipped_batches"] == [20] and saved["count"] == 1
    assert torch.equal(ranks[0]["weight"], ranks[1]["weight"])
