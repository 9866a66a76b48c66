"""Your own project: a folder outside the repository with its configs and code, run from below it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import metric_rows, run_cli
from tests.integration.test_slurm import slurm_cluster  # noqa: F401 - the fixture, for the SLURM test
from tests.project_files import project_env, write_project


@pytest.fixture
def project(tmp_path):
    return write_project(tmp_path / "proj")


def tk(project, *args, timeout=300, env=None):
    return run_cli(*args, cwd=project / "work", timeout=timeout, env={**project_env(), **(env or {})})


def test_help_lists_the_projects_options_beside_the_built_in_ones(project):
    result = tk(project, "--help")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ") and line.split()}
    assert "tiny*" in lines["model"] and "broken*" in lines["model"] and "knowledge_tracing" in lines["model"]
    assert "tiny*" in lines["experiment"] and "kt_dkt_cosine" in lines["experiment"]
    assert "default*" in lines["logger"] and "tensorboard" in lines["logger"]  # the project's default replaces ours
    assert f"project: {project}" in result.stdout


def test_fit_in_one_process_with_the_projects_code(project):
    run = project / "runs" / "one"
    result = tk(project, "fit", "experiment=tiny", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "final validation: val/loss=" in result.stdout
    assert f"root: {project}" in (run / "config.yaml").read_text()
    assert len(metric_rows(run)) > 2
    assert not list(run.glob("events.out.tfevents.*"))  # logger=default of the project: csv alone


def test_fit_with_two_processes_imports_the_project_in_every_worker(project):
    run = project / "runs" / "two"
    result = tk(project, "fit", "experiment=tiny", "trainer.devices=2", "trainer.max_epochs=1", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "final validation: val/loss=" in result.stdout


def test_an_outside_torchrun_imports_the_project_in_every_rank(project):
    run = project / "runs" / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "trainkit", "fit",
           "experiment=tiny", "trainer.devices=2", "trainer.max_epochs=1", f"hydra.run.dir={run}"]
    result = subprocess.run(cmd, cwd=project / "work", capture_output=True, text=True, timeout=300,
                            env={**os.environ, **project_env()})
    assert result.returncode == 0, result.stderr
    assert "final validation: val/loss=" in result.stdout and (run / "config.yaml").exists()


def test_config_dir_from_anywhere_and_a_bad_one(project, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    job = run_cli("fit", "experiment=tiny", "--cfg", "job", cwd=elsewhere,
                  env={**project_env(), "TRAINKIT_CONFIG_DIR": str(project / "configs")})
    assert job.returncode == 0 and "mypkg.model.TinyRegressor" in job.stdout, job.stderr
    job = run_cli("fit", "--config-dir", str(project / "configs"), "model=tiny", "--cfg", "job", cwd=elsewhere,
                  env=project_env())
    assert job.returncode == 0 and "mypkg.model.TinyRegressor" in job.stdout, job.stderr
    bad = run_cli("fit", "--config-dir", str(tmp_path / "nope"), cwd=elsewhere, env=project_env())
    assert bad.returncode == 2 and "--config-dir" in bad.stderr and "no such folder" in bad.stderr


def test_an_unknown_option_lists_the_projects_and_the_built_in_ones(project):
    result = tk(project, "fit", "model=tinyy")
    assert result.returncode == 2
    assert "model=tinyy is not an option" in result.stderr and "tiny" in result.stderr and "sakt" in result.stderr


def test_an_unimportable_target_names_the_config_file_and_the_folder(project):
    result = tk(project, "fit", "experiment=tiny", "model=broken", f"hydra.run.dir={project / 'runs' / 'broken'}")
    assert result.returncode == 2, result.stdout + result.stderr
    err = result.stderr
    assert "model._target_='mypkg.nothing_here.Model' cannot be imported" in err
    assert str(project / "configs" / "model" / "broken.yaml") in err and f"project folder {project}" in err


def test_a_crash_in_the_projects_code_says_where_in_it(project):
    result = tk(project, "fit", "experiment=tiny", "+model.fail=true", f"hydra.run.dir={project / 'runs' / 'crash'}")
    assert result.returncode == 1
    assert "training failed: ValueError: the project's own bug (at mypkg/model.py:" in result.stderr


def test_help_from_a_project_does_not_import_torch(project):
    code = "import sys\nfrom trainkit.cli import main\nassert main(['--help']) == 0\nassert 'torch' not in sys.modules\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=project / "work", capture_output=True, text=True,
                            env={**project_env(), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr


def test_test_of_a_run_directory_takes_its_best_checkpoint(project):
    run = project / "runs" / "best"
    # mode=max on a falling loss: the best checkpoint is the first epoch's, not the last one
    result = tk(project, "fit", "experiment=tiny", "trainer.max_epochs=3", "callbacks.model_checkpoint.mode=max",
                f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr
    best = next(p for p in (run / "checkpoints").iterdir() if p.name.startswith("epoch=0-"))
    assert (run / "checkpoints" / "last").resolve() != best

    result = tk(project, "test", str(run))
    assert result.returncode == 0, result.stderr
    assert f"with its best checkpoint by val/loss (max): {best}" in result.stdout
    assert f"loaded weights from {best}" in result.stdout and "test/loss=" in result.stdout
    (evaluation,) = run.glob("test_*")
    assert (evaluation / "metrics.csv").exists()
    assert "command: fit" in (run / "config.yaml").read_text()  # the run's own config is left as it was


@pytest.mark.slurm
def test_fit_and_resume_on_slurm_from_the_project(project, request):
    request.getfixturevalue("slurm_cluster")
    run = project / "runs" / "slurm"
    result = tk(project, "fit", "experiment=tiny", "launcher=slurm", "trainer.max_epochs=1", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "final validation: val/loss=" in result.stdout
    result = tk(project, "resume", str(run), "trainer.max_epochs=2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "submitted SLURM job" in result.stdout and "resumed from" in result.stdout
    assert "epoch 2/2 done" in result.stdout
