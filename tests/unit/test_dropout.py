"""The dropout recipe's data (UCI and OULAD at-risk), preprocessing, splits, balance, metrics and model."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from trainkit.tabular import oulad
from trainkit.recipes.dropout.datamodule import OULADAtRiskDataModule, UCIDropoutDataModule
from trainkit.recipes.dropout.model import TabularMLP
from trainkit.tabular.objective import ClassifierObjective
from trainkit.tabular.datamodule import Preprocessor, Raw, oversample, split_rows, stratified_folds
from trainkit.tabular.tiny_data import write_oulad, write_uci
from trainkit.cli import CONFIG_DIR
from trainkit.errors import ConfigError, DataError

UCI_CFG = OmegaConf.load(CONFIG_DIR / "datamodule" / "uci_dropout.yaml")
OULAD_CFG = OmegaConf.load(CONFIG_DIR / "datamodule" / "oulad_at_risk.yaml")


def uci(path: Path, **kwargs) -> UCIDropoutDataModule:
    """The datamodule as configs/datamodule/uci_dropout.yaml sets it up, with `kwargs` changed."""
    kwargs = {"numeric": list(UCI_CFG.numeric), "categorical": list(UCI_CFG.categorical), **kwargs}
    return UCIDropoutDataModule(path=str(path), **kwargs)


def at_risk(path: Path, **kwargs) -> OULADAtRiskDataModule:
    kwargs = {"numeric": list(OULAD_CFG.numeric), "categorical": list(OULAD_CFG.categorical), **kwargs}
    return OULADAtRiskDataModule(path=str(path), **kwargs)


def _rewrite(path: Path, edit) -> None:
    """Apply edit(list of lines) to a gzipped text file (BOM kept)."""
    text = gzip.decompress(path.read_bytes()).decode("utf-8-sig")
    lines = text.split("\n")
    edit(lines)
    path.write_bytes(gzip.compress("\n".join(lines).encode("utf-8-sig")))


@pytest.fixture(scope="module")
def uci_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uci")
    write_uci(folder)
    return folder


@pytest.fixture(scope="module")
def oulad_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("oulad")
    write_oulad(folder)
    return folder


# -- splits --------------------------------------------------------------------------------------
def test_stratified_split_is_disjoint_complete_and_keeps_class_shares():
    labels = np.repeat([0, 1, 2], [100, 60, 40])
    rows = split_rows(labels, None, 0.2, 0.25, None, 0, seed=3)
    together = np.concatenate(list(rows.values()))
    assert sorted(together.tolist()) == list(range(len(labels)))  # every row once
    assert np.bincount(labels[rows["test"]]).tolist() == [20, 12, 8]
    assert np.bincount(labels[rows["valid"]]).tolist() == [20, 12, 8]  # 25% of each class of the pool
    again = split_rows(labels, None, 0.2, 0.25, None, 0, seed=3)
    assert all(np.array_equal(rows[k], again[k]) for k in rows)  # the same split on every run


def test_folds_partition_the_pool_and_the_test_set_stays_fixed():
    labels = np.repeat([0, 1, 2], [103, 61, 37])
    single = split_rows(labels, None, 0.2, 0.2, None, 0, seed=0)
    folds = [split_rows(labels, None, 0.2, 0.2, 5, k, seed=0) for k in range(5)]
    pool = np.concatenate([single["train"], single["valid"]])
    for rows in folds:
        assert np.array_equal(rows["test"], single["test"])
        assert not set(rows["train"]) & set(rows["valid"])
        assert sorted(np.concatenate([rows["train"], rows["valid"]]).tolist()) == sorted(pool.tolist())
    valids = [set(rows["valid"].tolist()) for rows in folds]
    assert sum(len(v) for v in valids) == len(pool) and set().union(*valids) == set(pool.tolist())  # disjoint cover
    sizes = [len(v) for v in valids]
    assert max(sizes) - min(sizes) <= 1
    for c in range(3):  # every class spread evenly over the folds
        per_fold = [int((labels[list(v)] == c).sum()) for v in valids]
        assert max(per_fold) - min(per_fold) <= 1


def test_stratified_folds_fold_sizes_differ_by_at_most_one():
    fold_of = stratified_folds(np.array([0] * 7 + [1] * 5), 3, np.random.default_rng(0))
    assert sorted(np.bincount(fold_of).tolist()) == [4, 4, 4]


def test_datamodule_folds_cover_the_pool(uci_dir):
    single = uci(uci_dir)
    single.setup("fit")
    pool = set(np.concatenate([single.rows["train"], single.rows["valid"]]).tolist())
    seen = set()
    for k in range(5):
        data = uci(uci_dir, folds=5, fold=k)
        data.setup("fit")
        assert np.array_equal(data.rows["test"], single.rows["test"])
        assert not seen & set(data.rows["valid"].tolist())
        seen |= set(data.rows["valid"].tolist())
    assert seen == pool


@pytest.mark.parametrize("kwargs", [{"fold": 1}, {"folds": 5, "fold": 5}, {"folds": 1}, {"balance": "smote"}])
def test_bad_split_settings_are_config_errors(uci_dir, kwargs):
    with pytest.raises(ConfigError):
        uci(uci_dir, **kwargs)


# -- preprocessing -------------------------------------------------------------------------------
def test_preprocessing_is_fitted_on_the_training_rows_only():
    numeric = np.array([[1.0], [3.0], [np.nan], [100.0]])
    categorical = np.array([["a"], ["b"], ["a"], ["z"]])
    raw = Raw(numeric, categorical, np.zeros(4, dtype=np.int64), Path("x"))
    p = Preprocessor(raw, np.array([0, 1, 2]), max_categories=8, categorical_names=["c"])
    assert p.mean.tolist() == [2.0] and p.std.tolist() == [1.0]  # 100 (not a training row) is ignored
    assert p.numeric(numeric)[:, 0].tolist() == [-1.0, 1.0, 0.0, 98.0]  # missing -> the training mean
    assert p.categorical(categorical)[:, 0].tolist() == [1, 2, 1, 0]  # "z" was never seen in training


def test_uci_tensors_are_scaled_by_training_statistics(uci_dir):
    data = uci(uci_dir)
    data.setup("fit")
    train = data._datasets["train"].tensors["numeric"]
    assert torch.allclose(train.mean(0), torch.zeros(train.shape[1]), atol=1e-5)
    valid = data._datasets["valid"].tensors["numeric"]
    assert not torch.allclose(valid.mean(0), torch.zeros(valid.shape[1]), atol=1e-3)


def test_changing_held_out_rows_does_not_change_the_training_tensors(tmp_path, uci_dir):
    first = uci(uci_dir)
    first.setup("fit")
    test_line = int(first.rows["test"][0]) + 1  # the lines list: 0 is the header
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "data.csv.gz").write_bytes((uci_dir / "data.csv.gz").read_bytes())

    def edit(lines):
        fields = lines[test_line].split(",")
        fields[3] = "7777"  # a Course code no training row has
        fields[12] = "999.5"  # an extreme admission grade
        lines[test_line] = ",".join(fields)

    _rewrite(changed / "data.csv.gz", edit)
    second = uci(changed)
    second.setup("fit")
    for name in ("numeric", "categorical"):
        assert torch.equal(first._datasets["train"].tensors[name], second._datasets["train"].tensors[name])
    assert second._datasets["test"].tensors["categorical"][0, 2] == 0  # the unseen course


def test_semicolon_separated_uci_file_reads_the_same(tmp_path, uci_dir):
    write_uci(tmp_path, separator=";")
    a, b = uci(uci_dir), uci(tmp_path)
    a.setup("fit")
    b.setup("fit")
    assert torch.equal(a._datasets["train"].tensors["numeric"], b._datasets["train"].tensors["numeric"])


def test_too_few_category_slots_names_the_column_and_the_fix(uci_dir):
    data = uci(uci_dir, max_categories=3)
    with pytest.raises(DataError, match=r"column 'Application mode'.*datamodule.max_categories=5"):
        data.setup("fit")


# -- balance -------------------------------------------------------------------------------------
def test_class_weights_give_every_class_the_same_total(uci_dir):
    data = uci(uci_dir, balance="class_weights")
    data.setup("fit")
    t = data._datasets["train"].tensors
    totals = torch.zeros(3).index_add_(0, t["label"], t["weight"])
    assert torch.allclose(totals, totals.mean().expand(3))
    assert torch.all(data._datasets["valid"].tensors["weight"] == 1)


def test_sampler_balance_oversamples_to_the_largest_class(uci_dir):
    plain, sampled = uci(uci_dir, balance="none"), uci(uci_dir, balance="sampler")
    plain.setup("fit")
    sampled.setup("fit")
    counts = torch.bincount(sampled._datasets["train"].tensors["label"]).tolist()
    assert len(set(counts)) == 1 and counts[0] == max(torch.bincount(plain._datasets["train"].tensors["label"]).tolist())
    assert torch.all(sampled._datasets["train"].tensors["weight"] == 1)
    assert len(sampled._datasets["valid"]) == len(plain._datasets["valid"])  # evaluation is never resampled


def test_oversample_repeats_each_row_evenly():
    rows = np.arange(10)
    labels = np.array([0] * 7 + [1] * 3)
    out = oversample(rows, labels, np.random.default_rng(0))
    counts = np.bincount(out, minlength=10)
    assert counts[:7].tolist() == [1] * 7 and sorted(counts[7:].tolist()) == [2, 2, 3]


# -- errors --------------------------------------------------------------------------------------
def test_absent_path_is_a_data_error_naming_it(tmp_path):
    data = uci(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"datamodule.path=.*nowhere.*no such folder.*TRAINKIT_DATA"):
        data.prepare_data()


def test_folder_without_the_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"no data.csv.gz or data.csv"):
        uci(tmp_path).setup("fit")


def test_missing_column_names_the_file_and_column(tmp_path):
    write_uci(tmp_path)
    _rewrite(tmp_path / "data.csv.gz", lambda lines: lines.__setitem__(0, lines[0].replace("Course", "Curso")))
    with pytest.raises(DataError, match=r"data.csv.gz, line 1: no column 'Course'"):
        uci(tmp_path).setup("fit")


def test_bad_number_names_the_file_line_and_column(tmp_path):
    write_uci(tmp_path)

    def edit(lines):
        fields = lines[5].split(",")
        fields[12] = "high"
        lines[5] = ",".join(fields)

    _rewrite(tmp_path / "data.csv.gz", edit)
    with pytest.raises(DataError, match=r"data.csv.gz, line 6, column 'Admission grade': 'high' is not a number"):
        uci(tmp_path).setup("fit")


def test_unknown_class_names_the_line(tmp_path):
    write_uci(tmp_path)
    _rewrite(tmp_path / "data.csv.gz", lambda lines: lines.__setitem__(3, lines[3].rsplit(",", 1)[0] + ",Transferred"))
    with pytest.raises(DataError, match=r"line 4, column 'Target': 'Transferred' is not one of Dropout"):
        uci(tmp_path).setup("fit")


def test_truncated_gzip_is_a_data_error(tmp_path):
    write_uci(tmp_path)
    (tmp_path / "data.csv.gz").write_bytes((tmp_path / "data.csv.gz").read_bytes()[:100])
    with pytest.raises(DataError, match="not a valid gzip file"):
        uci(tmp_path).setup("fit")


# -- OULAD ---------------------------------------------------------------------------------------
def test_at_risk_labels_and_the_presentation_split(oulad_dir):
    data = at_risk(oulad_dir, split="presentation")
    data.setup("fit")
    students = oulad.read_students(oulad_dir)
    presentation = students.columns["code_presentation"]
    assert set(presentation[data.rows["test"]]) == {"2014B", "2014J"}
    assert set(presentation[np.concatenate([data.rows["train"], data.rows["valid"]])]) == {"2013B", "2013J"}
    labels = data._datasets["test"].tensors["label"].numpy()
    results = students.columns["final_result"][data.rows["test"]]
    assert np.array_equal(labels == 0, np.isin(results, ["Withdrawn", "Fail"]))


def test_random_oulad_split_is_stratified(oulad_dir):
    data = at_risk(oulad_dir)
    data.setup("fit")
    labels = np.where(np.isin(oulad.read_students(oulad_dir).columns["final_result"], ["Withdrawn", "Fail"]), 0, 1)
    n = np.bincount(labels)
    assert np.bincount(labels[data.rows["test"]]).tolist() == [round(0.2 * n[0]), round(0.2 * n[1])]


def _daily(folder: Path, rows: list[str], quoted: bool = False) -> None:
    header = ",".join(f'"{c}"' if quoted else c for c in oulad.DAILY_COLUMNS)
    (folder / "studentVle_daily.csv.gz").write_bytes(gzip.compress("\n".join([header, *rows, ""]).encode()))


def test_click_features_count_the_window(tmp_path, oulad_dir):
    for name in ("studentInfo.csv.gz", "studentRegistration.csv.gz"):
        (tmp_path / name).write_bytes((oulad_dir / name).read_bytes())
    students = oulad.read_students(tmp_path)
    # The first student (AAA 2013J, id 10000): before the start, twice inside the window, once after it.
    _daily(tmp_path, ["AAA,2013J,10000,-3,2,2,5", "AAA,2013J,10000,0,1,1,3", "AAA,2013J,10000,9,4,3,10",
                      "AAA,2013J,10000,10,1,1,100", "ZZZ,2013J,10000,1,1,1,1"])
    clicks = oulad.read_daily_clicks(tmp_path, students)
    assert clicks.row.tolist() == [0, 0, 0, 0, -1]  # an unknown presentation matches no student
    f = {k: v[0] for k, v in oulad.click_features(students, clicks, days=10).items()}
    assert f["clicks"] == pytest.approx(np.log1p(18))
    assert f["active_days"] == 3
    assert f["site_visits"] == pytest.approx(np.log1p(6))
    assert f["clicks_before_start"] == pytest.approx(np.log1p(5))
    assert f["clicks_last_week"] == pytest.approx(np.log1p(10))  # days 3..9
    assert f["days_since_active"] == 0
    none = oulad.click_features(students, clicks, days=10)
    assert none["clicks"][1] == 0 and none["days_since_active"][1] == 11


def test_fast_and_careful_daily_readers_agree(tmp_path, oulad_dir):
    for name in ("studentInfo.csv.gz", "studentRegistration.csv.gz"):
        (tmp_path / name).write_bytes((oulad_dir / name).read_bytes())
    students = oulad.read_students(tmp_path)
    fast = oulad.read_daily_clicks(oulad_dir, students)
    text = gzip.decompress((oulad_dir / "studentVle_daily.csv.gz").read_bytes()).decode()
    body = text.split("\n")[1:]
    quoted = ['"' + line.replace(",", '","') + '"' for line in body if line]  # quoting forces the careful reader
    _daily(tmp_path, quoted, quoted=True)
    careful = oulad.read_daily_clicks(tmp_path, students)
    for name in ("row", "date", "n_rows", "n_sites", "sum_click"):
        assert np.array_equal(getattr(fast, name), getattr(careful, name)), name


def test_bad_daily_value_names_the_file_line_and_column(tmp_path, oulad_dir):
    for name in ("studentInfo.csv.gz", "studentRegistration.csv.gz"):
        (tmp_path / name).write_bytes((oulad_dir / name).read_bytes())
    _daily(tmp_path, ["AAA,2013J,10000,-3,2,2,5", "AAA,2013J,10000,0,1,1,lots"])
    with pytest.raises(DataError, match=r"studentVle_daily.csv.gz, line 3, column 'sum_click': 'lots' is not an integer"):
        oulad.read_daily_clicks(tmp_path, oulad.read_students(tmp_path))


def test_missing_oulad_column_and_bad_result_are_data_errors(tmp_path, oulad_dir):
    (tmp_path / "studentRegistration.csv.gz").write_bytes((oulad_dir / "studentRegistration.csv.gz").read_bytes())
    (tmp_path / "studentInfo.csv.gz").write_bytes((oulad_dir / "studentInfo.csv.gz").read_bytes())
    _rewrite(tmp_path / "studentInfo.csv.gz", lambda lines: lines.__setitem__(2, lines[2].replace('"Pass"', '"Passed"')))
    with pytest.raises(DataError, match=r"studentInfo.csv.gz, line 3, column 'final_result': 'Passed'"):
        at_risk(tmp_path).setup("fit")
    _rewrite(tmp_path / "studentInfo.csv.gz", lambda lines: lines.__setitem__(0, lines[0].replace("imd_band", "imd")))
    with pytest.raises(DataError, match=r"studentInfo.csv.gz, line 1: no column 'imd_band'"):
        at_risk(tmp_path).setup("fit")


def test_demographics_only_does_not_need_the_clickstream(tmp_path, oulad_dir):
    for name in ("studentInfo.csv.gz", "studentRegistration.csv.gz"):
        (tmp_path / name).write_bytes((oulad_dir / name).read_bytes())
    data = at_risk(tmp_path, numeric=["studied_credits", "date_registration"])
    data.setup("fit")
    assert data._datasets["train"].tensors["numeric"].shape[1] == 2
    with pytest.raises(DataError, match="no studentVle_daily.csv.gz or studentVle_daily.csv"):
        at_risk(tmp_path).setup("fit")


def test_unknown_oulad_feature_is_a_config_error(oulad_dir):
    with pytest.raises(ConfigError, match="'clicks_per_hour' is not an OULAD feature"):
        at_risk(oulad_dir, numeric=["clicks_per_hour"])


# -- model and metrics ---------------------------------------------------------------------------
def test_model_input_follows_the_feature_lists():
    model = TabularMLP(numeric=["a", "b", "c"], categorical=["x", "y"], classes=["p", "q", "r"], embed_dim=4,
                       hidden_size=16)
    assert model.body[0].in_features == 3 + 2 * 4
    logits = model(torch.randn(5, 3), torch.tensor([[0, 63]] * 5))
    assert logits.shape == (5, 3)
    with pytest.raises(ConfigError):
        TabularMLP(numeric=[], categorical=[], classes=["p", "q"])


class _OneProcess:
    """What ClassifierObjective needs of a module outside a Trainer."""

    def __init__(self):
        self.param = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        return iter([self.param])

    def sum_over_processes(self, tensor, async_op=False):
        return type("Done", (), {"wait": lambda _: tensor})() if async_op else tensor


def test_metrics_are_exact_over_the_epoch():
    objective = ClassifierObjective(3)
    logged = {}
    log = lambda name, value, **kw: logged.setdefault(name, []).append((float(value), kw.get("batch_size")))  # noqa: E731
    # Two batches; argmax predictions: [0, 1, 2, 0] and [2, 2]; labels [0, 1, 1, 2] and [2, 0].
    logits = [torch.log(torch.tensor([[.7, .2, .1], [.1, .8, .1], [.2, .2, .6], [.5, .3, .2]])),
              torch.log(torch.tensor([[.1, .1, .8], [.3, .1, .6]]))]
    labels = [torch.tensor([0, 1, 1, 2]), torch.tensor([2, 0])]
    for lg, lb in zip(logits, labels):
        objective.evaluation_step(lg, {"label": lb}, "val", log)
    objective.evaluation_epoch_end("val", log, _OneProcess())
    value = {k: v[-1][0] for k, v in logged.items()}
    assert value["val/acc"] == pytest.approx(3 / 6)
    # Class 0: tp 1, predicted 2, true 2 -> F1 0.5; class 1: tp 1, pred 1, true 2 -> 2/3; class 2: tp 1, pred 3, true 2 -> 0.4
    assert value["val/f1"] == pytest.approx(0.5)
    assert value["val/macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0.4) / 3)
    # P(class 0) of the positives (.7, .3) vs the negatives (.1, .2, .5, .1): pairs won 4 + 3 of 8
    assert value["val/auc"] == pytest.approx(7 / 8)
    assert [bs for _, bs in logged["val/loss"]] == [4, 2]


def test_training_loss_is_the_weighted_mean():
    class Module(_OneProcess):
        trainer = type("T", (), {"world_size": 1})()

        def log(self, *args, **kwargs):
            pass

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    batch = {"label": torch.tensor([0, 0, 1]), "weight": torch.tensor([1.0, 3.0, 2.0])}
    loss = ClassifierObjective(2).training_step(lambda: logits, batch, Module())
    ce = torch.nn.functional.cross_entropy(logits, batch["label"], weight=None, reduction="none")
    assert loss.item() == pytest.approx(float((ce * batch["weight"]).sum() / 6))
