"""The observation-driven teacher: its parser on literal observations, its beliefs and decisions on hand-written
states, and games in the real engine (from $ALFWORLD_DATA, else the course's generated ones): every command
admissible, wins of every task type, the same thoughts on a replay, thoughts that name only what was observed, and a
take-over after another policy; the demo command prints a game's transcript."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import alfworld_sft
import pytest
from alfworld_sft import games
from alfworld_sft.engine import ExpertGame, play_expert
from alfworld_sft.observations import View, parse_names, parse_room, parse_view
from alfworld_sft.task_types import TASK_TYPES
from alfworld_sft.teacher import Decision, Teacher

ROOM = (
    "You are in the middle of a room. Looking quickly around you, you see a cabinet 2, a cabinet 1, a coffeemachine 1, "
    "a countertop 1, a fridge 1, a microwave 1, and a sinkbasin 1."
)
RECEPTACLES = ("cabinet 1", "cabinet 2", "coffeemachine 1", "countertop 1", "fridge 1", "microwave 1", "sinkbasin 1")
BASE = ("help", "inventory", "look")


def admissible(at: str | None = None, *extra: str, beside: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The commands the engine admits at a receptacle (and those beside it), plus `extra`."""
    here = {at, *beside} if at else set()
    goto = [f"go to {r}" for r in RECEPTACLES if r not in here]
    return tuple(sorted([*goto, *(f"examine {r}" for r in here), *extra, *BASE]))


def simple_teacher(task_type: str = "pick_and_place_simple", **params: str) -> Teacher:
    params = {"object_target": "Mug", "parent_target": "CoffeeMachine", "toggle_target": "", **params}
    teacher = Teacher(task_type, {"mrecep_target": "", "object_sliced": False, **params})
    teacher.observe(None, ROOM, admissible())
    return teacher


# ------------------------------------------------------------------------------------------------- the parser
def test_parse_room_and_names():
    assert parse_room(ROOM) == (
        "cabinet 2",
        "cabinet 1",
        "coffeemachine 1",
        "countertop 1",
        "fridge 1",
        "microwave 1",
        "sinkbasin 1",
    )
    banner = "-= Welcome to TextWorld, ALFRED! =-\n\n" + ROOM + "\n\nYour task is to: put a mug in desk."
    assert parse_room(banner) == parse_room(ROOM)
    assert parse_names("a apple 1, a bread 1, and a cup 2") == ("apple 1", "bread 1", "cup 2")
    assert parse_names("a alarmclock 1, and a cd 2") == ("alarmclock 1", "cd 2")
    assert parse_names("nothing") == ()


@pytest.mark.parametrize(
    ("text", "view"),
    [
        (
            "You arrive at countertop 1. On the countertop 1, you see a apple 1, a butterknife 2, and a mug 3.",
            View("countertop 1", "surface", ("apple 1", "butterknife 2", "mug 3")),
        ),
        ("You arrive at shelf 1. On the shelf 1, you see nothing.", View("shelf 1", "surface", ())),
        ("You arrive at cabinet 3. The cabinet 3 is closed.", View("cabinet 3", "closed", None)),
        (
            "You open the fridge 1. The fridge 1 is open. In it, you see a egg 2, and a lettuce 1.",
            View("fridge 1", "open", ("egg 2", "lettuce 1")),
        ),
        ("You arrive at drawer 10. The drawer 10 is open. In it, you see nothing.", View("drawer 10", "open", ())),
        ("On the shelf 2, you see a pen 1.", View("shelf 2", "surface", ("pen 1",))),
        ("You close the drawer 1.", None),
        ("Nothing happens.", None),
        ("You are facing the shelf 2, and shelf 1. Next to it, you see nothing.", None),
    ],
)
def test_parse_view(text, view):
    assert parse_view(text) == view


def test_observe_tracks_take_put_treat_and_inventory():
    teacher = simple_teacher("pick_heat_then_place_in_recep", parent_target="CounterTop")
    teacher.observe("go to countertop 1", "You arrive at countertop 1. On the countertop 1, you see a mug 1.", ())
    assert teacher.location == "countertop 1" and teacher.contents == {"countertop 1": {"mug 1"}}
    assert teacher.searched == ["countertop 1"]
    teacher.observe("take mug 1 from countertop 1", "You pick up the mug 1 from the countertop 1.", ())
    assert teacher.holding == "mug 1" and teacher.contents == {"countertop 1": set()}
    teacher.observe("heat mug 1 with microwave 1", "You heat the mug 1 using the microwave 1.", ())
    assert "mug 1" in teacher.treated["hot"]
    teacher.observe("cool mug 1 with fridge 1", "You cool the mug 1 using the fridge 1.", ())
    assert "mug 1" in teacher.treated["cool"] and "mug 1" not in teacher.treated["hot"]
    teacher.observe("inventory", "You are carrying: a mug 1.", ())
    assert teacher.holding == "mug 1"
    teacher.observe("move mug 1 to countertop 1", "You move the mug 1 to the countertop 1.", ())
    assert teacher.holding is None and teacher.contents == {"countertop 1": {"mug 1"}}
    teacher.observe("go to countertop 1", "Nothing happens.", ())
    assert teacher.contents == {"countertop 1": {"mug 1"}}
    teacher.observe("inventory", "You are not carrying anything.", ())
    assert teacher.holding is None


def test_observe_tracks_open_close_and_a_second_look():
    teacher = simple_teacher()
    teacher.observe("go to cabinet 1", "You arrive at cabinet 1. The cabinet 1 is closed.", admissible("cabinet 1"))
    assert teacher.opened == {"cabinet 1": False} and teacher.searched == []
    teacher.observe("open cabinet 1", "You open the cabinet 1. The cabinet 1 is open. In it, you see a cup 1.", ())
    assert teacher.opened["cabinet 1"] and teacher.contents == {"cabinet 1": {"cup 1"}}
    teacher.observe("close cabinet 1", "You close the cabinet 1.", ())
    assert not teacher.opened["cabinet 1"] and teacher.contents == {"cabinet 1": {"cup 1"}}  # still remembered
    teacher.observe("examine cabinet 1", "The cabinet 1 is open. In it, you see nothing.", ())
    assert teacher.contents == {"cabinet 1": set()}  # seen again: the cup is no longer there


def test_an_object_listed_in_two_receptacles_stays_held():
    """Some ALFRED scenes list one object in two receptacles; taken from one, it is still listed in the other."""
    teacher = simple_teacher(object_target="SoapBottle", parent_target="CounterTop")
    teacher.observe("go to cabinet 1", "You arrive at cabinet 1. The cabinet 1 is open. In it, you see a cloth 1.", ())
    teacher.observe("take cloth 1 from cabinet 1", "You pick up the cloth 1 from the cabinet 1.", ())
    seen = "You arrive at countertop 1. On the countertop 1, you see a candle 1, and a cloth 1."
    teacher.observe("go to countertop 1", seen, admissible("countertop 1", "move cloth 1 to countertop 1"))
    assert teacher.holding == "cloth 1"
    assert teacher.decide().command == "move cloth 1 to countertop 1"


# ------------------------------------------------------------------------------------------------ decisions
def test_search_then_take_then_deliver_with_thoughts():
    teacher = simple_teacher()
    first = teacher.decide()
    assert first == teacher.decide()  # deciding changes nothing
    assert first.command == "go to coffeemachine 1" and not first.guess  # a prior of mugs that needs no opening
    assert first.thought == "I need to find a mug, so first I check coffeemachine 1."
    teacher.observe(
        "go to coffeemachine 1",
        "You arrive at coffeemachine 1. On the coffeemachine 1, you see nothing.",
        admissible("coffeemachine 1"),
    )
    assert (
        teacher.decide().thought
        == "I need to find a mug; I have checked coffeemachine 1, so next I check countertop 1."
    )
    teacher.observe(
        "go to countertop 1",
        "You arrive at countertop 1. On the countertop 1, you see a mug 2.",
        admissible("countertop 1", "take mug 2 from countertop 1"),
    )
    assert teacher.decide() == Decision("take mug 2 from countertop 1", "I found the mug 2, so I take it.", False)
    teacher.observe(
        "take mug 2 from countertop 1", "You pick up the mug 2 from the countertop 1.", admissible("countertop 1")
    )
    assert teacher.decide().command == "go to coffeemachine 1"
    teacher.observe(
        "go to coffeemachine 1",
        "You arrive at coffeemachine 1. On the coffeemachine 1, you see nothing.",
        admissible("coffeemachine 1", "move mug 2 to coffeemachine 1"),
    )
    assert teacher.decide() == Decision(
        "move mug 2 to coffeemachine 1", "Now I put the mug 2 in the coffeemachine 1.", False
    )


def test_failed_commands_change_nothing():
    teacher = simple_teacher()
    teacher.observe(
        "go to countertop 1",
        "You arrive at countertop 1. On the countertop 1, you see a cup 1.",
        admissible("countertop 1"),
    )
    before = teacher.decide()
    for command in ("go to countertop 1", "take mug 9 from countertop 1", "open countertop 1", "jump"):
        teacher.observe(command, "Nothing happens.", admissible("countertop 1"))
        assert teacher.decide() == before


def test_closed_receptacle_is_opened_and_unneeded_object_put_down():
    teacher = simple_teacher(object_target="Cup", parent_target="CounterTop")
    teacher.observe(
        "go to cabinet 1",
        "You arrive at cabinet 1. The cabinet 1 is closed.",
        admissible("cabinet 1", "open cabinet 1"),
    )
    assert teacher.decide() == Decision(
        "open cabinet 1", "The cabinet 1 is closed, so I open it to look inside.", False
    )
    teacher.observe(
        "open cabinet 1",
        "You open the cabinet 1. The cabinet 1 is open. In it, you see a plate 1.",
        admissible("cabinet 1", "close cabinet 1", "take plate 1 from cabinet 1"),
    )
    # Another policy takes the wrong object: the teacher puts it back first.
    teacher.observe(
        "take plate 1 from cabinet 1",
        "You pick up the plate 1 from the cabinet 1.",
        admissible("cabinet 1", "move plate 1 to cabinet 1"),
    )
    decision = teacher.decide()
    assert decision.command == "move plate 1 to cabinet 1"
    assert decision.thought == "I do not need the plate 1, so I put it down in the cabinet 1."


def test_co_located_receptacle_is_examined_not_walked_to():
    teacher = simple_teacher(object_target="Cup", parent_target="CounterTop")
    teacher.observe(
        "go to cabinet 1",
        "You arrive at cabinet 1. The cabinet 1 is open. In it, you see nothing.",
        admissible("cabinet 1", "close cabinet 1", "open cabinet 2", beside=("cabinet 2",)),
    )
    decision = teacher.decide()
    assert decision.command == "open cabinet 2"
    assert "right here" in decision.thought


def test_pick_two_remembers_the_placed_object():
    teacher = simple_teacher("pick_two_obj_and_place")
    teacher.observe(
        "go to coffeemachine 1",
        "You arrive at coffeemachine 1. On the coffeemachine 1, you see a mug 1.",  # one already in place
        admissible("coffeemachine 1", "take mug 1 from coffeemachine 1"),
    )
    decision = teacher.decide()
    assert decision.command == "go to countertop 1"
    assert decision.thought.startswith("One mug is already in the coffeemachine 1; I need to find a second mug")
    teacher.observe(
        "go to countertop 1",
        "You arrive at countertop 1. On the countertop 1, you see a mug 2.",
        admissible("countertop 1", "take mug 2 from countertop 1"),
    )
    assert teacher.decide().command == "take mug 2 from countertop 1"


def test_everything_searched_means_guessing_and_a_second_round():
    teacher = simple_teacher(object_target="Kettle", parent_target="CounterTop")
    for receptacle in RECEPTACLES:
        seen = f"You arrive at {receptacle}. On the {receptacle}, you see nothing."
        teacher.observe(f"go to {receptacle}", seen, admissible(receptacle))
    visited = []
    for _ in RECEPTACLES:
        decision = teacher.decide()
        assert decision.guess and "looked everywhere" in decision.thought
        receptacle = decision.command.removeprefix("go to ")
        visited.append(receptacle)
        seen = f"You arrive at {receptacle}. On the {receptacle}, you see nothing."
        teacher.observe(decision.command, seen, admissible(receptacle))
    assert sorted(visited) == sorted(RECEPTACLES)  # the second round visits each once, like the first


def test_rejects_what_no_text_game_uses():
    with pytest.raises(ValueError, match="sliced"):
        Teacher("pick_and_place_simple", {"object_target": "Apple", "parent_target": "Fridge", "object_sliced": True})
    with pytest.raises(ValueError, match="unknown task type"):
        Teacher("pick_and_slice", {"object_target": "Apple"})
    with pytest.raises(ValueError, match="toggle_target"):
        Teacher("look_at_obj_in_light", {"object_target": "Book", "toggle_target": ""})


# ------------------------------------------------------------------------------------------------ real games
def sample_games(per_type: int, seed: int = 0) -> list[Path]:
    """The seeded, type-balanced sample of list_games."""
    return games.list_games("train", limit=per_type * len(TASK_TYPES), seed=seed)


def play(gamefile: Path, random_opening: int = 0, seed: int = 0) -> ExpertGame:
    return play_expert(
        gamefile, seed=seed, game_id=games.game_id(gamefile), expert="teacher", random_opening=random_opening
    )


def states(game: ExpertGame) -> list[tuple[str, ...]]:
    """The admissible commands of each state a command was played in."""
    return [game.first_admissible, *game.admissible[:-1]]


@pytest.fixture(scope="module")
def played(train_games) -> list[tuple[Path, ExpertGame]]:
    """Two games of each task type, played by the teacher alone."""
    return [(gamefile, play(gamefile)) for gamefile in sample_games(2)]


def assert_admissible(gamefile: Path, game: ExpertGame) -> None:
    for label, admissible_commands in zip(game.labels, states(game), strict=True):
        assert label in admissible_commands, (gamefile, label)


def test_one_pick_two_game_is_won(train_games):
    gamefile = games.list_games("train", task_types=[6], limit=1, seed=0)[0]
    game = play(gamefile)
    assert game.won and " two " in f" {game.task} "
    assert game.steps == len(game.commands) == len(game.thoughts) == len(game.guesses) == len(game.observations)
    assert game.labels == game.commands and game.opening == 0 and not any(game.guesses)
    assert_admissible(gamefile, game)


@pytest.mark.slow
def test_wins_every_task_type_with_admissible_commands(played):
    assert {games.read_task_type(gamefile) for gamefile, _ in played} == set(TASK_TYPES)
    for gamefile, game in played:
        assert game.won, list(zip(game.thoughts, game.commands, game.observations))
        assert_admissible(gamefile, game)
        assert not any(game.guesses)


@pytest.mark.slow
def test_replay_gives_the_same_thoughts(played):
    for gamefile, game in played:
        teacher = Teacher.for_game(gamefile)
        teacher.observe(None, game.first_observation, game.first_admissible)
        for index, command in enumerate(game.commands):
            assert teacher.decide() == Decision(game.labels[index], game.thoughts[index], game.guesses[index])
            teacher.observe(command, game.observations[index], game.admissible[index])


@pytest.mark.slow
def test_thoughts_name_only_what_was_observed(played):
    for _, game in played:
        seen = entity_names(game.first_observation)
        for thought, observation in zip(game.thoughts, game.observations):
            assert entity_names(thought) <= seen, (thought, entity_names(thought) - seen)
            assert len(thought.split()) <= 30, thought
            seen |= entity_names(observation)


def entity_names(text: str) -> set[str]:
    """Object and receptacle names ("mug 2", "countertop 1") in a text; not "checked 3"."""
    from alfworld.gen import constants

    classes = {name.lower() for name in [*constants.OBJECTS, *constants.RECEPTACLES]}
    return {name for name in re.findall(r"\b([a-z]+ \d+)", text) if name.split()[0] in classes}


@pytest.mark.slow
def test_takes_over_after_a_random_policy(train_games):
    results = [(gamefile, play(gamefile, random_opening=5, seed=3)) for gamefile in sample_games(1, seed=1)]
    for gamefile, game in results:
        assert game.opening == 5 and game.labels[5:] == game.commands[5:]
        assert_admissible(gamefile, game)
    assert sum(game.won for _, game in results) >= 5, [gamefile for gamefile, game in results if not game.won]


@pytest.mark.slow
def test_thoughts_do_not_depend_on_the_process(played):
    """Another process with another string hash seed (set iteration order) plays the same game the same way."""
    gamefile, game = played[-1]
    code = (
        "import json, sys; from alfworld_sft import engine, games; "
        "g = engine.play_expert(sys.argv[1], seed=0, game_id=games.game_id(sys.argv[1]), expert='teacher'); "
        "print(json.dumps([g.commands, g.thoughts]))"
    )
    library = str(Path(alfworld_sft.__file__).parents[1])  # this checkout's library, installed or not
    env = {
        **os.environ,
        "PYTHONHASHSEED": "12345",
        "PYTHONPATH": os.pathsep.join([library, os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-c", code, str(gamefile)], capture_output=True, text=True, env=env, check=True
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [list(game.commands), list(game.thoughts)]


def test_for_game_reads_the_task(train_games):
    gamefile = games.list_games("train", task_types=[2], limit=1, seed=0)[0]
    params = json.loads((gamefile.parent / "traj_data.json").read_text())["pddl_params"]
    teacher = Teacher.for_game(gamefile)
    assert teacher.task_type == "look_at_obj_in_light"
    assert (teacher.target, teacher.toggle) == (params["object_target"].lower(), params["toggle_target"].lower())
