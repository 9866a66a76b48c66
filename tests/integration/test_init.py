"""`trainkit init` for every recipe, then the project's own smoke test (`trainkit fit` for two steps
from the project's folder, on tiny data in the recipe's real format) with pytest, as a user runs it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_cli
from trainkit.scaffold import RECIPES

pytestmark = pytest.mark.integration

# trainkit from this checkout, nothing of the project on the path: trainkit must find the project.
ENV = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_init_writes_a_project_whose_smoke_test_passes(tmp_path, recipe):
    project = tmp_path / f"my_{recipe}"
    init = run_cli("init", project.name, "--recipe", recipe, cwd=tmp_path, env=ENV)
    assert init.returncode == 0, init.stderr
    assert f"cd my_{recipe} && trainkit fit" in init.stdout
    # The smoke test runs `trainkit fit` in the project and checks that the model is the project's.
    smoke = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
                           env={**os.environ, **ENV}, capture_output=True, text=True, timeout=600)
    assert smoke.returncode == 0, smoke.stdout[-4000:] + smoke.stderr[-2000:]
    assert "1 passed" in smoke.stdout
