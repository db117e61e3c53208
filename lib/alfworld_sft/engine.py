"""One ALFWorld game in the real TextWorld engine, with an expert on request, and the one expert playthrough.

The lightest path to a game: `textworld.start` with ALFWorld's own wrappers (field notes §4). Every stage that
plays (collection, generation, evaluation, DAgger, the notebooks) goes through `AlfworldGame`:

    game = AlfworldGame(gamefile, expert="teacher", seed="0:json_2.1.1/train/...")
    state = game.reset()            # state.task, .observation, .admissible_commands, .expert_action, .expert_thought
    state = game.step(state.expert_action)

Two experts can follow a game and say what they would do next in whatever state it is in (also after commands
they did not choose, which DAgger needs):

* `"teacher"`: the course's own observation-driven expert (`alfworld_sft.teacher`): reads only what the engine
  prints and admits, wins every task type, and says why (`expert_thought`);
* `"handcoded"`: ALFWorld's handcoded expert (its `AlfredExpert` wrapper), which falls back on `random` where its
  plan is stuck and loses most pick_two games within 50 steps.

Each game owns its random state (seeded by `seed`, re-seeded by `reset(seed=...)`): the handcoded expert's
fallbacks draw from it, so a game plays the same whichever other games a process steps in between.

`play_expert` is the one implementation of "the expert plays a game": collection records it, the generator
verifies games with it, few-shot demonstrations come from it.

    python -m alfworld_sft.engine GAMEFILE [--max-steps 50]      # one expert game's transcript with the thoughts

TextWorld builds a game's PDDL state at load and again at every reset, each time running fast-downward's
translator twice (the second, optimized, only for a replanner this engine never asks for): most of the cost of
starting a game. The translation is a pure function of (domain, problem), so a game translates once and reuses the
result for the replanner and at every reset (`translate_once`, on by default).
Every step, TextWorld also renders its feedback from the game's text grammar, parsing the same few dozen template
strings and logic queries with tatsu each time: `cache_text_parses` keeps each string's parse for the process.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from alfworld_sft import games
from alfworld_sft.prompts import split_first_observation

EXPERTS = ("teacher", "handcoded")
ZMACHINE_PATH = r"\.z[1-8]"  # what textworld.envs._guess_backend takes for a Z-machine game, anywhere in a path
DEFAULT_EXPERT = "teacher"


@dataclass(frozen=True)
class GameState:
    observation: str  # what the engine printed (first state: the room description, without the task line)
    admissible_commands: tuple[str, ...]
    won: bool
    done: bool
    score: float
    expert_action: str | None  # the expert's next command (None without an expert)
    task: str  # "put a cool tomato in microwave"
    expert_thought: str | None = None  # why the expert chooses it (the teacher only)
    expert_guess: bool = False  # the expert has no grounded plan here (its command is not a label)


@dataclass
class TranslationCache:
    """fast-downward translations of one game, keyed by (domain, problem).

    TextWorld translates each problem twice: plainly, for the game's state and its admissible commands, and
    optimized, only for its replanner (`policy_commands`, `extra.walkthrough`), which this engine never requests
    (its handcoded expert plans on its own). So the optimized request is answered with the plain translation: one
    translation a game instead of two."""

    results: dict[tuple[str, str], Any] = field(default_factory=dict)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Within the block, fast-downward's translator answers from this cache (filling it on a miss)."""
        import fast_downward

        original = fast_downward.pddl2sas

        def pddl2sas(domain: str, problem: str, verbose: bool = False, optimize: bool = False):
            key = (domain, problem)
            if key not in self.results:
                self.results[key] = original(domain, problem, verbose=verbose, optimize=False)
            return self.results[key]

        fast_downward.pddl2sas = pddl2sas
        try:
            yield
        finally:
            fast_downward.pddl2sas = original


def cache_text_parses() -> None:
    """Make TextWorld's parsers of its text grammar and of logic queries answer each string from a process-wide
    cache (idempotent).

    Both parses are pure functions of the string; what the engine does next assigns contexts to the parsed
    symbols, so every call gets its own deep copy of the cached result."""
    import copy
    import functools

    from textworld import logic
    from textworld.envs.pddl import textgen

    for module in (textgen, logic):
        original = module._parse_and_convert
        if getattr(original, "cached", False):
            continue
        parse = functools.lru_cache(maxsize=4096)(
            lambda text, options, original=original: original(text, **dict(options))
        )

        def parse_and_convert(text: str, parse: Any = parse, **options: Any) -> Any:
            return copy.deepcopy(parse(text, tuple(sorted(options.items()))))

        parse_and_convert.cached = True  # type: ignore[attr-defined]
        parse_and_convert.original = original  # type: ignore[attr-defined]
        module._parse_and_convert = parse_and_convert


def check_expert(expert: str | None) -> None:
    if expert is not None and expert not in EXPERTS:
        raise ValueError(f"unknown expert {expert!r}: choose one of {', '.join(EXPERTS)}")


class AlfworldGame:
    """A single game file played step by step; `close()` (or a `with` block) frees the engine."""

    def __init__(
        self,
        gamefile: str | Path,
        *,
        expert: str | None = None,
        seed: int | str = 0,
        translate_once: bool = True,
    ):
        import textworld

        check_expert(expert)
        cache_text_parses()
        alfred_tw_env = games.import_alfworld("alfworld.agents.environment.alfred_tw_env")

        self.gamefile = Path(gamefile)
        if not self.gamefile.exists():
            raise FileNotFoundError(f"game file {self.gamefile} does not exist")
        if re.search(ZMACHINE_PATH, str(self.gamefile)):
            raise ValueError(
                f"game file {self.gamefile}: TextWorld takes any path containing '.z1' to '.z8' for a Z-machine "
                "game and cannot load it: move or rename the folder"
            )
        self.expert = expert
        extras = ["gamefile", "expert_plan"] if expert == "handcoded" else ["gamefile"]
        wrappers = [alfred_tw_env.AlfredDemangler(shuffle=False), alfred_tw_env.AlfredInfos]
        if expert == "handcoded":
            wrappers.append(alfred_tw_env.AlfredExpert())
        infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=extras)
        self._teacher = None
        self._translations = TranslationCache() if translate_once else None
        self._random = random.Random(seed).getstate()
        with self._engine_call():
            self._env = textworld.start(str(self.gamefile), request_infos=infos, wrappers=wrappers)
        self.task = ""

    @contextlib.contextmanager
    def _engine_call(self) -> Iterator[None]:
        """Around every call into the engine: this game's random state (the handcoded expert draws from Python's
        global `random`), the translation cache, and the caller's sys.argv, which fast-downward's translator
        overwrites, given back."""
        import sys

        argv, outer = list(sys.argv), random.getstate()
        random.setstate(self._random)
        try:
            with self._translations.active() if self._translations else contextlib.nullcontext():
                yield
        finally:
            self._random = random.getstate()
            random.setstate(outer)
            sys.argv[:] = argv

    def reset(self, *, seed: int | str | None = None) -> GameState:
        """Start (again) from the first state; `seed` re-seeds this game's random state first."""
        if seed is not None:
            self._random = random.Random(seed).getstate()
        with self._engine_call():
            state = self._env.reset()
        self.task, observation = split_first_observation(state.feedback)
        admissible = tuple(state["admissible_commands"] or ())
        if self.expert == "teacher":
            from alfworld_sft.teacher import Teacher

            self._teacher = Teacher.for_game(self.gamefile)
            self._teacher.observe(None, observation, admissible)
        return self._state(state, observation, admissible, score=0.0, done=False)

    def step(self, command: str) -> GameState:
        with self._engine_call():
            state, score, done = self._env.step(command)
        observation, admissible = state.feedback.strip(), tuple(state["admissible_commands"] or ())
        if self._teacher is not None:
            self._teacher.observe(command, observation, admissible)
        return self._state(state, observation, admissible, score=float(score), done=bool(done))

    def _state(self, state, observation: str, admissible: tuple[str, ...], *, score: float, done: bool) -> GameState:
        won = bool(state["won"])
        action, thought, guess = None, None, False
        if self.expert == "handcoded":
            plan = state.get("extra.expert_plan")
            action = plan[0] if plan else None
        elif self._teacher is not None and not won:
            decision = self._teacher.decide()
            action, thought, guess = decision.command, decision.thought, decision.guess
        return GameState(
            observation=observation,
            admissible_commands=admissible,
            won=won,
            done=done or won,
            score=score,
            expert_action=action,
            task=self.task,
            expert_thought=thought,
            expert_guess=guess,
        )

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def exit_with_parent(parent: int) -> None:
    """In an engine worker process: exit once the process that started it is gone (a killed parent otherwise
    leaves idle workers waiting on their queue forever)."""
    import os
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


# ------------------------------------------------------------------------------------------ expert playthrough


def expert_seed(seed: int, game_id: str) -> str:
    """What seeds a game's random state when an expert plays it: the run's seed and the game id, independent of
    any other game (the handcoded expert's fallbacks draw from it; the teacher draws nothing)."""
    return f"{seed}:{game_id}"


@dataclass(frozen=True)
class ExpertGame:
    """One game as an expert played it (after an optional opening of random commands): the first state, then each
    command with what the expert would have played there and the state it led to."""

    task: str
    first_observation: str
    first_admissible: tuple[str, ...]
    commands: tuple[str, ...]  # played: the random opening, then the expert's
    labels: tuple[str, ...]  # the expert's command at each state (after the opening: the command played)
    thoughts: tuple[str | None, ...]  # the expert's reason at each state (None for the handcoded expert)
    guesses: tuple[bool, ...]  # at each state: the expert had no grounded plan
    observations: tuple[str, ...]  # what the engine answered to each command
    admissible: tuple[tuple[str, ...], ...]  # the admissible commands after each command
    opening: int  # commands of the random opening (0: the expert played every one)
    won: bool

    @property
    def steps(self) -> int:
        return len(self.commands)


def play_expert(
    gamefile: str | Path,
    *,
    seed: int,
    game_id: str,
    expert: str = DEFAULT_EXPERT,
    max_steps: int = 50,
    translate_once: bool = True,
    random_opening: int = 0,
) -> ExpertGame:
    """The expert plays `gamefile` for at most `max_steps` commands of its own; engine errors propagate. With
    `random_opening`, seeded random admissible commands are played first while the expert labels every state, and
    then it takes over (what DAgger asks of it: recover from another policy's states)."""
    check_expert(expert)
    if expert is None:
        raise ValueError("play_expert needs an expert")
    rng = random.Random(f"{expert_seed(seed, game_id)}:opening")
    commands, labels, thoughts, guesses, observations, admissible = [], [], [], [], [], []
    with AlfworldGame(gamefile, expert=expert, seed=expert_seed(seed, game_id), translate_once=translate_once) as game:
        first = state = game.reset()
        while not state.done and len(commands) < random_opening + max_steps and state.expert_action:
            opening = len(commands) < random_opening
            command = rng.choice(sorted(state.admissible_commands)) if opening else state.expert_action
            commands.append(command)
            labels.append(state.expert_action)
            thoughts.append(state.expert_thought)
            guesses.append(state.expert_guess)
            state = game.step(command)
            observations.append(state.observation)
            admissible.append(state.admissible_commands)
    return ExpertGame(
        task=first.task,
        first_observation=first.observation,
        first_admissible=first.admissible_commands,
        commands=tuple(commands),
        labels=tuple(labels),
        thoughts=tuple(thoughts),
        guesses=tuple(guesses),
        observations=tuple(observations),
        admissible=tuple(admissible),
        opening=min(random_opening, len(commands)),
        won=state.won,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Play one game with the default expert and print its transcript, with the teacher's thoughts."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description="Play one ALFWorld game with the teacher and print its transcript.")
    parser.add_argument("gamefile", type=Path)
    parser.add_argument("--max-steps", type=int, default=50)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    game = play_expert(args.gamefile, seed=0, game_id=games.game_id(args.gamefile), max_steps=args.max_steps)
    print(f"Task: {game.task} ({games.read_task_type(args.gamefile)})\n{game.first_observation}")
    for command, thought, guess, observation in zip(game.commands, game.thoughts, game.guesses, game.observations):
        print(f"Thought: {thought}{' [guess]' if guess else ''}\n> {command}\n{observation}")
    print(f"{'won' if game.won else 'lost'} in {game.steps} steps, {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
