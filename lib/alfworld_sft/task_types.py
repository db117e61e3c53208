"""ALFWorld's six task types: one frozen record per type and the one table of them, which every stage reads.

A record holds what the course needs to know of a type: ALFWorld's number and name, the short label of plots, what
the goal asks (a treatment and where it is done, a lamp to switch on, one or two objects in a receptacle), what the
generator needs to compose a room for it, and whether it is short enough for a few-shot demonstration.

    from alfworld_sft.task_types import TASK_TYPES, TASK_TYPES_BY_ID
    TASK_TYPES["pick_heat_then_place_in_recep"].appliances   # ("Microwave",)
    TASK_TYPES_BY_ID[6].name                                  # "pick_two_obj_and_place"
    [kind.name for kind in TASK_TYPES.values() if kind.demo]  # in ALFWorld's order (ids 1-6)

Readers: `games` (names and numbers of `--task-types`, balanced sampling), `generate` (rooms, targets and goals of
generated games), `teacher` (what to do with the object once held), `collect` and `reports` (tables and plots per
type), `evaluation` (which types give demonstrations).

Adding a type: add its record to `_TABLE` below with the next id, named as ALFWorld names it (`task_type` of
traj_data.json, a goal of `alfworld.gen.goal_library`, a key of `alfworld.gen.constants.GOALS_VALID`); the
generator and every table then include it. If its goal needs a step the teacher does not take yet (the teacher
knows how to treat, switch on a lamp and place one or two objects), teach it in `Teacher._choose` (teacher.py).
`tests/test_task_types.py` checks the table against ALFWorld's own numbering, its goal library and the real games.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class TaskType:
    """One ALFWorld task type: what its goal asks, and what the generator and the teacher need to know of it."""

    id: int  # ALFWorld's number (`env.task_types` of its config): `--task-types 1,6`, generated trial names
    name: str  # ALFWorld's name: `task_type` of traj_data.json, the first part of a game's folder name
    label: str  # short name on plots
    treatment: str | None = None  # "clean", "heat" or "cool": the command the object needs before it is placed
    # ALFRED receptacle classes where the treatment is done, preferred first. Generated rooms always hold the first,
    # and it is never the destination there (nor in the real games); the teacher uses the first the room holds
    # (cleaning falls back on a bathtub basin, as ALFWorld's expert does; every real clean game has a sink basin).
    appliances: tuple[str, ...] = ()
    object_property: str | None = None  # what the object must be (a key of constants.VAL_ACTION_OBJECTS)
    toggle: str = ""  # ALFRED class of what is switched on while the object is held ("DeskLamp")
    toggle_holders: tuple[str, ...] = ()  # receptacle classes the generator stands the toggled object on
    places: bool = True  # the goal puts the object in a receptacle (`parent_target`); False: it is only held
    objects: int = 1  # objects of the target class the goal needs in the destination
    demo: bool = True  # short enough for a few-shot demonstration (the expert often needs 50+ steps for pick_two)


_TABLE = (
    TaskType(1, "pick_and_place_simple", "place"),
    TaskType(
        2,
        "look_at_obj_in_light",
        "look in light",
        toggle="DeskLamp",
        toggle_holders=("Desk", "SideTable", "Dresser"),  # where the real games put the desk lamp
        places=False,
    ),
    TaskType(
        3,
        "pick_clean_then_place_in_recep",
        "clean",
        treatment="clean",
        appliances=("SinkBasin", "BathtubBasin"),
        object_property="Cleanable",
    ),
    TaskType(
        4,
        "pick_heat_then_place_in_recep",
        "heat",
        treatment="heat",
        appliances=("Microwave",),
        object_property="Heatable",
    ),
    TaskType(
        5,
        "pick_cool_then_place_in_recep",
        "cool",
        treatment="cool",
        appliances=("Fridge",),
        object_property="Coolable",
    ),
    TaskType(6, "pick_two_obj_and_place", "pick two", objects=2, demo=False),
)

# The table by name, in ALFWorld's order (ids 1, 2, ...); read-only.
TASK_TYPES: Mapping[str, TaskType] = MappingProxyType({kind.name: kind for kind in _TABLE})
# The same records by ALFWorld's number.
TASK_TYPES_BY_ID: Mapping[int, TaskType] = MappingProxyType({kind.id: kind for kind in _TABLE})


def task_label(name: str) -> str:
    """The short label of a task type for plots ("pick two"); a name the table lacks stands for itself."""
    kind = TASK_TYPES.get(name)
    return kind.label if kind else name
