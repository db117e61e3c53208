"""DAgger rounds and self-imitation: labels on hand-made rollouts (trained in place, one record per disagreement,
guesses, invalid replies, thoughts, deterministic bytes), labels of real engine rollouts equal to what the model
saw, self-imitation keeping only won games, a whole round with the expert standing in for the model, a real
SIGKILL of `alfworld-sft dagger` during rollouts with the real default model, and out-of-range settings."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from alfworld_sft import (
    cli,
    collect,
    dagger,
    engine,
    files,
    formatting,
    games,
    models,
    prompts,
    records,
    reports,
    train_config,
    training,
)
from alfworld_sft.agents import BASE_PROMPT_FORMAT, session_of
from alfworld_sft.backends import ExpertBackend
from alfworld_sft.dagger import DaggerConfig, LabelSettings, label_rollout, label_rollouts
from alfworld_sft.rollouts import RolloutConfig, play_rollouts
from conftest import games_of_type

FMT = prompts.PromptFormat()

# ----------------------------------------------------------------------------------------- hand-made rollouts


def step(reply, command, observation, admissible, expert=None, thought=None, guess=False):
    turn = {
        "reply": reply,
        "command": command,
        "how": "exact" if command else "invalid",
        "observation": observation,
        "admissible": admissible,
    }
    if expert is not None:
        turn["expert"] = {"command": expert, "thought": thought, "guess": guess}
    return turn


def rollout(turns, won=False, game="json_2.1.1/train/pick_and_place_simple-Mug-None-Shelf-1/trial_1"):
    return {
        "agent": "zero_shot",
        "game_id": game,
        "task_type": "pick_and_place_simple",
        "gamefile": f"/d/{game}/g",
        "won": won,
        "steps": len(turns),
        "task": "put a mug in shelf",
        "first_observation": "You see a desk 1.",
        "first_admissible": ["go to desk 1", "go to shelf 1", "look"],
        "transcript": [{"plan": "", "won": won, "turns": turns}],
    }


A1 = ["go to shelf 1", "look", "take mug 1 from desk 1"]
A2 = ["go to desk 1", "look", "open drawer 1"]
STRAYED = rollout(
    [
        step("go to desk 1", "go to desk 1", "On the desk 1, you see a mug 1.", A1, expert="go to desk 1"),
        step("go to shelf 1", "go to shelf 1", "On the shelf 1, you see nothing.", A2, expert="take mug 1 from desk 1"),
        step("I would look around", None, "Nothing happens.", A2, expert="go to desk 1"),
        step("look", "look", "You are in the middle of a room.", A2, expert="look", guess=True),
        step("go to desk 1", "go to desk 1", "On the desk 1, you see a mug 1.", A1, expert="go to desk 1"),
    ]
)


def settings(**changes):
    return LabelSettings(**{"method": "dagger", "prompt_format": FMT, "round_number": 1, "seed": 7, **changes})


def test_agreeing_turns_are_trained_in_place_and_each_disagreement_gets_one_record():
    found, counts = label_rollout(STRAYED, settings())
    whole, *labels = found
    assert whole["dagger_kind"] == "rollout" and whole["trained"] == [True, False, False, False, True]
    assert [turn["content"] for turn in whole["conversations"][1::2]] == [
        "go to desk 1",
        "go to shelf 1",
        "I would look around",
        "look",
        "go to desk 1",
    ]
    assert [label["label_step"] for label in labels] == [1, 2]
    for label in labels:
        state = label["label_step"]
        assert label["dagger_kind"] == "label" and label["steps"] == state + 1 and not label["won"]
        assert label["trained"] == [False] * state + [True]
        assert label["conversations"][:-1] == whole["conversations"][: 2 * state + 1]  # the model's own history
        assert label["admissible_commands"] == whole["admissible_commands"][: state + 1]
        assert label["expert"] == settings().expert and label["seed"] == 7 and label["split"] == "train"
    assert [label["conversations"][-1]["content"] for label in labels] == ["take mug 1 from desk 1", "go to desk 1"]
    assert counts == Counter(
        games=1,
        states=5,
        labelled=4,
        agreed=2,
        disagreed=2,
        guesses=1,
        invalid_replies=1,
        rollout_records=1,
        label_records=2,
        trained_turns=4,
    )
    for record in found:
        records.check_record(record)


def test_an_invalid_reply_stays_in_the_history_answered_nothing_happens():
    whole, _, label = label_rollout(STRAYED, settings())[0]
    assert whole["conversations"][5] == {"role": "assistant", "content": "I would look around"}
    assert whole["conversations"][6]["content"] == prompts.render_turn("Nothing happens.", A2, FMT)
    assert label["conversations"][0]["content"] == prompts.render_first_turn(
        "put a mug in shelf", "You see a desk 1.", ["go to desk 1", "go to shelf 1", "look"], FMT
    )


def test_user_turns_follow_the_prompt_format_and_list_each_states_commands():
    shown = prompts.PromptFormat(show_admissible_commands=True)
    whole = label_rollout(STRAYED, settings(prompt_format=shown))[0][0]
    users = [turn["content"] for turn in whole["conversations"][0::2]]
    assert [prompts.parse_turn(user)[2] for user in users] == whole["admissible_commands"]
    assert whole["admissible_commands"] == [["go to desk 1", "go to shelf 1", "look"], A1, A2, A2, A2]
    assert whole["prompt_format"] == {"show_admissible_commands": True}


def test_guessing_states_are_neither_labelled_nor_trained():
    guessing = rollout(
        [
            step("look", "look", "ok", A1, expert="go to desk 1", guess=True),
            step("look", "look", "ok", A1, expert="look", guess=True),
        ]
    )
    found, counts = label_rollout(guessing, settings())
    assert found == [] and counts["guesses"] == 2 and counts["labelled"] == 0


def test_thoughts_come_from_the_models_replies_and_the_experts_labels():
    thinking = rollout(
        [
            step(
                "Thought: the mug may be on the desk.\nAction: go to desk 1",
                "go to desk 1",
                "a mug 1",
                A1,
                expert="go to desk 1",
                thought="The mug is usually on the desk.",
            ),
            step(
                "Thought: shelves  next.\nAction: go to shelf 1",
                "go to shelf 1",
                "nothing",
                A2,
                expert="take mug 1 from desk 1",
                thought="Take the mug first.",
            ),
            step("go to desk 1", "go to desk 1", "a mug 1", A1, expert="take mug 1 from desk 1", thought="Take it."),
        ]
    )
    found, counts = label_rollout(thinking, settings(data_format="thoughts"))
    whole, first, second = found
    assert whole["thoughts"] == ["the mug may be on the desk.", "shelves next."]
    assert whole["trained"] == [True, False] and whole["steps"] == 2  # cut before the reply without a thought
    assert first["thoughts"] == ["the mug may be on the desk.", "Take the mug first."]
    assert second["thoughts"] == ["the mug may be on the desk.", "shelves next.", "Take it."]
    assert counts["cut"] == 0 and counts["label_records"] == 2
    texts = records.assistant_texts(second, "thoughts")
    assert texts[-1] == "Thought: Take it.\nAction: take mug 1 from desk 1"
    silent = rollout([step("go to shelf 1", "go to shelf 1", "x", A2, expert="go to desk 1")])
    with pytest.raises(ValueError, match="thoughts format needs the expert's thought"):
        label_rollout(silent, settings(data_format="thoughts"))


def test_self_imitation_keeps_won_games_with_their_valid_turns_trained():
    won = {**STRAYED, "won": True}
    [record], counts = label_rollout(won, settings(method="self_imitation"))
    assert record["trained"] == [True, True, False, True, True] and record["won"]
    assert counts["labelled"] == 0 and counts["label_records"] == 0
    assert label_rollout(STRAYED, settings(method="self_imitation"))[0] == []  # lost: nothing kept
    both, _ = label_rollout(won, settings(method="both"))
    assert both[0]["trained"] == [True, True, False, True, True] and len(both) == 3


def test_labels_are_the_same_bytes_on_every_run():
    games_ = [STRAYED, rollout(STRAYED["transcript"][0]["turns"][:2], game="json_2.1.1/train/other/trial_2")]
    first = dagger.jsonl_text(label_rollouts(games_, settings())[0])
    assert first == dagger.jsonl_text(label_rollouts(json.loads(json.dumps(games_)), settings())[0])
    assert first.count("\n") == 5


def test_loss_falls_on_the_experts_label_only():
    tokenizer = models.load_tokenizer(models.DEFAULT_MODEL)
    label = label_rollout(STRAYED, settings())[0][2]
    example = formatting.build_example(label, tokenizer, 1024)
    trained = [text for text, flag in formatting.split_trained_segments(example, tokenizer) if flag]
    assert trained == ["go to desk 1" + models.end_of_turn_marker(tokenizer)]


def test_a_rollout_of_several_trials_is_refused():
    tried = {**STRAYED, "transcript": STRAYED["transcript"] * 2}
    with pytest.raises(ValueError, match="2 trials"):
        label_rollout(tried, settings())


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
    settings_ = LabelSettings("both", FMT, round_number=1, seed=dagger.round_seed(0, 1))
    order = {games.game_id(g): i for i, g in enumerate(dagger.select_round_games(config, 1))}
    assert labelled == dagger.jsonl_text(
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
    assert dagger.read_run_rows(tmp_path / "dagger") == ("both", list(result.rows))

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
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None:
            if rollouts.exists() and rollouts.read_text().count("\n") >= 1:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
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
    expected, counts = label_rollouts(played, LabelSettings("dagger", FMT, seed=dagger.round_seed(0, 1)))
    assert (output / "round_1" / "labelled.jsonl").read_text() == dagger.jsonl_text(expected)
    summary = files.read_json(output / "round_1" / "summary.json")
    assert summary["labels"] == {name: counts[name] for name in dagger.LABEL_COUNTS}
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


def test_the_round_table_starts_with_the_starting_adapter(tmp_path):
    summary = {
        "round": 1,
        "played": 3,
        "rollouts_win_rate": 0.0,
        "labels": dict.fromkeys(dagger.LABEL_COUNTS, 2),
        "records_added": 2,
        "data": {"expert_records": 4, "new_records": 2},
        "eval": {"success_rate": 0.5},
    }
    rows = dagger.round_rows([summary], {"success_rate": 0.25})
    assert rows[0] == {**dict.fromkeys(rows[1]), "round": 0, "eval_success": 0.25}
    assert "| round | games | rollouts_won | states |" in reports.format_table(rows)
    assert reports.plot_rounds(rows, tmp_path / "rounds.png").stat().st_size > 0


def write_round(folder, number: int, method: str, success: float, **changes) -> None:
    """A round's summary as `make_round` writes it, with only what the round table reads."""
    summary = {
        "key": {"method": method, "agent": "zero_shot", "start_weights": "w0", "round": number},
        "round": number,
        "played": 3,
        "rollouts_win_rate": 1.0,
        "labels": dict.fromkeys(dagger.LABEL_COUNTS, 1),
        "records_added": 1,
        "data": {"expert_records": 4, "new_records": number},
        "eval": {"success_rate": success},
        **changes,
    }
    (folder / f"round_{number}").mkdir(parents=True)
    (folder / f"round_{number}" / dagger.SUMMARY).write_text(json.dumps(summary))


def write_start(folder, weights: str = "w0") -> None:
    """Round 0's evaluation: the starting adapter's results, with the weights it played."""
    (folder / "round_0").mkdir(parents=True)
    evaluated = {"run": {"weights": weights}, "agents": {"zero_shot": {"success_rate": 0.25}}}
    (folder / "round_0" / dagger.EVAL).write_text(json.dumps(evaluated))


def test_runs_cut_short_compare_round_by_round(tmp_path, capsys):
    for number, success in ((10, 0.75), (2, 0.5)):  # rows follow round numbers, not the folders' names
        write_round(tmp_path / "self_imitation", number, "self_imitation", success)
    (tmp_path / "self_imitation" / "round_old").mkdir()  # a folder that is no round is not read
    (tmp_path / "self_imitation" / "round_old" / dagger.SUMMARY).write_text("{}")
    write_round(tmp_path / "both", 1, "both", 0.75)
    write_start(tmp_path / "both")
    method, rows = dagger.read_run_rows(tmp_path / "self_imitation")
    assert method == "self_imitation" and [(r["round"], r["eval_success"]) for r in rows] == [(2, 0.5), (10, 0.75)]
    plot = tmp_path / "methods.png"
    folders = [str(tmp_path / "self_imitation"), str(tmp_path / "both")]
    assert cli.main(["dagger-compare", *folders, "--output", str(plot)]) == 0
    printed = capsys.readouterr().out
    assert "self_imitation (self_imitation)" in printed and "both (both)" in printed and plot.stat().st_size > 0
    assert [r["eval_success"] for r in dagger.read_run_rows(tmp_path / "both")[1]] == [0.25, 0.75]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: (folder / "round_1").mkdir(parents=True), "holds no finished round"),
        (
            lambda folder: write_round(folder, 1, "dagger", 0.5, played=None) or write_round(folder, 2, "both", 0.5),
            "differ in method",
        ),
        (lambda folder: write_round(folder, 1, "dagger", 0.5, key={"method": "dagger"}), "lacks agent, start_weights"),
        (lambda folder: write_round(folder, 1, "dagger", 0.5) or write_start(folder, "w1"), "evaluated other weights"),
    ],
)
def test_a_run_the_table_cannot_read_is_named_with_what_to_do(make, message, tmp_path, capsys):
    make(tmp_path / "dagger")
    assert cli.main(["dagger-compare", str(tmp_path / "dagger"), "--output", str(tmp_path / "m.png")]) == 2
    assert message in capsys.readouterr().err


def test_a_summary_without_a_field_of_the_table_is_named(tmp_path, capsys):
    write_round(tmp_path / "dagger", 1, "dagger", 0.5)
    summary = tmp_path / "dagger" / "round_1" / dagger.SUMMARY
    summary.write_text(json.dumps({k: v for k, v in json.loads(summary.read_text()).items() if k != "played"}))
    assert cli.main(["dagger-compare", str(tmp_path / "dagger"), "--output", str(tmp_path / "m.png")]) == 2
    assert f"{summary}" in capsys.readouterr().err
