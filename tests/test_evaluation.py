"""Evaluation runs on real engine games: resume after a crash and after a real kill, game log keys that identify
the weights, malformed game log lines, results, game selection, out-of-range settings. The tables, plots and
comparisons of results are tested in test_reports.py."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from alfworld_sft import cli, evaluation, failures, files, games, reports
from alfworld_sft.backends import ExpertBackend
from alfworld_sft.evaluation import EvalConfig, run_evaluation, select_games
from alfworld_sft.task_types import TASK_TYPES
from partials import kill_after_first_line


class CrashingExpert(ExpertBackend):
    """The expert backend, killed after `steps` model steps (as a crash or Ctrl-C would)."""

    slots = 2  # two games in flight at a time (every agent's games share the batch), so the crash lands mid-run

    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps

    def step(self):
        self.steps -= 1
        if self.steps < 0:
            raise KeyboardInterrupt
        return super().step()


def expert_config(tmp_path: Path, **changes) -> EvalConfig:
    values = dict(
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
    return EvalConfig(**{**values, **changes})


def test_select_games_is_balanced_and_seeded(eval_games):
    chosen = select_games("eval_in_distribution", 12, seed=0)
    assert len(chosen) == len(set(chosen)) == 12
    counts = Counter(games.read_task_type(p) for p in chosen)
    assert len(counts) == 6 and set(counts.values()) == {2}
    assert chosen == select_games("eval_in_distribution", 12, seed=0)
    if len(games.all_games("eval_in_distribution")) > 12:  # the real split: another seed, another sample
        assert chosen != select_games("eval_in_distribution", 12, seed=1)


@pytest.mark.slow
def test_the_expert_s_prompt_previews_without_a_tokenizer(eval_games):
    gamefile = select_games("eval_in_distribution", 1, seed=0)[0]
    text = evaluation.preview_prompt("zero_shot", "expert", None, gamefile)
    assert text.startswith("[system]\n") and "\n\n[user]\nTask: " in text


def test_resume_after_interruption_neither_loses_nor_repeats_a_game(eval_games, tmp_path, capsys):
    config = expert_config(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(config, backend=CrashingExpert(steps=14))
    game_log = tmp_path / "run.ckpt.jsonl"
    before = list(files.read_jsonl(game_log))
    assert 0 < len(before) < 8, "the crash should land in the middle of the run"
    with open(game_log, "a") as handle:  # a torn line, as a killed writer leaves it
        handle.write('{"agent": "zero_shot", "game_')
    capsys.readouterr()
    with pytest.warns(UserWarning, match="torn last line"):
        results = run_evaluation(config, backend=ExpertBackend())
    said = f"resuming from {game_log}: {len(before)} games already played, {8 - len(before)} to play"
    assert said in capsys.readouterr().out  # a resumed run says so
    after = list(files.read_jsonl(game_log))
    assert after[: len(before)] == before  # finished games were kept, not replayed
    pairs = [(r["agent"], r["game_id"]) for r in after]
    assert len(pairs) == len(set(pairs)) == 8
    for agent in config.agents:
        block = results["agents"][agent]
        assert block["games"] == 4 and len(block["games_detail"]) == 4
        assert block["won"] == sum(g["won"] for g in block["games_detail"])
        assert all(g["actions"] for g in block["games_detail"])
        assert set(block["per_task_type"]) <= set(TASK_TYPES)
    assert (tmp_path / "run.png").stat().st_size > 0
    saved = files.read_json(tmp_path / "run.json")
    assert saved["meta"]["seed"] == 0 and saved["agents"]["react"]["invalid_reply_rate"] == 0.0

    # A rerun with everything done plays nothing and changes nothing.
    run_evaluation(config, backend=CrashingExpert(steps=0))
    assert list(files.read_jsonl(game_log)) == after


def test_every_lost_game_of_a_real_run_has_its_cause(eval_games, tmp_path):
    """The expert, stopped after 3 steps, loses every game: each has one cause, and the counts per agent, per task
    type, in the table and in the rows by cause agree."""
    results = run_evaluation(expert_config(tmp_path, agents=("zero_shot",), max_steps=3))
    block = results["agents"]["zero_shot"]
    lost = [game for game in block["games_detail"] if not game["won"]]
    assert lost and all(game["failure"] in failures.CAUSES for game in lost)
    assert sum(block["failures"].values()) == len(lost) == block["games"] - block["won"]
    assert sum(sum(entry["failures"].values()) for entry in block["per_task_type"].values()) == len(lost)
    [row] = reports.results_table(results)
    assert row["lost_by_cause"] == failures.format_failures(block["failures"]) != "-"
    total = [row for row in reports.failure_rows(results) if row["task_type"] == "all"]
    assert total == [{"agent": "zero_shot", "task_type": "all", "lost": len(lost), **block["failures"]}]


@pytest.mark.slow
def test_a_killed_evaluation_resumes_without_loss_or_duplicates(eval_games, tmp_path):
    """SIGKILL mid-run (the engine workers die with it), then the same command again."""
    output, game_log = tmp_path / "run.json", tmp_path / "run.ckpt.jsonl"
    command = [
        sys.executable,
        "-m",
        "alfworld_sft.cli",
        "evaluate",
        "--model",
        "expert",
        "--agents",
        "zero_shot",
        "--num-games",
        "6",
        "--max-steps",
        "20",
        "--split",
        "eval_in_distribution",
        "--workers",
        "2",
        "--output",
        str(output),
    ]
    kill_after_first_line(command, game_log, timeout=300)
    done_before = game_log.read_text().count("\n")
    assert 1 <= done_before < 6, "the kill should land after the first game and before the last"
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = list(files.read_jsonl(game_log))
    assert len(lines) == 6 and len({line["game_id"] for line in lines}) == 6
    assert files.read_json(output)["agents"]["zero_shot"]["games"] == 6


@pytest.mark.slow
def test_shards_merge_into_the_whole_run_without_loading_a_model(eval_games, tmp_path, monkeypatch):
    """Shards played apart, their game logs concatenated: the merging run only summarizes."""
    from alfworld_sft import evaluation

    common = {
        "agents": ("zero_shot",),
        "num_games": 4,
        "max_steps": 12,
        "model": "expert",
        "split": "eval_in_distribution",
        "batch_size": 2,
        "seed": 0,
    }
    shard_files = []
    for shard in ("0/2", "1/2"):
        stem = tmp_path / f"shard{shard[0]}"
        run_evaluation(EvalConfig(**common, shard=shard, output=f"{stem}.json", checkpoint=f"{stem}.jsonl"))
        shard_files.append(Path(f"{stem}.jsonl"))
    merged = tmp_path / "merged.jsonl"
    merged.write_text("".join(f.read_text() for f in shard_files))

    def no_model(*args, **kwargs):
        raise AssertionError("a finished run must not load a model")

    monkeypatch.setattr(evaluation, "load_backend", no_model)
    results = run_evaluation(EvalConfig(**common, output=str(tmp_path / "merged.json"), checkpoint=str(merged)))
    block = results["agents"]["zero_shot"]
    assert block["games"] == 4 and results["model"] == "expert"
    assert sorted(g["game_id"] for g in block["games_detail"]) == sorted(
        games.game_id(g) for g in select_games("eval_in_distribution", 4, 0)
    )


@pytest.mark.slow
def test_actions_auto_grounds_a_finetuned_model_and_leaves_others_free(adapter, tmp_path):
    """The default `--actions auto`: an adapter (a training record, a backend that grounds) plays constrained, and
    the results and the game log's run key say so; a model without a training record plays free."""
    tuned = run_evaluation(
        EvalConfig(
            agents=("zero_shot",),
            num_games=1,
            max_steps=2,
            model="",
            adapter=str(adapter),
            split="eval_in_distribution",
            output=str(tmp_path / "tuned.json"),
            device="cpu",
            threads=2,
        )
    )
    assert EvalConfig().actions == "auto"
    assert tuned["actions"] == "constrained" and tuned["run"]["actions"] == "constrained"
    assert tuned["agents"]["zero_shot"]["invalid_replies"] == 0
    base = run_evaluation(expert_config(tmp_path, agents=("zero_shot",), num_games=1))
    assert base["actions"] == "free"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-steps", "0"], "--max-steps must be at least 1, got 0"),
        (["--max-steps", "-3"], "--max-steps must be at least 1, got -3"),
        (["--num-games", "-1"], "--num-games must be 0"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--workers", "-2"], "--workers must be 0"),
        (["--window-tokens", "10"], "--window-tokens must be at least 64"),
        (["--temperature", "-0.5"], "--temperature must be 0"),
    ],
)
def test_out_of_range_numbers_are_refused_before_anything_runs(flags, message, tmp_path, capsys):
    code = cli.main(["evaluate", "--model", "expert", "--output", str(tmp_path / "r.json"), *flags])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_the_course_plays_the_split_it_is_given_and_never_another(tmp_path, monkeypatch):
    """Notebook 05's split: the mode's default, or the one passed; a split that is not installed is an error that
    names it, never a silent substitution (the machines of this repository have no eval_out_of_distribution)."""
    assert evaluation.course_config(True, 0).split == "eval_in_distribution"
    full = evaluation.course_config(False, 0)
    assert full.split == "eval_out_of_distribution" and full.num_games == evaluation.FULL_BASE_GAMES
    chosen = evaluation.course_config(False, 0, split="eval_in_distribution", games=4)
    grounded = evaluation.course_finetuned_config(chosen, tmp_path, "constrained", small=False, games=4)
    free = evaluation.course_finetuned_config(chosen, tmp_path, "free", small=False)
    assert (chosen.split, chosen.num_games, grounded.split, grounded.num_games) == ("eval_in_distribution", 4) * 2
    assert grounded.agents == evaluation.DEFAULT_AGENTS and free.agents == ("zero_shot",) and free.num_games == 0
    # The base model plays its sample for fewer steps; every fine-tuned run, the exported model's too, the seed's 50.
    served = evaluation.course_served_config(chosen, small=False)
    assert (
        chosen.max_steps == evaluation.FULL_BASE_STEPS < grounded.max_steps == free.max_steps == served.max_steps == 50
    )
    assert evaluation.course_served_config(evaluation.course_config(True, 0), small=True).max_steps == 3
    with pytest.raises(ValueError, match="split must be one of"):
        evaluation.course_config(False, 0, split="valid_unseen")
    data = tmp_path / "alfworld"
    (data / "json_2.1.1" / "valid_seen").mkdir(parents=True)
    monkeypatch.setenv("ALFWORLD_DATA", str(data))
    with pytest.raises(games.MissingSplitError, match="valid_unseen"):
        evaluation.prepare_games(full)


def test_a_game_log_path_that_holds_another_kind_of_file_is_refused_untouched(eval_games, tmp_path, capsys):
    """`--checkpoint` pointed at the user's trajectories by mistake: refused with the file's name, and not one of its
    lines moved or rewritten (before, every line went to `.malformed` and the file filled with evaluation lines)."""
    trajectories = tmp_path / "trajectories.jsonl"
    trajectories.write_text("".join(json.dumps({"game_id": f"g{i}", "conversations": []}) + "\n" for i in range(3)))
    before = trajectories.read_bytes()
    code = cli.main(
        ["evaluate", "--model", "expert", "--agents", "zero_shot", "--num-games", "1", "--max-steps", "2",
         "--split", "eval_in_distribution", "--checkpoint", str(trajectories), "--output", str(tmp_path / "r.json")]
    )  # fmt: skip
    error = capsys.readouterr().err
    assert code == 2 and f"{trajectories} is not a game log file" in error and "left untouched" in error
    assert trajectories.read_bytes() == before and not list(tmp_path.glob("*.malformed"))
    assert not (tmp_path / "r.json").exists()


def test_more_games_than_the_split_holds_plays_them_all_and_says_so(eval_games, capsys):
    every = select_games("eval_in_distribution", 0, 0)
    capsys.readouterr()
    assert sorted(select_games("eval_in_distribution", 100_000, 0)) == sorted(every)
    said = f"--num-games 100000 is more than the {len(every)} games of eval_in_distribution: playing all {len(every)}"
    assert said in capsys.readouterr().out
