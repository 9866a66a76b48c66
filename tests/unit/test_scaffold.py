"""`trainkit init`: the files it writes, without running them (tests/integration/test_init.py runs them)."""
from __future__ import annotations

import py_compile
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from trainkit.cli import RUN_ID, main
from trainkit.config import register_configs
from trainkit.scaffold import RECIPES, init


def _compose(project, *overrides):
    register_configs()
    OmegaConf.register_new_resolver("run_id", lambda: RUN_ID, replace=True)
    # The layering trainkit's CLI does for a project: its configs first, the built-in ones after.
    with initialize_config_dir(config_dir=str(project / "configs"), version_base="1.3"):
        return compose("fit", overrides=["hydra.searchpath=[pkg://trainkit.configs]", *overrides])


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_init_copies_the_recipe_as_the_projects_own_package(tmp_path, recipe):
    project = tmp_path / "My-Project"
    written = init(project, recipe)
    package = project / "my_project"
    assert written[0] == package / "__init__.py"
    assert {"model.py", "datamodule.py"} <= {p.name for p in package.iterdir()}
    for path in package.glob("*.py"):
        text = path.read_text()
        assert "recipes." not in text.replace("python -m trainkit.recipes.", ""), path  # imports only trainkit and itself
        py_compile.compile(str(path), doraise=True)
    for name in ("configs/fit.yaml", "tests/test_smoke.py", "README.md", "pyproject.toml"):
        assert (project / name).is_file(), name
    cfg = _compose(project)
    assert cfg.model._target_.startswith("my_project.model.")
    assert cfg.datamodule._target_.startswith("my_project.datamodule.")
    assert cfg.optimizer._target_ == "torch.optim.AdamW"  # a built-in group, still reachable
    assert _compose(project, "optimizer=sgd").optimizer._target_ == "torch.optim.SGD"


def test_init_keeps_the_recipes_settings_and_lets_overrides_win(tmp_path):
    init(tmp_path / "gpt", "tiny_gpt")
    cfg = _compose(tmp_path / "gpt")
    assert cfg.optimizer.lr == 0.002 and cfg.scheduler.warmup_steps == 100  # experiment=tiny_gpt's
    assert cfg.callbacks.model_checkpoint.monitor == "val/loss"
    assert _compose(tmp_path / "gpt", "optimizer.lr=0.01").optimizer.lr == 0.01


def test_init_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["init", str(tmp_path)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("args, message", [
    (["--recipe", "nope"], "not a recipe; choose one of knowledge_tracing, dropout, engagement, tiny_gpt"),
    (["--package", "torch"], "would hide the installed module 'torch'"),
    (["--package", "2fast"], "not a Python package name"),
])
def test_init_bad_arguments_exit_2_naming_the_fix(tmp_path, capsys, args, message):
    assert main(["init", str(tmp_path / "p"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_init_does_not_import_torch(tmp_path):
    code = ("import sys\nfrom trainkit.cli import main\n"
            f"assert main(['init', {str(tmp_path / 'p')!r}, '--recipe', 'engagement']) == 0\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "p" / "p" / "model.py").is_file()


def test_every_recipe_folder_imports_only_trainkit_and_itself():
    import ast

    from trainkit.builtin import recipe_dir

    for recipe in RECIPES:
        for path in recipe_dir(recipe).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom):
                    assert node.level <= 1, f"{path}: imports from outside its folder"
                    names = [node.module or ""] if node.level == 0 else []
                for name in names:
                    assert not name.startswith(("recipes", "trainkit.recipes")), f"{path} imports {name}"
