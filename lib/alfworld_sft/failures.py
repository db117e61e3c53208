"""Why a game was lost: each lost rollout is put in one cause, read from its own record (no replay, no model).

    from alfworld_sft import failures
    failures.classify_failure(record)        # "search_loop", "invalid_replies", ... for one lost game
    failures.count_failures(records)         # {cause: games} over the lost games of a run
    failures.trace_search(record, fmt)       # its moves turn by turn, beside the memory line the model read

The causes, checked in this order (the first that holds is the game's cause):

* `invalid_replies`: a quarter or more of the replies named no admissible command;
* `wrong_object`: an object of another kind than the task's was picked up (the agent took it for the task's
  object, or for the second one of a pick-two task);
* `search_loop`: a stretch of the game between two handlings (take, put, heat, cool, clean, use) that made at least
  `MIN_MOVES` moves, a third of them back to places already visited in that stretch: the agent forgot where it had
  searched, whether for the object, the lamp, the second object or the place to put it;
* `found_late`: the task's object was first picked up (in the last trial) with fewer turns left than finishing the
  task takes at the least (`FINISH_TURNS`): a long search without revisits left no room for the task's steps;
* `task_step_missed`: the task's object was picked up, and the game was still lost (wrong place, a missing clean,
  heat, cool or lamp step);
* `seen_not_taken`: an observation showed the task's object, and it was never picked up;
* `step_limit`: the object was never seen and the moves went to new places: the step cap ended a search that was
  still going somewhere;
* `other`: none of the above (e.g. a game that ended early).

Evaluation stores the counts per agent and task type in its results (`reports.summarize_run`); notebook 05 shows
them. The target object comes from the game's folder name (`<task_type>-<Object>-<Mrecep>-<Parent>-<scene>`), which
real and generated games share.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from alfworld_sft import prompts

CAUSES = (
    "invalid_replies",
    "wrong_object",
    "search_loop",
    "found_late",
    "task_step_missed",
    "seen_not_taken",
    "step_limit",
    "other",
)
INVALID_SHARE = 0.25  # replies that named no admissible command, as a share of the game's turns
REVISIT_SHARE = 1 / 3  # moves back to a place visited in the same stretch, as a share of the stretch's moves
MIN_MOVES = 6  # a stretch of fewer moves than this says nothing about a search
HANDLINGS = ("take ", "move ", "put ", "heat ", "cool ", "clean ", "use ")  # commands that end a stretch of search
# The fewest turns a task takes once its object is first in hand: go to the place and put it (a look task: go to
# the lamp and use it; a pick-two task: that, then go to the second object, take it, go back and put it); a clean,
# heat or cool task goes to the appliance and uses it first.
FINISH_TURNS = {"pick_and_place_simple": 2, "look_at_obj_in_light": 2, "pick_two_obj_and_place": 6}
FINISH_TURNS_WITH_APPLIANCE = 4


def game_folder_parts(game_id: str) -> list[str]:
    """`<task_type>-<Object>-<Mrecep>-<Parent>-<scene>` of the game's folder, split."""
    folder = game_id.rstrip("/").split("/")[-2] if "/trial_" in game_id else game_id.rstrip("/").split("/")[-1]
    parts = folder.split("-")
    if len(parts) < 5:
        raise ValueError(f"{game_id}: not an ALFWorld game folder (<task_type>-<Object>-<Mrecep>-<Parent>-<scene>)")
    return parts


def target_object(game_id: str) -> str:
    """The task's object as the game's text spells it (`SaltShaker` -> `saltshaker`), from the game's folder."""
    return game_folder_parts(game_id)[1].lower()


def describe_search(record: Mapping[str, Any]) -> dict[str, Any]:
    """What a rollout's turns (every trial's) say about its search: moves, the stretch of search with the most
    revisits, invalid replies, whether the task's object was seen or picked up, and objects of other kinds picked up.

    A stretch is the run of turns between two handlings (`HANDLINGS`) of one trial: the moves of one search."""
    target = target_object(record["game_id"])
    mention = re.compile(rf"\b{re.escape(target)} \d+\b")
    picked = re.compile(r"^You pick up the ([a-z]+) \d+ from")
    moves = invalid = 0
    loop_moves = loop_revisits = loop_trial = 0  # the stretch with the most revisits, and its trial
    seen = bool(mention.search(record.get("first_observation", "")))
    taken, others = False, []
    turns_left_after_taking = None  # in the last trial, after its first pick of the task's object
    for trial_index, trial in enumerate(record.get("transcript", ())):
        stretch: set[str] = set()
        stretch_moves = stretch_revisits = 0
        trial_turns = trial.get("turns", ())
        turns_left_after_taking = None
        for index, turn in enumerate(trial_turns):
            command = turn.get("command") or ""
            observation = turn.get("observation") or ""
            if turn.get("how") == "invalid" or not command:
                invalid += 1
            if command.startswith("go to "):
                moves += 1
                place = command[len("go to ") :]
                stretch_moves += 1
                stretch_revisits += place in stretch
                stretch.add(place)
                if (stretch_revisits, stretch_moves) > (loop_revisits, loop_moves):
                    loop_moves, loop_revisits, loop_trial = stretch_moves, stretch_revisits, trial_index
            elif command.startswith(HANDLINGS) and not observation.startswith("Nothing happens"):
                stretch, stretch_moves, stretch_revisits = set(), 0, 0
            seen = seen or bool(mention.search(observation))
            if kind := picked.match(observation):
                if kind.group(1) == target:
                    taken = True
                    if turns_left_after_taking is None:
                        turns_left_after_taking = len(trial_turns) - index - 1
                else:
                    others.append(kind.group(1))
    turns = sum(len(trial.get("turns", ())) for trial in record.get("transcript", ()))
    return {
        "target": target,
        "turns": turns,
        "moves": moves,
        "loop_moves": loop_moves,
        "loop_revisits": loop_revisits,
        "loop_trial": loop_trial,
        "invalid": invalid,
        "seen": seen,
        "taken": taken,
        "turns_left_after_taking": turns_left_after_taking,
        "other_objects_taken": others,
    }


def classify_failure(record: Mapping[str, Any]) -> str:
    """The cause of a lost game (one of `CAUSES`); a won game has none."""
    if record.get("won"):
        raise ValueError(f"{record.get('game_id')}: the game was won, it has no cause of failure")
    search = describe_search(record)
    if search["turns"] and search["invalid"] >= INVALID_SHARE * search["turns"]:
        return "invalid_replies"
    if search["other_objects_taken"]:
        return "wrong_object"
    if search["loop_moves"] >= MIN_MOVES and search["loop_revisits"] >= REVISIT_SHARE * search["loop_moves"]:
        return "search_loop"
    left = search["turns_left_after_taking"]
    if left is not None and left < FINISH_TURNS.get(
        game_folder_parts(record["game_id"])[0], FINISH_TURNS_WITH_APPLIANCE
    ):
        return "found_late"
    if search["taken"]:
        return "task_step_missed"
    if search["seen"]:
        return "seen_not_taken"
    if search["moves"] >= MIN_MOVES:
        return "step_limit"
    return "other"


def trace_search(record: Mapping[str, Any], fmt: prompts.PromptFormat | None, trial: int = 0) -> list[dict[str, Any]]:
    """One trial of a rollout turn by turn: the command; for a move, the how-manieth visit of its place in the trial
    and whether the place's contents had been seen before (the memory line no longer lists it: a move back there is
    the loop the memory is there to prevent); and the memory line the model read before it chose the command, taken
    from the user turns as play renders them in `fmt` (`prompts.render_user_turns`, earlier trials recalled). `fmt`
    None or without `show_memory`: the model read no line, and that column stays empty."""
    turns = record["transcript"][trial]["turns"]
    seen = [turn.get("observation") or "" for turn in turns]
    recalled = [
        text
        for past in record["transcript"][:trial]
        for text in prompts.observed_before_moving(turn.get("observation") or "" for turn in past["turns"])
    ]
    # The memory line does not depend on the commands listed beside it: render without them.
    shown = dataclasses.replace(fmt or prompts.PromptFormat(), show_admissible_commands=False)
    read = prompts.render_user_turns(
        record["task"], record["first_observation"], None, [(text, None) for text in seen[:-1]], shown, recalled
    )
    memory = prompts.SearchMemory(record["task"], record["first_observation"])
    memory.recall(recalled)
    visits: Counter[str] = Counter()
    rows = []
    for step, (turn, user_turn) in enumerate(zip(turns, read), start=1):
        command = turn.get("command") or ""
        place = command[len("go to ") :] if command.startswith("go to ") else None
        if place is not None:
            visits[place] += 1
        rows.append(
            {
                "step": step,
                "command": command or f"(invalid) {turn.get('reply', '')}",
                "visit": visits[place] if place is not None else None,
                "searched before": (place not in memory.unsearched) if place is not None else None,
                "memory line read": user_turn.partition(prompts.MEMORY_PREFIX)[2],
            }
        )
        memory.observe(seen[step - 1])
    return rows


def pick_loop_example(records: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The game that shows a search loop best: a lost game whose cause is `search_loop`, else any lost game, else any
    game, the one with the most revisits in one stretch of search first. None when there is no game."""

    def strength(record: Mapping[str, Any]) -> tuple[bool, bool, int, int]:
        search = describe_search(record)
        lost = not record.get("won")
        return lost, lost and classify_failure(record) == "search_loop", search["loop_revisits"], search["moves"]

    return max(records, key=strength, default=None)


def count_failures(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Lost games by cause, every cause listed (0 where none), in `CAUSES` order."""
    return tally_causes(classify_failure(record) for record in records if not record.get("won"))


def tally_causes(causes: Iterable[str | None]) -> dict[str, int]:
    """Games per cause of causes already classified (None, a won game, is not counted), in `CAUSES` order."""
    counts = Counter(cause for cause in causes if cause is not None)
    return {cause: counts[cause] for cause in CAUSES}


def format_failures(counts: Mapping[str, int]) -> str:
    """`search_loop 3, invalid_replies 1` (causes with games only), or `-` when nothing was lost."""
    return ", ".join(f"{cause} {n}" for cause, n in counts.items() if n) or "-"
