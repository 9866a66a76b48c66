"""`trainkit init <dir> [--recipe NAME] [--package NAME]`: a new project, made from one recipe.

    trainkit init my_kt                          # the knowledge-tracing recipe (DKT, simulated students)
    trainkit init my_gpt --recipe tiny_gpt       # also: dropout, engagement
    cd my_kt && trainkit fit                     # trains at once; pytest runs the smoke test

It writes, into a new or empty folder:

    configs/fit.yaml                 the primary config: trainkit's own, with this project's model and
                                     datamodule and the recipe's settings (it replaces trainkit's fit.yaml;
                                     every other group is trainkit's built-in one)
    configs/model/<package>.yaml     the recipe's model config, `_target_` in your package
    configs/datamodule/<package>.yaml
    <package>/                       the recipe's model and datamodule source and the files they import,
                                     copied: your code now (it imports only trainkit and itself)
    tests/test_smoke.py              `trainkit fit` for two steps on tiny data in the real format
    pyproject.toml, README.md        the project's name, its test settings, the commands

`<package>` is the folder's name as a Python identifier, unless --package names it. Torch-free:
it only copies and rewrites text.
"""
from __future__ import annotations

import importlib.util
import keyword
import re
from dataclasses import dataclass
from pathlib import Path

from trainkit import builtin
from trainkit.errors import UserError


@dataclass(frozen=True)
class Recipe:
    experiment: str | None  # trainkit's experiment preset the project starts from (None: fit.yaml's defaults)
    about: str  # one line for the README
    data: str  # where the data comes from, for the README
    tiny_data: str  # the smoke test's `tiny_data(tmp_path) -> overrides`: small data in the real format


RECIPES = {
    "knowledge_tracing": Recipe(
        None,
        "DKT (an LSTM) predicting whether a student answers the next question right",
        "simulated students (no download); `datamodule.path=<folder>` reads train.txt/valid.txt/test.txt "
        "in the DKT repositories' 3-line format",
        '''def tiny_data(tmp_path: Path) -> list[str]:
    return ["datamodule.num_students=300", "datamodule.batch_size=16"]  # a small simulated cohort
''',
    ),
    "dropout": Recipe(
        "dropout_uci",
        "a tabular MLP predicting who drops out (UCI's Dropout / Enrolled / Graduate)",
        "`<data_dir>/uci_dropout/data.csv.gz`: UCI's dataset 697 (CC BY 4.0), "
        "https://archive.ics.uci.edu/dataset/697",
        '''def tiny_data(tmp_path: Path) -> list[str]:
    from trainkit.tabular.tiny_data import write_uci

    write_uci(tmp_path)  # a few hundred rows in UCI's own format
    return [f"datamodule.path={tmp_path}", "datamodule.batch_size=16"]
''',
    ),
    "engagement": Recipe(
        "engagement",
        "a GRU over four weeks of daily VLE clicks, warning early which OULAD students are at risk",
        "`<data_dir>/oulad/` (studentInfo, studentRegistration, studentVle_daily .csv.gz): OULAD (CC BY 4.0), "
        "https://analyse.kmi.open.ac.uk/open_dataset",
        '''def tiny_data(tmp_path: Path) -> list[str]:
    from trainkit.tabular.tiny_data import write_oulad

    write_oulad(tmp_path)  # a few hundred students in OULAD's own formats
    return [f"datamodule.path={tmp_path}", "datamodule.batch_size=16"]
''',
    ),
    "tiny_gpt": Recipe(
        "tiny_gpt",
        "a byte-level GPT (0.8M parameters) trained on plain text",
        "`<data_dir>/openstax_text/`: OpenStax textbooks as plain text (CC BY 4.0, https://openstax.org); "
        "`datamodule.path=<folder or file>` reads any .txt / .txt.gz",
        '''def tiny_data(tmp_path: Path) -> list[str]:
    book = tmp_path / "book.txt"
    book.write_text("\\n\\n".join(f"## Section {i}\\n\\nExample {i} explains the fraction {i * 7} in plain words."
                                  for i in range(200)))
    return [f"datamodule.path={book}", "model.block_size=32", "datamodule.batch_size=8"]
''',
    ),
}
DEFAULT_RECIPE = "knowledge_tracing"
USAGE = (f"usage: trainkit init <dir> [--recipe {'|'.join(RECIPES)}] [--package NAME]\n"
         f"  writes a new project into <dir> (new or empty) from one recipe (default {DEFAULT_RECIPE}); "
         "--package names its Python package (default: the folder's name)")


def init_command(args: list[str]) -> int:
    """The `trainkit init` command line; UserError for bad input (exit 2)."""
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    folder, recipe, package = None, DEFAULT_RECIPE, None
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        name, eq, value = arg.partition("=")
        if name in ("--recipe", "--package"):
            if not eq:
                if not rest:
                    raise UserError(f"{name} needs a value\n{USAGE}")
                value = rest.pop(0)
            if name == "--recipe":
                recipe = value
            else:
                package = value
        elif arg.startswith("-") or folder is not None:
            raise UserError(f"trainkit init: unexpected argument {arg!r}\n{USAGE}")
        else:
            folder = arg
    if folder is None:
        raise UserError(f"trainkit init needs the project's folder\n{USAGE}")
    root = Path(folder).expanduser().resolve()
    written = init(root, recipe, package)
    cd = "" if root == Path.cwd().resolve() else f"cd {folder} && "
    print(f"wrote {len(written)} files in {root}: a project from the {recipe} recipe, its code in {written[0].parent.name}/")
    print(f"next:  {cd}trainkit fit        (README.md has the other commands; pytest runs its smoke test)")
    return 0


def init(root: Path, recipe: str = DEFAULT_RECIPE, package: str | None = None) -> list[Path]:
    """Write the project; the files written, the package's first."""
    if recipe not in RECIPES:
        raise UserError(f"--recipe {recipe}: not a recipe; choose one of {', '.join(RECIPES)}")
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} is a file; trainkit init writes a project into a new or empty folder")
    if root.is_dir() and any(root.iterdir()):
        raise UserError(f"{root} is not empty; trainkit init writes only into a new or empty folder "
                        "(choose another folder, or empty this one)")
    package = package or _package_name(root.name)
    _check_package(package)
    files = _project_files(recipe, package)
    written = []
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def _package_name(folder: str) -> str:
    name = re.sub(r"\W", "_", folder.lower()).strip("_") or "project"
    return f"project_{name}" if name[0].isdigit() else name


def _check_package(name: str) -> None:
    fix = "choose another with --package NAME"
    if not name.isidentifier() or keyword.iskeyword(name):
        raise UserError(f"--package {name}: not a Python package name (letters, digits, _); {fix}")
    if name in ("configs", "tests", "outputs", "multirun"):
        raise UserError(f"the package name {name!r} is one of the project's own folders; {fix}")
    if importlib.util.find_spec(name) is not None:
        raise UserError(f"the package name {name!r} would hide the installed module {name!r}; {fix}")


# -- what the project holds ----------------------------------------------------------------------
def _project_files(recipe_name: str, package: str) -> dict[str, str]:
    recipe = RECIPES[recipe_name]
    configs = builtin.config_dir()
    fit = (configs / "fit.yaml").read_text()
    choices = dict(re.findall(r"^  - (\w+): (\S+)", fit, re.M))
    experiment = configs / "experiment" / f"{recipe.experiment}.yaml" if recipe.experiment else None
    overrides = dict(re.findall(r"^  - override /(\w+): (\S+)", experiment.read_text(), re.M)) if experiment else {}
    model, datamodule = overrides.get("model", choices["model"]), overrides.get("datamodule", choices["datamodule"])
    model_cfg = (configs / "model" / f"{model}.yaml").read_text()
    datamodule_cfg = (configs / "datamodule" / f"{datamodule}.yaml").read_text()
    source = builtin.recipe_dir(recipe_name)
    prefix = f"trainkit.recipes.{recipe_name}."
    modules = [m for text in (model_cfg, datamodule_cfg) for m in re.findall(rf"_target_: {re.escape(prefix)}(\w+)\.", text)]
    files = {f"{package}/__init__.py": f'"""{package}: {recipe.about} (from trainkit\'s {recipe_name} recipe)."""\n'}
    for module in _with_imports(source, modules):
        text = (source / f"{module}.py").read_text()
        if "trainkit.recipes" in text.replace(f"python -m trainkit.recipes.{recipe_name}", ""):
            raise RuntimeError(f"trainkit's recipes/{recipe_name}/{module}.py imports another recipe: it cannot be copied alone")
        files[f"{package}/{module}.py"] = text
    files["configs/fit.yaml"] = _fit_yaml(fit, package, recipe_name, overrides, experiment)
    files[f"configs/model/{package}.yaml"] = _option_yaml(model_cfg, "model", package, prefix)
    files[f"configs/datamodule/{package}.yaml"] = _option_yaml(datamodule_cfg, "datamodule", package, prefix)
    files["tests/test_smoke.py"] = SMOKE_TEST.format(package=package, tiny_data=recipe.tiny_data)
    files["pyproject.toml"] = PYPROJECT.format(name=package.replace("_", "-"), package=package, recipe=recipe_name)
    files["README.md"] = README.format(package=package, recipe=recipe_name, about=recipe.about, data=recipe.data,
                                       experiment=recipe.experiment or "none: fit.yaml's defaults")
    return files


def _with_imports(source: Path, modules: list[str]) -> list[str]:
    """`modules` and every module of the recipe folder they import (relatively), in a stable order."""
    found: list[str] = []
    todo = list(dict.fromkeys(modules))
    while todo:
        module = todo.pop(0)
        if module in found:
            continue
        found.append(module)
        text = (source / f"{module}.py").read_text()
        todo += re.findall(r"^\s*from \.(\w+) import", text, re.M)
        for names in re.findall(r"^\s*from \. import ([\w, ]+)", text, re.M):
            todo += [n.strip() for n in names.split(",")]
    return found


def _option_yaml(text: str, group: str, package: str, prefix: str) -> str:
    """A built-in option's file for the project: its command line rewritten, `_target_` in the package."""
    lines = text.splitlines()
    if lines and lines[0].startswith("# trainkit"):
        lines = lines[1:]
    header = f"# trainkit fit {group}={package}        (the project's default: configs/fit.yaml)"
    return "\n".join([header, *lines]).replace(f"_target_: {prefix}", f"_target_: {package}.") + "\n"


def _fit_yaml(fit: str, package: str, recipe: str, overrides: dict[str, str], experiment: Path | None) -> str:
    """trainkit's fit.yaml with this project's options: the model and datamodule in the package, the
    experiment's other group choices, and its settings after the groups (they win over the groups'
    values, as an experiment's do), before `experiment` itself (so experiment=... still wins)."""
    body = fit[fit.index("defaults:"):]
    choices = {**overrides, "model": package, "datamodule": package}
    for group, option in choices.items():
        body = re.sub(rf"^(  - {group}: )\S+", lambda m: m[1] + option, body, count=1, flags=re.M)
    body = re.sub(r"^  - _self_\n", "", body, count=1, flags=re.M)
    body = re.sub(r"^(  - experiment: )", r"  - _self_                 # this file's settings: after the groups, before experiment=\n\1",
                  body, count=1, flags=re.M)
    header = (f"# trainkit fit          (from this folder: {package}'s model and datamodule, trainkit's other groups)\n"
              "# This project's primary config (trainkit init copied trainkit's own fit.yaml and set its options).\n"
              "# `trainkit fit --cfg job` prints the composed config; any group=option of trainkit still works.\n")
    text = header + body.rstrip() + "\n"
    if experiment is not None:
        settings = _settings(experiment.read_text())
        if settings:
            text += f"\n# The {recipe} recipe's settings (trainkit's experiment={experiment.stem}):\n{settings}\n"
    return text


def _settings(text: str) -> str:
    """An experiment file without its comment header and defaults list: its settings, comments kept."""
    lines = text.splitlines()
    i = 0
    while i < len(lines) and (lines[i].startswith("#") or not lines[i].strip()):
        i += 1
    if i < len(lines) and lines[i].startswith("defaults:"):
        i += 1
        while i < len(lines) and lines[i].startswith((" ", "\t", "-")):
            i += 1
    return "\n".join(lines[i:]).strip()


SMOKE_TEST = '''"""Smoke test: `trainkit fit` trains this project's model for two steps on tiny data.

    pytest                       (from the project's folder)
"""
from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


{tiny_data}

def test_fit_trains_two_steps(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "trainkit", "fit", *tiny_data(tmp_path), "trainer.max_steps=2",
         "trainer.log_every_n_steps=1", "trainer.limit_val_batches=2", f"hydra.run.dir={{run}}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={{**os.environ, "TRAINKIT_CACHE": str(tmp_path / "cache")}},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "_target_: {package}.model." in (run / "config.yaml").read_text()  # this project's model, not trainkit's
    with open(run / "metrics.csv") as f:
        losses = [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses
'''

PYPROJECT = '''[project]
name = "{name}"
version = "0.1.0"
description = "A trainkit project (from trainkit's {recipe} recipe)"
requires-python = ">=3.10"
dependencies = ["trainkit"]

[tool.setuptools]
packages = ["{package}"]

[tool.trainkit]
config_dir = "configs"           # trainkit finds this project's configs here, from this folder or below it

[tool.pytest.ini_options]
testpaths = ["tests"]
pythonpath = ["."]
'''

README = '''# {package}

{about}. Made by `trainkit init --recipe {recipe}`: the recipe's model and datamodule are now your
code, in `{package}/`; every other part (trainer, strategies, precision, launchers, loggers,
callbacks, sweeps) is trainkit's.

```bash
trainkit fit                                   # train (outputs/{package}/<date>_<time>_<id>/)
trainkit fit model.hidden_size=128 optimizer.lr=3e-3 trainer.max_epochs=5
trainkit fit --cfg job                         # print the composed config, run nothing
trainkit fit trainer.devices=2                 # two processes (DDP) on this machine
trainkit fit launcher=slurm trainer.num_nodes=2 trainer.devices=1   # SLURM jobs (this folder must be on a filesystem the nodes share)
trainkit fit -m optimizer.lr=1e-3,3e-3         # a sweep: a table of trials at the end
trainkit test trainer.resume=outputs/{package}/<run>/checkpoints/last
pytest                                         # the smoke test: two steps on tiny data
```

## Layout

| path | what |
|---|---|
| `configs/fit.yaml` | the primary config: `model={package}`, `datamodule={package}`, trainkit's other groups, the recipe's settings (trainkit's experiment: {experiment}) |
| `configs/model/{package}.yaml`, `configs/datamodule/{package}.yaml` | the options, `_target_` in `{package}` |
| `{package}/` | the model (`model.py`) and datamodule (`datamodule.py`) and the files they use: they import only `trainkit` and each other |
| `tests/test_smoke.py` | `trainkit fit` for two steps on tiny data in the real format |

Add an option by adding a file, e.g. `configs/model/bigger.yaml`, and pick it with `trainkit fit
model=bigger`. trainkit's own options (`model=`, `datamodule=`, `optimizer=`, `precision=`,
`strategy=`, `launcher=`, ...) stay available beside yours; an option of yours with the same name wins.

## Data

{data}. `data_dir` is `$TRAINKIT_DATA`, else `~/.cache/trainkit/data`; `datamodule.path=` points
anywhere else. A missing file stops the run with exit code 2 and says what is expected where.
'''
