"""Shell completion: commands, groups and their options (a project's too), schema and option keys,
paths; the bash script's handling of `=`; and no torch (nor OmegaConf) imported to answer."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT
from tests.project_files import write_project
from trainkit.completion import complete


def test_commands_groups_options_and_keys():
    assert complete("trainkit f") == ["fit"]
    assert "resume" in complete("trainkit ") and "plot" in complete("trainkit ")
    assert complete("trainkit fit precision=bf") == ["precision=bf16-mixed", "precision=bf16-true"]
    assert {"model=", "model.", "trainer.", "logger="} <= set(complete("trainkit fit "))
    assert complete("trainkit fit trainer.max_s") == ["trainer.max_steps="]  # from the schema
    assert complete("trainkit fit trainer.deterministic=") == ["trainer.deterministic=true", "trainer.deterministic=false"]
    assert "model.hidden_size=" in complete("trainkit fit model.")  # the default option's keys
    assert "model.num_heads=" in complete("trainkit fit model=sakt model.")  # ... or the one on the line
    assert "model.num_heads=" not in complete("trainkit fit model.")
    assert "callbacks.early_stopping.patience=" in complete("trainkit fit callbacks.early_stopping.p")
    assert complete("trainkit fit --dr") == ["--dry-run"]


def test_paths_for_resume_and_run_folders(tmp_path, monkeypatch):
    (tmp_path / "outputs" / "kt" / "run1").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert complete("trainkit fit trainer.resume=") == ["trainer.resume=auto", "trainer.resume=none",
                                                          "trainer.resume=outputs/"]
    assert complete("trainkit fit trainer.resume=outputs/kt/r") == ["trainer.resume=outputs/kt/run1/"]
    assert complete("trainkit resume outputs/k") == ["outputs/kt/"]
    assert complete("trainkit plot outputs/kt/") == ["outputs/kt/run1/"]


def test_a_projects_options_complete_beside_the_built_in_ones(tmp_path, monkeypatch):
    project = write_project(tmp_path / "proj")
    monkeypatch.chdir(project / "work")
    assert complete("trainkit fit model=t") == ["model=tiny", "model=tiny_gpt"]
    assert complete("trainkit fit model=tiny model.h") == ["model.hidden="]
    assert "experiment=tiny" in complete("trainkit fit experiment=")


def test_the_bash_script_completes_after_an_equals_sign_and_imports_no_torch():
    # bash splits `model=sa` into `model`, `=`, `sa`: the script offers what follows the `=`.
    script = subprocess.run([sys.executable, "-m", "trainkit", "--completion", "bash"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    # The candidates are printed only when neither torch nor OmegaConf was imported to find them.
    probe = ("import contextlib, io, sys\nfrom trainkit.cli import main\nout = io.StringIO()\n"
             "with contextlib.redirect_stdout(out):\n    main(sys.argv[1:])\n"
             "assert 'torch' not in sys.modules and 'omegaconf' not in sys.modules, 'imported torch or omegaconf'\n"
             "print(out.getvalue(), end='')\n")
    shell = (f"trainkit() {{ {sys.executable} -c \"$PROBE\" \"$@\"; }}\n{script}\n"
             "COMP_LINE='trainkit fit model=sa'; COMP_POINT=${#COMP_LINE}; COMP_WORDS=(trainkit fit model = sa); "
             "COMP_CWORD=4; _trainkit_complete; echo \"[${COMPREPLY[*]}]\"\n"
             "COMP_LINE='trainkit fit trainer.max_st'; COMP_POINT=${#COMP_LINE}; COMP_WORDS=(trainkit fit trainer.max_st); "
             "COMP_CWORD=2; _trainkit_complete; echo \"[${COMPREPLY[*]}]\"\n")
    result = subprocess.run(["bash", "-c", shell], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PROBE": probe})
    assert result.stdout.splitlines() == ["[sakt]", "[trainer.max_steps=]"], result.stdout + result.stderr
