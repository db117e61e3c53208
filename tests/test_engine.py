"""The game engine (`alfworld_sft.engine`): real ALFWorld games in the real TextWorld engine, stepped by hand and
played by both experts; each game's own random state, the translation and parse caches, the caller's sys.argv given
back, workers that exit with their parent. Games: real ones from $ALFWORLD_DATA, else the course's generated games
(conftest.py). The teacher's decisions are tested in test_teacher.py."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alfworld_sft import engine, files, games
from alfworld_sft.engine import AlfworldGame, ExpertGame, play_expert
from conftest import games_of_type

ROOM = "You are in the middle of a room. Looking quickly around you, you see "


def first_of(gamefiles: list[Path], task_type: str) -> Path:
    return games_of_type(gamefiles, task_type)[0]


def play(gamefile: Path, **options) -> ExpertGame:
    return play_expert(gamefile, seed=0, game_id=games.game_id(gamefile), **options)


def states(game: ExpertGame) -> list[tuple[str, ...]]:
    """The admissible commands of each state a command was played in."""
    return [game.first_admissible, *game.admissible[:-1]]


def test_a_game_starts_in_its_room_with_its_task_and_admissible_commands(train_games):
    gamefile = first_of(train_games, "pick_and_place_simple")
    target = json.loads((gamefile.parent / "traj_data.json").read_text())["pddl_params"]["object_target"].lower()
    with AlfworldGame(gamefile) as game:
        state = game.reset()
    assert state.task == game.task and target in state.task and "Your task is to" not in state.observation
    assert state.observation.startswith(ROOM)
    assert {"look", "inventory", "help"} <= set(state.admissible_commands)
    places = [command.removeprefix("go to ") for command in state.admissible_commands if command.startswith("go to ")]
    # One "go to" per receptacle of the room, and only those.
    assert places and sorted(places) == sorted(re.findall(r"an? ([a-z]+ \d+)", state.observation))
    assert (state.won, state.done, state.score) == (False, False, 0.0)
    assert (state.expert_action, state.expert_thought, state.expert_guess) == (None, None, False)  # no expert


def test_each_step_answers_with_what_the_engine_says(train_games):
    gamefile = first_of(train_games, "pick_and_place_simple")
    with AlfworldGame(gamefile) as game:
        first = game.reset()
        assert game.step("inventory").observation == "You are not carrying anything."
        refused = game.step("fly to the moon")  # not a command of this game
        assert refused.observation == "Nothing happens." and not refused.done
        assert refused.admissible_commands == first.admissible_commands
        place = next(c for c in first.admissible_commands if c.startswith("go to ")).removeprefix("go to ")
        arrived = game.step(f"go to {place}")
        assert arrived.observation.startswith(f"You arrive at {place}.") and arrived.score == 0.0
        assert f"go to {place}" not in arrived.admissible_commands and arrived.task == first.task
        again = game.reset()  # back to the first state
        assert (again.observation, again.admissible_commands) == (first.observation, first.admissible_commands)


def test_the_teacher_wins_step_by_step_as_play_expert_records_it(train_games):
    gamefile = first_of(train_games, "pick_and_place_simple")
    commands, thoughts, observations = [], [], []
    with AlfworldGame(gamefile, expert="teacher", seed=engine.expert_seed(0, games.game_id(gamefile))) as game:
        first = state = game.reset()
        while not state.done and len(commands) < 50:
            assert state.expert_action in state.admissible_commands and state.expert_thought
            assert not state.expert_guess  # a pick-and-place game: the teacher always knows where to go
            commands.append(state.expert_action)
            thoughts.append(state.expert_thought)
            state = game.step(state.expert_action)
            observations.append(state.observation)
    assert state.won and state.done and state.score == 1.0 and state.expert_action is None
    assert observations[-1].startswith("You move ") or observations[-1].startswith("You put ")

    played = play(gamefile, expert="teacher")
    assert played.won and played.steps == len(played.commands) == len(commands)
    assert played.commands == tuple(commands) == played.labels and played.thoughts == tuple(thoughts)
    assert played.observations == tuple(observations) and played.opening == 0 and not any(played.guesses)
    assert (played.task, played.first_observation, played.first_admissible) == (
        first.task,
        first.observation,
        first.admissible_commands,
    )
    for command, admissible in zip(played.commands, states(played), strict=True):
        assert command in admissible
    assert played == play(gamefile)  # the teacher is the default expert, and plays the same game the same way


def test_the_handcoded_expert_plays_without_thoughts(train_games):
    gamefile = first_of(train_games, "pick_and_place_simple")
    with AlfworldGame(gamefile, expert="handcoded") as game:
        state = game.reset()
    assert state.expert_action in state.admissible_commands and state.expert_thought is None
    played = play(gamefile, expert="handcoded")
    assert played.won and played.labels == played.commands and set(played.thoughts) == {None}
    assert len(played.observations) == len(played.admissible) == played.steps > 0


def test_a_random_opening_is_played_then_the_expert_takes_over(train_games):
    gamefile = first_of(train_games, "pick_two_obj_and_place")
    game = play(gamefile, random_opening=3)
    assert game.opening == 3 and game.won
    assert game.labels[3:] == game.commands[3:]  # after the opening, the expert plays what it labels
    for command, admissible in zip(game.commands, states(game), strict=True):
        assert command in admissible
    assert play(gamefile, random_opening=3) == game  # seeded by the run's seed and the game
    other = play_expert(gamefile, seed=1, game_id=games.game_id(gamefile), random_opening=3)
    assert other.commands[:3] != game.commands[:3]


@pytest.mark.slow
def test_each_game_owns_its_random_state(train_games):
    """The handcoded expert falls back on `random` where its plan is stuck (pick_two games): a game plays the same
    whatever the caller's random state and whichever other game is stepped in between, and leaves the caller's
    random state as it was."""
    gamefile, other = games_of_type(train_games, "pick_two_obj_and_place")[:2]
    game_id = games.game_id(gamefile)
    alone = play_expert(gamefile, seed=0, game_id=game_id, expert="handcoded")
    assert alone.commands != play_expert(gamefile, seed=1, game_id=game_id, expert="handcoded").commands

    random.seed(7)
    drawn = []  # what the caller draws while the games play
    with (
        AlfworldGame(gamefile, expert="handcoded", seed=engine.expert_seed(0, game_id)) as game,
        AlfworldGame(other, expert="handcoded", seed=1) as between,
    ):

        def expert_commands(state) -> tuple[str, ...]:
            """The expert's commands from `state` on, as play_expert plays them, another game stepped between."""
            commands, interleaved = [], between.reset()
            while not state.done and len(commands) < 50 and state.expert_action:
                commands.append(state.expert_action)
                state = game.step(state.expert_action)
                if not interleaved.done and interleaved.expert_action:
                    interleaved = between.step(interleaved.expert_action)
                drawn.append(random.random())
            return tuple(commands)

        assert expert_commands(game.reset()) == alone.commands
        # Re-seeded at reset: the same fallbacks again (without the seed, the game's random state goes on).
        assert expert_commands(game.reset(seed=engine.expert_seed(0, game_id))) == alone.commands
    random.seed(7)
    assert drawn == [random.random() for _ in drawn]  # the games drew nothing from the caller's random state
    assert engine.expert_seed(0, game_id) == f"0:{game_id}"


def test_the_engine_gives_the_caller_its_sys_argv_back(train_games):
    """fast-downward's translator overwrites sys.argv at every load and reset; a CLI parsing it later must not
    see the translator's arguments."""
    gamefile = first_of(train_games, "pick_and_place_simple")
    before = list(sys.argv)
    for translate_once in (True, False):
        with AlfworldGame(gamefile, expert="handcoded", translate_once=translate_once) as game:
            game.reset()
            game.reset()
        assert sys.argv == before


def test_the_translation_cache_translates_each_problem_once(train_games, monkeypatch):
    import fast_downward

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the translator overwrites it
    original = fast_downward.pddl2sas
    pddl = json.loads(first_of(train_games, "pick_and_place_simple").read_text())
    cache = engine.TranslationCache()
    with cache.active():
        first = fast_downward.pddl2sas(pddl["pddl_domain"], pddl["pddl_problem"])
        assert fast_downward.pddl2sas(pddl["pddl_domain"], pddl["pddl_problem"]) is first
        # The optimized translation only serves TextWorld's replanner, which the engine never asks for.
        assert fast_downward.pddl2sas(pddl["pddl_domain"], pddl["pddl_problem"], optimize=True) is first
    assert fast_downward.pddl2sas is original  # given back after the block
    assert cache.results == {(pddl["pddl_domain"], pddl["pddl_problem"]): first}


def test_translating_once_plays_the_same_game(train_games):
    gamefile = first_of(train_games, "pick_and_place_simple")
    assert play(gamefile, translate_once=False) == play(gamefile)


def test_cached_text_parses_play_the_same_games(train_games, monkeypatch):
    """The parse cache changes how fast a step renders its text, never what it says or admits."""
    from textworld import logic
    from textworld.envs.pddl import textgen

    gamefiles = [first_of(train_games, "pick_heat_then_place_in_recep"), first_of(train_games, "look_at_obj_in_light")]
    cached = [play(gamefile) for gamefile in gamefiles]
    for module in (textgen, logic):
        assert module._parse_and_convert.cached
        monkeypatch.setattr(module, "_parse_and_convert", module._parse_and_convert.original)
    monkeypatch.setattr(engine, "cache_text_parses", lambda: None)
    assert [play(gamefile) for gamefile in gamefiles] == cached


def test_a_cached_parse_is_a_fresh_copy_each_time():
    from textworld.envs.pddl import textgen

    engine.cache_text_parses()
    first = textgen._parse_and_convert("You see #list_objects#.", rule_name="symbols")
    second = textgen._parse_and_convert("You see #list_objects#.", rule_name="symbols")
    assert [str(symbol) for symbol in first] == [str(symbol) for symbol in second]
    assert all(a is not b for a, b in zip(first, second, strict=True))


def test_a_wrong_expert_or_a_missing_game_is_refused(train_games, tmp_path):
    gamefile = train_games[0]
    with pytest.raises(ValueError, match="unknown expert 'oracle': choose one of teacher, handcoded"):
        AlfworldGame(gamefile, expert="oracle")
    with pytest.raises(ValueError, match="unknown expert 'oracle'"):
        play(gamefile, expert="oracle")
    with pytest.raises(ValueError, match="play_expert needs an expert"):
        play(gamefile, expert=None)
    with pytest.raises(FileNotFoundError, match=f"game file {tmp_path / 'none.tw-pddl'} does not exist"):
        AlfworldGame(tmp_path / "none.tw-pddl")
    # TextWorld would load it as a Z-machine game and fail with "Only .z[1-8] files are supported!"
    misread = tmp_path / "trial.z3k9" / "game.tw-pddl"
    misread.parent.mkdir()
    misread.write_bytes(gamefile.read_bytes())
    with pytest.raises(ValueError, match="containing '.z1' to '.z8' for a Z-machine game .*: move or rename"):
        AlfworldGame(misread)


# A process that starts an engine worker (watching its parent with exit_with_parent) and then waits on it.
PARENT = """
import subprocess, sys
subprocess.Popen([sys.executable, "-c", sys.argv[1]]).wait()
"""
WORKER = """
import os, time
from alfworld_sft import engine
engine.exit_with_parent(os.getppid())
print(os.getpid(), flush=True)
time.sleep(120)
"""


def test_a_worker_exits_once_its_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT, WORKER], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    try:
        time.sleep(1.5)  # longer than the worker's watch interval: a living parent keeps it
        assert files.is_process_alive(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and files.is_process_alive(worker):
            time.sleep(0.1)
        assert not files.is_process_alive(worker), "the worker outlived its killed parent"
    finally:
        if files.is_process_alive(worker):
            os.kill(worker, signal.SIGKILL)
        parent.kill()
        parent.wait()
        parent.stdout.close()


def test_the_demo_prints_a_games_transcript_with_the_thoughts(train_games, capsys):
    """`python -m alfworld_sft.engine GAMEFILE`: the task, each thought and command, and how the game ended."""
    gamefile = games.list_games("train", task_types=[1], limit=1, seed=0)[0]
    assert engine.main([str(gamefile), "--max-steps", "50"]) == 0
    out = capsys.readouterr().out
    game = play(gamefile, expert="teacher")
    assert out.startswith(f"Task: {game.task} (pick_and_place_simple)\n{game.first_observation}\n")
    assert f"Thought: {game.thoughts[0]}\n> {game.commands[0]}\n" in out
    assert f"\nwon in {game.steps} steps, " in out
