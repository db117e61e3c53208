"""One style for the whole tree: `ruff check` (pyflakes, pycodestyle with the line length, import order) and
`ruff format` report nothing (CONTRIBUTING.md, "Conventions")."""

import subprocess
import sys
from pathlib import Path

import pytest
from alfworld_sft.paths import REPO_ROOT

TREES = ["lib", "tests", "benchmarks", "tools"]
RUFF = Path(sys.executable).with_name("ruff")


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_reports_nothing(command):
    result = subprocess.run([str(RUFF), *command, *TREES], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
