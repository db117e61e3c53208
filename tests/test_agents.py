"""The reply -> command rule, and each of the five agents playing a real game with the default model."""

from __future__ import annotations

import itertools

import pytest
from alfworld_sft.agents import AGENTS, NOTHING_HAPPENS, map_action, render_demonstration

ADMISSIBLE = (
    "go to countertop 1",
    "go to drawer 1",
    "go to drawer 2",
    "open drawer 1",
    "take mug 1 from countertop 1",
    "move mug 1 to coffeemachine 1",
    "inventory",
    "look",
)


@pytest.mark.parametrize(
    ("reply", "command", "how"),
    [
        ("go to drawer 1", "go to drawer 1", "exact"),
        ("Thought: the mug may be there.\nAction: go to countertop 1", "go to countertop 1", "exact"),
        ("> open drawer 1.", "open drawer 1", "exact"),  # the command read as `prompts.parse_reply` reads it
        ("Go to  Drawer 1!", "go to drawer 1", "normalized"),
        ("put mug 1 in/on coffeemachine 1", "move mug 1 to coffeemachine 1", "normalized"),
        ("take mug 1 from counter top 1", "take mug 1 from countertop 1", "closest"),
        ("go to drawer 3", None, "invalid"),  # an invented number never maps to another object
        ("I think I should look for a mug", None, "invalid"),
        ("", None, "invalid"),
    ],
)
def test_map_action_follows_the_documented_rule(reply, command, how):
    mapped = map_action(reply, ADMISSIBLE)
    assert (mapped.command, mapped.how) == (command, how)


def test_render_demonstration_drops_admissible_lists_and_shortens_observations():
    record = {
        "game_id": "json_2.1.1/train/x/trial_1",
        "task_type": "pick_and_place_simple",
        "task": "put a mug in shelf",
        "conversations": [
            {
                "role": "user",
                "content": "Task: put a mug in shelf.\nObservation: "
                + "word " * 80
                + "\nAdmissible commands: look, inventory",
            },
            {"role": "assistant", "content": "go to shelf 1"},
        ],
    }
    demo = render_demonstration(record, max_observation_chars=60)
    assert "Admissible" not in demo.text and "> go to shelf 1" in demo.text
    assert demo.text.startswith("Task: put a mug in shelf.") and " ..." in demo.text


@pytest.fixture(scope="module")
def backend():
    from alfworld_sft.backends import load_backend

    return load_backend("smollm2-135m-instruct", batch_size=1)  # dtype auto: bfloat16 only where the CPU has it


@pytest.mark.slow
@pytest.mark.parametrize("agent_name", list(AGENTS))
def test_each_agent_plays_a_real_game_with_the_default_model(agent_name, backend, eval_games):
    from alfworld_sft.agents import Demonstration
    from alfworld_sft.rollouts import RolloutConfig, play_rollouts
    from conftest import games_of_type

    gamefile = games_of_type(eval_games, "pick_and_place_simple")[0]
    demos = (
        Demonstration(
            "json_2.1.1/train/demo",
            "pick_and_place_simple",
            "Task: put a mug in shelf.\nObservation: You see a shelf 1.\n> go to shelf 1",
        ),
    )
    max_steps = 1
    config = RolloutConfig(agent=agent_name, max_steps=max_steps, demonstrations=demos, expert=None, progress=False)
    [record] = play_rollouts(backend, [gamefile], config).records
    agent = AGENTS[agent_name]
    assert record["agent"] == agent_name and record["task_type"] == "pick_and_place_simple"
    turns = [turn for trial in record["transcript"] for turn in trial["turns"]]
    assert len(turns) == record["steps"] == len(record["actions"])
    if not record["won"]:
        assert record["trials"] == agent.trials and record["steps"] == agent.trials * max_steps
        assert len(record["reflections"]) == agent.trials - 1
    assert record["tokens_generated"] >= record["steps"]  # at least the end-of-turn token of every reply
    assert all(t["reply"] or t["how"] == "invalid" for t in turns)
    assert record["invalid_replies"] == sum(t["how"] == "invalid" for t in turns)
    assert all(t["observation"] == NOTHING_HAPPENS for t in turns if t["how"] == "invalid")
    if agent.plans:
        assert all(trial["plan"] for trial in record["transcript"])


def test_prompt_window_moves_in_quarter_budget_jumps_so_consecutive_prompts_share_a_prefix():
    from alfworld_sft.agents import Trial, Turn, build_agent
    from alfworld_sft.backends import ExpertBackend

    codec = ExpertBackend().codec
    agent = build_agent("zero_shot", codec, window_tokens=400)
    trial = Trial("put a mug in coffeemachine", "You are in the middle of a room.", ADMISSIBLE)
    windows, moves = [], []
    for step in range(60):
        trial.turns.append(
            Turn(
                "go to drawer 1",
                "go to drawer 1",
                "exact",
                f"You arrive at drawer {step}. The drawer {step} is closed.",
                ADMISSIBLE,
            )
        )
        before = trial.dropped_pairs
        windows.append(agent.act_messages(trial, []))
        assert agent.codec.count_tokens(windows[-1]) <= 400
        if trial.dropped_pairs != before:
            moves.append(step)
            # a move frees a quarter of the budget, so several steps follow before the next one
            assert agent.codec.count_tokens(windows[-1]) <= 300
        elif len(windows) > 1:
            assert windows[-1][: len(windows[-2])] == windows[-2]  # the last prompt, extended
    # without the jump the window would move at every step once full
    assert len(moves) >= 2 and min(b - a for a, b in itertools.pairwise(moves)) >= 3


def test_a_thoughts_model_is_prompted_in_its_format_and_constrained_after_action(tmp_path):
    from alfworld_sft import prompts, records
    from alfworld_sft.agents import Trial, Turn, build_agent
    from alfworld_sft.backends import CodecSpec, PromptCodec

    record = records.TrainingRecord(
        base_model="smollm2-135m-instruct",
        prompt_format=prompts.PromptFormat(),
        max_seq_len=1024,
        data_format="thoughts",
    )
    records.write_training_record(tmp_path, record, seed=0)
    codec = PromptCodec(CodecSpec(None, str(tmp_path)))
    agent = build_agent("zero_shot", codec, actions="constrained")
    assert agent.thinks and agent.system_prompt == prompts.THOUGHTS_SYSTEM_PROMPT
    assert agent.window_tokens == 1024 - agent.max_new_tokens
    trial = Trial("put a mug in shelf", "You see a shelf 1.", ADMISSIBLE)
    reply = "Thought: the mug may be on the shelf.\nAction: go to shelf 1"
    trial.turns.append(Turn(reply, "go to shelf 1", "exact", "You arrive at shelf 1.", ADMISSIBLE))
    messages = agent.act_messages(trial, [])
    assert messages[0]["content"] == prompts.THOUGHTS_SYSTEM_PROMPT and messages[2]["content"] == reply
    assert agent.choice_after == "Action:"  # grounded after its thought
    with pytest.raises(ValueError, match="actions must be one of"):
        build_agent("zero_shot", codec, actions="grounded")


@pytest.mark.parametrize("agent_name", ["zero_shot", "react", "reflexion", "hierarchical"])
def test_a_model_trained_on_bare_commands_is_grounded_from_its_first_token(tmp_path, agent_name):
    from alfworld_sft import prompts, records
    from alfworld_sft.agents import build_agent
    from alfworld_sft.backends import CodecSpec, PromptCodec

    record = records.TrainingRecord(
        base_model="smollm2-135m-instruct", prompt_format=prompts.PromptFormat(), max_seq_len=1024
    )
    records.write_training_record(tmp_path, record, seed=0)
    finetuned = build_agent(agent_name, PromptCodec(CodecSpec(None, str(tmp_path))), actions="constrained")
    base = build_agent(agent_name, PromptCodec(CodecSpec(None, None)), actions="constrained")
    # It answers react and reflexion with a bare command: after "Action:", that command would pass for a thought.
    assert finetuned.choice_after is None
    # A base model is asked for a thought by the agents that think, and grounded after it.
    assert base.choice_after == ("Action:" if base.writes_thoughts else None)
