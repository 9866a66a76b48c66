"""trainkit as a user installs it: the wheel built from this checkout, installed without -e into a
fresh virtual environment (sharing this one's torch through --system-site-packages), run from an
empty folder outside the repository."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import pytest

from tests.conftest import DATA, ROOT, SMALL_DATA, needs_data

pytestmark = pytest.mark.integration

# What never goes into the wheel's build: outputs of runs and earlier builds.
_NOT_SOURCE = shutil.ignore_patterns(".git", "outputs", "multirun", "build", "dist", "*.egg-info", "__pycache__",
                                     ".pytest_cache", "trainkit_logs")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the checkout, so that the build leaves nothing in it."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(work / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (path,) = (work / "dist").glob("trainkit-*.whl")
    return path


@pytest.fixture(scope="session")
def installed(wheel, tmp_path_factory) -> Path:
    """The bin/ folder of a fresh venv with the wheel installed (no dependencies: they are this env's)."""
    env = tmp_path_factory.mktemp("venv") / "env"
    venv.create(env, system_site_packages=True, with_pip=False)  # its pip: this environment's, seen through
    bin_dir = env / "bin"
    result = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                            env=_user_env(bin_dir), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return bin_dir


def _user_env(bin_dir: Path) -> dict[str, str]:
    """A user's shell: the venv first on PATH, nothing pointing into this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRAINKIT_CONFIG_DIR")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = "1"  # tests share few cores
    return env


def _trainkit(bin_dir: Path, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / "trainkit"), *args], cwd=cwd, env=_user_env(bin_dir),
                          capture_output=True, text=True, timeout=timeout)


def test_the_wheel_holds_the_configs_and_recipes_inside_trainkit(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    yaml = {f"trainkit/configs/{p.relative_to(ROOT / 'configs').as_posix()}" for p in (ROOT / "configs").rglob("*.yaml")}
    recipes = {f"trainkit/recipes/{p.relative_to(ROOT / 'recipes').as_posix()}" for p in (ROOT / "recipes").rglob("*.py")}
    code = {p.relative_to(ROOT).as_posix() for p in (ROOT / "trainkit").rglob("*.py")}
    assert len(yaml) > 40 and yaml <= names, sorted(yaml - names)
    assert recipes <= names, sorted(recipes - names)
    assert code <= names, sorted(code - names)
    assert "hydra_plugins/trainkit_sweepers/optuna_sweeper.py" in names  # where Hydra finds the sweeper
    top = {n.split("/")[0] for n in names}
    assert top == {"trainkit", "hydra_plugins", wheel.name.split("-py3")[0] + ".dist-info"}, top


def test_installed_trainkit_runs_from_an_empty_folder(installed, tmp_path):
    where = subprocess.run([str(installed / "python"), "-c", "import trainkit.recipes, trainkit.configs; "
                            "print(trainkit.recipes.__file__, trainkit.configs.__file__)"],
                           cwd=tmp_path, env=_user_env(installed), capture_output=True, text=True)
    assert where.returncode == 0, where.stderr
    assert str(installed.parent) in where.stdout and str(ROOT) not in where.stdout, where.stdout

    started = time.perf_counter()
    help_ = _trainkit(installed, tmp_path, "--help")
    seconds = time.perf_counter() - started
    assert help_.returncode == 0, help_.stderr
    assert "knowledge_tracing" in help_.stdout and "bf16-mixed" in help_.stdout
    print(f"trainkit --help from the wheel: {seconds:.2f} s")

    run = tmp_path / "run"
    fit = _trainkit(installed, tmp_path, "fit", *SMALL_DATA, "debug=fast_dev_run", f"hydra.run.dir={run}")
    assert fit.returncode == 0, fit.stdout[-2000:] + fit.stderr[-3000:]
    assert "final validation:" in fit.stdout and (run / "metrics.csv").is_file()
    assert "_target_: trainkit.recipes.knowledge_tracing.model.DKT" in (run / "config.yaml").read_text()
    assert os.listdir(tmp_path) == ["run"]  # nothing else written where it ran


@needs_data("uci_dropout")
def test_installed_trainkit_trains_a_real_data_experiment(installed, tmp_path):
    run = tmp_path / "run"
    fit = _trainkit(installed, tmp_path, "fit", "experiment=dropout_uci", "trainer.max_steps=5", "trainer.limit_val_batches=2",
                    f"hydra.run.dir={run}")
    assert fit.returncode == 0, fit.stdout[-2000:] + fit.stderr[-3000:]
    assert f"path: {DATA}/uci_dropout" in (run / "config.yaml").read_text()
    assert "val/auc=" in fit.stdout


def test_installed_trainkit_init_then_fit_in_the_project(installed, tmp_path):
    """A user's first five minutes: the console script, a new project, `trainkit fit` inside it."""
    init = _trainkit(installed, tmp_path, "init", "my_kt")
    assert init.returncode == 0, init.stderr
    project = tmp_path / "my_kt"
    run = tmp_path / "run"
    fit = _trainkit(installed, project, "fit", *SMALL_DATA, "debug=fast_dev_run", f"hydra.run.dir={run}")
    assert fit.returncode == 0, fit.stdout[-2000:] + fit.stderr[-3000:]
    assert "_target_: my_kt.model.DKT" in (run / "config.yaml").read_text()  # the project's copy, not trainkit's
