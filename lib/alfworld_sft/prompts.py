"""The text the model reads and writes: one definition shared by collection, training and evaluation.

What a model is trained on is exactly what it sees when it plays, so every stage builds its messages here:

* `SYSTEM_PROMPT` / `THOUGHTS_SYSTEM_PROMPT`: the instruction every conversation starts with, for the two data
  formats (`system_prompt(data_format)`): bare commands, or "Thought: ...\nAction: ..." replies.
* `render_first_turn` / `render_turn`: the user turns (task and observation; optionally the admissible
  commands and the game's memory, as set by `PromptFormat`); `render_user_turns` renders a whole game's, the one
  way collection, play and labelling do it; `parse_turn` reads one back.
* `SearchMemory`: what a game has shown so far (the places not searched yet, where the task's objects were seen),
  read from the observations alone, so that a model whose window has dropped the early turns still knows it.
* `render_reply`: the assistant turn in a data format; `parse_reply` reads one back (a model's reply too):
  its thought and its command, the one place a "Thought: ...\nAction: ..." reply is taken apart.
* `select_window`: the sliding window that fits a long game into `max_seq_len` tokens by dropping the
  oldest middle turns (whole turns, never a cut token), keeping the system prompt and the task.

A conversation is a list of `{"role": ..., "content": ...}` messages: system, then user and assistant in
turn, each assistant message a single game command (or a thought and a command).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from alfworld_sft import observations

SYSTEM_PROMPT = (
    "You are a household robot in a text-based home (ALFWorld). Each turn you read what you observe and "
    "reply with exactly one command that brings you closer to the task, for example 'go to countertop 1', "
    "'open fridge 1', 'take mug 1 from countertop 1', 'move mug 1 to coffeemachine 1', "
    "'heat egg 1 with microwave 1', 'cool apple 1 with fridge 1', 'clean cloth 1 with sinkbasin 1' or "
    "'use desklamp 1'. Reply with the command only."
)

THOUGHTS_SYSTEM_PROMPT = (
    SYSTEM_PROMPT.removesuffix(" Reply with the command only.")
    + " Think before you act. Reply in exactly two lines:\nThought: <one short sentence about what to do next>\n"
    "Action: <one command>"
)
DATA_FORMATS = ("commands", "thoughts")  # what an assistant turn holds: the command, or a thought and the command
ADMISSIBLE_PREFIX = "\nAdmissible commands: "
MEMORY_PREFIX = "\nMemory: "

_WELCOME = re.compile(r"^-= Welcome to TextWorld, ALFRED! =-\s*", re.MULTILINE)
_TASK = re.compile(r"\s*Your task is to: (?P<task>.+?)\s*$", re.DOTALL)
_ACTION = re.compile(r"action\s*:\s*(.+)", re.IGNORECASE)
_THOUGHT = re.compile(r"thought\s*:\s*(.*?)\s*(?:action\s*:|$)", re.IGNORECASE | re.DOTALL)
_THOUGHT_LINE = re.compile(r"\s*thought\s*:", re.IGNORECASE)

Message = dict[str, str]


@dataclass(frozen=True)
class PromptFormat:
    """How user turns are rendered; stored with every record and every adapter so that play matches training."""

    show_admissible_commands: bool = False  # append the engine's admissible commands to every user turn
    show_memory: bool = False  # append the game's memory (SearchMemory) to every user turn after the first (the
    # first too under search_order, or once a trial recalls an earlier one)
    show_holding: bool = False  # the memory also says what the robot holds and where it put the task's objects
    search_order: bool = False  # the memory, from the first turn on, lists the places not searched in search order

    def __post_init__(self) -> None:
        for name in ("show_holding", "search_order"):
            if getattr(self, name) and not self.show_memory:
                raise ValueError(f"{name} changes the game's memory line: it needs show_memory too")

    def as_dict(self) -> dict[str, bool]:
        """As records, training records and evaluation run keys store it. `show_holding` and `search_order` came
        later: each is written only when on, so that what was written before it existed still equals what is
        written today."""
        stored = dataclasses.asdict(self)
        for name in ("show_holding", "search_order"):
            if not stored[name]:
                del stored[name]
        return stored


# The game's memory in every later user turn: on one collection of 1,800 teacher games, trained alike, grounded
# zero_shot won 127/140 eval_in_distribution games with it against 119 without, and search loops fell from 10 to 3
# (one H200, 2026-12-05, tools/gpu_memory_ab.sh; results/README.md).
DEFAULT_PROMPT_FORMAT = PromptFormat(show_memory=True)  # collection's, and so training's and play's


def read_prompt_format(raw: dict) -> PromptFormat:
    """A stored prompt format (a record's or a training record's "prompt_format"); fields added since it was written
    take their defaults, so older records read as what they were."""
    known = {field.name for field in dataclasses.fields(PromptFormat)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"prompt_format has unknown fields {unknown}: known are {sorted(known)}")
    return PromptFormat(**raw)


def split_first_observation(text: str) -> tuple[str, str]:
    """Split ALFWorld's first observation into (task, room description), dropping the welcome banner."""
    text = _WELCOME.sub("", text.strip())
    match = _TASK.search(text)
    if not match:
        raise ValueError(f"no 'Your task is to: ...' line in the first observation: {text[:200]!r}")
    return match.group("task").rstrip("."), text[: match.start()].strip()


def system_prompt(data_format: str = "commands") -> str:
    """The system instruction of a data format."""
    if data_format not in DATA_FORMATS:
        raise ValueError(f"unknown data format {data_format!r}: choose one of {', '.join(DATA_FORMATS)}")
    return THOUGHTS_SYSTEM_PROMPT if data_format == "thoughts" else SYSTEM_PROMPT


def render_reply(command: str, thought: str | None, data_format: str = "commands") -> str:
    """An assistant turn: the bare command, or "Thought: ...\nAction: ..." in the thoughts format."""
    if data_format == "thoughts":
        if not thought:
            raise ValueError(f"the thoughts format needs a thought for the command {command!r}")
        return f"Thought: {thought}\nAction: {command}"
    return command


def parse_reply(text: str) -> tuple[str | None, str]:
    """The inverse of `render_reply`, lenient as a model's reply needs: (the thought or None, the command).

    The command is the text after the last "Action:", else the first non-empty line that is not a "Thought:" line,
    without what models put around it (quotes, backticks, a leading ">", a final period); "" when there is none.
    The thought is the text between "Thought:" and "Action:" (or the end), on one line; None when there is none.
    """
    actions = _ACTION.findall(text)
    if actions:
        command = actions[-1]
    else:
        lines = [line for line in text.splitlines() if line.strip() and not _THOUGHT_LINE.match(line)]
        command = lines[0] if lines else ""
    command = command.strip().strip("`'\"").lstrip(">").strip().rstrip(".").strip()
    match = _THOUGHT.search(text)
    thought = (" ".join(match.group(1).split()) or None) if match else None
    return thought, command


def _with_commands(text: str, admissible_commands: Sequence[str] | None, fmt: PromptFormat) -> str:
    if not fmt.show_admissible_commands:
        return text
    if admissible_commands is None:
        raise ValueError("this prompt format shows admissible commands, but none were given")
    return f"{text}{ADMISSIBLE_PREFIX}{', '.join(admissible_commands)}"


def parse_turn(text: str) -> tuple[str | None, str, list[str] | None]:
    """The inverse of `render_first_turn` / `render_turn`: (task or None, observation, admissible commands or None);
    a memory line is left out (`SearchMemory` renders it again from the observations)."""
    body, _, commands = text.partition(ADMISSIBLE_PREFIX)
    body = body.partition(MEMORY_PREFIX)[0]
    task = None
    if body.startswith("Task: "):
        task, _, body = body[len("Task: ") :].partition(".\nObservation: ")
    else:
        body = body.removeprefix("Observation: ")
    return task, body, commands.split(", ") if commands else None


def render_first_turn(
    task: str,
    observation: str,
    admissible_commands: Sequence[str] | None = None,
    fmt: PromptFormat = PromptFormat(),
    memory: str | None = None,
    *,
    recalled: bool = False,
) -> str:
    """The first user turn: the task and the first observation (and the memory line under `search_order`, the
    first move being a search too, or when the memory `recalled` an earlier trial of the game)."""
    text = f"Task: {task}.\nObservation: {observation}"
    if fmt.search_order or (recalled and fmt.show_memory):
        if memory is None:
            raise ValueError("this prompt format shows the game's memory in the first turn, but none was given")
        text += f"{MEMORY_PREFIX}{memory}"
    return _with_commands(text, admissible_commands, fmt)


def render_turn(
    observation: str,
    admissible_commands: Sequence[str] | None = None,
    fmt: PromptFormat = PromptFormat(),
    memory: str | None = None,
) -> str:
    """A later user turn: what the last command produced (and, in a format that shows it, the game's memory)."""
    text = f"Observation: {observation.strip()}"
    if fmt.show_memory:
        if memory is None:
            raise ValueError("this prompt format shows the game's memory, but none was given")
        text += f"{MEMORY_PREFIX}{memory}"
    return _with_commands(text, admissible_commands, fmt)


def render_user_turns(
    task: str,
    first_observation: str,
    first_admissible: Sequence[str] | None,
    later: Sequence[tuple[str, Sequence[str] | None]],
    fmt: PromptFormat = PromptFormat(),
    recalled: Sequence[str] = (),
) -> list[str]:
    """Every user turn of a game: the first, then one per (observation, admissible commands) that followed a
    command. Collection, play and labelling all render a game through this, so they cannot drift apart.
    `recalled`: what earlier trials of the game showed before they moved anything (`SearchMemory.recall`)."""
    memory = SearchMemory(task, first_observation, holding=fmt.show_holding, ordered=fmt.search_order)
    # A recall that learned nothing (a trial of invalid replies) leaves the first turn as training showed it.
    learned = memory.recall(recalled)
    line = memory.render() if fmt.show_memory else None
    turns = [render_first_turn(task, first_observation, first_admissible, fmt, line, recalled=learned)]
    for observation, admissible in later:
        memory.observe(observation)
        turns.append(render_turn(observation, admissible, fmt, memory.render() if fmt.show_memory else None))
    return turns


class SearchMemory:
    """What a game has shown so far, read from its observations alone (the same at collection and at play):

    * the places of the room (the first observation lists them) whose contents have not been seen yet: a place
      counts as searched once an observation shows what is on or in it (arriving at an open place, or opening it);
    * where each object of the task's kinds was last seen (an object taken is forgotten until it is put down);
    * with `holding` (`PromptFormat.show_holding`): where the robot put objects of the task's kinds down ("placed",
      no longer "seen") and what it holds now;
    * with `ordered` (`PromptFormat.search_order`): the places not searched in the order a search for what the task
      needs next takes (`teacher.rank_for_search`: where ALFRED's priors put the task's object first, the lamp's
      once a look task holds its object; then places that need no opening; then by name), not by name alone.

    A model's window drops the oldest turns of a long game; this line keeps what they showed, so that the search
    goes on where it stopped instead of going round the same places again. The sentences are read by
    `observations`, as the teacher reads them.

        memory = SearchMemory("put a mug in cabinet", first_observation)
        memory.observe("You arrive at countertop 1. On the countertop 1, you see a mug 1.")
        memory.render()  # 'not searched: cabinet 1-4, drawer 1, 2, ...; seen: mug 1 (countertop 1)'
    """

    def __init__(self, task: str, first_observation: str, *, holding: bool = False, ordered: bool = False):
        self.unsearched = list(dict.fromkeys(observations.parse_room(first_observation)))
        words = re.findall(r"[a-z]+", task.lower())
        # "mugs", "knives", "tomatoes": a kind counts as the task's when the task names it, plural or not.
        self.kinds = set().union(*(_singulars(word) for word in words))
        self.seen: dict[str, str] = {}
        self.tracks_hands = holding
        self.placed: dict[str, str] = {}  # the task's objects the robot put down, and where
        self.held: str | None = None
        self.ordered = ordered
        self.target = self.lamp = None
        if ordered:
            from alfworld_sft import teacher

            # Every task sentence names its object before anything else it names ("put a hot mug in sidetable",
            # "look at bowl under the desklamp"); a look task also names the lamp its object is looked at under.
            known = teacher.object_classes() | observations.LAMP_CLASSES  # lamps stand; ALFRED's priors place none
            named = [kind for word in words for kind in sorted(_singulars(word)) if kind in known]
            self.lamp = next((kind for kind in named if kind in observations.LAMP_CLASSES), None)
            self.target = next((kind for kind in named if kind not in observations.LAMP_CLASSES), None)
            self._openable = teacher.openable_classes()

    def observe(self, observation: str) -> None:
        """Take in what a command produced."""
        text = observation.strip()
        view = observations.parse_view(text)
        if view is not None and view.objects is not None:
            if view.receptacle in self.unsearched:
                self.unsearched.remove(view.receptacle)
            for thing in view.objects:
                if observations.class_of(thing) in self.kinds and self.placed.get(thing) != view.receptacle:
                    self.seen[thing] = view.receptacle
        if taken := observations.TAKE.match(text):
            self.seen.pop(taken["o"], None)
            self.placed.pop(taken["o"], None)
            self.held = taken["o"]
        elif put := observations.PUT.match(text):
            self.held = None
            if observations.class_of(put["o"]) in self.kinds:
                (self.placed if self.tracks_hands else self.seen)[put["o"]] = put["r"]
        elif carrying := observations.CARRYING.match(text):
            self.held = next(iter(observations.parse_names(carrying["items"])), None)
        elif text.startswith("You are not carrying anything"):
            self.held = None

    def recall(self, earlier: Sequence[str]) -> bool:
        """Take in the views (what stood on or in a place) of an earlier trial of the same game, observed before
        that trial moved anything (`observed_before_moving`): every trial starts the game over as it was, so they
        still hold. This is the memory a multi-trial agent carries into its next trial (`agents.Episode`). True
        when it learned something (a place's contents, an object of the task's kinds)."""
        before = (len(self.unsearched), dict(self.seen))
        for text in earlier:
            if observations.parse_view(text.strip()) is not None:
                self.observe(text)
        return (len(self.unsearched), self.seen) != before

    def sought(self) -> str | None:
        """The object class a search looks for now: the task's object, the lamp once a look task holds it."""
        if self.lamp is not None and self.held is not None and observations.class_of(self.held) == self.target:
            return self.lamp
        return self.target

    def places_to_search(self) -> list[str]:
        """The places not searched yet, in the order the line lists them."""
        if not self.ordered:
            return self.unsearched
        from alfworld_sft import teacher

        sought = self.sought()
        priors = teacher.receptacle_priors(sought) if sought else frozenset()
        return sorted(self.unsearched, key=lambda place: teacher.rank_for_search(place, priors, self._openable))

    def render(self) -> str:
        seen = ", ".join(f"{thing} ({place})" for thing, place in self.seen.items()) or "none"
        places = compress_places(self.places_to_search(), keep_order=self.ordered)
        line = f"not searched: {places or 'none'}; seen: {seen}"
        if self.tracks_hands:
            placed = ", ".join(f"{thing} ({place})" for thing, place in self.placed.items()) or "none"
            line += f"; placed: {placed}; holding: {self.held or 'nothing'}"
        return line


def observed_before_moving(texts: Iterable[str]) -> list[str]:
    """A trial's observations until it first picks something up: the room as the game starts it, which the next
    trial finds again (a game resets to the same state whatever its seed)."""
    seen = []
    for text in texts:
        if observations.TAKE.match(text.strip()):
            break
        seen.append(text)
    return seen


def _singulars(word: str) -> set[str]:
    """A word of a task and what it names if it is a plural: "knives" -> {"knives", "knive", "knife", ...}."""
    forms = {word}
    if word.endswith("s"):
        forms.add(word[:-1])
    if word.endswith("es"):
        forms.add(word[:-2])
    if word.endswith("ves"):
        forms.add(word[:-3] + "fe")
    return forms


def compress_places(places: Sequence[str], *, keep_order: bool = False) -> str:
    """Places grouped by kind, runs of numbers as ranges: "cabinet 1-4, 7, drawer 2" (a kitchen's thirty-odd places
    cost a third of the tokens so). Kinds by name, or with `keep_order` in the order `places` first names them."""
    numbers: dict[str, list[int]] = {}
    for place in places:
        kind, number = place.rsplit(" ", 1)
        numbers.setdefault(kind, []).append(int(number))
    parts = []
    for kind in numbers if keep_order else sorted(numbers):
        runs: list[list[int]] = []
        for number in sorted(numbers[kind]):
            if runs and number == runs[-1][-1] + 1:
                runs[-1].append(number)
            else:
                runs.append([number])
        spans = ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)
        parts.append(f"{kind} {spans}")
    return ", ".join(parts)


def build_messages(system: str, conversations: Sequence[Message]) -> list[Message]:
    """The full message list of a record or a game in progress."""
    return [{"role": "system", "content": system}, *conversations]


def select_window(
    messages: Sequence[Message],
    count_tokens: Callable[[Sequence[Message]], int],
    max_tokens: int,
    *,
    min_dropped: int = 0,
) -> tuple[list[Message], int]:
    """Fit `messages` into `max_tokens` by dropping the oldest (assistant, user) pairs after the first user turn.

    Keeps the system prompt, the task turn and the most recent turns; returns the window and the number of
    dropped pairs, at least `min_dropped` (a game in progress passes what it dropped last step, so that its
    window only ever moves forward). `count_tokens` renders a message list and counts its tokens (it is called
    O(log n) times). Raises ValueError when even the shortest window (system, task, last turns) does not fit.
    """
    messages = list(messages)
    if len(messages) < 2 or messages[0]["role"] != "system" or messages[1]["role"] != "user":
        raise ValueError("a conversation starts with a system message and then a user message")
    head, middle = messages[:2], messages[2:]
    # The tail must keep its last message and, when that is the model's turn, the user turn before it.
    keep_last = 2 if middle and middle[-1]["role"] == "assistant" else 1
    droppable_pairs = max(0, (len(middle) - keep_last) // 2)

    def window(dropped: int) -> list[Message]:
        return head + middle[2 * dropped :]

    first = min(min_dropped, droppable_pairs)
    if count_tokens(window(first)) <= max_tokens:
        return window(first), first
    low, high = first + 1, droppable_pairs
    if droppable_pairs <= first or count_tokens(window(high)) > max_tokens:
        raise ValueError(
            f"the conversation does not fit in {max_tokens} tokens even with only the task and the last turn: "
            "raise max_seq_len"
        )
    while low < high:
        mid = (low + high) // 2
        if count_tokens(window(mid)) <= max_tokens:
            high = mid
        else:
            low = mid + 1
    return window(low), low
