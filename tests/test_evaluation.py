"""Evaluation runs on real games: resume after a crash, results, comparison, game selection."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from alfworld_sft import files
from alfworld_sft.backends import ExpertBackend
from alfworld_sft.evaluation import (
    CheckpointMismatchError,
    EvalConfig,
    compare_results,
    read_checkpoint,
    run_evaluation,
    select_games,
)

pytestmark = pytest.mark.skipif(not os.environ.get("ALFWORLD_DATA"), reason="ALFWORLD_DATA is not set (real games)")


class CrashingExpert(ExpertBackend):
    """The expert backend, killed after `calls` generate calls (as a crash or Ctrl-C would)."""

    def __init__(self, calls: int):
        super().__init__()
        self.calls = calls

    def generate(self, requests):
        self.calls -= 1
        if self.calls < 0:
            raise KeyboardInterrupt
        return super().generate(requests)


def test_select_games_is_balanced_and_seeded():
    chosen = select_games("eval_in_distribution", 12, seed=0)
    assert len(chosen) == len(set(chosen)) == 12
    counts = Counter(p.parent.parent.name.split("-")[0] for p in chosen)
    assert len(counts) == 6 and set(counts.values()) == {2}
    assert chosen == select_games("eval_in_distribution", 12, seed=0)
    assert chosen != select_games("eval_in_distribution", 12, seed=1)


@pytest.mark.slow
def test_resume_after_interruption_neither_loses_nor_repeats_a_game(tmp_path):
    config = EvalConfig(
        agents=("zero_shot", "react"),
        num_games=4,
        max_steps=12,
        model="expert",
        split="eval_in_distribution",
        output=str(tmp_path / "run.json"),
        checkpoint=str(tmp_path / "run.ckpt.jsonl"),
        batch_size=2,
        seed=0,
    )
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(config, backend=CrashingExpert(calls=30))
    checkpoint = tmp_path / "run.ckpt.jsonl"
    before = list(files.read_jsonl(checkpoint))
    assert 0 < len(before) < 8, "the crash should land in the middle of the run"
    with open(checkpoint, "a") as handle:  # a torn line, as a killed writer leaves it
        handle.write('{"agent": "zero_shot", "game_')
    backend = ExpertBackend()
    results = run_evaluation(config, backend=backend)
    after = list(files.read_jsonl(checkpoint))
    assert after[: len(before)] == before  # finished games were kept, not replayed
    pairs = [(r["agent"], r["game_id"]) for r in after]
    assert len(pairs) == len(set(pairs)) == 8
    for agent in config.agents:
        block = results["agents"][agent]
        assert block["games"] == 4 and len(block["games_detail"]) == 4
        assert block["won"] == sum(g["won"] for g in block["games_detail"])
        assert all(g["actions"] for g in block["games_detail"])
        assert set(block["per_task_type"]) <= {
            "pick_and_place_simple",
            "look_at_obj_in_light",
            "pick_clean_then_place_in_recep",
            "pick_heat_then_place_in_recep",
            "pick_cool_then_place_in_recep",
            "pick_two_obj_and_place",
        }
    assert (tmp_path / "run.png").stat().st_size > 0
    saved = files.read_json(tmp_path / "run.json")
    assert saved["meta"]["seed"] == 0 and saved["agents"]["react"]["invalid_reply_rate"] == 0.0

    # A rerun with everything done plays nothing and changes nothing.
    run_evaluation(config, backend=CrashingExpert(calls=0))
    assert list(files.read_jsonl(checkpoint)) == after

    other = EvalConfig(**{**config.__dict__, "max_steps": 7})
    with pytest.raises(CheckpointMismatchError, match="max_steps"):
        read_checkpoint(checkpoint, {"model": "expert", "split": other.split, "max_steps": 7, "seed": 0})

    comparison = compare_results(tmp_path / "run.json", tmp_path / "run.json", plot=tmp_path / "cmp.png")
    assert [row["agent"] for row in comparison["agents"]] == ["zero_shot", "react"]
    assert "| agent |" in comparison["markdown"] and (tmp_path / "cmp.png").stat().st_size > 0


def test_compare_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="alfworld-sft evaluate"):
        compare_results(tmp_path / "a.json", tmp_path / "b.json")


def test_shards_merge_into_the_whole_run_without_loading_a_model(tmp_path, monkeypatch):
    """Shards played in parallel, their checkpoints concatenated: the merging run only summarizes."""
    from alfworld_sft import evaluation

    model = "smollm2-135m-instruct"
    common = {
        "agents": ("zero_shot",),
        "num_games": 4,
        "max_steps": 12,
        "model": model,
        "split": "eval_in_distribution",
        "batch_size": 2,
        "seed": 0,
    }
    shard_files = []
    for shard in ("0/2", "1/2"):
        stem = tmp_path / f"shard{shard[0]}"
        expert = ExpertBackend()
        expert.name = model  # plays like the expert, keyed like the model, so the merge can be checked cheaply
        run_evaluation(
            EvalConfig(**common, shard=shard, output=f"{stem}.json", checkpoint=f"{stem}.jsonl"),
            backend=expert,
        )
        shard_files.append(Path(f"{stem}.jsonl"))
    merged = tmp_path / "merged.jsonl"
    merged.write_text("".join(f.read_text() for f in shard_files))

    def no_model(*args, **kwargs):
        raise AssertionError("a finished run must not load a model")

    monkeypatch.setattr(evaluation, "load_backend", no_model)
    results = run_evaluation(EvalConfig(**common, output=str(tmp_path / "merged.json"), checkpoint=str(merged)))
    block = results["agents"]["zero_shot"]
    assert block["games"] == 4 and results["model"] == model
    assert sorted(g["game_id"] for g in block["games_detail"]) == sorted(
        evaluation.game_id_of(g) for g in evaluation.select_games("eval_in_distribution", 4, 0)
    )
