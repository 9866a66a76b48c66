"""trainer.compile=true trains a torch.compile'd module to the eager result (slow: one cold compile)."""
import copy

import torch
from torch.utils.data import DataLoader

from tests.unit.test_trainer import Regressor, make_data, quiet_trainer
from trainkit.engine.seed import seed_everything


def test_compiled_training_matches_eager():
    seed_everything(0)
    eager = Regressor()
    compiled = copy.deepcopy(eager)
    loader = DataLoader(make_data(n=64), batch_size=16)
    quiet_trainer(max_steps=4).fit(eager, train_dataloaders=loader)
    quiet_trainer(max_steps=4, compile=True).fit(compiled, train_dataloaders=loader)
    assert compiled._compiled_call_impl is not None
    assert list(compiled.state_dict()) == list(eager.state_dict())  # compiled in place: same keys
    for a, b in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
