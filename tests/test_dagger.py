"""DAgger rounds and self-imitation: labels of real engine rollouts equal to what the model saw, self-imitation
keeping only won games, a whole round with the expert standing in for the model, a round whose engine worker was
killed, a real SIGKILL of `alfworld-sft dagger` during rollouts with the real default model, and out-of-range
settings. (The labelling rules on hand-made rollouts: test_labelling.py; the run read back: test_dagger_runs.py.)"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys

import pytest
from alfworld_sft import (
    cli,
    collect,
    dagger,
    dagger_runs,
    engine,
    files,
    games,
    labelling,
    models,
    prompts,
    records,
    train_config,
    training,
)
from alfworld_sft.agents import BASE_PROMPT_FORMAT, session_of
from alfworld_sft.backends import ExpertBackend
from alfworld_sft.dagger import DaggerConfig
from alfworld_sft.labelling import LabelSettings, label_rollouts
from alfworld_sft.rollouts import RolloutConfig, play_rollouts
from conftest import games_of_type
from partials import kill_after_first_line

FMT = prompts.PromptFormat()


def settings(**changes):
    return LabelSettings(**{"method": "dagger", "prompt_format": FMT, "round_number": 1, "seed": 7, **changes})


# -------------------------------------------------------------------------------------------- real engine


class StrayingExpert(ExpertBackend):
    """The expert's command, except at the second step of a game (`inventory`, admissible but not the expert's)
    and the third (a reply that maps to no command); records every request it answers."""

    def __init__(self):
        super().__init__()
        self.requests: dict[str, list] = {}

    def answer(self, requests):
        replies = []
        for request in requests:
            seen = self.requests.setdefault(request.session, [])
            seen.append(request)
            text = {2: "inventory", 3: "I would dance"}.get(len(seen), request.expert_action or "")
            replies.append(dataclasses.replace(super().answer([request])[0], text=text))
        return replies


@pytest.fixture(scope="module")
def strayed(train_games):
    """Real rollouts of a won game, a game lost at the step cap and a long pick_two game, with what was asked."""
    chosen = [games_of_type(train_games, t)[0] for t in ("pick_and_place_simple", "pick_two_obj_and_place")]
    chosen += games_of_type(train_games, "pick_cool_then_place_in_recep")[:1]
    backend = StrayingExpert()
    # Just enough steps for the expert's shortest game and the straying expert's two wasted turns: the simple game
    # is won, the longer ones are lost at the cap.
    lengths = [engine.play_expert(g, seed=0, game_id=games.game_id(g)).steps for g in chosen]
    assert min(lengths) < max(lengths), lengths
    config = RolloutConfig(max_steps=min(lengths) + 2, window_tokens=10**6, progress=False)  # every prompt: whole game
    result = play_rollouts(backend, chosen, config)
    assert not result.failed
    return result.records, backend.requests


@pytest.mark.slow
def test_labels_of_real_rollouts_show_the_model_what_it_saw(strayed):
    played, requests = strayed
    found, counts = label_rollouts(played, settings(prompt_format=BASE_PROMPT_FORMAT))
    labels = [record for record in found if record["dagger_kind"] == "label"]
    assert counts["disagreed"] == len(labels) >= 2 * len(played) and counts["invalid_replies"] == len(played)
    for label in labels:
        asked = requests[session_of("zero_shot", label["game_id"])][label["label_step"]]
        # The model's prompt at that state (the expert backend has no training record: it is prompted with the
        # admissible commands listed), then the expert's command: nothing else.
        assert [dict(m) for m in asked.messages[1:]] == label["conversations"][:-1]
        assert label["conversations"][-1]["content"] == asked.expert_action
        assert label["conversations"][-1]["content"] in label["admissible_commands"][-1]
    assert all(record["gamefile"] and record["format_version"] == 2 for record in found)


@pytest.mark.slow
def test_self_imitation_keeps_only_won_games(strayed):
    played, _ = strayed
    found, counts = label_rollouts(played, settings(method="self_imitation"))
    won = {rollout["game_id"] for rollout in played if rollout["won"]}
    assert 0 < len(won) < len(played), "the games should give both outcomes"
    assert {record["game_id"] for record in found} == won and counts["won"] == len(won)
    for record in found:
        assert record["won"] and sum(record["trained"]) == record["steps"] - 1  # all but the invalid reply


# ------------------------------------------------------------------------------------------------ whole rounds


def recipe(**changes) -> train_config.TrainConfig:
    """A training recipe of one CPU step of one example on the default model, without held-out games."""
    small = train_config.course_config(True, 0)
    return dataclasses.replace(small, max_steps=1, batch=1, save_steps=1, eval_fraction=0.0, **changes)


@pytest.fixture(scope="module")
def sft_run(adapter, train_games, tmp_path_factory):
    """An SFT adapter whose training record holds its recipe, and the expert trajectories it was trained on."""
    folder = tmp_path_factory.mktemp("sft")
    sft = folder / "sft_adapter"
    shutil.copytree(adapter, sft)
    record = records.read_training_record(sft)
    details = {"config": json.loads(json.dumps(dataclasses.asdict(recipe())))}
    records.write_training_record(sft, dataclasses.replace(record, details=details), seed=0)
    chosen = tuple(games_of_type(train_games, "pick_and_place_simple", "look_at_obj_in_light"))
    collect.collect_trajectories(
        collect.CollectConfig(games=chosen, output=folder / "trajectories.jsonl", max_steps=20, progress=False)
    )
    return sft, folder / "trajectories.jsonl"


def round_config(sft_run, output, **changes) -> DaggerConfig:
    sft, expert_data = sft_run
    values = dict(
        adapter=str(sft),
        expert_data=str(expert_data),
        output=str(output),
        rounds=1,
        games_per_round=3,
        max_steps=8,
        batch_size=3,
        eval_split=None,
        device="cpu",
        progress=False,
    )
    return DaggerConfig(**{**values, **changes})


@pytest.mark.slow
def test_a_round_with_the_expert_standing_in_for_the_model(sft_run, tmp_path, monkeypatch):
    config = round_config(sft_run, tmp_path / "dagger", method="both", expert_ratio=0.5)
    result = dagger.run_dagger(config, backend=StrayingExpert())
    [summary] = result.summaries
    folder = tmp_path / "dagger" / "round_1"
    played = list(files.read_jsonl(folder / "rollouts.jsonl"))
    assert summary["played"] == summary["games"] == len(played) == 3
    labelled = (folder / "labelled.jsonl").read_text()
    trained_format = records.read_training_record(config.adapter).prompt_format  # the round labels in it
    settings_ = LabelSettings("both", trained_format, round_number=1, seed=dagger.round_seed(0, 1))
    order = {games.game_id(g): i for i, g in enumerate(dagger.select_round_games(config, 1))}
    assert labelled == labelling.jsonl_text(
        label_rollouts(sorted(played, key=lambda r: order[r["game_id"]]), settings_)[0]
    )
    new = labelled.count("\n")
    assert summary["records_added"] == summary["data"]["new_records"] == new > 0
    expert = min(round(0.5 * new), len(list(files.read_jsonl(config.expert_data))))
    assert summary["data"]["expert_records"] == expert
    train_lines = (folder / "train.jsonl").read_text().splitlines(keepends=True)
    assert len(train_lines) == expert + new and "".join(train_lines[expert:]) == labelled
    assert summary["labels"]["disagreed"] == summary["labels"]["label_records"] >= 6
    assert summary["trained_tokens_added"] > 0 and summary["training"]["global_step"] == 1
    assert (folder / "adapter" / "adapter_config.json").exists() and not list((folder / "adapter").glob("checkpoint-*"))
    assert result.plot.stat().st_size > 0 and result.rows[0]["round"] == 1
    assert set(summary["seconds"]) == {"rollouts", "labelling", "training"}
    assert dagger_runs.read_run_rows(tmp_path / "dagger") == ("both", list(result.rows))
    example = dagger_runs.pick_example(config.output)  # notebook 06's example: the longest label record, its game
    record = example["record"]
    assert record["dagger_kind"] == "label" and example["rollout"]["game_id"] == record["game_id"]
    assert len(labelling.describe_turns(example["rollout"])) == example["rollout"]["steps"]
    assert record["conversations"][-1]["content"] in labelling.render_trained_tokens(record, config.adapter)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished round must not train again")

    monkeypatch.setattr(training, "train", no_training)
    again = dagger.run_dagger(config, backend=StrayingExpert())
    assert again.summaries[0]["key"] == summary["key"]
    with pytest.raises(ValueError, match="other settings .*temperature"):
        dagger.run_dagger(dataclasses.replace(config, temperature=1.0), backend=StrayingExpert())


class WorkerKillingExpert(StrayingExpert):
    """Kills every engine worker once, after the first game is recorded and while other games wait for their reply:
    the games in flight are lost for sure (a game's worker dies between its request and its reply)."""

    def __init__(self, rollouts):
        super().__init__()
        self.rollouts, self.killed = rollouts, []

    def answer(self, requests):
        if not self.killed and requests and self.rollouts.exists() and self.rollouts.read_text().count("\n") >= 1:
            for worker in multiprocessing.active_children():
                if worker.name.startswith("alfworld-engine-"):
                    os.kill(worker.pid, signal.SIGKILL)
                    self.killed.append(worker.pid)
        return super().answer(requests)


@pytest.mark.slow
def test_a_round_whose_engine_worker_was_killed_is_not_sealed_and_replays_the_lost_games(sft_run, tmp_path):
    """SIGKILL of the real engine workers during the rollouts: the round stops before labelling or training, keeps
    the games that were recorded, and the rerun plays only the lost ones and then seals the round."""
    config = round_config(sft_run, tmp_path / "dagger", games_per_round=3, workers=2)
    folder = tmp_path / "dagger" / "round_1"
    killer = WorkerKillingExpert(folder / "rollouts.jsonl")
    with pytest.raises(dagger.IncompleteRoundError, match=r"of the round's 3 games were played.*Rerun") as raised:
        dagger.run_dagger(config, backend=killer)
    assert killer.killed and "died" in str(raised.value)
    kept = (folder / "rollouts.jsonl").read_text()
    assert 1 <= kept.count("\n") < 3
    assert not (folder / "summary.json").exists() and not (folder / "labelled.jsonl").exists()
    assert not (folder / "adapter").exists()

    [summary] = dagger.run_dagger(config, backend=StrayingExpert()).summaries
    played = (folder / "rollouts.jsonl").read_text()
    assert played.startswith(kept)  # what was recorded before the kill is kept, not replayed
    assert (
        summary["played"]
        == summary["games"]
        == 3
        == len({line["game_id"] for line in files.read_jsonl(folder / "rollouts.jsonl")})
    )
    assert played.count("\n") == 3


@pytest.mark.slow
def test_a_killed_round_resumes_without_losing_or_duplicating_a_labelled_state(sft_run, tmp_path):
    """SIGKILL of `alfworld-sft dagger` (the real default model) during rollouts, then the same command again."""
    sft, expert_data = sft_run
    output = tmp_path / "dagger"
    rollouts = output / "round_1" / "rollouts.jsonl"
    command = [
        sys.executable,
        "-m",
        "alfworld_sft.cli",
        "dagger",
        "--adapter",
        str(sft),
        "--expert-data",
        str(expert_data),
        "--output",
        str(output),
        "--rounds",
        "1",
        "--games-per-round",
        "2",
        "--max-steps",
        "2",
        "--batch-size",
        "1",
        "--workers",
        "0",
        "--eval-split",
        "none",
        "--device",
        "cpu",
    ]
    kill_after_first_line(command, rollouts, timeout=600)
    before = rollouts.read_text()
    assert before.count("\n") == 1, "the kill should land after the first game and before the second"
    assert not (output / "round_1" / "labelled.jsonl").exists()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| round" in result.stdout
    after = list(files.read_jsonl(rollouts))
    assert rollouts.read_text().startswith(before)  # the games played before the kill were kept, not replayed
    assert len(after) == 2 and len({line["game_id"] for line in after}) == 2
    # Every state of every game labelled once: the labels are exactly those of the two rollouts, in game order.
    order = [games.game_id(g) for g in dagger.select_round_games(DaggerConfig(games_per_round=2), 1)]
    played = sorted(after, key=lambda line: order.index(line["game_id"]))
    trained_format = records.read_training_record(sft).prompt_format
    expected, counts = label_rollouts(played, LabelSettings("dagger", trained_format, seed=dagger.round_seed(0, 1)))
    assert (output / "round_1" / "labelled.jsonl").read_text() == labelling.jsonl_text(expected)
    summary = files.read_json(output / "round_1" / "summary.json")
    assert summary["labels"] == {name: counts[name] for name in labelling.LABEL_COUNTS}
    assert summary["labels"]["states"] == sum(line["steps"] for line in after) == 4
    assert summary["labels"]["labelled"] == summary["labels"]["agreed"] + summary["labels"]["disagreed"]


# ---------------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rounds", "0"], "--rounds must be at least 1, got 0"),
        (["--games-per-round", "-1"], "--games-per-round must be 0"),
        (["--expert-ratio", "-0.5"], "--expert-ratio must be 0 or more"),
        (["--temperature", "-1"], "--temperature must be 0"),
        (["--max-steps", "0"], "--max-steps must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--eval-games", "-3"], "--eval-games must be 0"),
        (["--train-max-steps", "0"], "--train-max-steps must be above 0"),
    ],
)
def test_out_of_range_numbers_are_refused_before_anything_runs(flags, message, tmp_path, capsys):
    code = cli.main(["dagger", "--adapter", str(tmp_path / "none"), "--output", str(tmp_path / "out"), *flags])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_continuing_trains_the_last_rounds_adapter_further(tmp_path):
    record = records.TrainingRecord(
        base_model=models.DEFAULT_MODEL, prompt_format=prompts.PromptFormat(), max_seq_len=512
    )
    plan = dagger.DaggerPlan(
        DaggerConfig(init="continue"),
        tmp_path,
        tmp_path / "sft",
        tmp_path / "e.jsonl",
        record,
        "thoughts",
        train_config.TrainConfig(),
        (),
        {},
    )
    previous = tmp_path / "round_1" / "adapter"
    continued = dagger.round_train_config(plan, 2, previous)
    assert continued.init_adapter == str(previous) and continued.data_format == "thoughts"
    assert continued.output == str(tmp_path / "round_2" / "adapter")
    fresh = dagger.round_train_config(dataclasses.replace(plan, config=DaggerConfig(init="base")), 2, previous)
    assert fresh.init_adapter is None


def test_a_missing_adapter_is_named(tmp_path, capsys):
    code = cli.main(["dagger", "--adapter", str(tmp_path / "sft_adapter"), "--output", str(tmp_path / "out")])
    assert code == 2 and f"no adapter at {tmp_path / 'sft_adapter'}: run notebook 03" in capsys.readouterr().err
    config = dataclasses.replace(dagger.course_config(True, 0), adapter=str(tmp_path / "sft_adapter"))
    assert dagger.run_dagger_when_present(config) is None
    assert "run notebook 03 first" in capsys.readouterr().out


def test_the_notebooks_small_run_is_small():
    small, full = dagger.course_config(True, 0), dagger.course_config(False, 0)
    assert small.rounds == 1 and small.games_per_round <= 4 and small.max_steps <= 5 and small.eval_split is None
    assert small.train.max_steps == 2 and small.output.endswith("small/dagger")
    assert full.train is None and full.games_per_round == dagger.FULL_ROUND_GAMES and full.workers == os.cpu_count()
    # Evaluated on notebook 05's split and games, whose free zero_shot run is round 0's evaluation.
    assert full.eval_split == "eval_out_of_distribution" and full.eval_games == 0
    assert full.start_evaluation.endswith("eval/finetuned_free.ckpt.jsonl")
    chosen = dagger.course_config(False, 0, split="eval_in_distribution", games_per_round=2, eval_games=2)
    assert (chosen.eval_split, chosen.games_per_round, chosen.eval_games) == ("eval_in_distribution", 2, 2)
    assert DaggerConfig().eval_split == "eval_in_distribution"  # the command's rounds are chosen in distribution
