"""A like-for-like reference: logistic regression on exactly the rows, splits and features the MLP sees.

    python -m trainkit.recipes.dropout.baselines uci_dropout folds=5 fold=0
    python -m trainkit.recipes.dropout.baselines oulad_at_risk split=presentation

The datamodule config (configs/datamodule/<name>.yaml, with key=value overrides) builds the
splits and the preprocessing; categorical indices are one-hot encoded; an L2-penalised
multinomial logistic regression is fitted by full-batch L-BFGS on the training rows, without
class weights (as scikit-learn's default). It prints val/ and test/ acc and AUC (class 0 vs rest,
the recipe's val/auc).
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from trainkit.tabular.datamodule import TabularDataModule
from trainkit.metrics import binary_auroc


def _features(data: TabularDataModule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    t = data._datasets[split].tensors
    onehot = F.one_hot(t["categorical"], data.max_categories).flatten(1).float()
    return torch.cat([t["numeric"], onehot], dim=1).double(), t["label"]


def logistic_regression(data: TabularDataModule, l2: float = 1e-3) -> dict[str, float]:
    """Fit on the training rows (the weights that balance=sampler would repeat are read once);
    data must be set up. l2 is the penalty per training row, as 1 / (C * n) in scikit-learn."""
    train_x, train_y = _features(data, "train")
    num_classes = len(data.classes)
    weight = torch.zeros(train_x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(train_x @ weight + bias, train_y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    out = {}
    with torch.no_grad():
        for split, name in (("valid", "val"), ("test", "test")):
            x, y = _features(data, split)
            probs = torch.softmax(x @ weight + bias, dim=-1)
            out[f"{name}/acc"] = float((probs.argmax(-1) == y).double().mean())
            out[f"{name}/auc"] = float(binary_auroc(probs[:, 0], y == 0))
    return out


def main(argv: list[str]) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from trainkit.builtin import DATA_DIR, config_dir

    name, overrides = argv[0], argv[1:]
    datamodule = OmegaConf.merge(OmegaConf.load(config_dir() / "datamodule" / f"{name}.yaml"), OmegaConf.from_dotlist(overrides))
    if "balance" in datamodule:
        datamodule.balance = "none"  # the rows once each
    cfg = OmegaConf.create({"data_dir": DATA_DIR, "datamodule": datamodule})  # path: ${data_dir}/...
    data = instantiate(cfg.datamodule)
    data.setup("fit")
    print(" ".join(f"{k}={v:.4f}" for k, v in logistic_regression(data).items()))


if __name__ == "__main__":
    main(sys.argv[1:])
