"""An observation-driven teacher for ALFWorld: one command and one short thought for any state of any task type.

ALFWorld's handcoded expert reads engine facts and, in pick_two_obj_and_place, forgets the first object once it is
placed and falls back on random commands. This teacher acts like an agent that cannot see inside closed
receptacles. It knows the task parameters (`traj_data.json`: the facts the task sentence states), every observation
text and the engine's admissible commands, and nothing else. Objects become known only from observation texts (what
a student model reads too); admissible commands tell which receptacles stand where the agent stands and which
commands the engine accepts. Its beliefs (where each seen object lies, which receptacles it has looked into, what
it holds, what it heated, cooled or cleaned) follow whatever commands were played, its own or another policy's, so
it can label any state (DAgger).

    teacher = Teacher.for_game(gamefile)
    teacher.observe(None, state.observation, state.admissible_commands)     # the room description
    decision = teacher.decide()                                              # Decision(command, thought, guess)
    state = game.step(decision.command)
    teacher.observe(decision.command, state.observation, state.admissible_commands)

    engine.play_expert(gamefile, seed=0, game_id=..., expert="teacher")   # a whole game (engine.ExpertGame)
    engine.play_expert(..., random_opening=10)  # a take-over: 10 random commands first, the teacher labelling each

    python -m alfworld_sft.engine GAMEFILE [--max-steps 50]      # one game's transcript with the thoughts

Search order for an object class: receptacles where the class was seen before, then receptacles that ALFRED's
priors say can hold it (`alfworld.gen.constants.VAL_RECEPTACLE_OBJECTS`), then the rest; within a group, those at
hand first, then those that need no opening, then by name. A receptacle is searched once; only when every one has
been searched does the search start over, and those decisions carry `guess=True`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alfworld_sft import games
from alfworld_sft.observations import (
    ARRIVE,
    CARRYING,
    CLOSE,
    EXAMINE_OBJECT,
    PLAIN_OBJECT,
    PUT,
    TAKE,
    TREAT,
    View,
    class_of,
    parse_names,
    parse_room,
    parse_view,
    sort_key,
)
from alfworld_sft.task_types import TASK_TYPES

# What a treatment makes of an object (the task types' treatments and where they happen: alfworld_sft.task_types).
TREATED = {"heat": "hot", "cool": "cool", "clean": "clean"}
# Receptacle classes an object goes "in" rather than "on" (only wording of the thoughts).
INSIDE = {"cabinet", "drawer", "fridge", "microwave", "safe", "box", "garbagecan", "sinkbasin", "bathtubbasin",
          "laundryhamper", "coffeemachine", "toaster"}  # fmt: skip


@dataclass(frozen=True)
class Decision:
    command: str  # always one of the current admissible commands
    thought: str  # one short sentence from the teacher's own bookkeeping
    guess: bool  # True when the teacher has no grounded plan (everything searched, nothing found)


def place(receptacle: str) -> str:
    """ "in the fridge 1" or "on the countertop 1"."""
    return f"{'in' if class_of(receptacle) in INSIDE else 'on'} the {receptacle}"


def join_names(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def article(cls: str) -> str:
    return f"an {cls}" if cls[0] in "aeiou" else f"a {cls}"


@functools.cache
def receptacle_priors(object_class: str) -> frozenset[str]:
    """Receptacle classes (lower case) that ALFRED's priors say can hold an object class."""
    constants = games.import_alfworld("alfworld.gen.constants")

    return frozenset(
        receptacle.lower()
        for receptacle, objects in constants.VAL_RECEPTACLE_OBJECTS.items()
        if object_class in {name.lower() for name in objects}
    )


@functools.cache
def openable_classes() -> frozenset[str]:
    constants = games.import_alfworld("alfworld.gen.constants")

    return frozenset(name.lower() for name in constants.OPENABLE_CLASS_LIST)


@functools.cache
def object_classes() -> frozenset[str]:
    """Object classes (lower case) that ALFRED's priors place somewhere: what a task can ask to be found."""
    constants = games.import_alfworld("alfworld.gen.constants")

    return frozenset(name.lower() for objects in constants.VAL_RECEPTACLE_OBJECTS.values() for name in objects)


def rank_for_search(receptacle: str, priors: frozenset[str], openable: frozenset[str]) -> tuple[bool, bool, tuple]:
    """Where a receptacle comes in a search for an object whose class ALFRED's `priors` place in some receptacle
    classes: those first, then those that need no opening, then by name. The game's memory line ranks by this
    (`prompts.SearchMemory` under `PromptFormat.search_order`); the teacher's own order (`Teacher._search_order`)
    is the same but for what only its bookkeeping knows: where the class was seen comes first, what stands at hand
    before what needs a walk, and a receptacle seen to be a surface needs no opening."""
    cls = class_of(receptacle)
    return (cls not in priors, cls in openable, sort_key(receptacle))


class Teacher:
    """Beliefs from observations, and the next command for the task with the reason in one sentence."""

    def __init__(self, task_type: str, pddl_params: Mapping[str, Any]):
        if task_type not in TASK_TYPES:
            raise ValueError(f"unknown task type {task_type!r}: choose one of {', '.join(TASK_TYPES)}")
        if pddl_params.get("mrecep_target") or pddl_params.get("object_sliced"):
            # No ALFWorld text game (train, valid_seen, valid_train) uses either; ALFRED's PDDL lacks the actions.
            raise ValueError(
                f"task parameters {dict(pddl_params)} ask for a movable receptacle or a sliced object, which no "
                "ALFWorld text game uses and the teacher does not play"
            )
        self.task_type = task_type
        self.kind = TASK_TYPES[task_type]
        self.target = str(pddl_params.get("object_target") or "").lower()
        self.parent = str(pddl_params.get("parent_target") or "").lower()
        self.toggle = str(pddl_params.get("toggle_target") or "").lower()
        missing = [name for name, value in self._required().items() if not value]
        if missing:
            raise ValueError(f"task {task_type} needs {', '.join(missing)} in its parameters, got {dict(pddl_params)}")
        self.treatment = self.kind.treatment
        # Where the treatment happens, as the game names receptacles; the first that the room holds is used.
        self.stations = tuple(cls.lower() for cls in self.kind.appliances)
        self._priors = {cls: receptacle_priors(cls) for cls in {self.target, self.toggle} if cls}
        self._openable = openable_classes()
        self._reset()

    def _required(self) -> dict[str, str]:
        needed = {"object_target": self.target}
        if self.kind.toggle:
            needed["toggle_target"] = self.toggle
        if self.kind.places:
            needed["parent_target"] = self.parent
        return needed

    @classmethod
    def for_game(cls, gamefile: str | Path) -> Teacher:
        """The teacher of a game file, from the traj_data.json beside it."""
        traj = Path(gamefile).parent / "traj_data.json"
        try:
            data = json.loads(traj.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{traj} is missing: the teacher reads the task from it") from None
        return cls(data["task_type"], data["pddl_params"])

    def _reset(self) -> None:
        self.receptacles: list[str] = []
        self.location: str | None = None  # the receptacle the agent last arrived at
        self.here: frozenset[str] = frozenset()  # receptacles at the agent's location (examinable from here)
        self.admissible: tuple[str, ...] = ()
        # Receptacle -> objects last seen in it. An object can be listed in two receptacles at once (a quirk of some
        # ALFRED scenes: a hand towel both on the countertop and on its holder), and stays listed in the other one
        # when taken from one, so beliefs are kept per receptacle, and only take/put/inventory change what is held.
        self.contents: dict[str, set[str]] = {}
        self.holding: str | None = None
        self.came_from: str | None = None  # where the held object was taken from
        self.opened: dict[str, bool] = {}  # openable receptacles -> open now
        self.surfaces: set[str] = set()  # receptacles seen not to open
        self.treated: dict[str, set[str]] = {"hot": set(), "cool": set(), "clean": set()}
        self.seen_at: dict[str, list[str]] = {}  # object class -> receptacles it was ever seen in
        self.searched: list[str] = []  # receptacles looked into since the search (re)started, in order
        self.rounds = 0  # times every receptacle had been searched and the search started over

    # ----------------------------------------------------------------------------------------------- beliefs
    def observe(self, command: str | None, observation: str, admissible_commands: Sequence[str]) -> None:
        """Update the beliefs with a command and the engine's answer (command None: the room description)."""
        text = observation.strip()
        if command is None:
            self._reset()
            self.receptacles = sorted(parse_room(text), key=sort_key)
        self.admissible = tuple(admissible_commands)
        self._learn_receptacles()
        self._read(text)
        self.here = frozenset(r for r in self.receptacles if f"examine {r}" in self.admissible)
        if self.location and self.here and self.location not in self.here:
            self.location = None  # the engine says otherwise (e.g. a command the texts do not mention)

    def _learn_receptacles(self) -> None:
        """Receptacles the "go to" commands name, in case a room description was missing or cut ("examine X" also
        names objects, so only "go to" counts; at the start every receptacle is a "go to" target)."""
        goto = {c.removeprefix("go to ") for c in self.admissible if c.startswith("go to ")}
        if not goto <= set(self.receptacles):
            self.receptacles = sorted(set(self.receptacles) | goto, key=sort_key)

    def _read(self, text: str) -> None:
        if match := ARRIVE.match(text):
            self.location = match["r"]
        elif match := TAKE.match(text):
            obj, receptacle = match["o"], match["r"]
            self.holding, self.came_from = obj, receptacle
            self.contents.get(receptacle, set()).discard(obj)
            return
        elif match := PUT.match(text):
            obj, receptacle = match["o"], match["r"]
            if self.holding == obj:
                self.holding = None
            self._see(obj, receptacle)
            return
        elif match := CLOSE.match(text):
            self.opened[match["r"]] = False
            return
        elif match := TREAT.match(text):
            self._treat(match["o"], TREATED[match["verb"]])
            return
        elif match := CARRYING.match(text):
            held = parse_names(match["items"])
            self.holding = held[0] if held else None
            return
        elif text.startswith("You are not carrying anything"):
            self.holding = None
            return
        elif match := EXAMINE_OBJECT.match(text):
            if not match["adjectives"].startswith("normal"):
                self._read_adjectives(match["o"], match["adjectives"].split())
            return
        elif match := PLAIN_OBJECT.match(text):
            self._read_adjectives(match["o"], [])
            return
        if view := parse_view(text):
            self._read_view(view)

    def _read_adjectives(self, obj: str, adjectives: list[str]) -> None:
        for state, words in (("hot", {"hot"}), ("cool", {"cool", "cold"}), ("clean", {"clean"})):
            if words & set(adjectives):
                self.treated[state].add(obj)
            else:
                self.treated[state].discard(obj)

    def _treat(self, obj: str, state: str) -> None:
        self.treated[state].add(obj)
        # Heating an object makes it no longer cool and cooling no longer hot (alfred.pddl).
        opposite = {"hot": "cool", "cool": "hot"}.get(state)
        if opposite:
            self.treated[opposite].discard(obj)

    def _see(self, obj: str, receptacle: str) -> None:
        self.contents.setdefault(receptacle, set()).add(obj)
        places = self.seen_at.setdefault(class_of(obj), [])
        if receptacle not in places:
            places.append(receptacle)

    def _read_view(self, view: View) -> None:
        receptacle = view.receptacle
        if receptacle not in self.receptacles:
            self.receptacles = sorted({*self.receptacles, receptacle}, key=sort_key)
        if view.state == "surface":
            self.surfaces.add(receptacle)
        else:
            self.opened[receptacle] = view.state == "open"
        if view.objects is None:
            return
        self.contents[receptacle] = set()
        for obj in view.objects:
            self._see(obj, receptacle)
        if set(self.receptacles) <= set(self.searched):  # everything seen: this look starts the next round
            self.searched, self.rounds = [], self.rounds + 1
        if receptacle not in self.searched:
            self.searched.append(receptacle)

    # ----------------------------------------------------------------------------------------------- helpers
    def _can(self, command: str) -> bool:
        return command in self.admissible

    def _is_closed(self, receptacle: str) -> bool:
        if receptacle in self.surfaces:
            return False
        return not self.opened.get(receptacle, class_of(receptacle) not in self._openable)

    def _goto(self, receptacle: str, thought: str, guess: bool = False) -> Decision:
        return Decision(f"go to {receptacle}", thought, guess)

    def _destination(self) -> str | None:
        """The receptacle to put the target in: for two objects, the one that already holds most of them."""
        options = [r for r in self.receptacles if class_of(r) == self.parent]
        if not options:
            return None
        return min(options, key=lambda r: (-len(self._placed_in(r)), r not in self.here, self._is_closed(r)))

    def _placed_in(self, receptacle: str) -> list[str]:
        objects = self.contents.get(receptacle, set())
        return sorted((o for o in objects if class_of(o) == self.target and o != self.holding), key=sort_key)

    def _sightings(self, cls: str) -> list[tuple[str, str]]:
        """(object, receptacle) pairs of a class, not held, in reading order of the receptacles."""
        return [
            (obj, receptacle)
            for receptacle in sorted(self.contents, key=sort_key)
            for obj in sorted(self.contents[receptacle], key=sort_key)
            if class_of(obj) == cls and obj != self.holding
        ]

    def _placed(self) -> list[str]:
        """Objects of the target class already in the destination (two-object tasks only: elsewhere the game is won
        once one is there)."""
        if self.kind.objects < 2:
            return []
        destination = self._destination()
        return self._placed_in(destination) if destination else []

    # ---------------------------------------------------------------------------------------------- decision
    def decide(self) -> Decision:
        """The next command for the current beliefs, with its reason; never changes the beliefs."""
        decision = self._choose()
        if self._can(decision.command):
            return decision
        return self._stuck()

    def _stuck(self) -> Decision:
        """Beliefs and engine disagree (a state no text explained): look around, which changes nothing."""
        command = "look" if self._can("look") else sorted(self.admissible)[0]
        return Decision(command, "I am not sure where things are, so I look around.", True)

    def _choose(self) -> Decision:
        held = self.holding
        if held is not None and class_of(held) != self.target:
            return self._put_down(held)
        if held is not None:
            if self.treatment and held not in self.treated[TREATED[self.treatment]]:
                return self._apply_treatment(held, self.treatment)
            if self.kind.toggle:
                return self._use_lamp(held)
            return self._deliver(held)
        return self._fetch()

    def _put_down(self, held: str) -> Decision:
        reason = f"I do not need the {held}"
        spots = sorted(
            (r for r in self.here if self._can(f"move {held} to {r}")), key=lambda r: (r != self.location, sort_key(r))
        )
        if spots:
            return Decision(f"move {held} to {spots[0]}", f"{reason}, so I put it down {place(spots[0])}.", False)
        back = self.came_from
        if back and back in self.here and self._can(f"open {back}"):
            return Decision(f"open {back}", f"{reason}; the {back} is closed, so I open it to put it back.", False)
        if back and back not in self.here:
            return self._goto(back, f"{reason}, so I take it back to the {back}.")
        return self._stuck()

    def _apply_treatment(self, held: str, verb: str) -> Decision:
        stations = [r for cls in self.stations for r in self.receptacles if class_of(r) == cls]
        for station in stations:
            if self._can(f"{verb} {held} with {station}"):
                return Decision(f"{verb} {held} with {station}", f"Now I {verb} the {held} with the {station}.", False)
        away = [r for r in stations if r not in self.here]
        if not away:
            return self._stuck()
        return self._goto(away[0], f"I have the {held}; I go to the {away[0]} to {verb} it.")

    def _deliver(self, held: str) -> Decision:
        destination = self._destination()
        if destination is None:
            return self._stuck()
        placed = self._placed()
        treated = f"The {held} is {TREATED[self.treatment]} now" if self.treatment else f"I have the {held}"
        if placed:
            treated = f"I have a second {self.target}, the {held}"
        if destination in self.here:
            if self._can(f"move {held} to {destination}"):
                beside = f", next to the {placed[0]}" if placed else ""
                return Decision(
                    f"move {held} to {destination}", f"Now I put the {held} {place(destination)}{beside}.", False
                )
            if self._can(f"open {destination}"):
                return Decision(
                    f"open {destination}", f"The {destination} is closed, so I open it to put the {held} in.", False
                )
            return self._stuck()
        return self._goto(destination, f"{treated}, so I take it to the {destination}.")

    def _use_lamp(self, held: str) -> Decision:
        lamps = self._sightings(self.toggle)
        for lamp, _ in lamps:
            if self._can(f"use {lamp}"):
                return Decision(f"use {lamp}", f"Now I turn on the {lamp} to look at the {held} in its light.", False)
        if lamps:
            lamp, spot = lamps[0]
            return self._goto(spot, f"I have the {held}; I saw a {lamp} {place(spot)}, so I go there.")
        return self._search(self.toggle, f"I have the {held}; ", article(self.toggle))

    def _fetch(self) -> Decision:
        placed = self._placed()
        destination = self._destination() if placed else None
        candidates = [(o, r) for o, r in self._sightings(self.target) if o not in placed]
        lead = f"One {self.target} is already {place(destination)}; " if destination else ""
        if not candidates:
            return self._search(self.target, lead, f"a second {self.target}" if placed else article(self.target))
        obj, spot = min(candidates, key=lambda pair: (pair[1] not in self.here, self._is_closed(pair[1])))
        if spot in self.here:
            if self._can(f"take {obj} from {spot}"):
                found = f"I found a second {self.target}, the {obj}" if placed else f"I found the {obj}"
                return Decision(f"take {obj} from {spot}", f"{found}, so I take it.", False)
            if self._can(f"open {spot}"):
                return Decision(f"open {spot}", f"The {spot} is closed, so I open it to take the {obj}.", False)
            return self._stuck()
        return self._goto(spot, f"{lead}I saw {article(obj)} {place(spot)}, so I go there to take it.")

    def _search_order(self, cls: str) -> list[str]:
        seen = self.seen_at.get(cls, [])
        priors = self._priors.get(cls, frozenset())

        def rank(receptacle: str) -> tuple[int, bool, bool, tuple[str, int]]:
            group = 0 if receptacle in seen else 1 if class_of(receptacle) in priors else 2
            needs_opening = receptacle not in self.surfaces and class_of(receptacle) in self._openable
            return (group, receptacle not in self.here, needs_opening, sort_key(receptacle))

        return sorted(self.receptacles, key=rank)

    def _search(self, cls: str, lead: str, need: str) -> Decision:
        """Look into the next receptacle not yet searched for `need` (an object class with its article)."""
        order = self._search_order(cls)
        pending = [r for r in order if r not in self.searched]
        guess = self.rounds > 0 or not pending
        if not pending:
            pending = [r for r in order if r not in self.here] or order
        target = pending[0]
        if guess:
            reason = f"{lead}I have looked everywhere without finding {need}, so I look again"
        else:
            reason = f"{lead}I need to find {need}"
        if target in self.here:
            if self._can(f"open {target}"):
                if target == self.location:
                    return Decision(f"open {target}", f"The {target} is closed, so I open it to look inside.", guess)
                return Decision(f"open {target}", f"{reason}; the {target} is right here, so I open it.", guess)
            return Decision(f"examine {target}", f"{reason}; the {target} is right here, so I look at it.", guess)
        done = self.searched
        if guess:
            return self._goto(target, f"{reason}; next I check {target}.", guess)
        if not done:
            return self._goto(target, f"{reason}, so first I check {target}.", guess)
        checked = join_names(done) if len(done) <= 2 else f"{len(done)} places, the last {done[-1]}"
        return self._goto(target, f"{reason}; I have checked {checked}, so next I check {target}.", guess)
