"""The task-type table: ALFWorld's own numbering and goals, the games on disk (real ones from $ALFWORLD_DATA, else the
generated ones) and what the generator composes all agree with it."""

from __future__ import annotations

import dataclasses
import json
import random
import re

import pytest
from alfworld_sft import games, generate
from alfworld_sft.task_types import TASK_TYPES, TASK_TYPES_BY_ID, task_label
from alfworld_sft.teacher import TREATED


@pytest.fixture(scope="module")
def constants():
    return games.import_alfworld("alfworld.gen.constants")


def test_the_table_is_alfworlds_numbering():
    alfred_tw_env = games.import_alfworld("alfworld.agents.environment.alfred_tw_env")
    assert {kind.id: kind.name for kind in TASK_TYPES.values()} == alfred_tw_env.TASK_TYPES
    assert [kind.id for kind in TASK_TYPES.values()] == list(range(1, len(TASK_TYPES) + 1))  # listed in id order
    assert list(TASK_TYPES_BY_ID.values()) == list(TASK_TYPES.values())
    assert all(name == kind.name for name, kind in TASK_TYPES.items())
    assert len({kind.label for kind in TASK_TYPES.values()}) == len(TASK_TYPES)
    assert task_label("pick_two_obj_and_place") == "pick two" and task_label("something_else") == "something_else"
    with pytest.raises(TypeError):
        TASK_TYPES["new_type"] = TASK_TYPES["pick_and_place_simple"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        TASK_TYPES["pick_and_place_simple"].demo = False  # type: ignore[misc]


def test_each_record_holds_together(constants):
    for kind in TASK_TYPES.values():
        treated = kind.treatment is not None
        assert treated == bool(kind.appliances) == bool(kind.object_property), kind
        assert not treated or kind.treatment in TREATED, kind  # a treatment the teacher reads in observations
        assert not kind.object_property or kind.object_property in constants.VAL_ACTION_OBJECTS, kind
        assert set(kind.appliances) <= set(constants.RECEPTACLES), kind
        assert bool(kind.toggle) == bool(kind.toggle_holders), kind
        assert not kind.toggle or kind.toggle in constants.VAL_ACTION_OBJECTS["Toggleable"], kind
        assert set(kind.toggle_holders) <= set(constants.RECEPTACLES), kind
        assert kind.places or kind.toggle, kind  # something to do with the object once it is held
        assert kind.objects in (1, 2), kind


def test_each_record_states_what_alfworlds_goal_asks():
    goal_library = games.import_alfworld("alfworld.gen.goal_library")
    for kind in TASK_TYPES.values():
        goal = goal_library.gdict[kind.name]["pddl"]
        assert goal.count("{obj}Type") == kind.objects, kind
        assert ("{recep}" in goal) == kind.places, kind
        assert ("{toggle}" in goal) == bool(kind.toggle), kind
        states = re.findall(r"\(is(Clean|Hot|Cool) \?o\)", goal)
        assert states == ([TREATED[kind.treatment].capitalize()] if kind.treatment else []), kind
        assert (f"({(kind.object_property or '').lower()} ?o)" in goal) == bool(kind.object_property), kind


def test_the_games_on_disk_are_of_the_tables_types(train_games, constants):
    """Every game folder of every split under the data root (all the real games when $ALFWORLD_DATA is set): its
    type is in the table, its object, destination and traj_data.json parameters are what the record says."""
    root = games.data_root()
    folders = [
        task
        for folder in games.SPLITS.values()
        if (root / games.JSON_DIR / folder).is_dir()
        for task in (root / games.JSON_DIR / folder).iterdir()
        if task.is_dir()
    ]
    assert folders
    seen = set()
    for task in folders:
        name, obj, _, destination, _ = task.name.split("-")
        assert name in TASK_TYPES, task
        kind = TASK_TYPES[name]
        seen.add(name)
        if kind.object_property:
            assert obj in constants.VAL_ACTION_OBJECTS[kind.object_property], task
        if kind.appliances:
            assert destination != kind.appliances[0], task
        if not kind.places:
            assert destination == kind.toggle, task
    assert seen == set(TASK_TYPES)  # every type has games (real or generated)
    for gamefile in games.list_games("train", limit=3 * len(TASK_TYPES), seed=0):
        traj = json.loads((gamefile.parent / games.TRAJ_FILE).read_text(encoding="utf-8"))
        kind, params = TASK_TYPES[traj["task_type"]], traj["pddl_params"]
        assert params["toggle_target"] == kind.toggle and bool(params["parent_target"]) == kind.places, gamefile


def test_the_generator_composes_what_the_record_says(constants):
    for kind in TASK_TYPES.values():
        assert generate.trial_name(0, kind, 3) == f"trial_G0_{kind.id}_00003"
        for room in constants.GOALS_VALID[kind.name]:
            rooms = generate.ROOM_RECEPTACLES[room]
            if kind.appliances:  # every room of the type holds the appliance
                assert rooms.get(kind.appliances[0], (0, 0))[0] >= 1, (kind.name, room)
            if kind.toggle:  # and somewhere to stand the lamp
                assert set(kind.toggle_holders) & set(rooms), (kind.name, room)
        for seed in range(3):
            folder, game, traj = generate.compose_game(kind, random.Random(seed), "trial_x")
            params, problem = traj["pddl_params"], game["pddl_problem"]
            assert folder.startswith(f"{kind.name}-") and traj["task_type"] == kind.name
            assert params["toggle_target"] == kind.toggle and bool(params["parent_target"]) == kind.places
            objects = problem.split("(:objects", 1)[1].split("(:init", 1)[0]
            targets = re.findall(rf"^\s*{params['object_target']}_bar_\S+ - object$", objects, re.MULTILINE)
            assert kind.objects <= len(targets) <= kind.objects + 1, (kind.name, seed)
            if kind.appliances:
                assert params["parent_target"] != kind.appliances[0]
                assert f"{kind.appliances[0]}Type)" in problem
                assert params["object_target"] in constants.VAL_ACTION_OBJECTS[kind.object_property]
            if kind.toggle:
                assert f"(objectType {kind.toggle}_bar_" in problem
