"""Result files: every JSON a stage writes carries the seed, package versions and machine that made it.

write_result(RESULTS_DIR / "collection.json", {"won": 12}, seed=0)
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from alfworld_sft.files import write_json
from alfworld_sft.paths import REPO_ROOT

TRACKED_PACKAGES = (
    "alfworld-sft",
    "torch",
    "transformers",
    "peft",
    "trl",
    "datasets",
    "accelerate",
    "bitsandbytes",
    "alfworld",
    "textworld",
)


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The commit the code was checked out at; `ALFWORLD_SFT_GIT_COMMIT` names it where the copy's own git history
    is not the code's (the lent GPU machine's copy kept the session's first commit: tools/gpu_course.sh)."""
    if os.environ.get("ALFWORLD_SFT_GIT_COMMIT"):
        return os.environ["ALFWORLD_SFT_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_metadata(seed: int | None = None) -> dict[str, Any]:
    """Who made a result: seed, versions, machine, commit and time."""
    return {
        "seed": seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "git_commit": git_commit(),
        "versions": package_versions(),
    }


def write_result(path: str | os.PathLike[str], payload: dict[str, Any], *, seed: int | None = None) -> Path:
    """Write a result JSON atomically with a `meta` block of seed, versions and machine."""
    return write_json(path, {**payload, "meta": run_metadata(seed)})
