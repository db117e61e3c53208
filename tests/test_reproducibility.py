"""Reproducibility: a rerun with the same seed collects the same trajectories and gets the same evaluation
outcomes on CPU, and the result files record the seed and the package versions. Real engine, real default
model, on generated games (no $ALFWORLD_DATA needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alfworld_sft import files, generate
from alfworld_sft.collect import CollectConfig, collect_trajectories, ledger_path, summary_paths
from alfworld_sft.evaluation import EvalConfig, run_evaluation

pytestmark = pytest.mark.slow

TIMING_KEYS = {"seconds", "wall_s", "wall_time_s", "games_per_hour", "timing"}  # the only values a rerun may change


def without_timing(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: without_timing(item) for key, item in value.items() if key not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timing(item) for item in value]
    return value


def assert_meta(payload: dict[str, Any], packages: tuple[str, ...]) -> None:
    """The result file names its seed and the versions of the packages that made it."""
    assert payload["meta"]["seed"] == 0
    assert all(payload["meta"]["versions"][name] for name in packages), payload["meta"]["versions"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Two generated train games: a short pick_and_place_simple one, and a pick_two_obj_and_place one that the
    expert wins only through its seeded random fallbacks."""
    root = tmp_path_factory.mktemp("games")
    generate.generate_games(root, "train", count=2, seed=0, task_types=[1, 6])
    return root


def test_a_rerun_collects_the_same_trajectories(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("ALFWORLD_DATA", str(data_root))
    first = collect_trajectories(
        CollectConfig(output=tmp_path / "first" / "trajectories.jsonl", seed=0, workers=1, progress=False)
    )
    assert first.won == first.attempted == 2
    # The rerun: a fresh interpreter with another hash seed, two worker processes finishing in any order.
    second = tmp_path / "second" / "trajectories.jsonl"
    hash_seed = "1" if os.environ.get("PYTHONHASHSEED") == "0" else "0"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "alfworld_sft.cli",
            "collect",
            "--split",
            "train",
            "--output",
            str(second),
            "--seed",
            "0",
            "--workers",
            "2",
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
    )
    assert sorted(first.output.read_bytes().splitlines()) == sorted(second.read_bytes().splitlines())
    ledgers = [
        sorted((without_timing(row) for row in files.read_jsonl(path)), key=lambda row: row["game_id"])
        for path in (first.ledger, ledger_path(second))
    ]
    assert ledgers[0] == ledgers[1]
    summaries = [json.loads(path.read_text()) for path in (first.summary_json, summary_paths(second)[0])]
    assert summaries[0]["per_task_type"] == summaries[1]["per_task_type"]
    for summary in summaries:
        assert_meta(summary, ("alfworld-sft", "alfworld", "textworld"))


def test_a_rerun_of_the_evaluation_gets_the_same_outcomes(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("ALFWORLD_DATA", str(data_root))
    runs = []
    for name in ("first", "second"):
        # The split is only where the games are: determinism does not depend on which games they are.
        config = EvalConfig(
            agents=("zero_shot",),
            num_games=2,
            max_steps=3,
            split="train",
            seed=0,
            output=str(tmp_path / name / "results.json"),
        )
        results = run_evaluation(config)  # loads the default model afresh, as a rerun does
        games = sorted(files.read_jsonl(tmp_path / name / "results.ckpt.jsonl"), key=lambda r: r["game_id"])
        assert len(games) == 2 and all(game["actions"] and game["steps"] for game in games)
        saved = files.read_json(tmp_path / name / "results.json")
        assert_meta(saved, ("alfworld-sft", "torch", "transformers"))
        runs.append((without_timing(results["agents"]), without_timing(games)))
    (first_agents, first_games), (second_agents, second_games) = runs
    # Every model reply, hence every action, won flag and step count, is the same.
    assert first_games == second_games
    assert first_agents == second_agents
