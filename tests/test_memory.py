"""The game's memory (`prompts.SearchMemory`): what it reads from observations, and the contract that collection
and play render the same user turns with it, on a real game of the real engine."""

import re

import pytest
from alfworld_sft import collect, files, games, prompts, records
from alfworld_sft.agents import Trial, Turn, build_agent
from alfworld_sft.backends import CodecSpec, PromptCodec

ROOM = (
    "You are in the middle of a room. Looking quickly around you, you see a cabinet 3, a cabinet 2, a cabinet 1, "
    "a countertop 1, a drawer 1, a fridge 1, and a sinkbasin 1."
)
MEMORY = prompts.PromptFormat(show_memory=True)


def memory_after(task, *observations):
    memory = prompts.SearchMemory(task, ROOM)
    for observation in observations:
        memory.observe(observation)
    return memory.render()


def test_a_place_is_searched_once_its_contents_are_seen():
    assert (
        memory_after("put a mug in fridge")
        == "not searched: cabinet 1-3, countertop 1, drawer 1, fridge 1, sinkbasin 1; seen: none"
    )
    closed = memory_after("put a mug in fridge", "You arrive at cabinet 2. The cabinet 2 is closed.")
    assert "cabinet 1-3" in closed  # arriving at a closed place does not search it
    opened = memory_after(
        "put a mug in fridge",
        "You arrive at cabinet 2. The cabinet 2 is closed.",
        "You open the cabinet 2. The cabinet 2 is open. In it, you see nothing.",
        "You arrive at countertop 1. On the countertop 1, you see a apple 1, and a mug 2.",
    )
    assert opened == "not searched: cabinet 1, 3, drawer 1, fridge 1, sinkbasin 1; seen: mug 2 (countertop 1)"


def test_a_place_examined_from_elsewhere_is_the_one_searched():
    # Receptacles that stand together (stoveburners) can be examined without going to each: the view names its
    # receptacle, and that one is searched, not the place the robot last arrived at.
    examined = memory_after(
        "put a mug in fridge",
        "You arrive at cabinet 1. On the cabinet 1, you see nothing.",
        "On the cabinet 2, you see a mug 1.",
    )
    assert examined == "not searched: cabinet 3, countertop 1, drawer 1, fridge 1, sinkbasin 1; seen: mug 1 (cabinet 2)"


def test_only_the_tasks_objects_are_remembered_and_a_taken_one_moves_with_the_robot():
    task = "put two knives in drawer"  # plural: "knives" names knife
    found = "You arrive at countertop 1. On the countertop 1, you see a knife 1, a spoon 1, and a knife 2."
    assert memory_after(task, found).endswith("seen: knife 1 (countertop 1), knife 2 (countertop 1)")
    taken = memory_after(task, found, "You pick up the knife 1 from the countertop 1.")
    assert taken.endswith("seen: knife 2 (countertop 1)")
    put = memory_after(
        task, found, "You pick up the knife 1 from the countertop 1.", "You move the knife 1 to the drawer 1."
    )
    assert put.endswith("seen: knife 2 (countertop 1), knife 1 (drawer 1)")


def test_with_holding_the_memory_says_what_is_held_and_what_was_placed():
    task = "put two watch in dresser"
    found = "You arrive at sidetable 1. On the sidetable 1, you see a watch 1, and a watch 2."
    memory = prompts.SearchMemory(task, ROOM, holding=True)
    for observation in (found, "You pick up the watch 1 from the sidetable 1."):
        memory.observe(observation)
    assert memory.render().endswith("seen: watch 2 (sidetable 1); placed: none; holding: watch 1")
    memory.observe("You move the watch 1 to the dresser 1.")
    memory.observe("You arrive at dresser 1. On the dresser 1, you see a watch 1.")  # seen again: still placed
    assert memory.render().endswith("seen: watch 2 (sidetable 1); placed: watch 1 (dresser 1); holding: nothing")
    memory.observe("You are carrying: a watch 2.")
    assert memory.render().endswith("holding: watch 2")
    # Without it the line is the one earlier models were trained on: a placed object is "seen" where it was put.
    assert memory_after(task, found, "You pick up the watch 1 from the sidetable 1.", "You move the watch 1 to the "
                        "dresser 1.").endswith("seen: watch 2 (sidetable 1), watch 1 (dresser 1)")  # fmt: skip
    with pytest.raises(ValueError, match="needs show_memory"):
        prompts.PromptFormat(show_holding=True)
    holding = prompts.PromptFormat(False, True, True)
    turns = prompts.render_user_turns(task, ROOM, None, [(found, None)], holding)
    assert turns[1].endswith("; placed: none; holding: nothing")
    # Stored only when on: records and run keys written before the field existed equal today's.
    assert MEMORY.as_dict() == {"show_admissible_commands": False, "show_memory": True}
    assert [prompts.read_prompt_format(f.as_dict()) for f in (MEMORY, holding)] == [MEMORY, holding]


def test_the_memory_line_reads_back_as_the_observation():
    turn = prompts.render_turn("You arrive at sinkbasin 1.", ["look"], prompts.PromptFormat(True, True), "x; y")
    assert turn == "Observation: You arrive at sinkbasin 1.\nMemory: x; y\nAdmissible commands: look"
    assert prompts.parse_turn(turn) == (None, "You arrive at sinkbasin 1.", ["look"])
    with pytest.raises(ValueError, match="memory"):
        prompts.render_turn("o", None, MEMORY)


def test_an_older_record_reads_with_the_memory_off_and_an_unknown_field_is_named():
    assert prompts.read_prompt_format({"show_admissible_commands": True}) == prompts.PromptFormat(True, False, False)
    with pytest.raises(ValueError, match="unknown fields \\['show_map'\\]"):
        prompts.read_prompt_format({"show_map": True})


def test_collection_and_play_render_the_same_memory_on_a_real_game(train_games, tmp_path):
    gamefile = games.list_games("train", task_types=[1], limit=1)[0]
    outcome = collect.play_game(gamefile, split="train", max_steps=8, prompt_format=MEMORY)
    record = outcome.record
    users = [turn["content"] for turn in record["conversations"] if turn["role"] == "user"]
    assert "\nMemory: not searched: " in users[1] and "Memory:" not in users[0]

    records.write_training_record(tmp_path, records.TrainingRecord("smollm2-135m-instruct", MEMORY, 4096), seed=0)
    agent = build_agent("zero_shot", PromptCodec(CodecSpec(None, str(tmp_path))))
    assert agent.fmt.show_memory
    first_task, first_observation, _ = prompts.parse_turn(users[0])
    trial = Trial(first_task, first_observation, tuple(record["admissible_commands"][0]))
    commands = [turn["content"] for turn in record["conversations"] if turn["role"] == "assistant"]
    for command, user, admissible in zip(commands, users[1:], record["admissible_commands"][1:]):
        observation = prompts.parse_turn(user)[1]
        trial.turns.append(Turn(command, command, "exact", observation, tuple(admissible)))
    played = [m["content"] for m in agent.act_messages(trial, []) if m["role"] == "user"]
    assert played == users  # the model plays with the very memory lines it was trained on


def test_games_collected_without_memory_render_again_as_a_collection_with_it(train_games, tmp_path):
    gamefile = games.list_games("train", task_types=[2], limit=1)[0]
    plain = collect.play_game(gamefile, split="train", max_steps=10, prompt_format=prompts.PromptFormat()).record
    direct = collect.play_game(gamefile, split="train", max_steps=10, prompt_format=MEMORY).record
    source = tmp_path / "plain.jsonl"
    files.append_jsonl(source, [plain])
    assert collect.rerender_trajectories(source, tmp_path / "memory.jsonl", MEMORY) == 1
    [rendered] = files.read_jsonl(tmp_path / "memory.jsonl")
    assert rendered == direct
    assert (
        collect.rerender_trajectories(tmp_path / "memory.jsonl", tmp_path / "back.jsonl", prompts.PromptFormat()) == 1
    )
    assert next(files.read_jsonl(tmp_path / "back.jsonl")) == plain


def test_in_search_order_the_line_lists_first_where_alfreds_priors_put_the_object():
    ordered = prompts.SearchMemory("put a cool tomato in countertop", ROOM, ordered=True)
    # Priors for a tomato: countertop, sinkbasin, fridge; those that need no opening before the fridge; the rest
    # (cabinets, drawer: openable) after them, by name. Kinds keep that order in the compressed line.
    assert ordered.render() == "not searched: countertop 1, sinkbasin 1, fridge 1, cabinet 1-3, drawer 1; seen: none"
    assert prompts.SearchMemory("put two knives in drawer", ROOM, ordered=True).target == "knife"
    assert memory_after("put a cool tomato in countertop").startswith("not searched: cabinet 1-3, countertop 1")


def test_a_look_task_searches_for_its_lamp_once_it_holds_its_object():
    memory = prompts.SearchMemory("look at bowl under the desklamp", ROOM, ordered=True)
    assert (memory.target, memory.lamp, memory.sought()) == ("bowl", "desklamp", "bowl")
    assert memory.render().startswith("not searched: countertop 1, sinkbasin 1, cabinet 1-3, fridge 1, drawer 1")
    memory.observe("You arrive at cabinet 1. On the cabinet 1, you see a bowl 1.")
    memory.observe("You pick up the bowl 1 from the cabinet 1.")
    # No prior places a lamp: the places that need no opening, then the rest, each by name.
    assert memory.sought() == "desklamp"
    assert memory.render() == "not searched: countertop 1, sinkbasin 1, cabinet 2-3, drawer 1, fridge 1; seen: none"


def test_search_order_shows_the_memory_from_the_first_turn_and_is_stored_only_when_on():
    ordered = prompts.PromptFormat(show_memory=True, search_order=True)
    with pytest.raises(ValueError, match="search_order .* needs show_memory"):
        prompts.PromptFormat(search_order=True)
    first = prompts.render_user_turns("put a mug in fridge", ROOM, None, [], ordered)[0]
    line = "not searched: countertop 1, sinkbasin 1, cabinet 1-3, fridge 1, drawer 1; seen: none"
    assert first.endswith(f"\nMemory: {line}")
    assert prompts.parse_turn(first) == ("put a mug in fridge", ROOM, None)
    assert "Memory:" not in prompts.render_user_turns("put a mug in fridge", ROOM, None, [], MEMORY)[0]
    assert "search_order" not in MEMORY.as_dict()
    assert prompts.read_prompt_format(ordered.as_dict()) == ordered


def test_every_search_move_of_the_teacher_is_the_first_place_the_ordered_line_lists(train_games):
    # The contract that makes the order learnable, on real games of the real engine: until the task's object is
    # first seen, the teacher goes to the place the line lists first (a kitchen, a look task, a two-object task).
    ordered = prompts.PromptFormat(show_memory=True, search_order=True)
    searches = 0
    for task_type in (1, 2, 6):
        gamefile = games.list_games("train", task_types=[task_type], limit=1)[0]
        record = collect.play_game(gamefile, split="train", max_steps=30, prompt_format=ordered).record
        turns = record["conversations"]
        for user, assistant in zip(turns[::2], turns[1::2]):
            memory = user["content"].partition("\nMemory: ")[2]
            if not memory.endswith("seen: none"):
                break  # found: from here on the teacher fetches, treats and delivers
            command = assistant["content"]
            listed = re.match(r"not searched: ([a-z]+) (\d+)", memory)
            if command.startswith("go to ") and listed:
                searches += 1
                assert command == f"go to {listed[1]} {listed[2]}", (gamefile, memory)
    assert searches >= 3


def test_recall_takes_in_only_what_stood_where_and_shows_from_the_first_turn():
    earlier = [
        "You arrive at cabinet 1. The cabinet 1 is closed.",
        "You open the cabinet 1. The cabinet 1 is open. In it, you see a mug 1.",
        "You arrive at countertop 1. On the countertop 1, you see a apple 1.",
        "Nothing happens.",
    ]
    turns = prompts.render_user_turns("put a mug in fridge", ROOM, None, [("Nothing happens.", None)], MEMORY, earlier)
    line = "not searched: cabinet 2-3, drawer 1, fridge 1, sinkbasin 1; seen: mug 1 (cabinet 1)"
    assert turns[0].endswith(f"\nMemory: {line}") and turns[1].endswith(f"\nMemory: {line}")
    assert prompts.parse_turn(turns[0]) == ("put a mug in fridge", ROOM, None)
    # A format without the memory line has nowhere to show it: the turns are what they were.
    plain = prompts.PromptFormat()
    assert prompts.render_user_turns("put a mug in fridge", ROOM, None, [], plain, earlier) == [
        prompts.render_first_turn("put a mug in fridge", ROOM, None, plain)
    ]
    # A trial that saw no place's contents (invalid replies only) taught the next one nothing: its first turn is the
    # one training showed.
    assert prompts.render_user_turns("put a mug in fridge", ROOM, None, [], MEMORY, ["Nothing happens."] * 3) == [
        prompts.render_first_turn("put a mug in fridge", ROOM, None, MEMORY)
    ]


def test_a_failed_trial_is_recalled_in_the_next_until_it_moved_something(train_games, tmp_path):
    from alfworld_sft.agents import Episode
    from alfworld_sft.backends import Reply

    records.write_training_record(tmp_path, records.TrainingRecord("smollm2-135m-instruct", MEMORY, 4096), seed=0)
    agent = build_agent("reflexion", PromptCodec(CodecSpec(None, str(tmp_path))), actions="constrained")
    gamefile = games.list_games("train", task_types=[1], limit=1)[0]
    episode = Episode(agent, gamefile, game_id=games.game_id(gamefile), max_steps=4, seed=0)
    try:
        while episode.phase == "act":  # the first trial walks to four places, the last ones listed, and fails
            goes = [c for c in episode.request().choices if c.startswith("go to ")]
            episode.advance(Reply(goes[-1 - len(episode.trial.turns)], 1, 0.0))
        first = episode.trials[0]
        episode.advance(Reply("Look elsewhere.", 3, 0.0))
        second = episode.trial
        assert second is not first and second.recalled == tuple(turn.observation for turn in first.turns)
        opening = agent.act_messages(second, episode.reflections)[1]["content"]
        memory = prompts.SearchMemory(second.task, second.first_observation)
        memory.recall(second.recalled)
        assert opening.endswith(f"\nMemory: {memory.render()}")
        assert memory.render() != prompts.SearchMemory(second.task, second.first_observation).render()
    finally:
        episode.close()
    # What a trial saw after it picked something up is not the room the next trial finds.
    took = "You pick up the mug 1 from the countertop 1."
    turns = [Turn("c", "c", "exact", text, ()) for text in ("You arrive at countertop 1. On it...", took, "x")]
    assert prompts.observed_before_moving(t.observation for t in turns) == ["You arrive at countertop 1. On it..."]
