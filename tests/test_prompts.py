import itertools

import pytest
from alfworld_sft.prompts import (
    SYSTEM_PROMPT,
    PromptFormat,
    build_messages,
    parse_reply,
    render_first_turn,
    render_reply,
    render_turn,
    select_window,
    split_first_observation,
)

FIRST = (
    "-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room. Looking quickly around you, you see "
    "a cabinet 1, and a toaster 1.\n\nYour task is to: put a cool tomato in microwave."
)


def test_first_observation_is_split_into_task_and_room():
    task, room = split_first_observation(FIRST)
    assert task == "put a cool tomato in microwave"
    assert room.startswith("You are in the middle of a room") and "Welcome" not in room and "task" not in room


@pytest.mark.parametrize("thought", [None, "the mug may be on the desk."])
@pytest.mark.parametrize("command", ["go to countertop 1", "take mug 1 from desk 1", "look"])
def test_a_reply_reads_back_as_it_was_rendered(command, thought):
    data_format = "thoughts" if thought else "commands"
    assert parse_reply(render_reply(command, thought, data_format)) == (thought, command)


def test_a_models_reply_is_read_leniently():
    assert parse_reply("Thought: the mug may be there.\nAction: go to countertop 1") == (
        "the mug may be there.",
        "go to countertop 1",
    )
    assert parse_reply("> open drawer 1.") == (None, "open drawer 1")  # decoration around the command dropped
    assert parse_reply("'look'\nmore text") == (None, "look")  # the first line
    assert parse_reply("Thought: only thinking") == ("only thinking", "")  # no command
    assert parse_reply("thought:  shelves\n next.\naction: look\nAction: go to shelf 1") == (
        "shelves next.",
        "go to shelf 1",
    )
    assert parse_reply("Thought:\nAction: look") == (None, "look")  # a blank thought is none


def test_first_observation_without_task_is_rejected():
    with pytest.raises(ValueError, match="Your task is to"):
        split_first_observation("You are in the middle of a room.")


def test_admissible_commands_follow_the_format():
    plain = render_turn("You arrive at fridge 1.", ["open fridge 1"])
    assert plain == "Observation: You arrive at fridge 1."
    listed = render_turn(
        "You arrive at fridge 1.", ["look", "open fridge 1"], PromptFormat(show_admissible_commands=True)
    )
    assert listed.endswith("Admissible commands: look, open fridge 1")
    with pytest.raises(ValueError, match="admissible"):
        render_first_turn("t", "o", None, PromptFormat(show_admissible_commands=True))


def _game(turns: int) -> list[dict[str, str]]:
    conversation = [{"role": "user", "content": render_first_turn("put a mug in sink", "room")}]
    for i in range(turns):
        conversation += [
            {"role": "assistant", "content": f"go to cabinet {i}"},
            {"role": "user", "content": f"Observation: {i}"},
        ]
    return build_messages(SYSTEM_PROMPT, conversation)


def count_words(messages):
    return sum(len(m["content"].split()) for m in messages)


def test_window_keeps_system_task_and_latest_turns():
    messages = _game(20)
    budget = count_words(messages[:2]) + count_words(messages[-6:])
    window, dropped = select_window(messages, count_words, budget)
    assert window[:2] == messages[:2]
    assert window[2:] == messages[2 + 2 * dropped :]
    assert count_words(window) <= budget and dropped > 0
    # Dropping one pair fewer would not fit: the window is as long as the budget allows.
    assert count_words(messages[:2] + messages[2 + 2 * (dropped - 1) :]) > budget
    roles = [m["role"] for m in window[1:]]
    assert all(a != b for a, b in itertools.pairwise(roles))


def test_window_of_a_training_record_ends_with_the_assistant_turn():
    messages = _game(10) + [{"role": "assistant", "content": "put mug 1 in sinkbasin 1"}]
    window, dropped = select_window(messages, count_words, count_words(messages) - 3)
    assert dropped >= 1 and window[-1] == messages[-1] and window[-2] == messages[-2]


def test_window_that_cannot_fit_says_what_to_do():
    with pytest.raises(ValueError, match="raise max_seq_len"):
        select_window(_game(5), count_words, 5)


def test_window_of_a_game_in_progress_only_moves_forward():
    """With min_dropped a later, longer game keeps at least the earlier drops; when it already fits it keeps
    exactly them, so consecutive prompts share their prefix."""
    budget = count_words(_game(8))
    _, dropped = select_window(_game(12), count_words, budget)
    assert dropped > 0
    window, kept = select_window(_game(12), count_words, budget + 100, min_dropped=dropped)
    assert kept == dropped and window == _game(12)[:2] + _game(12)[2 + 2 * dropped :]
    _, later = select_window(_game(30), count_words, budget, min_dropped=dropped)
    assert later > dropped
