"""Labelling rollouts into trajectory records on hand-made rollouts: agreeing turns trained in place, one record per
disagreement, guesses, invalid replies, the prompt format, thoughts, self-imitation, deterministic bytes, the loss
on the expert's label only, and notebook 06's turn-by-turn view. (Labels of real engine rollouts: test_dagger.py.)"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from alfworld_sft import formatting, labelling, models, prompts, records
from alfworld_sft.labelling import LabelSettings, label_rollout, label_rollouts

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
    assert whole["prompt_format"] == {"show_admissible_commands": True, "show_memory": False}


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
    first = labelling.jsonl_text(label_rollouts(games_, settings())[0])
    assert first == labelling.jsonl_text(label_rollouts(json.loads(json.dumps(games_)), settings())[0])
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


def test_the_trained_tokens_are_the_labels_commands():
    tokenizer = models.load_tokenizer(models.DEFAULT_MODEL)
    found, _ = label_rollout(STRAYED, settings())
    label = found[2]
    expected = len(tokenizer("go to desk 1", add_special_tokens=False)["input_ids"])
    assert labelling.count_trained_tokens([label], tokenizer, "commands") == expected
    assert labelling.count_trained_tokens(found, tokenizer, "commands") > expected


def test_the_notebooks_view_names_the_rule_of_every_state():
    rows = labelling.describe_turns(STRAYED)
    assert [row["DAgger"] for row in rows] == [
        "agrees: trained in place",
        "differs: the expert's command is the label",
        "differs: the expert's command is the label",
        "the expert guesses: not labelled",
        "agrees: trained in place",
    ]
    assert rows[2]["played"] == "(invalid)" and rows[2]["model wrote"] == "I would look around"
