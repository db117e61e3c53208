"""One ALFWorld game in the real TextWorld engine, with the handcoded expert on request (field notes §4).

The lightest path to a game: `textworld.start` with ALFWorld's own wrappers. Every stage that plays
(collection, evaluation, the notebooks) goes through `AlfworldGame`:

    game = AlfworldGame(gamefile, expert=True)
    state = game.reset()            # state.task, state.observation, state.admissible_commands, state.expert_action
    state = game.step(state.expert_action)

TextWorld builds a game's PDDL state at load and again at every reset, each time running fast-downward's
translator twice (plain and optimized): most of the cost of starting a game. The translation is a pure function
of (domain, problem, options) and the state only reads its result, so a game translates once and reuses the
result at every reset (`translate_once`, on by default: ~0.4 s less a game at collection, more for agents that
reset a game for each trial).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from alfworld_sft.prompts import split_first_observation


@dataclass(frozen=True)
class GameState:
    observation: str  # what the engine printed (first state: the room description, without the task line)
    admissible_commands: tuple[str, ...]
    won: bool
    done: bool
    score: float
    expert_action: str | None  # the handcoded expert's next command (None without the expert)
    task: str  # "put a cool tomato in microwave"


@dataclass
class TranslationCache:
    """fast-downward translations of one game, keyed by (domain, problem, optimize)."""

    results: dict[tuple[str, str, bool], Any] = field(default_factory=dict)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Within the block, fast-downward's translator answers from this cache (filling it on a miss)."""
        import fast_downward

        original = fast_downward.pddl2sas

        def pddl2sas(domain: str, problem: str, verbose: bool = False, optimize: bool = False):
            key = (domain, problem, bool(optimize))
            if key not in self.results:
                self.results[key] = original(domain, problem, verbose=verbose, optimize=optimize)
            return self.results[key]

        fast_downward.pddl2sas = pddl2sas
        try:
            yield
        finally:
            fast_downward.pddl2sas = original


class AlfworldGame:
    """A single game file played step by step; `close()` (or a `with` block) frees the engine."""

    def __init__(self, gamefile: str | Path, *, expert: bool = False, translate_once: bool = True):
        import os

        import textworld

        # Importing alfworld writes its default ~/.cache/alfworld into $ALFWORLD_DATA when the user set nothing;
        # undo that, so that the variable keeps telling what the user chose (games.data_root reads it).
        user_choice = os.environ.get("ALFWORLD_DATA")
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredExpert, AlfredInfos

        if user_choice is None:
            os.environ.pop("ALFWORLD_DATA", None)

        self.gamefile = Path(gamefile)
        if not self.gamefile.exists():
            raise FileNotFoundError(f"game file {self.gamefile} does not exist")
        extras = ["gamefile", "expert_plan"] if expert else ["gamefile"]
        wrappers = [AlfredDemangler(shuffle=False), AlfredInfos]
        if expert:
            wrappers.append(AlfredExpert())  # handcoded by default
        infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=extras)
        self._expert = expert
        self._translations = TranslationCache() if translate_once else None
        with self._translating():
            self._env = textworld.start(str(self.gamefile), request_infos=infos, wrappers=wrappers)
        self.task = ""

    @contextlib.contextmanager
    def _translating(self) -> Iterator[None]:
        """Around a load or reset: the translation cache, and the caller's sys.argv, which fast-downward's
        translator overwrites, given back."""
        import sys

        argv = list(sys.argv)
        try:
            with self._translations.active() if self._translations else contextlib.nullcontext():
                yield
        finally:
            sys.argv[:] = argv

    def reset(self) -> GameState:
        with self._translating():
            state = self._env.reset()
        self.task, observation = split_first_observation(state.feedback)
        return self._state(state, observation, score=0.0, done=False)

    def step(self, command: str) -> GameState:
        state, score, done = self._env.step(command)
        return self._state(state, state.feedback.strip(), score=float(score), done=bool(done))

    def _state(self, state, observation: str, *, score: float, done: bool) -> GameState:
        plan = state.get("extra.expert_plan") if self._expert else None
        return GameState(
            observation=observation,
            admissible_commands=tuple(state["admissible_commands"] or ()),
            won=bool(state["won"]),
            done=done or bool(state["won"]),
            score=score,
            expert_action=plan[0] if plan else None,
            task=self.task,
        )

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
