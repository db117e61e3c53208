"""Oracle collection in the real engine: record contract, determinism, resume after a kill, torn and malformed
lines, games the engine cannot load. Games: real ones from $ALFWORLD_DATA, else the course's generated games
(conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alfworld_sft import collect, engine, files, games, prompts, records
from alfworld_sft.collect import CollectConfig, collect_trajectories
from partials import kill_after_first_line

# Short games (5-9 expert steps) of three task types: the seeded, type-balanced sample of list_games.
SAMPLE = {"split": "train", "task_types": ("1", "2", "5"), "limit": 4, "seed": 0}


def _config(output: Path, **changes) -> CollectConfig:
    return CollectConfig(output=output, max_steps=50, progress=False, **{**SAMPLE, **changes})


def _records(path: Path) -> dict[str, dict]:
    return {record["game_id"]: record for record in files.read_jsonl(path)}


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(line) for line in found.split()]


@pytest.fixture(scope="module")
def reference(train_games, tmp_path_factory) -> dict[str, dict]:
    """The sample collected once, in this process: the records every other run must reproduce."""
    output = tmp_path_factory.mktemp("reference") / "trajectories.jsonl"
    summary = collect_trajectories(_config(output, workers=1))
    assert summary.played_now == 4 and summary.skipped == 0
    return _records(output)


@pytest.mark.slow
def test_records_follow_the_contract(reference):
    assert len(reference) == 4  # all four short games are won by the expert
    for game_id, record in reference.items():
        records.check_record(record)
        assert list(record)[: len(records.RECORD_KEYS)] == list(records.RECORD_KEYS)
        assert record["format_version"] == records.FORMAT_VERSION and record["expert"] == engine.DEFAULT_EXPERT
        assert record["system"] == prompts.SYSTEM_PROMPT
        assert record["won"] is True and record["split"] == "train" and record["seed"] == 0
        assert record["task_type"] == games.read_task_type(record["gamefile"])
        assert game_id.startswith("json_2.1.1/train/") and record["gamefile"].endswith("game.tw-pddl")
        turns = record["conversations"]
        assert turns[0]["content"].startswith(f"Task: {record['task']}.\nObservation: ")
        assert turns[-1]["role"] == "assistant" and record["steps"] == len(turns) // 2
        # Every assistant command was admissible when its user turn was shown.
        for user_commands, turn in zip(record["admissible_commands"], turns[1::2]):
            assert turn["content"] in user_commands
        assert record["prompt_format"] == {"show_admissible_commands": False, "show_memory": True}


@pytest.mark.slow
def test_records_do_not_depend_on_worker_count(reference, tmp_path):
    output = tmp_path / "every_cpu.jsonl"
    summary = collect_trajectories(_config(output, workers=0))  # 0: one worker per CPU (2 on the course's machine)
    assert summary.workers == (os.cpu_count() or 1) and summary.won == 4
    assert _records(output) == reference
    payload = json.loads(summary.summary_json.read_text())
    assert payload["attempted"] == 4 and payload["this_run"]["workers"] == summary.workers
    assert payload["meta"]["seed"] == 0
    assert summary.plot.stat().st_size > 10_000
    assert collect.verify_trajectories(output)["records"] == 4


@pytest.mark.slow
def test_a_killed_run_resumes_without_loss_or_duplicates(reference, tmp_path):
    output = tmp_path / "killed.jsonl"
    command = [
        sys.executable,
        "-m",
        "alfworld_sft.cli",
        "collect",
        "--split",
        "train",
        "--output",
        str(output),
        "--limit",
        "4",
        "--task-types",
        "1,2,5",
        "--seed",
        "0",
        "--workers",
        "2",
    ]
    workers: list[int] = []
    kill_after_first_line(command, output, timeout=120, before_kill=lambda pid: workers.extend(_children(pid)))
    done_before = output.read_text().count("\n")
    assert 1 <= done_before < 4, "the kill should land after the first record and before the last"
    assert workers, "the collection should have started worker processes"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(files.is_process_alive(pid) for pid in workers):
        time.sleep(0.2)
    assert not any(files.is_process_alive(pid) for pid in workers), "workers outlived the killed collection"

    summary = collect_trajectories(_config(output, workers=1))
    assert summary.skipped >= done_before and summary.played_now == 4 - summary.skipped
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(lines) == 4 and {line["game_id"] for line in lines} == set(reference)
    assert _records(output) == reference
    ledger_ids = [json.loads(line)["game_id"] for line in summary.ledger.read_text().splitlines()]
    assert sorted(ledger_ids) == sorted(reference)


@pytest.mark.slow
def test_a_torn_last_line_is_cut_and_its_game_replayed(reference, tmp_path):
    output = tmp_path / "torn.jsonl"
    records = sorted(reference.values(), key=lambda record: record["game_id"])
    files.append_jsonl(output, records[:3])
    torn = json.dumps(records[3])
    output.write_text(output.read_text() + torn[: len(torn) // 2])  # a writer killed mid-line
    with pytest.warns(UserWarning, match="torn last line"):
        summary = collect_trajectories(_config(output, workers=1))
    assert summary.played_now == 1
    assert _records(output) == reference
    assert len(output.read_text().splitlines()) == 4


def test_a_malformed_line_is_reported_moved_aside_and_skipped(reference, tmp_path):
    output = tmp_path / "malformed.jsonl"
    records = sorted(reference.values(), key=lambda record: record["game_id"])
    files.append_jsonl(output, records[:2])
    output.write_text(output.read_text() + "{not json\n")
    files.append_jsonl(output, records[2:])
    with pytest.warns(UserWarning, match=rf"{output.name}:3: malformed trajectory line"):
        summary = collect_trajectories(_config(output, workers=1))
    assert summary.played_now == 0 and summary.skipped == 4
    assert _records(output) == reference  # the file now reads cleanly
    assert output.with_name("malformed.jsonl.malformed").read_text() == "{not json\n"


@pytest.mark.slow
def test_a_damaged_record_is_moved_aside_and_its_game_replayed(reference, tmp_path):
    output = tmp_path / "damaged.jsonl"
    files.append_jsonl(output, sorted(reference.values(), key=lambda record: record["game_id"]))
    collect_trajectories(_config(output, workers=1))  # writes the ledger: all four games won
    lines = output.read_text().splitlines(keepends=True)
    damaged = lines[1][:40] + "\n"
    output.write_text("".join([lines[0], damaged, *lines[2:]]))
    with pytest.warns(UserWarning, match=rf"{output.name}:2: malformed trajectory line"):
        summary = collect_trajectories(_config(output, workers=1))
    assert summary.played_now == 1 and summary.won == 4 and summary.attempted == 4
    assert _records(output) == reference


def test_a_rerun_with_other_settings_is_refused(reference, tmp_path):
    output = tmp_path / "settings.jsonl"
    files.append_jsonl(output, list(reference.values()))
    with pytest.raises(ValueError, match="seed=0.*use another --output"):
        collect_trajectories(_config(output, seed=1))


def test_a_game_the_engine_cannot_load_is_reported_and_skipped(train_games, tmp_path):
    source = games.list_games("train", task_types=[1], limit=1)[0].parent
    broken = tmp_path / "json_2.1.1" / "train" / source.parent.name / source.name
    shutil.copytree(source, broken)
    (broken / "game.tw-pddl").write_text('{"pddl_domain": "(define"}')
    output = tmp_path / "out" / "broken.jsonl"
    summary = collect_trajectories(CollectConfig(output=output, games=(broken / "game.tw-pddl",), progress=False))
    assert summary.won == 0 and summary.attempted == 1
    assert len(summary.failed) == 1 and "KeyError" in summary.failed[0]
    ledger = [json.loads(line) for line in summary.ledger.read_text().splitlines()]
    assert ledger[0]["error"] and ledger[0]["won"] is False
    assert not output.exists() or output.read_text() == ""
    # The rerun does not try it again.
    assert (
        collect_trajectories(CollectConfig(output=output, games=(broken / "game.tw-pddl",), progress=False)).played_now
        == 0
    )


def test_admissible_commands_can_be_shown_in_user_turns(train_games, tmp_path):
    gamefile = games.list_games("train", task_types=[1], limit=1)[0]
    outcome = collect.play_game(
        gamefile,
        split="train",
        max_steps=2,
        prompt_format=prompts.PromptFormat(show_admissible_commands=True),
    )
    turns = outcome.record["conversations"]
    assert outcome.steps == 2 and not outcome.won
    assert turns[0]["content"].endswith(", ".join(outcome.record["admissible_commands"][0]))
    assert "Admissible commands: " in turns[2]["content"]


def test_verification_rejects_a_record_that_breaks_the_contract(tmp_path):
    path = tmp_path / "bad.jsonl"
    files.append_jsonl(path, [{"system": "s", "conversations": [{"role": "user", "content": "Task: x."}]}])
    with pytest.raises(ValueError, match="keys .* are missing"):
        collect.verify_trajectories(path)
    path.write_text("")
    with pytest.raises(ValueError, match="no records"):
        collect.verify_trajectories(path)


def test_a_missing_split_stops_the_collection_with_the_fix(tmp_path, monkeypatch):
    (tmp_path / "json_2.1.1").mkdir()
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    with pytest.raises(games.MissingSplitError, match=r"json_2.1.1/valid_seen.*alfworld-sft data download"):
        collect_trajectories(CollectConfig(split="eval_in_distribution", output=tmp_path / "o.jsonl"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alfworld_sft.cli",
            "collect",
            "--split",
            "eval_in_distribution",
            "--output",
            str(tmp_path / "o.jsonl"),
        ],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "ALFWORLD_DATA": str(tmp_path)},
    )
    assert result.returncode == 2 and "valid_seen" in result.stderr and "Traceback" not in result.stderr
