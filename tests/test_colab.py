"""The Colab set-up: cells and README links in sync with pyproject's URL, a no-op outside Colab, and in a (faked)
Colab the real cell and tools/colab_setup.py on a clone whose pins are all installed."""

import importlib.util
import json
import os
import runpy
import shutil
import subprocess
import sys
import textwrap

import nbformat
import pytest
from alfworld_sft.paths import NOTEBOOKS_DIR, REPO_ROOT

SYNC = REPO_ROOT / "tools" / "sync_colab.py"
SETUP = REPO_ROOT / "tools" / "colab_setup.py"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def load_sync():
    spec = importlib.util.spec_from_file_location("sync_colab", SYNC)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while being defined
    spec.loader.exec_module(module)
    return module


def setup_cell(path):
    return next(
        c.source for c in nbformat.read(path, as_version=4).cells if "colab-setup" in c.metadata.get("tags", [])
    )


def test_notebooks_and_readme_match_the_repository_url():
    check = subprocess.run([sys.executable, str(SYNC), "--check"], check=False, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_setup_cell_is_the_first_code_cell_just_before_the_parameters(path):
    cells = nbformat.read(path, as_version=4).cells
    code = [c for c in cells if c.cell_type == "code"]
    assert code[0].metadata.get("tags") == ["colab-setup"]
    assert "parameters" in code[1].metadata.get("tags", [])
    assert sum("colab-setup" in c.metadata.get("tags", []) for c in cells) == 1


def test_check_finds_and_sync_fixes_a_changed_url(tmp_path):
    sync = load_sync()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    shutil.copytree(NOTEBOOKS_DIR, tmp_path / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    assert sync.sync(tmp_path, check=True) == []
    pyproject = tmp_path / "pyproject.toml"
    url = sync.read_repository_url(tmp_path)
    pyproject.write_text(pyproject.read_text().replace(url, "https://github.com/someone/my-fork"))

    assert len(sync.sync(tmp_path, check=True)) == len(NOTEBOOKS) + 1
    sync.sync(tmp_path)
    assert sync.sync(tmp_path, check=True) == []
    cell = setup_cell(tmp_path / "notebooks" / NOTEBOOKS[0].name)
    assert '"https://github.com/someone/my-fork"' in cell and '"/content/my-fork"' in cell
    readme = (tmp_path / "README.md").read_text()
    assert readme.count("colab.research.google.com/github/someone/my-fork/blob/main/notebooks/") == len(NOTEBOOKS)
    assert (REPO_ROOT / "README.md").read_text().split("<!-- colab-links:start -->")[0] == readme.split(
        "<!-- colab-links:start -->"
    )[0]


def test_only_github_urls_are_accepted():
    sync = load_sync()
    assert sync.split_github_url("https://github.com/owner/name.git/") == ("owner", "name")
    with pytest.raises(ValueError, match="not a GitHub repository URL"):
        sync.split_github_url("https://gitlab.com/owner/name")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_setup_cell_does_nothing_outside_colab(path, capsys):
    before = (os.getcwd(), list(sys.path), set(sys.modules))
    exec(compile(setup_cell(path), path.name, "exec"), {})  # noqa: S102 (running the cell is the test)
    assert (os.getcwd(), list(sys.path), set(sys.modules)) == before
    assert capsys.readouterr() == ("", "")


def make_clone(tmp_path):
    """A stand-in for the Colab clone: the files the set-up reads, copied (a link would resolve to this checkout)."""
    clone = tmp_path / "content" / "alfworld-sft"
    (clone / "tools").mkdir(parents=True)
    (clone / "notebooks").mkdir()
    shutil.copy(SETUP, clone / "tools" / SETUP.name)
    shutil.copy(REPO_ROOT / "pyproject.toml", clone / "pyproject.toml")
    shutil.copytree(REPO_ROOT / "lib", clone / "lib", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return clone


def test_setup_cell_in_colab_with_everything_installed(tmp_path):
    setup = runpy.run_path(str(SETUP))
    # Else the cell below would pip-install into this venv: fix the venv first.
    assert setup["plan_install"](REPO_ROOT) == [], "the venv is not at the pins: run `make setup`"
    clone = make_clone(tmp_path)
    results = tmp_path / "results"
    (results / "small").mkdir(parents=True)
    (results / "small" / "01_oracle_collection.json").write_text("{}")
    cell = setup_cell(NOTEBOOKS_DIR / "02_formatting.ipynb").replace("/content/alfworld-sft", str(clone))
    script = textwrap.dedent(f"""
        import json, os, sys, types
        sys.modules["google.colab"] = types.ModuleType("google.colab")
        exec(compile({cell!r}, "cell", "exec"), {{}})
        print(json.dumps({{"cwd": os.getcwd(), "path": sys.path}}))
    """)
    env = {**os.environ, "ALFWORLD_SFT_RESULTS_DIR": str(results)}
    env.pop("ALFWORLD_DATA", None)
    run = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert run.returncode == 0, run.stdout + run.stderr
    *printed, state = run.stdout.strip().splitlines()
    assert printed == [f"Course installed from {clone}; games: generated by the course (ALFWORLD_DATA unset)."]
    assert json.loads(state)["cwd"] == str(clone / "notebooks")
    assert str(clone / "lib") in json.loads(state)["path"]


def test_install_plan_leaves_out_colabs_kernel_and_keeps_no_deps_apart(tmp_path):
    setup = runpy.run_path(str(SETUP))
    pytest_pin = f"pytest=={pytest.__version__}"
    (tmp_path / "pyproject.toml").write_text(
        textwrap.dedent(f"""
        [project]
        name = "not-installed-course"
        version = "1.0"
        dependencies = ["{pytest_pin}", "ipykernel==0.0.1", "textworld[pddl]==0.0.1"]
        [project.optional-dependencies]
        export = ["nbformat==0.0.1"]
        [tool.alfworld-sft]
        no-deps = ["{pytest_pin}"]
    """)
    )
    pip = setup["PIP"]
    assert setup["plan_install"](tmp_path) == [
        [*pip, "install", "-q", pytest_pin, "textworld[pddl]==0.0.1"],
        [*pip, "install", "-q", "--no-deps", "-e", str(tmp_path), pytest_pin],
    ]
    assert setup["plan_install"](tmp_path, ["export"])[0][-1] == "nbformat==0.0.1"
    with pytest.raises(ValueError, match="unknown extra gpu"):
        setup["plan_install"](tmp_path, ["gpu"])


def test_find_unmet_reads_pins_like_pip():
    find_unmet = runpy.run_path(str(SETUP))["find_unmet"]
    met = [f"pytest=={pytest.__version__}", "pytest", f"nbformat[test]=={nbformat.__version__}"]
    assert find_unmet(met) == []
    assert find_unmet(["pytest==0.0.1", "no-such-package-here==1.0"]) == [
        "pytest==0.0.1",
        "no-such-package-here==1.0",
    ]


def test_find_stale_modules_names_imported_modules_whose_version_changed():
    setup = runpy.run_path(str(SETUP))
    installed = setup["read_installed_versions"]()
    assert setup["find_stale_modules"](installed, installed) == []
    assert "pytest" in setup["find_stale_modules"]({**installed, "pytest": "0.0.1"}, installed)
    assert setup["find_stale_modules"]({}, installed) == []  # newly installed: nothing had imported it


def test_find_missing_stages(tmp_path):
    find_missing_stages = runpy.run_path(str(SETUP))["find_missing_stages"]
    (tmp_path / "01_oracle_collection.json").write_text("{}")
    assert find_missing_stages(["01", "02", "03"], tmp_path) == ["02", "03"]
