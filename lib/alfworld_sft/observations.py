"""Reading ALFWorld's observation texts: the one parser that the teacher and the prompt's memory share.

The engine answers every command with one sentence of a few fixed shapes; what an agent can learn from a game
(where it is, what lies on or in a receptacle, what it took, put down, heated, holds) is read here, so that the
teacher's beliefs (`teacher.Teacher`) and the memory line the model reads (`prompts.SearchMemory`) cannot read the
same sentence two ways.

    parse_room("... Looking quickly around you, you see a cabinet 2, a cabinet 1, and a fridge 1.")
    # ('cabinet 2', 'cabinet 1', 'fridge 1')
    parse_view("You arrive at countertop 1. On the countertop 1, you see a mug 1, and a apple 2.")
    # View(receptacle='countertop 1', state='surface', objects=('mug 1', 'apple 2'))
    TAKE.match("You pick up the mug 1 from the countertop 1.")["o"]   # 'mug 1'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LAMP_CLASSES = frozenset({"desklamp", "floorlamp"})  # what a look task's object is looked at under
NAME = r"[a-z]+ \d+"  # an object or a receptacle as the game names it: "cabinet 12", "mug 1"

# Sentences that start an observation (match them with `.match` on the stripped text).
ARRIVE = re.compile(rf"^You arrive at (?P<r>{NAME})\.")
CLOSE = re.compile(rf"^You close the (?P<r>{NAME})\.")
TAKE = re.compile(rf"^You pick up the (?P<o>{NAME}) from the (?P<r>{NAME})\.")
PUT = re.compile(rf"^You move the (?P<o>{NAME}) to the (?P<r>{NAME})\.")
TREAT = re.compile(rf"^You (?P<verb>heat|cool|clean) the (?P<o>{NAME}) using the (?P<r>{NAME})\.")
CARRYING = re.compile(r"^You are carrying: (?P<items>.*)\.$")
EXAMINE_OBJECT = re.compile(rf"^This is a (?P<adjectives>[a-z ]*?) ?(?P<o>{NAME})\.$")
PLAIN_OBJECT = re.compile(rf"^There's nothing special about (?P<o>{NAME})\.$")

# Sentences that end an arrival, an opening or an examination of a receptacle, and the room description.
_OPEN_VIEW = re.compile(rf"The (?P<r>{NAME}) is open\. In it, you see (?P<items>.*?)\.$")
_CLOSED_VIEW = re.compile(rf"The (?P<r>{NAME}) is closed\.$")
_SURFACE_VIEW = re.compile(rf"On the (?P<r>{NAME}), you see (?P<items>.*?)\.$")
_ROOM = re.compile(r"Looking quickly around you, you see (?P<items>.*?)\.(?:\s|$)")


@dataclass(frozen=True)
class View:
    """What one observation shows of one receptacle."""

    receptacle: str
    state: str  # "open", "closed" or "surface" (a receptacle that does not open)
    objects: tuple[str, ...] | None  # None when closed: nothing is seen


def class_of(name: str) -> str:
    """ "mug 2" -> "mug"."""
    return name.rsplit(" ", 1)[0]


def sort_key(name: str) -> tuple[str, int]:
    """Receptacles and objects in reading order: cabinet 2 before cabinet 10."""
    cls, _, number = name.rpartition(" ")
    return (cls, int(number)) if number.isdigit() else (name, 0)


def parse_names(items: str) -> tuple[str, ...]:
    """ "a apple 1, a bread 1, and a cup 2" -> ("apple 1", "bread 1", "cup 2"); "nothing" -> ()."""
    return tuple(re.findall(NAME, items))


def parse_view(text: str) -> View | None:
    """The receptacle description that ends an arrival, an opening or an examination, if the text holds one."""
    text = text.strip()
    if match := _OPEN_VIEW.search(text):
        return View(match["r"], "open", parse_names(match["items"]))
    if match := _CLOSED_VIEW.search(text):
        return View(match["r"], "closed", None)
    if match := _SURFACE_VIEW.search(text):
        return View(match["r"], "surface", parse_names(match["items"]))
    return None


def parse_room(text: str) -> tuple[str, ...]:
    """The receptacles of the first observation ("... you see a cabinet 6, ..., and a toaster 1.")."""
    match = _ROOM.search(text.split("Your task is to", 1)[0])
    return parse_names(match["items"]) if match else ()
