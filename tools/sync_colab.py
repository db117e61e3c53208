"""Write the Colab set-up cell into every numbered notebook and the "Open in Colab" links into README.md, both
from the repository URL in pyproject.toml (`[project.urls] Repository`, the one place that names it).

    python3 tools/sync_colab.py           # rewrite what differs (`make colab`), after changing the URL or COLAB
    python3 tools/sync_colab.py --check   # exit 1 when a notebook or README.md differs from what it would write

The set-up cell is each notebook's first code cell (tag `colab-setup`, before the `parameters` cell). Outside
Colab it does nothing; in Colab it clones the repository into /content and runs tools/colab_setup.py in the
notebook's kernel. README.md gets a table between `<!-- colab-links:start -->` and `<!-- colab-links:end -->`.
Standard library only, and notebooks are written as nbformat writes them, so an unchanged notebook stays
byte-identical.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
BRANCH = "main"  # the branch the README links open in Colab
CELL_TAG = "colab-setup"
README_START, README_END = "<!-- colab-links:start -->", "<!-- colab-links:end -->"
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


@dataclass(frozen=True)
class ColabNeeds:
    runtime: str  # the Colab runtime type to pick (Runtime > Change runtime type)
    run_first: tuple[str, ...] = ()  # earlier notebooks whose results it reads: run in its Colab machine first
    extras: tuple[str, ...] = ()  # pyproject extras it uses beyond the core dependencies


# Every numbered notebook needs an entry: each Colab notebook runs on a machine of its own.
COLAB = {
    "00": ColabNeeds("CPU"),
    "01": ColabNeeds("CPU"),
    "02": ColabNeeds("CPU", run_first=("01",)),
    "03": ColabNeeds("CPU for small mode, GPU for full mode", run_first=("01", "02")),
    # llama.cpp's converter and quantizer for the GGUF steps: the export extra compiles it (~7 CPU-minutes).
    "04": ColabNeeds("CPU", run_first=("01", "02", "03"), extras=("export",)),
    "05": ColabNeeds("CPU for small mode, GPU for full mode", run_first=("01", "02", "03")),
    "06": ColabNeeds("CPU for small mode, GPU for full mode", run_first=("01", "02", "03")),
}


def read_repository_url(root: Path = ROOT) -> str:
    with open(root / "pyproject.toml", "rb") as file:
        urls = tomllib.load(file)["project"].get("urls", {})
    if "Repository" not in urls:
        raise ValueError("pyproject.toml has no [project.urls] Repository: add the GitHub URL of the repository")
    return urls["Repository"]


def split_github_url(url: str) -> tuple[str, str]:
    """(owner, name) of a GitHub repository URL: Colab opens notebooks straight from GitHub only."""
    parsed = urlparse(url)
    parts = parsed.path.strip("/").removesuffix(".git").split("/")
    if parsed.netloc != "github.com" or len(parts) != 2 or not all(parts):
        raise ValueError(f"{url!r} is not a GitHub repository URL (https://github.com/OWNER/NAME)")
    return parts[0], parts[1]


def list_notebooks(root: Path = ROOT) -> list[Path]:
    notebooks = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    unlisted = [nb.name for nb in notebooks if nb.name[:2] not in COLAB]
    if unlisted:
        raise ValueError(f"no Colab entry for {', '.join(unlisted)}: add it to COLAB in tools/sync_colab.py")
    return notebooks


def render_setup_cell(url: str, needs: ColabNeeds) -> str:
    """The set-up cell's source. It runs before the course is installed: it cannot import alfworld_sft."""
    clone = f"/content/{split_github_url(url)[1]}"
    installs = f"installs it with the {', '.join(needs.extras)} extra" if needs.extras else "installs it"
    comment = (
        f"Colab set-up, written by tools/sync_colab.py; elsewhere this cell does nothing. Runtime: {needs.runtime}. "
        f"It clones the course into {clone} and {installs} (the first time: minutes)"
    )
    if needs.run_first:
        earlier = f"notebook{'s' if len(needs.run_first) > 1 else ''} {', '.join(needs.run_first)}"
        comment += (
            f"; Colab gives every notebook a machine of its own, so it runs {earlier} there first (small mode), "
            "whose results this one reads"
        )
    lines = textwrap.wrap(comment + ".", width=110, initial_indent="# ", subsequent_indent="# ")
    lines += [
        "import sys",
        "",
        'if "google.colab" in sys.modules:',
        "    import os, runpy, subprocess",
        "",
        f'    clone = "{clone}"',
        "    if not os.path.isdir(clone):",
        f'        subprocess.run(["git", "clone", "-q", "--depth", "1", "{url}", clone], check=True)',
    ]
    call = '    runpy.run_path(f"{clone}/tools/colab_setup.py")["set_up_colab"]('
    arguments = f"extras={json.dumps(needs.extras)}, run_first={json.dumps(needs.run_first)}"
    one_line = f"{call}{arguments})"
    lines += [one_line] if len(one_line) <= 110 else [call, f"        {arguments}", "    )"]
    return "\n".join(lines)


def _source_lines(text: str) -> list[str]:
    """A cell source as nbformat stores it: one string per line, each but the last ending in a newline."""
    return text.splitlines(keepends=True)


def sync_notebook_text(text: str, url: str, needs: ColabNeeds) -> str:
    """The notebook's JSON with its set-up cell (re)written just before the parameters cell."""
    notebook = json.loads(text)
    cells = [c for c in notebook["cells"] if CELL_TAG not in c.get("metadata", {}).get("tags", [])]
    parameters = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(parameters) != 1:
        raise ValueError("a notebook needs exactly one cell tagged 'parameters'")
    cell = {
        "cell_type": "code",
        "execution_count": None,
        "id": CELL_TAG,
        "metadata": {"tags": [CELL_TAG]},
        "outputs": [],
        "source": _source_lines(render_setup_cell(url, needs)),
    }
    notebook["cells"] = cells[: parameters[0]] + [cell] + cells[parameters[0] :]
    return json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def render_readme_block(url: str, notebooks: list[Path]) -> str:
    owner, name = split_github_url(url)
    rows = ["| | notebook | Colab | runtime | set-up runs first (small mode) |", "|---|---|---|---|---|"]
    for notebook in notebooks:
        needs = COLAB[notebook.name[:2]]
        link = f"https://colab.research.google.com/github/{owner}/{name}/blob/{BRANCH}/notebooks/{notebook.name}"
        title = notebook.stem[3:].replace("_", " ")
        first = ", ".join(needs.run_first) or "-"
        rows.append(
            f"| {notebook.name[:2]} | {title} | [![Open In Colab]({BADGE})]({link}) | {needs.runtime} | {first} |"
        )
    return "\n".join([README_START, *rows, README_END])


def sync_readme_text(text: str, url: str, notebooks: list[Path]) -> str:
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.DOTALL)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"README.md needs one block from {README_START} to {README_END} (each on its own line)")
    return pattern.sub(lambda _: render_readme_block(url, notebooks), text)


def sync(root: Path = ROOT, check: bool = False) -> list[Path]:
    """The files that differ from what the URL and COLAB give; rewritten unless `check`."""
    url = read_repository_url(root)
    notebooks = list_notebooks(root)
    wanted = {nb: sync_notebook_text(nb.read_text(), url, COLAB[nb.name[:2]]) for nb in notebooks}
    readme = root / "README.md"
    wanted[readme] = sync_readme_text(readme.read_text(), url, notebooks)
    differing = [path for path, text in wanted.items() if path.read_text() != text]
    if not check:
        for path in differing:
            path.write_text(wanted[path])
    return differing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report differences (exit 1 when there are any)")
    args = parser.parse_args(argv)
    differing = sync(check=args.check)
    for path in differing:
        print(f"{'differs' if args.check else 'wrote'}: {path.relative_to(ROOT)}")
    if args.check and differing:
        print("Run `make colab` (python3 tools/sync_colab.py) and commit the result.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
