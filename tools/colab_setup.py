"""Set up a Colab machine for one course notebook: install this clone, let the running kernel import it, work from
its notebooks/ folder, and run the earlier notebooks whose results that notebook reads.

The first code cell of every notebook (written by tools/sync_colab.py) clones the repository into /content and
runs this file inside the notebook's own kernel, only when that kernel is Colab's:

    runpy.run_path("/content/alfworld-sft/tools/colab_setup.py")["set_up_colab"](extras=[...], run_first=[...])

Standard library only: it runs before the course and its dependencies are installed. Rerunning it is quick: pip
runs only when a pin is not installed.
"""

from __future__ import annotations

import codecs
import importlib
import os
import re
import site
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip"]
# Colab's kernel runs on its own ipykernel: the course's pin would replace it under the running session, and no
# notebook imports it (the headless runner that runs earlier notebooks works with Colab's).
COLAB_KEEPS = frozenset({"ipykernel"})
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9._-]+)\s*(?:\[[^\]]*\])?\s*(?:==\s*([^\s;]+))?")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_requirements(repo: Path = REPO, extras: Iterable[str] = ()) -> tuple[list[str], list[str], str]:
    """From the clone's pyproject.toml: (requirements pip resolves, requirements installed with --no-deps,
    the course's own `name==version`). The core dependencies less COLAB_KEEPS, plus those of `extras`."""
    with open(repo / "pyproject.toml", "rb") as file:
        pyproject = tomllib.load(file)
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    unknown = sorted(set(extras) - set(optional))
    if unknown:
        raise ValueError(f"unknown extra {', '.join(unknown)}: pyproject.toml defines {', '.join(sorted(optional))}")
    wanted = project["dependencies"] + [requirement for extra in extras for requirement in optional[extra]]
    resolved = [r for r in wanted if _normalize(_REQUIREMENT.match(r)[1]) not in COLAB_KEEPS]
    return (
        resolved,
        list(pyproject["tool"]["alfworld-sft"]["no-deps"]),
        f"{project['name']}=={project['version']}",
    )


def find_unmet(requirements: Iterable[str]) -> list[str]:
    """The requirements not installed, or installed at another version than their `==` pin (a local build tag
    such as torch's +cu126 still meets its pin, as pip has it)."""
    unmet = []
    for requirement in requirements:
        name, pinned = _REQUIREMENT.match(requirement).groups()
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed is None or (pinned and installed.split("+")[0] != pinned):
            unmet.append(requirement)
    return unmet


def plan_install(repo: Path = REPO, extras: Iterable[str] = ()) -> list[list[str]]:
    """The pip commands that install what is missing: none when every pin is already installed."""
    resolved, no_deps, course = read_requirements(repo, extras)
    commands = []
    if find_unmet(resolved):
        commands.append([*PIP, "install", "-q", *resolved])
    # Editable, as `make setup` does: paths.REPO_ROOT is found from the installed module's location, the clone.
    # --no-deps keeps pip from pulling what the first command left out (COLAB_KEEPS).
    if find_unmet([course, *no_deps]):
        commands.append([*PIP, "install", "-q", "--no-deps", "-e", str(repo), *no_deps])
    return commands


def read_installed_versions() -> dict[str, str]:
    return {_normalize(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def find_stale_modules(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Modules this process had imported from a distribution whose version changed between `before` and `after`:
    the process keeps using the old code until it restarts."""
    changed = {name for name, version in after.items() if before.get(name, version) != version}
    return sorted(
        module
        for module, dists in metadata.packages_distributions().items()
        if module in sys.modules and changed & {_normalize(d) for d in dists}
    )


def find_missing_stages(numbers: Iterable[str], folder: Path) -> list[str]:
    """The notebook numbers among `numbers` whose summary JSON (`NN_name.json`) is not in `folder`."""
    return [number for number in numbers if not any(folder.glob(f"{number}_*.json"))]


def run_shown(command: Sequence[str]) -> None:
    """Run a command and copy its output into the cell as it comes: a child's own stdout goes to the kernel's log,
    not to the notebook."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        while chunk := process.stdout.read1(4096):
            sys.stdout.write(decoder.decode(chunk))
            sys.stdout.flush()
    if process.returncode:
        raise RuntimeError(f"`{' '.join(command)}` failed (exit {process.returncode}): its output is above")


def set_up_colab(extras: Sequence[str] = (), run_first: Sequence[str] = ()) -> None:
    """Install the clone (its pins, `extras`), make this kernel import it, work from its notebooks/ folder, fetch
    ALFWorld's games into a set but missing `$ALFWORLD_DATA`, and run the notebooks `run_first` in small mode
    where their results are missing: Colab gives every notebook a machine of its own, so the results of earlier
    notebooks opened elsewhere are not here."""
    commands = plan_install(REPO, extras)
    if commands:
        before = read_installed_versions()
        for command in commands:
            run_shown(command)
        importlib.invalidate_caches()
        stale = find_stale_modules(before, read_installed_versions())
        if stale:
            raise RuntimeError(
                f"pip replaced {', '.join(stale)}, which this session had already imported: restart the session "
                "(Runtime > Restart session) and run this cell again (it will not install anything twice)"
            )
    # The editable install is a .pth file naming lib/, and Python reads .pth files only when it starts: this kernel
    # started before the install, so lib/ is added here the way that .pth adds it (new processes read it themselves).
    site.addsitedir(str(REPO / "lib"))
    os.chdir(REPO / "notebooks")
    from alfworld_sft.paths import run_dir  # importable from here on

    cli = [sys.executable, "-m", "alfworld_sft.cli"]
    data = os.environ.get("ALFWORLD_DATA")
    if data and not Path(data, "json_2.1.1").is_dir():
        run_shown([*cli, "data", "download", "--data-dir", data])
    missing = find_missing_stages(run_first, run_dir(small=True))
    if missing:
        print(f"Running notebook {', '.join(missing)} first (small mode), whose results this notebook reads.")
        run_shown([*cli, "course", "--mode", "small", "--only", *missing])
    games = f"ALFWorld's in {data}" if data else "generated by the course (ALFWORLD_DATA unset)"
    print(f"Course installed from {REPO}; games: {games}.")
