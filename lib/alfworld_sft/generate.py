"""Generated ALFWorld games: the course's offline default when no `$ALFWORLD_DATA` is set.

A seeded generator composes household rooms from ALFRED's vocabulary (`alfworld.gen.constants`: object and
receptacle classes, which objects fit which receptacles, which can be heated, cooled, cleaned or toggled,
which receptacles open) and writes each game with the PDDL domain and text grammar shipped in the alfworld
wheel, in the layout `alfworld-download` makes:

    <root>/logic/alfred.pddl, alfred.twl2
    <root>/json_2.1.1/<split>/<task_type>-<Obj>-<Mrecep>-<Parent>-<scene>/trial_G<seed>_<type>_<slot>/
        game.tw-pddl     JSON: pddl_domain, grammar (task sentence in place of "UNKNOWN GOAL"),
                         pddl_problem, solvable, walkthrough (the expert's winning commands)
        traj_data.json   task_type and pddl_params, read by ALFWorld's handcoded expert

A game is kept only when the real TextWorld engine loads it and the expert wins it within `MAX_EXPERT_STEPS`,
played as the collection plays it (`engine.play_expert`, the game's random state seeded from the generator's
seed and the game id by `engine.expert_seed`): collecting the games with the same expert and seed wins every one
by its recorded walkthrough. Otherwise the next attempt of the same slot is composed. Games are built in a
scratch folder and renamed into place once verified, so an interrupted run never leaves half a game, and a
rerun reuses every finished one. The same seed gives byte-identical files; another seed gives other rooms.

    from alfworld_sft.generate import ensure_games, generate_games
    gamefiles = generate_games(Path("data/generated"), "train", count=60, seed=0)
    gamefiles = ensure_games("eval_in_distribution", 6, seed=0)   # real games, or generated when none are set

    alfworld-sft data status                 # which splits exist and how many games of each task type
    alfworld-sft data download [--data-dir]  # the real ALFWorld games (needs internet)
    alfworld-sft data generate --split train --count 60 --seed 0   # the offline games

The rules the rooms follow were checked against the real games (field notes §4): ALFRED's name mangling
(`Name|x|y|z`, `|`→`_bar_`, `+`→`_plus_`, `-`→`_minus_`, `.`→`_dot_`), every otype/rtype constant declared in
`:objects`, one location per receptacle, a `traj_data.json` beside the game file.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from alfworld_sft import engine, files, games
from alfworld_sft.games import JSON_DIR
from alfworld_sft.task_types import TASK_TYPES, TASK_TYPES_BY_ID, TaskType

MAX_EXPERT_STEPS = 50  # a generated game is kept only if the handcoded expert wins within this many commands
MAX_ATTEMPTS = 40  # compositions tried for one game slot before giving up with an error

# Receptacle classes of each room type, with (fewest, most) instances, after the 108 real train scenes; kitchens
# are kept smaller than the real ones (median 23 receptacles against 36) so the expert searches them in 50 steps.
ROOM_RECEPTACLES: dict[str, dict[str, tuple[int, int]]] = {
    "Kitchen": {
        "Cabinet": (4, 10),
        "Drawer": (1, 6),
        "CounterTop": (1, 3),
        "Fridge": (1, 1),
        "Microwave": (1, 1),
        "SinkBasin": (1, 1),
        "StoveBurner": (2, 4),
        "CoffeeMachine": (1, 1),
        "Toaster": (1, 1),
        "GarbageCan": (1, 1),
        "DiningTable": (0, 1),
        "Shelf": (0, 2),
    },
    "LivingRoom": {
        "Sofa": (1, 2),
        "ArmChair": (0, 2),
        "CoffeeTable": (1, 2),
        "SideTable": (0, 2),
        "Drawer": (0, 6),
        "DiningTable": (0, 1),
        "TVStand": (0, 1),
        "Shelf": (0, 4),
        "Dresser": (0, 1),
        "Ottoman": (0, 1),
        "Cabinet": (0, 2),
        "GarbageCan": (1, 1),
    },
    "Bedroom": {
        "Bed": (1, 1),
        "Drawer": (2, 8),
        "Shelf": (0, 5),
        "Desk": (0, 1),
        "SideTable": (0, 2),
        "Dresser": (0, 1),
        "LaundryHamper": (0, 1),
        "ArmChair": (0, 1),
        "Safe": (0, 1),
        "GarbageCan": (1, 1),
    },
    "Bathroom": {
        "Toilet": (1, 1),
        "ToiletPaperHanger": (1, 1),
        "HandTowelHolder": (1, 2),
        "TowelHolder": (1, 1),
        "SinkBasin": (1, 2),
        "BathtubBasin": (0, 1),
        "CounterTop": (1, 2),
        "Cabinet": (1, 4),
        "Drawer": (0, 4),
        "Shelf": (0, 2),
        "GarbageCan": (1, 1),
    },
}

# How many portable objects a room holds besides the task's targets (real scenes: medians of 44 portable
# objects in kitchens and about 20 elsewhere).
ROOM_DISTRACTORS: dict[str, tuple[int, int]] = {
    "Kitchen": (16, 32),
    "LivingRoom": (10, 20),
    "Bedroom": (10, 22),
    "Bathroom": (8, 18),
}

# Portable object classes seen in each room type of the real scenes (most frequent first).
ROOM_OBJECTS: dict[str, tuple[str, ...]] = {
    "Kitchen": (
        "Lettuce",
        "PepperShaker",
        "Cup",
        "SaltShaker",
        "Knife",
        "Fork",
        "ButterKnife",
        "Plate",
        "Tomato",
        "Potato",
        "Spatula",
        "Egg",
        "DishSponge",
        "Spoon",
        "SoapBottle",
        "Mug",
        "Bowl",
        "Apple",
        "Bread",
        "Pot",
        "Pan",
        "Kettle",
        "WineBottle",
        "Ladle",
        "Glassbottle",
        "Vase",
        "Statue",
        "CellPhone",
        "CreditCard",
    ),
    "LivingRoom": (
        "Statue",
        "CreditCard",
        "RemoteControl",
        "KeyChain",
        "Box",
        "Vase",
        "Laptop",
        "Pillow",
        "Newspaper",
        "Watch",
        "Plate",
        "Book",
        "TissueBox",
        "WateringCan",
        "CellPhone",
        "Pencil",
        "Pen",
        "Candle",
        "Bowl",
    ),
    "Bedroom": (
        "AlarmClock",
        "KeyChain",
        "CD",
        "CreditCard",
        "Book",
        "CellPhone",
        "Pencil",
        "Pen",
        "Pillow",
        "Laptop",
        "Mug",
        "Bowl",
        "Box",
        "BaseballBat",
        "BasketBall",
        "TennisRacket",
        "Cloth",
        "TissueBox",
        "Statue",
        "RemoteControl",
        "Watch",
        "Vase",
    ),
    "Bathroom": (
        "Candle",
        "SprayBottle",
        "SoapBottle",
        "ToiletPaper",
        "Cloth",
        "SoapBar",
        "HandTowel",
        "Towel",
        "Plunger",
        "DishSponge",
        "TissueBox",
    ),
}


@dataclass(frozen=True)
class Task:
    task_type: TaskType  # its record in the task-type table (alfworld_sft.task_types)
    room: str  # Kitchen, LivingRoom, Bedroom or Bathroom
    scene: int  # ALFRED scene number of that room type (constants.SCENE_TYPE), used in the folder name
    object_target: str  # ALFRED class of the object to move or look at
    parent_target: str  # ALFRED class of the destination receptacle ("" when the type places nothing)
    toggle_target: str  # the type's toggle ("DeskLamp" for look_at_obj_in_light), else ""
    sentence: str  # the task as the game states it, from ALFWorld's goal templates


@dataclass
class Room:
    receptacles: list[tuple[str, str]] = field(default_factory=list)  # (id, class)
    objects: list[tuple[str, str, str]] = field(default_factory=list)  # (id, class, receptacle id)
    locations: dict[str, str] = field(default_factory=dict)  # receptacle id -> location id
    agent_location: str = ""


def mangle(name: str) -> str:
    """ALFRED's PDDL-safe form of an id: `Apple|+00.16|+00.97|-01.26` -> `Apple_bar__plus_00_dot_16...`."""
    for char, word in (("|", "_bar_"), ("+", "_plus_"), ("-", "_minus_"), (".", "_dot_")):
        name = name.replace(char, word)
    return name


def derive_seed(*parts: object) -> int:
    """A stable 64-bit seed from the parts (Python's hash() changes between processes; sha256 does not)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def load_logic() -> tuple[str, str]:
    """The PDDL domain and the text grammar shipped in the alfworld wheel (`alfworld/data/`)."""
    data = Path(games.import_alfworld("alfworld").__file__).parent / "data"
    paths = data / "alfred.pddl", data / "alfred.twl2"
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing from the alfworld package: pip install alfworld")
    return paths[0].read_text(encoding="utf-8"), paths[1].read_text(encoding="utf-8")


def _constants():
    return games.import_alfworld("alfworld.gen.constants")


def _fits(constants, receptacle_class: str, object_class: str) -> bool:
    return object_class in constants.VAL_RECEPTACLE_OBJECTS.get(receptacle_class, ())


def _has(constants, property_name: str, object_class: str) -> bool:
    return object_class in constants.VAL_ACTION_OBJECTS[property_name]


def compose_receptacle_classes(task_type: TaskType, room: str, rng: random.Random) -> list[str]:
    """The receptacle classes of a room, one entry per instance."""
    counts = {cls: rng.randint(low, high) for cls, (low, high) in ROOM_RECEPTACLES[room].items()}
    holders = task_type.toggle_holders
    if task_type.toggle and not any(counts.get(cls) for cls in holders):
        counts[rng.choice([cls for cls in holders if cls in counts])] = 1
    return [cls for cls, count in counts.items() for _ in range(count)]


def choose_task(task_type: TaskType, rng: random.Random) -> tuple[Task, list[str]]:
    """A task of `task_type` and the receptacle classes of the room it happens in."""
    constants = _constants()
    goal_library = games.import_alfworld("alfworld.gen.goal_library")

    name = task_type.name
    # The appliance of the treatment is never the destination (nor is it in the real games).
    appliance = task_type.appliances[0] if task_type.appliances else None
    while True:  # a room without any valid (object, destination) pair is redrawn; rare
        room = rng.choice(sorted(constants.GOALS_VALID[name]))
        classes = compose_receptacle_classes(task_type, room, rng)
        present = sorted(set(classes))
        pairs = []
        for obj in ROOM_OBJECTS[room]:
            if task_type.object_property and not _has(constants, task_type.object_property, obj):
                continue
            starts = [cls for cls in present if _fits(constants, cls, obj)]
            if not task_type.places:
                if starts:
                    pairs.append((obj, ""))
                continue
            for parent in starts:
                # The target must start somewhere other than its destination, else the game is won at once.
                if parent != appliance and any(cls != parent for cls in starts):
                    pairs.append((obj, parent))
        if pairs:
            break
    obj, parent = rng.choice(pairs)
    toggle = task_type.toggle
    template = rng.choice(goal_library.gdict[name]["templates"])
    sentence = template.format(obj=obj.lower(), recep=parent.lower(), toggle=toggle.lower(), mrecep="")
    scene = rng.choice(list(constants.SCENE_TYPE[room]))
    return Task(task_type, room, scene, obj, parent, toggle, sentence), classes


def compose_room(task: Task, classes: Sequence[str], rng: random.Random) -> Room:
    """Place receptacles at their own locations and objects in receptacles that can hold them."""
    constants = _constants()
    room = Room()
    used_ids: set[str] = set()

    def new_id(cls: str, suffix: str = "") -> str:
        while True:
            x, y, z = (rng.randint(-350, 350) / 100 for _ in range(3))
            raw = f"{cls}|{x:+06.2f}|{abs(y):+06.2f}|{z:+06.2f}{suffix}"
            if raw not in used_ids:
                used_ids.add(raw)
                return mangle(raw)

    used_locations: set[str] = set()

    def new_location() -> str:
        while True:
            x, z, rotation = rng.randint(-8, 12), rng.randint(-8, 12), rng.randint(0, 3)
            raw = f"loc|{x}|{z}|{rotation}|{rng.choice([-30, 0, 15, 30, 45, 60])}"
            if raw not in used_locations:
                used_locations.add(raw)
                return mangle(raw)

    for cls in classes:
        # Basins are named after their fixture, as in ALFRED: Sink|x|y|z|SinkBasin.
        fixture = {"SinkBasin": "Sink", "BathtubBasin": "Bathtub"}.get(cls)
        rid = new_id(fixture, f"|{cls}") if fixture else new_id(cls)
        room.receptacles.append((rid, cls))
        room.locations[rid] = new_location()
    room.agent_location = new_location()

    def place(obj_cls: str, forbidden: str = "") -> None:
        holders = [rid for rid, cls in room.receptacles if cls != forbidden and _fits(constants, cls, obj_cls)]
        if holders:
            room.objects.append((new_id(obj_cls), obj_cls, rng.choice(holders)))

    needed = task.task_type.objects
    targets = rng.randint(needed, needed + 1)
    for _ in range(targets):
        place(task.object_target, forbidden=task.parent_target)
    if task.toggle_target:
        holders = [rid for rid, cls in room.receptacles if cls in task.task_type.toggle_holders]
        room.objects.append((new_id(task.toggle_target), task.toggle_target, rng.choice(holders)))
    distractors = [cls for cls in ROOM_OBJECTS[task.room] if cls != task.object_target]
    for _ in range(rng.randint(*ROOM_DISTRACTORS[task.room])):
        # The destination must not already hold the target's class, so distractors of that class stay out.
        place(rng.choice(distractors))
    return room


def render_problem(task: Task, room: Room, problem_id: str) -> str:
    """The PDDL problem: constants, instances, initial facts and the goal from ALFWorld's goal library."""
    constants = _constants()
    goal_library = games.import_alfworld("alfworld.gen.goal_library")

    static = set(constants.RECEPTACLES) - set(constants.MOVABLE_RECEPTACLES)
    object_classes = sorted(set(constants.OBJECTS_SET) - static)
    rtypes = sorted(static)
    indent = "\n        "
    declared = (
        ["agent1 - agent"]
        + [f"{cls} - object" for cls in object_classes]
        + [f"{cls}Type - otype" for cls in object_classes]
        + [f"{cls}Type - rtype" for cls in rtypes]
        + [f"{oid} - object" for oid, _, _ in sorted(room.objects)]
        + [f"{rid} - receptacle" for rid, _ in sorted(room.receptacles)]
        + [f"{loc} - location" for loc in sorted({*room.locations.values(), room.agent_location})]
    )
    objects_by_id = sorted(room.objects)
    movable, openable = set(constants.MOVABLE_RECEPTACLES), constants.OPENABLE_CLASS_SET
    rtypes_here = sorted({cls for _, cls in room.receptacles})
    otypes_here = sorted({cls for _, cls, _ in room.objects})
    flags = {
        "Cleanable": "cleanable",
        "Heatable": "heatable",
        "Coolable": "coolable",
        "Toggleable": "toggleable",
        "Sliceable": "sliceable",
    }
    facts = (
        [f"(receptacleType {rid} {cls}Type)" for rid, cls in sorted(room.receptacles)]
        + [f"(objectType {oid} {cls}Type)" for oid, cls, _ in objects_by_id]
        + [f"(canContain {r}Type {o}Type)" for r in rtypes_here for o in otypes_here if _fits(constants, r, o)]
        + [f"(pickupable {oid})" for oid, cls, _ in objects_by_id if cls != task.toggle_target]  # a lamp stays put
        + [f"(isReceptacleObject {oid})" for oid, cls, _ in objects_by_id if cls in movable]
        + [f"(openable {rid})" for rid, cls in sorted(room.receptacles) if cls in openable]
        + [f"(atLocation agent1 {room.agent_location})"]
        + [
            f"({flag} {oid})"
            for prop, flag in flags.items()
            for oid, cls, _ in objects_by_id
            if _has(constants, prop, cls)
        ]
        + [f"(inReceptacle {oid} {rid})" for oid, _, rid in objects_by_id]
        + [f"(receptacleAtLocation {rid} {room.locations[rid]})" for rid, _ in sorted(room.receptacles)]
        + [f"(objectAtLocation {oid} {room.locations[rid]})" for oid, _, rid in objects_by_id]
    )
    goal = (
        goal_library.gdict[task.task_type.name]["pddl"]
        .replace("#", "-")
        .format(obj=task.object_target, recep=task.parent_target, toggle=task.toggle_target, mrecep="")
    )
    # The goal library's text also closes the `(define ...` opened here.
    return (
        f"\n(define (problem plan_{problem_id})\n(:domain alfred)\n(:objects\n        "
        + indent.join(declared)
        + "\n        )\n\n(:init\n        "
        + indent.join(facts)
        + "\n        )\n\n"
        + goal
    )


def trial_name(seed: int, task_type: TaskType, slot: int) -> str:
    """The trial folder of one game slot; finding it again is how a rerun reuses finished games."""
    return f"trial_G{seed}_{task_type.id}_{slot:05d}"


def compose_game(task_type: TaskType, rng: random.Random, trial: str) -> tuple[str, dict, dict]:
    """One candidate game: (task folder name, game.tw-pddl payload without walkthrough, traj_data payload
    without the `generator` entry that records how it was verified)."""
    domain, grammar = load_logic()
    task, classes = choose_task(task_type, rng)
    room = compose_room(task, classes, rng)
    destination = task.parent_target or task.toggle_target
    folder = f"{task_type.name}-{task.object_target}-None-{destination}-{task.scene}"
    game = {
        "pddl_domain": domain,
        "grammar": grammar.replace("UNKNOWN GOAL", task.sentence),
        "pddl_problem": render_problem(task, room, trial),
        "solvable": True,
    }
    traj = {
        "task_id": trial,
        "task_type": task_type.name,
        "pddl_params": {
            "mrecep_target": "",
            "object_sliced": False,
            "object_target": task.object_target,
            "parent_target": task.parent_target,
            "toggle_target": task.toggle_target,
        },
        "scene": {"room_type": task.room, "scene_num": task.scene},
    }
    return folder, game, traj


def verify_game(
    gamefile: Path, game_id: str, seed: int, max_steps: int = MAX_EXPERT_STEPS, expert: str = engine.DEFAULT_EXPERT
) -> list[str] | None:
    """Play `gamefile` exactly as the collection with `seed` will play the game `game_id` (`engine.play_expert`):
    the winning commands, or None when the engine rejects the game or the expert does not win in time."""
    try:
        played = engine.play_expert(gamefile, seed=seed, game_id=game_id, expert=expert, max_steps=max_steps)
    except Exception:  # noqa: BLE001 - a composition the engine cannot load is redrawn, not fatal
        return None
    return list(played.commands) if played.won else None


def find_game(split_dir: Path, task_type: TaskType, trial: str) -> Path | None:
    """The finished game of a slot, if an earlier run made it."""
    for path in sorted(split_dir.glob(f"{task_type.name}-*/{trial}/game.tw-pddl")):
        if (path.parent / "traj_data.json").exists():
            return path
    return None


def generate_game(root: Path, split_folder: str, seed: int, task_type: TaskType, slot: int) -> tuple[Path, int]:
    """The game of one slot (reused if present, else composed and verified): (game file, attempts made)."""
    split_dir = root / JSON_DIR / split_folder
    trial = trial_name(seed, task_type, slot)
    existing = find_game(split_dir, task_type, trial)
    if existing:
        return existing, 0
    scratch_root = root / ".generating"  # outside the split folder: readers never see a game being built
    scratch_root.mkdir(parents=True, exist_ok=True)
    for attempt in range(MAX_ATTEMPTS):
        sub_seed = derive_seed(seed, split_folder, task_type.id, slot, attempt)
        folder, game, traj = compose_game(task_type, random.Random(sub_seed), trial)
        game_id = f"{JSON_DIR}/{split_folder}/{folder}/{trial}"  # games.game_id of the finished game
        expert = {
            "module": "alfworld_sft.generate",
            "expert": engine.DEFAULT_EXPERT,
            "expert_seed": engine.expert_seed(seed, game_id),
        }
        traj = {**traj, "generator": expert}
        # No dot before the random part: TextWorld reads any path containing ".z1".."z8" as a Z-machine game, so a
        # name drawn as "trial.z3..." failed verification and silently gave the slot another game.
        scratch = Path(tempfile.mkdtemp(prefix=f"{trial}-", dir=scratch_root))
        try:
            trial_dir = scratch / trial
            trial_dir.mkdir()
            files.write_text(trial_dir / "traj_data.json", json.dumps(traj, indent=2) + "\n")
            files.write_text(trial_dir / "game.tw-pddl", json.dumps(game))
            walkthrough = verify_game(trial_dir / "game.tw-pddl", game_id, seed)
            if walkthrough is None:
                continue
            files.write_text(trial_dir / "game.tw-pddl", json.dumps({**game, "walkthrough": walkthrough}))
            final = split_dir / folder / trial
            final.parent.mkdir(parents=True, exist_ok=True)
            if find_game(split_dir, task_type, trial):  # a concurrent run finished this slot meanwhile
                return final / "game.tw-pddl", attempt + 1
            if final.exists():  # a game left incomplete by deleting one of its files
                shutil.rmtree(final)
            os.replace(trial_dir, final)
            return final / "game.tw-pddl", attempt + 1
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    raise RuntimeError(
        f"no {task_type.name} game the expert wins in {MAX_ATTEMPTS} attempts (seed {seed}, "
        f"slot {slot}): try another seed or leave this task type out"
    )


def write_logic(root: Path) -> None:
    """Copy the wheel's domain and grammar to `root/logic/`, as `alfworld-download` lays them out."""
    domain, grammar = load_logic()
    for name, text in (("alfred.pddl", domain), ("alfred.twl2", grammar)):
        path = root / "logic" / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            files.write_text(path, text)


def generate_games(
    root: Path, split_folder: str, count: int, seed: int, task_types: Iterable[int] | None = None
) -> list[Path]:
    """Write `count` verified games under `root/json_2.1.1/<split_folder>/`, balanced over `task_types` (ids of
    the task-type table; all by default), and return their game files; finished games of an earlier run are reused."""
    from tqdm.auto import tqdm

    ids = sorted(set(TASK_TYPES_BY_ID if task_types is None else task_types))
    unknown = [t for t in ids if t not in TASK_TYPES_BY_ID]
    if unknown or not ids:
        raise ValueError(f"task types {unknown or '(none)'} are not valid: choose from {sorted(TASK_TYPES_BY_ID)}")
    types = [TASK_TYPES_BY_ID[number] for number in ids]
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    root = Path(root)
    write_logic(root)
    gamefiles = []
    for index in tqdm(range(count), desc=f"generating {split_folder} games", unit="game"):
        path, _ = generate_game(root, split_folder, seed, types[index % len(types)], index // len(types))
        gamefiles.append(path)
    return gamefiles


# How many games the course generates for a split when no $ALFWORLD_DATA is set and a notebook asks for the whole
# split (full mode): enough to train and measure on, at ~2-4 s of CPU a game to compose and verify.
FULL_GENERATED_COUNTS = {
    "train": 600,
    "eval_in_distribution": 140,
    "eval_out_of_distribution": 134,
    "valid_train": 200,
}


def ensure_games(split: str, count: int | None, seed: int = 0) -> list[Path]:
    """`count` games of a split, balanced over task types and seeded (`games.list_games`); None: the whole split.

    With `$ALFWORLD_DATA` set, the real games (nothing is generated: the split must be there). Without it, the
    course's generated games, generating what is missing first (the whole split is `FULL_GENERATED_COUNTS`).
    Every split is generated from its own seeded stream, so no generated game is in two splits.
    """
    if count is not None and count < 1:
        raise ValueError(f"--count must be at least 1 (or left out for the whole split), got {count}")
    if games.uses_generated_games():
        wanted = FULL_GENERATED_COUNTS[split] if count is None else count
        root = games.generated_root()
        try:
            have = len(games.all_games(split, root))
        except games.MissingSplitError:
            have = 0
        if have < wanted:
            generate_games(root, games.SPLITS[split], wanted, seed)
        if count is None:
            return games.list_games(split, limit=wanted, seed=seed)
    return games.list_games(split, limit=count, seed=seed)


def print_status() -> None:
    """Which splits exist under the data root, with their games per task type."""
    root = games.data_root()
    source = "generated games" if games.uses_generated_games() else "$ALFWORLD_DATA"
    print(f"data root: {root} ({source})")
    counts = games.count_games(root)
    print("task types: " + ", ".join(f"{kind.id}={kind.name}" for kind in TASK_TYPES.values()))
    for split, folder in games.SPLITS.items():
        per_type = counts.get(split)
        if per_type is None:
            print(f"  {split:<25} {folder:<13} missing")
            continue
        cells = " ".join(f"{kind.id}:{per_type[kind.name]:<4}" for kind in TASK_TYPES.values())
        print(f"  {split:<25} {folder:<13} {sum(per_type.values()):>5} games  {cells}")


def _run_data(args) -> int:
    if args.data_command == "status":
        print_status()
    elif args.data_command == "download":
        target = games.download_data(args.data_dir, force=args.force)
        print(f"ALFWorld data in {target}: export ALFWORLD_DATA={target}")
    elif args.data_command == "generate":
        if not games.uses_generated_games():
            raise ValueError("ALFWORLD_DATA is set, so the real games are used: unset it to generate games")
        made = ensure_games(args.split, args.count, args.seed)
        print(f"{len(made)} games of split {args.split!r} ready under {games.split_dir(args.split)}")
    return 0


def configure_parser(subparsers) -> None:
    parser = subparsers.add_parser("data", help="ALFWorld games: status, download (real data), generate (offline)")
    commands = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    # by hand: no config dataclass, each action's flags are the arguments of its one call (`_run_data`)
    commands.add_parser("status", help="which splits exist under the data root, games per task type")
    download = commands.add_parser("download", help="run alfworld-download (needs internet)")
    download.add_argument(
        "--data-dir", default=None, help="target folder (default: $ALFWORLD_DATA or ~/.cache/alfworld)"
    )
    download.add_argument("--force", action="store_true", help="unpack again over existing files")
    generate = commands.add_parser("generate", help="generate offline games until a split has --count of them")
    generate.add_argument("--split", default="train", choices=list(games.SPLITS))
    generate.add_argument("--count", type=int, default=60, help="games the split should hold")
    generate.add_argument("--seed", type=int, default=0, help="seeds the generated games (default %(default)s)")
    parser.set_defaults(func=_run_data)
