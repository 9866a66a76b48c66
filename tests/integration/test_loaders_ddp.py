"""Lightning's data and stopping arguments under DDP (torchrun, 2 processes, gloo): several
validation loaders are sharded and reduced each; max_time stops every rank at the same step."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = '''
import json, os, sys
import torch
from torch.utils.data import DataLoader, TensorDataset
from trainkit import Trainer, TrainModule
from trainkit.launch.env import from_environ
from trainkit.strategies import make_strategy


class Mean(TrainModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.seen = []

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        (x,) = batch
        self.seen += [[dataloader_idx, int(v)] for v in x]
        self.log("val/mean", x.double().mean(), batch_size=len(x))


env = from_environ()
trainer = Trainer(strategy=make_strategy("ddp", "cpu", 2, 1, env), logger=False, enable_checkpointing=False,
                  enable_progress_bar=False)
module = Mean()
loaders = [DataLoader(TensorDataset(torch.arange(10)), batch_size=3),
           DataLoader(TensorDataset(torch.arange(100, 107)), batch_size=2)]
results = trainer.validate(module, loaders)
with open(os.path.join(sys.argv[1], f"rank{env.rank}.json"), "w") as f:
    json.dump({"results": results, "seen": module.seen}, f)
sys.stdout.flush()
os._exit(0)  # gloo may abort at interpreter exit (FINDINGS.md)
'''


def torchrun(script: str, tmp_path) -> None:
    path = tmp_path / "script.py"
    path.write_text(script)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(path), str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_val_loaders_are_sharded_each_and_reduced_each(tmp_path):
    torchrun(SCRIPT, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    seen = sorted(tuple(s) for r in ranks for s in r["seen"])
    assert seen == [(0, v) for v in range(10)] + [(1, v) for v in range(100, 107)]  # each sample once
    assert {tuple(s) for s in ranks[0]["seen"]}.isdisjoint(tuple(s) for s in ranks[1]["seen"])
    expected = [{"val/mean/dataloader_idx_0": 4.5}, {"val/mean/dataloader_idx_1": 103.0}]
    assert ranks[0]["results"] == ranks[1]["results"] == expected


MAX_TIME = '''
import json, os, sys, time
import torch
from torch.utils.data import DataLoader, TensorDataset
from trainkit import Trainer, TrainModule
from trainkit.launch.env import from_environ
from trainkit.strategies import make_strategy


class Slow(TrainModule):
    """Rank 1 is slower: each rank reaches the time limit at a different step of its own."""

    def __init__(self, rank):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.pause = 0.01 * (1 + 2 * rank)

    def training_step(self, batch, batch_idx):
        time.sleep(self.pause)
        return (self.w * batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


env = from_environ()
trainer = Trainer(strategy=make_strategy("ddp", "cpu", 2, 1, env), logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, max_time={"seconds": 1})
trainer.fit(Slow(env.rank), DataLoader(TensorDataset(torch.randn(64, 1)), batch_size=4))
with open(os.path.join(sys.argv[1], f"rank{env.rank}.json"), "w") as f:
    json.dump({"step": trainer.global_step}, f)
sys.stdout.flush()
os._exit(0)
'''


def test_max_time_stops_every_rank_at_the_same_step(tmp_path):
    torchrun(MAX_TIME, tmp_path)
    steps = [json.loads((tmp_path / f"rank{r}.json").read_text())["step"] for r in (0, 1)]
    assert steps[0] == steps[1] and 4 < steps[0] < 200, steps
