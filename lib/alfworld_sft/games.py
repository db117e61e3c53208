"""ALFWorld game sources: which game files make up a split, from `$ALFWORLD_DATA` or the course's generator.

A data root holds games in the layout that `alfworld-download` makes:
`<root>/json_2.1.1/<split folder>/<task>-<Obj>-<Mrecep>-<Parent>-<scene>/<trial>/`, each trial folder holding
`game.tw-pddl` and `traj_data.json`.
The root is `$ALFWORLD_DATA` when that is set (the real ALFWorld games), else `data/generated/` (games the
course generates offline with `alfworld_sft.generate`).

    from alfworld_sft import games
    games.list_games("train", task_types=[1, "pick_two_obj_and_place"], limit=12, seed=0)

`alfworld-sft data ...` (status, download, generate) lives in `alfworld_sft.generate`; the task types themselves
(numbers, names, what each asks) in `alfworld_sft.task_types`.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from alfworld_sft import paths
from alfworld_sft.task_types import TASK_TYPES, TASK_TYPES_BY_ID

# The course's split names and the folders `alfworld-download` makes under $ALFWORLD_DATA/json_2.1.1/.
SPLITS: dict[str, str] = {
    "train": "train",
    "eval_in_distribution": "valid_seen",
    "eval_out_of_distribution": "valid_unseen",
    "valid_train": "valid_train",
}

GAME_FILE = "game.tw-pddl"
TRAJ_FILE = "traj_data.json"
JSON_DIR = "json_2.1.1"  # the folder alfworld-download unpacks the games into


class MissingSplitError(FileNotFoundError):
    """A split with no playable games; the message names the folder and how to fill it."""


def generated_root() -> Path:
    """Where the course's generated games live (git-ignored)."""
    return paths.DATA_DIR / "generated"


# Importing alfworld writes its default (~/.cache/alfworld) into os.environ["ALFWORLD_DATA"] when the user
# set nothing (alfworld/info.py): the variable would no longer show what the user chose, here and in every child
# process (which would then look for real games in that empty folder). The course imports alfworld through
# `import_alfworld`; the check below covers an import by someone else, in this process.
_ALFWORLD_DATA_AT_IMPORT = os.environ.get("ALFWORLD_DATA")


def import_alfworld(module: str = "alfworld") -> Any:
    """`importlib.import_module(module)` for an alfworld module, leaving $ALFWORLD_DATA as the user set it."""
    user_choice = os.environ.get("ALFWORLD_DATA")
    try:
        return importlib.import_module(module)
    finally:
        if user_choice is None:
            os.environ.pop("ALFWORLD_DATA", None)


def user_alfworld_data() -> str | None:
    """`$ALFWORLD_DATA` as the user set it, not as alfworld's import filled it in."""
    value = os.environ.get("ALFWORLD_DATA") or None
    if value and not _ALFWORLD_DATA_AT_IMPORT and value == os.path.expanduser("~/.cache/alfworld"):
        return None
    return value


def data_root() -> Path:
    """`$ALFWORLD_DATA` when set (it must exist), else the course's generated games under data/generated."""
    value = user_alfworld_data()
    if not value:
        return generated_root()
    root = Path(value).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"ALFWORLD_DATA={value} is not a directory: unpack the ALFWorld archives there "
            f"(`alfworld-sft data download --data-dir {value}`), point ALFWORLD_DATA at the folder that "
            "holds json_2.1.1/, or unset it to use the course's generated games"
        )
    return root.resolve()


def uses_generated_games() -> bool:
    return not user_alfworld_data()


def split_dir(split: str, root: Path | None = None) -> Path:
    """The folder of a course split under the data root."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    return (root or data_root()) / JSON_DIR / SPLITS[split]


def parse_task_types(task_types: Iterable[int | str]) -> list[str]:
    """Task types given as numbers (1-6, also as text) or names -> names, in the order of the task-type table."""
    names = set()
    for item in task_types:
        text = str(item).strip()
        if text.isdigit() and int(text) in TASK_TYPES_BY_ID:
            names.add(TASK_TYPES_BY_ID[int(text)].name)
        elif text in TASK_TYPES:
            names.add(text)
        else:
            choices = ", ".join(f"{kind.id}={kind.name}" for kind in TASK_TYPES.values())
            raise ValueError(f"unknown task type {item!r}: use a number or a name ({choices})")
    return [name for name in TASK_TYPES if name in names]


def game_id(gamefile: str | os.PathLike[str], root: Path | None = None) -> str:
    """The game's folder relative to the data root (`json_2.1.1/train/pick_and_place_simple-.../trial_...`):
    the stable key that resume and train/eval splitting use (CONTRIBUTING.md)."""
    folder = Path(gamefile).resolve().parent
    for base in (root or data_root(), generated_root()):
        try:
            return folder.relative_to(Path(base).resolve()).as_posix()
        except ValueError:
            continue
    # A game outside any data root: fall back to the last three parts, which still name split, task and trial.
    return "/".join(folder.parts[-3:])


def read_task_type(gamefile: str | os.PathLike[str]) -> str:
    """The task type name that ALFWorld's expert uses for this game (`task_type` of traj_data.json)."""
    traj = Path(gamefile).parent / TRAJ_FILE
    try:
        task_type = json.loads(traj.read_text(encoding="utf-8"))["task_type"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{traj} is missing: every game needs its traj_data.json beside it") from None
    except (ValueError, KeyError) as error:
        raise ValueError(f"{traj}: no readable 'task_type' ({error}); re-unpack or regenerate this game") from None
    if task_type not in TASK_TYPES:
        raise ValueError(f"{traj}: unknown task_type {task_type!r}")
    return task_type


def _task_type_of(gamefile: Path) -> str:
    # The task folder is named after the task type (`pick_two_obj_and_place-...`): reading it from the name
    # avoids opening thousands of traj_data.json files (the real ones weigh hundreds of KB each).
    prefix = gamefile.parent.parent.name.split("-", 1)[0]
    return prefix if prefix in TASK_TYPES else read_task_type(gamefile)


def _missing_split_message(split: str, folder: Path, found: str) -> str:
    if uses_generated_games():
        fix = (
            f"generate games with `alfworld-sft data generate --split {split} --count N` (or "
            "`generate.ensure_games`), or set ALFWORLD_DATA to the real ALFWorld data"
        )
    else:
        fix = (
            "unpack the ALFWorld archives into $ALFWORLD_DATA (`alfworld-sft data download`), "
            "or unset ALFWORLD_DATA to use the course's generated games"
        )
    return f"split {split!r} has {found} at {folder}: {fix}"


def all_games(split: str, root: Path | None = None) -> list[Path]:
    """Every playable game of a split (game file with a traj_data.json beside it), sorted by game id."""
    folder = split_dir(split, root)
    if not folder.is_dir():
        raise MissingSplitError(_missing_split_message(split, folder, "no folder"))
    found = sorted(folder.glob(f"*/*/{GAME_FILE}"), key=lambda path: path.relative_to(folder).as_posix())
    playable = [path for path in found if (path.parent / TRAJ_FILE).is_file()]
    if not playable:
        what = f"{len(found)} game files but no traj_data.json beside them" if found else "no games"
        raise MissingSplitError(_missing_split_message(split, folder, what))
    return playable


def list_games(
    split: str,
    *,
    task_types: Iterable[int | str] | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> list[Path]:
    """The game files of a course split, optionally of some task types only.

    Without `limit`: every playable game, sorted by game id. With `limit`: a seeded sample, balanced across
    task types by taking one game of each type in turn (so 12 games cover all six types twice); a larger
    limit with the same seed extends a smaller one. Raises MissingSplitError when nothing is there.
    """
    wanted = parse_task_types(task_types) if task_types is not None else list(TASK_TYPES)  # a bad name first
    games = all_games(split)
    by_type: dict[str, list[Path]] = {name: [] for name in wanted}
    for path in games:
        task_type = _task_type_of(path)
        if task_type in by_type:
            by_type[task_type].append(path)
    if not any(by_type.values()):
        raise MissingSplitError(
            f"split {split!r} at {split_dir(split)} has no games of task types {', '.join(wanted)}: "
            "choose other task types or add games of these"
        )
    if limit is None:
        keep = {path for group in by_type.values() for path in group}
        return [path for path in games if path in keep]  # all_games' order: sorted by game id
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    queues = []
    for name in wanted:
        group = list(by_type[name])
        # Each type gets its own stream so that adding a type does not reshuffle the others.
        random.Random(f"{seed}:{name}").shuffle(group)
        queues.append(group)
    sample: list[Path] = []
    depth = 0
    while len(sample) < limit and any(depth < len(queue) for queue in queues):
        sample.extend(queue[depth] for queue in queues if depth < len(queue))
        depth += 1
    return sample[:limit]


def count_games(root: Path | None = None) -> dict[str, dict[str, int]]:
    """Games per split and task type under a data root; splits without games are left out."""
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        try:
            games = all_games(split, root)
        except MissingSplitError:
            continue
        per_type = {name: 0 for name in TASK_TYPES}
        for path in games:
            per_type[_task_type_of(path)] += 1
        counts[split] = per_type
    return counts


def describe_game(gamefile: str | os.PathLike[str]) -> dict[str, Any]:
    """The anatomy of one game: what the engine reads from game.tw-pddl and the expert from traj_data.json."""
    import re

    gamefile = Path(gamefile)
    game = json.loads(gamefile.read_text(encoding="utf-8"))
    traj = json.loads((gamefile.parent / TRAJ_FILE).read_text(encoding="utf-8"))
    problem = game["pddl_problem"]
    objects = problem.split("(:objects", 1)[1].split("(:init", 1)[0]
    instances = re.findall(r"^\s*(\S+)\s+-\s+(object|receptacle)\s*$", objects, re.MULTILINE)
    init = problem.split("(:init", 1)[1].split("(:goal", 1)[0] if "(:init" in problem else ""
    goal = problem.split("(:goal", 1)[1].strip() if "(:goal" in problem else ""
    return {
        "game_id": game_id(gamefile),
        "game_file_keys": sorted(game),
        "pddl_domain_chars": len(game["pddl_domain"]),
        "grammar_chars": len(game["grammar"]),
        "objects_in_room": sum(1 for name, kind in instances if kind == "object" and "_bar_" in name),
        "receptacles_in_room": sum(1 for name, kind in instances if kind == "receptacle" and "_bar_" in name),
        "init_facts": sum(line.strip().startswith("(") for line in init.splitlines()),
        "goal": " ".join(goal.split())[:400],
        "solvable": game.get("solvable"),
        "walkthrough": game.get("walkthrough"),
        "task_type": traj["task_type"],
        "pddl_params": traj["pddl_params"],
    }


def download_data(data_dir: str | os.PathLike[str] | None = None, *, force: bool = False) -> Path:
    """Fetch and unpack the real ALFWorld games with `alfworld-download` (needs internet). Its progress bars are
    shown as they come; a traceback it prints is cut to its last line, inside this command's own message."""
    from alfworld_sft import files

    target = Path(data_dir or user_alfworld_data() or Path.home() / ".cache" / "alfworld").expanduser()
    files.check_output(target, "--data-dir" if data_dir else "ALFWORLD_DATA", folder=True)
    command = [str(Path(sys.executable).with_name("alfworld-download")), "--data-dir", str(target)]
    if force:
        command.append("--force")
    try:
        process = subprocess.Popen(command, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise RuntimeError(f"{command[0]} not found: install the course (`pip install -e .`) first") from None
    held = b""  # from the first "Traceback" on, kept back instead of shown
    while chunk := os.read(process.stderr.fileno(), 4096):
        if held or b"Traceback" in chunk:
            held += chunk
        else:
            sys.stderr.buffer.write(chunk)
            sys.stderr.flush()
    if process.wait():
        last = held.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no error message"]
        raise RuntimeError(
            f"alfworld-download failed (exit {process.returncode}: {last[0][:300]}): it needs internet access; on an "
            "offline machine unset ALFWORLD_DATA and use the generated games (`alfworld-sft data generate`)"
        )
    return target
