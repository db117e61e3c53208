"""Notebook hygiene: committed without outputs, one parameters cell of commented literals, python3 kernel."""

import ast
import json
import subprocess

import nbformat
import pytest
from alfworld_sft.paths import NOTEBOOKS_DIR, REPO_ROOT

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def test_there_are_numbered_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "00_environment_check.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_or_execution_counts(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs: strip them"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_cell_has_a_unique_id(path):
    """nbformat 4.5 wants an id on every cell (papermill and Jupyter warn, a later nbformat will refuse)."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    ids = [cell.get("id") for cell in raw["cells"]]
    assert None not in ids and len(set(ids)) == len(ids), f"{path.name}: a cell without an id, or a repeated one"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_parameters_cell_of_commented_literals(path):
    notebook = nbformat.read(path, as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    source = tagged[0].source
    names = set()
    for node in ast.parse(source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, f"{path.name}: parameters are assignments"
        ast.literal_eval(node.value)  # raises for anything but a literal
        names.add(node.targets[0].id)
    assert {"small", "seed"} <= names
    for line in source.strip().splitlines():
        assert "  # " in line, f"{path.name}: parameter line without a trailing comment: {line!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_kernel_title_and_summary(path):
    notebook = nbformat.read(path, as_version=4)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    assert notebook.cells[0].cell_type == "markdown" and notebook.cells[0].source.startswith("# ")
    last_code = [c for c in notebook.cells if c.cell_type == "code"][-1]
    assert "write_result" in last_code.source or "write_environment_report" in last_code.source
    nbformat.validate(notebook)


def test_notebooks_hold_no_path_hacks():
    # Colab's set-up cell too: the one path edit a fresh install needs is in tools/colab_setup.py.
    for path in NOTEBOOKS:
        text = path.read_text()
        for hack in ("sys.path", "addsitedir"):
            assert hack not in text, f"{path.name} edits the import path ({hack}): install the library instead"


def test_gitignore_keeps_the_library_and_ignores_outputs():
    def ignored(path):
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO_ROOT, check=False).returncode == 0

    assert not ignored("lib/alfworld_sft/__init__.py")
    assert not ignored("results/README.md") and not ignored("data/README.md")
    assert ignored("results/executed/00_environment_check.ipynb") and ignored("data/generated/x")
