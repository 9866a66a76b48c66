"""`trainkit plot`: metrics.csv of runs (a sweep: its trials) as one PNG of curves."""
from __future__ import annotations

import csv

from trainkit.cli import main
from trainkit.plot import Curves, draw, read_curves


def write_run(folder, lr: float, overrides: list[str] | None = None):
    folder.mkdir(parents=True)
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "epoch", "train/loss", "val/loss", "val/auc"])
        writer.writeheader()
        for step in range(2, 41, 2):
            row = {"step": step, "epoch": step // 20, "train/loss": 1 / (1 + lr * step)}
            if step % 10 == 0:
                row.update({"val/loss": 1.1 / (1 + lr * step), "val/auc": 0.5 + lr * step / 100})
            writer.writerow(row)
    if overrides is not None:
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    return folder


def test_a_sweep_folder_gives_one_line_per_trial_and_prints_the_png(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    (sweep).mkdir()
    (sweep / "multirun.yaml").write_text("{}")
    write_run(sweep / "0", 0.5, ["optimizer.lr=0.001", "model.hidden_size=8"])
    write_run(sweep / "1", 1.0, ["optimizer.lr=0.003", "model.hidden_size=8"])
    assert main(["plot", str(sweep)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(sweep / "curves.png")
    assert (sweep / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_panels_pair_train_and_validation_and_overlay_runs(tmp_path):
    runs = [read_curves(write_run(tmp_path / n, lr) / "metrics.csv", n) for n, lr in (("a", 0.5), ("b", 1.0))]
    fig = draw(runs, str(tmp_path / "c.png"))
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["loss (train solid, val dashed)", "auc (val)"]
    loss = fig.axes[0]
    assert len(loss.lines) == 4  # two runs x (train, val)
    assert [line.get_linestyle() for line in loss.lines] == ["-", "--", "-", "--"]
    assert list(loss.lines[1].get_xdata()) == [10, 20, 30, 40]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b"]
    assert draw([Curves("x", {"lr-AdamW": ([1, 2], [0.1, 0.2])})], str(tmp_path / "d.png")).axes[0].get_title() == "lr-AdamW"


def test_not_a_run_folder_is_exit_2(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "has no metrics.csv" in capsys.readouterr().err
