"""Where the course keeps things: every path is anchored to the repository root, never the working directory.

from alfworld_sft.paths import REPO_ROOT, RESULTS_DIR, cache_dir
"""

from __future__ import annotations

import os
from pathlib import Path

# lib/alfworld_sft/paths.py -> the repository root is three levels up (editable install).
REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
# Generated games go to data/ (git-ignored); ALFWORLD_SFT_DATA_DIR puts them elsewhere (a fresh folder for a
# newcomer's run, a Drive folder on Colab).
DATA_DIR = Path(os.environ.get("ALFWORLD_SFT_DATA_DIR") or REPO_ROOT / "data")
# Tests and side-by-side runs redirect every output with ALFWORLD_SFT_RESULTS_DIR; the default is results/.
RESULTS_DIR = Path(os.environ.get("ALFWORLD_SFT_RESULTS_DIR") or REPO_ROOT / "results")
EXECUTED_DIR = RESULTS_DIR / "executed"


def cache_dir() -> Path:
    """The course's cache outside git (converted models, unpacked tools): `$ALFWORLD_SFT_CACHE` or ~/.cache."""
    root = os.environ.get("ALFWORLD_SFT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "alfworld-sft"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_repo_path(path: str | os.PathLike[str]) -> Path:
    """A user-given path: absolute paths stay, relative ones are read from the repository root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def run_dir(small: bool) -> Path:
    """Where a course run keeps its artefacts: the seed guide's layout under results/ for the full run,
    the same layout under results/small/ for the small (CI) mode, so the two never mix."""
    return RESULTS_DIR / "small" if small else RESULTS_DIR
