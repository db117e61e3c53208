"""Game sources: data root, split listing, task-type filters, balanced samples, clear errors for missing data,
the `data` CLI, and the generated games (once `alfworld_sft.generate` exists)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from alfworld_sft import collect, games, generate, paths, records
from alfworld_sft.task_types import TASK_TYPES

REAL_DATA = os.environ.get("ALFWORLD_DATA")
needs_real_data = pytest.mark.skipif(
    not REAL_DATA, reason="checks the real ALFWorld splits' sizes: set ALFWORLD_DATA to the unpacked ALFWorld data"
)


def _write_game(root: Path, folder: str, task_type: str, trial: str, *, traj: bool = True) -> Path:
    """A game folder in alfworld-download's layout (files the listing reads; not playable)."""
    directory = root / "json_2.1.1" / folder / f"{task_type}-Mug-None-Shelf-1" / trial
    directory.mkdir(parents=True)
    (directory / "game.tw-pddl").write_text("{}")
    if traj:
        (directory / "traj_data.json").write_text(json.dumps({"task_type": task_type, "pddl_params": {}}))
    return directory / "game.tw-pddl"


@pytest.fixture
def tree(tmp_path, monkeypatch) -> Path:
    """A data root with 3 train games of each task type, plus one game without its traj_data.json."""
    for name in TASK_TYPES:
        for index in range(3):
            _write_game(tmp_path, "train", name, f"trial_{index}")
    _write_game(tmp_path, "train", "pick_and_place_simple", "trial_no_traj", traj=False)
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    return tmp_path


def test_data_root_follows_alfworld_data(tmp_path, monkeypatch):
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    assert games.data_root() == tmp_path.resolve()
    monkeypatch.delenv("ALFWORLD_DATA")
    assert games.data_root() == paths.DATA_DIR / "generated"
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"nowhere is not a directory.*alfworld-sft data download"):
        games.data_root()


def test_importing_alfworld_does_not_switch_off_the_generated_games(monkeypatch):
    # alfworld/info.py writes its default into os.environ on import; that is not the user's choice.
    monkeypatch.setattr(games, "_ALFWORLD_DATA_AT_IMPORT", None)
    monkeypatch.setenv("ALFWORLD_DATA", os.path.expanduser("~/.cache/alfworld"))
    assert games.uses_generated_games() and games.data_root() == paths.DATA_DIR / "generated"


def test_a_child_process_sees_alfworld_data_as_the_user_left_it(tmp_path):
    """The course's imports of alfworld (games, the generator, the teacher) leave $ALFWORLD_DATA unset when the user
    set nothing, so that a child process (a collection, a notebook kernel) also plays the generated games."""
    script = (
        "import os, subprocess, sys\n"
        "from alfworld_sft import engine, generate, teacher\n"
        "generate.load_logic(); teacher.openable_classes()\n"
        "child = 'import os; from alfworld_sft import games; '\n"
        "child += 'print(os.environ.get(\"ALFWORLD_DATA\"), games.uses_generated_games())'\n"
        "print(subprocess.run([sys.executable, '-c', child], capture_output=True, text=True).stdout)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "ALFWORLD_DATA"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["None", "True"], out.stdout + out.stderr


def test_list_games_is_sorted_and_needs_traj_data(tree):
    listed = games.list_games("train")
    assert len(listed) == 18  # the game without traj_data.json is left out
    ids = [games.game_id(path) for path in listed]
    assert ids == sorted(ids)
    assert ids[0].startswith("json_2.1.1/train/") and "trial_no_traj" not in " ".join(ids)


def test_task_types_by_number_or_name(tree):
    listed = games.list_games("train", task_types=[6, "pick_and_place_simple", "3"])
    assert {games.read_task_type(path) for path in listed} == {
        "pick_two_obj_and_place",
        "pick_and_place_simple",
        "pick_clean_then_place_in_recep",
    }
    with pytest.raises(ValueError, match="unknown task type 7"):
        games.list_games("train", task_types=[7])
    with pytest.raises(ValueError, match="unknown split"):
        games.list_games("test")


def test_a_limit_samples_every_task_type_and_is_seeded(tree):
    twelve = games.list_games("train", limit=12, seed=0)
    types = [games.read_task_type(path) for path in twelve]
    assert all(types.count(name) == 2 for name in TASK_TYPES)
    assert types[:6] == list(TASK_TYPES)  # round-robin over the types
    assert games.list_games("train", limit=12, seed=0) == twelve
    assert games.list_games("train", limit=6, seed=0) == twelve[:6]  # a larger limit extends a smaller one
    others = [games.list_games("train", limit=12, seed=seed) for seed in range(1, 5)]
    assert any(set(sample) != set(twelve) for sample in others)
    assert len(games.list_games("train", limit=100)) == 18
    with pytest.raises(ValueError, match="at least 1"):
        games.list_games("train", limit=0)


def test_a_missing_or_empty_split_names_the_path_and_the_fix(tree):
    with pytest.raises(games.MissingSplitError, match=r"valid_seen.*alfworld-sft data download"):
        games.list_games("eval_in_distribution")
    (tree / "json_2.1.1" / "valid_unseen").mkdir()
    with pytest.raises(games.MissingSplitError, match=r"no games at .*valid_unseen"):
        games.list_games("eval_out_of_distribution")
    _write_game(tree, "valid_train", "pick_and_place_simple", "t", traj=False)
    with pytest.raises(games.MissingSplitError, match="no traj_data.json beside them"):
        games.list_games("valid_train")


def test_a_missing_generated_split_points_to_the_generator(tmp_path, monkeypatch):
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    monkeypatch.setattr(paths, "DATA_DIR", tmp_path)
    with pytest.raises(games.MissingSplitError, match="alfworld-sft data generate"):
        games.list_games("train")


def test_read_task_type_reports_a_broken_traj_data(tree):
    gamefile = games.list_games("train", limit=1)[0]
    (gamefile.parent / "traj_data.json").write_text("{}")
    with pytest.raises(ValueError, match="traj_data.json: no readable 'task_type'"):
        games.read_task_type(gamefile)


def test_data_status_counts_games_per_split_and_type(tree):
    result = subprocess.run(
        [sys.executable, "-m", "alfworld_sft.cli", "data", "status"],  # alfworld_sft.generate's command
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "ALFWORLD_DATA": str(tree)},
    )
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "18 games" in result.stdout and "1:3" in result.stdout
    assert "valid_seen    missing" in result.stdout
    assert games.count_games(tree)["train"]["pick_two_obj_and_place"] == 3


@needs_real_data
def test_the_real_splits(monkeypatch):
    assert len(games.list_games("train")) == 3553
    assert len(games.list_games("eval_in_distribution")) == 140
    sample = games.list_games("train", limit=12, seed=0)
    assert sorted(games.read_task_type(path) for path in sample) == sorted(list(TASK_TYPES) * 2)
    anatomy = games.describe_game(sample[0])
    assert anatomy["game_file_keys"] == ["grammar", "pddl_domain", "pddl_problem", "solvable", "walkthrough"]
    assert anatomy["receptacles_in_room"] > 0 and anatomy["objects_in_room"] > 0 and anatomy["init_facts"] > 0
    assert anatomy["task_type"] == "pick_and_place_simple"


@pytest.mark.slow
def test_generated_games_are_made_on_demand_and_played_by_the_expert(tmp_path, monkeypatch):
    # A user who set no ALFWORLD_DATA (the generator's alfworld import then fills in alfworld's default).
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    monkeypatch.setattr(games, "_ALFWORLD_DATA_AT_IMPORT", None)
    monkeypatch.setattr(paths, "DATA_DIR", tmp_path / "data")
    sample = generate.ensure_games("train", 6, seed=0)
    assert len(sample) == 6 and games.data_root() == tmp_path / "data" / "generated"
    assert sorted(games.read_task_type(path) for path in sample) == sorted(TASK_TYPES)
    assert generate.ensure_games("train", 6, seed=0) == sample  # nothing is regenerated
    output = tmp_path / "out" / "trajectories.jsonl"
    summary = collect.collect_trajectories(collect.CollectConfig(output=output, limit=6, progress=False))
    assert summary.attempted == 6 and not summary.failed
    assert summary.won == 6  # the generator keeps only games the expert wins, as the collection plays them
    for record in collect.files.read_jsonl(output):
        records.check_record(record)
        assert record["game_id"].startswith("json_2.1.1/train/")
