"""The engagement recipe: daily activity sequences on the at-risk table's rows and splits, and the GRU."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from trainkit.tabular import oulad
from trainkit.recipes.dropout.datamodule import OULADAtRiskDataModule
from trainkit.tabular.tiny_data import write_oulad
from trainkit.recipes.engagement.datamodule import OULADClicksDataModule
from trainkit.recipes.engagement.model import EngagementGRU
from trainkit.cli import CONFIG_DIR
from trainkit.errors import ConfigError, DataError

CLICKS_CFG = OmegaConf.load(CONFIG_DIR / "datamodule" / "oulad_clicks.yaml")
AT_RISK_CFG = OmegaConf.load(CONFIG_DIR / "datamodule" / "oulad_at_risk.yaml")


def clicks(path: Path, **kwargs) -> OULADClicksDataModule:
    """The datamodule as configs/datamodule/oulad_clicks.yaml sets it up, with `kwargs` changed."""
    kwargs = {"numeric": list(CLICKS_CFG.numeric), "categorical": list(CLICKS_CFG.categorical), **kwargs}
    return OULADClicksDataModule(path=str(path), **kwargs)


@pytest.fixture(scope="module")
def oulad_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("oulad")
    write_oulad(folder)
    return folder


def test_day_sequences_put_each_day_in_its_step(tmp_path, oulad_dir):
    for name in ("studentInfo.csv.gz", "studentRegistration.csv.gz"):
        (tmp_path / name).write_bytes((oulad_dir / name).read_bytes())
    rows = ["AAA,2013J,10000,-9,2,2,5", "AAA,2013J,10000,-1,1,1,3", "AAA,2013J,10000,2,4,3,10",
            "AAA,2013J,10000,7,1,1,100"]
    header = ",".join(oulad.DAILY_COLUMNS)
    (tmp_path / "studentVle_daily.csv.gz").write_bytes(gzip.compress("\n".join([header, *rows]).encode()))
    students = oulad.read_students(tmp_path)
    seq = oulad.day_sequences(students, oulad.read_daily_clicks(tmp_path, students), days=7)
    assert seq.shape == (len(students), 8, 4)
    first = seq[0]
    assert first[0].tolist() == pytest.approx([np.log1p(8), np.log1p(3), np.log1p(3), 1.0])  # days -9 and -1
    assert first[3].tolist() == pytest.approx([np.log1p(10), np.log1p(3), np.log1p(4), 1.0])  # day 2 -> step 3
    assert first[[1, 2, 4, 5, 6, 7]].sum() == 0  # day 7 is outside a 7-day window
    assert seq[1:].sum() == 0


def test_same_rows_and_splits_as_the_tabular_datamodule(oulad_dir):
    for split, folds, fold in (("random", None, 0), ("presentation", None, 0), ("random", 3, 2)):
        seq = clicks(oulad_dir, split=split, folds=folds, fold=fold)
        table = OULADAtRiskDataModule(path=str(oulad_dir), numeric=list(AT_RISK_CFG.numeric),
                                      categorical=list(AT_RISK_CFG.categorical), split=split, folds=folds, fold=fold)
        seq.setup("fit")
        table.setup("fit")
        for name in ("train", "valid", "test"):
            assert np.array_equal(seq.rows[name], table.rows[name]), (split, name)
            assert torch.equal(seq._datasets[name].tensors["label"], table._datasets[name].tensors["label"])


def test_batches_carry_standardised_days(oulad_dir):
    data = clicks(oulad_dir, weeks=2, batch_size=8)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["days"].shape == (8, 1 + 14, 4)
    assert batch["numeric"].shape == (8, 3) and batch["categorical"].shape == (8, 7)
    days = data._datasets["train"].tensors["days"].reshape(-1, 4)
    assert torch.allclose(days.mean(0), torch.zeros(4), atol=1e-5)  # the training rows' statistics


def test_clicks_only_has_no_static_features(oulad_dir):
    data = clicks(oulad_dir, numeric=[], categorical=[])
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    model = EngagementGRU(numeric=[], categorical=[], classes=["at_risk", "on_track"], hidden_size=16)
    assert model(batch["days"], batch["numeric"], batch["categorical"]).shape == (len(batch["label"]), 2)
    assert model.body[0].in_features == 16


def test_model_reads_static_features_when_given():
    model = EngagementGRU(numeric=["a", "b"], categorical=["c"], classes=["at_risk", "on_track"], embed_dim=4,
                          hidden_size=16)
    assert model.body[0].in_features == 16 + 2 + 4
    out = model(torch.randn(3, 29, 4), torch.randn(3, 2), torch.tensor([[1], [0], [5]]))
    assert out.shape == (3, 2)


def test_absent_path_and_missing_clickstream_are_data_errors(tmp_path, oulad_dir):
    with pytest.raises(DataError, match=r"datamodule.path=.*absent.*no such folder"):
        clicks(tmp_path / "absent").prepare_data()
    for name in ("studentInfo.csv.gz", "studentRegistration.csv.gz"):
        (tmp_path / name).write_bytes((oulad_dir / name).read_bytes())
    with pytest.raises(DataError, match="no studentVle_daily.csv.gz or studentVle_daily.csv"):
        clicks(tmp_path, numeric=[]).setup("fit")  # the sequence always needs the clickstream


def test_daily_file_without_a_column_names_it(tmp_path, oulad_dir):
    for name in ("studentInfo.csv.gz", "studentRegistration.csv.gz"):
        (tmp_path / name).write_bytes((oulad_dir / name).read_bytes())
    (tmp_path / "studentVle_daily.csv.gz").write_bytes(
        gzip.compress(b"code_module,code_presentation,id_student,date,sum_click\nAAA,2013J,10000,1,3\n"))
    with pytest.raises(DataError, match=r"studentVle_daily.csv.gz, line 1: no column 'n_rows'"):
        clicks(tmp_path).setup("fit")


def test_weeks_must_be_positive(oulad_dir):
    with pytest.raises(ConfigError, match="datamodule.weeks=0"):
        clicks(oulad_dir, weeks=0)
