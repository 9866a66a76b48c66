"""Finding a project and layering its configs (torch-free)."""
from __future__ import annotations

import pytest

from trainkit.errors import ConfigError
from trainkit.project import Project, builtin_config_dir, find_project, record


def _configs(root, *files):
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("a: 1\n")
    return root


def test_a_configs_folder_is_found_from_below_and_its_options_win(tmp_path, monkeypatch):
    monkeypatch.delenv("TRAINKIT_CONFIG_DIR", raising=False)
    root = _configs(tmp_path / "proj", "configs/model/mine.yaml", "configs/logger/default.yaml", "configs/extra/x.yaml")
    (root / "a" / "b").mkdir(parents=True)
    project = find_project(root / "a" / "b")
    assert project == Project(root, root / "configs")
    assert project.main_dir == root / "configs" and project.search_path[1] == builtin_config_dir()
    model = project.options("model")
    assert model["mine"] is True and model["knowledge_tracing"] is False
    assert project.options("logger")["default"] is True and project.options("logger")["csv"] is False
    assert "extra" in project.groups() and "optimizer" in project.groups()
    assert project.option_file("logger", "default") == root / "configs" / "logger" / "default.yaml"
    assert project.option_file("logger", "csv") == builtin_config_dir() / "logger" / "csv.yaml"
    sources = record(project, {"model": "mine", "hydra/job_logging": "none", "debug": None})["sources"]
    assert sources == {"model": str(root / "configs" / "model" / "mine.yaml")}


def test_pyproject_names_the_config_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("TRAINKIT_CONFIG_DIR", raising=False)
    root = _configs(tmp_path / "proj", "conf/model/mine.yaml")
    (root / "pyproject.toml").write_text('[project]\nname = "p"\n\n[tool.trainkit]\nconfig_dir = "conf"\n')
    assert find_project(root) == Project(root, root / "conf")
    (root / "pyproject.toml").write_text('[tool.trainkit]\nconfig_dir = "nope"\n')
    with pytest.raises(ConfigError, match="config_dir = 'nope'"):
        find_project(root)


def test_an_unrelated_configs_folder_and_trainkits_own_are_not_projects(tmp_path, monkeypatch):
    monkeypatch.delenv("TRAINKIT_CONFIG_DIR", raising=False)
    _configs(tmp_path / "other", "configs/nginx/site.yaml")
    assert find_project(tmp_path / "other") == Project()
    assert find_project(builtin_config_dir()) == Project()
    monkeypatch.setenv("TRAINKIT_CONFIG_DIR", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="TRAINKIT_CONFIG_DIR"):
        find_project(tmp_path)
