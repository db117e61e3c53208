"""The five evaluation agents and the mapping from a model's reply to a game command.

Each agent is a small class over `Agent` that says which prompts it sends; `Episode` plays one game with one
agent as a little state machine (plan -> act ... -> reflect -> next trial), so that the evaluation loop can
step many games at once and answer all their requests with one batched generate call.

* `zero_shot`: the system instruction and the game so far as chat turns (the shared user-turn text of
  `prompts`), windowed to the recent history. A fine-tuned model gets exactly its training format.
* `few_shot`: the same, with three expert demonstrations from TRAINING games in the system message.
* `react`: every reply is "Thought: ...\\nAction: ..."; the thought stays in the history as a scratchpad.
* `reflexion`: ReAct; after a failed trial the model writes a short self-critique, carried into the next
  trial (up to 3 trials per game).
* `hierarchical`: a planner writes a numbered subgoal list, an executor follows it; after a failed trial the
  critique targets the plan, and the next trial's planner reads it.

Reply -> command (`map_action`), the documented rule:
1. exact: the reply's command (first line, without "Action:", ">", quotes, a final period) is admissible;
2. normalized: equal after lower-casing, collapsing spaces, dropping punctuation and reading the old
   "put X in/on Y" syntax as "move X to Y";
3. closest: among admissible commands with the same numbers in the same order (so "drawer 3" never
   becomes "drawer 2"), the one with the highest `difflib` similarity ratio, if that ratio is >= 0.8;
4. otherwise the reply is invalid: the game is told "Nothing happens." (what the engine says to a command it
   does not understand) and the turn counts as a step.
"""

from __future__ import annotations

import contextlib
import difflib
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from alfworld_sft import prompts
from alfworld_sft.backends import Backend, Reply, Request
from alfworld_sft.prompts import Message, PromptFormat

NOTHING_HAPPENS = "Nothing happens."
CLOSEST_MIN_RATIO = 0.8
# A base model (no training record) sees the admissible commands: it cannot guess ALFWorld's command grammar.
BASE_PROMPT_FORMAT = PromptFormat(show_admissible_commands=True)
BASE_WINDOW_TOKENS = 768  # prompt budget for a base model: system prompt, task, the last turn or two (CPU cost)

REACT_SYSTEM_PROMPT = (
    prompts.SYSTEM_PROMPT.removesuffix(" Reply with the command only.")
    + " Think before you act. Reply in exactly two lines:\nThought: <one short sentence about what to do next>\n"
    "Action: <one command>"
)
REFLECT_SYSTEM_PROMPT = (
    "You are reviewing a failed attempt of a household robot in a text-based home (ALFWorld). Say in one or two "
    "short sentences what went wrong and what to do differently on the next attempt."
)
PLANNER_SYSTEM_PROMPT = (
    "You plan for a household robot in a text-based home (ALFWorld). Given the task and the room, write a short "
    "numbered list of subgoals (at most 6), for example:\n1. find the mug (check countertops, then cabinets)\n"
    "2. take the mug\n3. go to the coffeemachine\n4. move the mug to the coffeemachine"
)
FEW_SHOT_HEADER = "Here are three examples of solved tasks (observations shortened), then your own task."


@dataclass(frozen=True)
class MappedAction:
    command: str | None  # the admissible command, or None when the reply maps to nothing
    how: str  # "exact", "normalized", "closest" or "invalid"


def extract_command(reply: str) -> str:
    """The command part of a reply: the text after the last "Action:" if any, else the first non-empty line."""
    actions = re.findall(r"action\s*:\s*(.+)", reply, flags=re.IGNORECASE)
    if actions:
        text = actions[-1]
    else:
        lines = [
            line for line in reply.splitlines() if line.strip() and not re.match(r"\s*thought\s*:", line, re.IGNORECASE)
        ]
        text = lines[0] if lines else ""
    text = text.strip().strip("`'\"").lstrip(">").strip()
    return text.rstrip(".").strip()


def normalize_command(text: str) -> str:
    text = text.lower().replace("in/on", "to")
    text = re.sub(r"[^a-z0-9 ]+", " ", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"^put (.+?) (?:in|on|into|onto|to) ", r"move \1 to ", text)
    return text


def map_action(reply: str, admissible_commands: Sequence[str]) -> MappedAction:
    """Map a model reply to an admissible command by the rule in the module docstring."""
    command = extract_command(reply)
    if command in admissible_commands:
        return MappedAction(command, "exact")
    wanted = normalize_command(command)
    if not wanted:
        return MappedAction(None, "invalid")
    normalized = {normalize_command(c): c for c in admissible_commands}
    if wanted in normalized:
        return MappedAction(normalized[wanted], "normalized")
    numbers = re.findall(r"\d+", wanted)
    best, best_ratio = None, 0.0
    for norm, original in normalized.items():
        if re.findall(r"\d+", norm) != numbers:
            continue
        ratio = difflib.SequenceMatcher(None, wanted, norm).ratio()
        if ratio > best_ratio:
            best, best_ratio = original, ratio
    if best is not None and best_ratio >= CLOSEST_MIN_RATIO:
        return MappedAction(best, "closest")
    return MappedAction(None, "invalid")


@dataclass(frozen=True)
class Demonstration:
    """One solved training game, as shown to the few-shot agent."""

    game_id: str  # the training game it comes from
    task_type: str
    text: str  # "Task: ...\nObservation: ...\n> command\n..."


@dataclass
class Turn:
    """One step of a trial: what the model said, what was played and what the game answered."""

    reply: str
    command: str | None
    how: str
    observation: str
    admissible_commands: tuple[str, ...]


@dataclass
class Trial:
    task: str
    first_observation: str
    first_admissible: tuple[str, ...]
    plan: str = ""
    turns: list[Turn] = field(default_factory=list)
    won: bool = False
    dropped_pairs: int = 0  # oldest (reply, observation) pairs the prompt window has left behind


class Agent:
    """How one kind of agent prompts the model. Subclasses set the class attributes and override prompts."""

    name: ClassVar[str]
    description: ClassVar[str]
    max_new_tokens: ClassVar[int] = 24  # a command is a handful of tokens
    trials: ClassVar[int] = 1
    plans: ClassVar[bool] = False
    system_prompt: ClassVar[str] = prompts.SYSTEM_PROMPT

    def __init__(
        self,
        backend: Backend,
        *,
        window_tokens: int | None = None,
        demonstrations: Sequence[Demonstration] = (),
    ):
        self.backend = backend
        record = backend.training_record
        self.fmt = PromptFormat(**record.prompt_format) if record else BASE_PROMPT_FORMAT
        if window_tokens is None:
            window_tokens = record.max_seq_len - self.max_new_tokens if record else BASE_WINDOW_TOKENS
        self.window_tokens = window_tokens
        self.demonstrations = tuple(demonstrations)

    # --- prompts -------------------------------------------------------------------------------------------
    def system_message(self, trial: Trial, reflections: Sequence[str]) -> str:
        return self.system_prompt

    def assistant_text(self, turn: Turn) -> str:
        """What the history shows as the model's turn: the command played (its raw reply when invalid)."""
        return turn.command or turn.reply

    def act_messages(self, trial: Trial, reflections: Sequence[str]) -> list[Message]:
        conversation: list[Message] = [
            {
                "role": "user",
                "content": prompts.render_first_turn(
                    trial.task, trial.first_observation, trial.first_admissible, self.fmt
                ),
            }
        ]
        for turn in trial.turns:
            conversation.append({"role": "assistant", "content": self.assistant_text(turn)})
            conversation.append(
                {
                    "role": "user",
                    "content": prompts.render_turn(turn.observation, turn.admissible_commands, self.fmt),
                }
            )
        messages = prompts.build_messages(self.system_message(trial, reflections), conversation)
        try:
            window, dropped = prompts.select_window(
                messages, self.backend.count_tokens, self.window_tokens, min_dropped=trial.dropped_pairs
            )
        except ValueError:
            # One long turn (a room with many receptacles) can overflow the budget: keep the system prompt,
            # the task and the current observation rather than stop the game.
            return messages[:2] + messages[2:][-1:]
        if dropped > trial.dropped_pairs:
            # The window had to move: move it a quarter of the budget further, so that the next steps extend
            # this prompt (a backend reuses a prompt's prefix) instead of shifting it every step.
            with contextlib.suppress(ValueError):
                window, dropped = prompts.select_window(
                    messages, self.backend.count_tokens, self.window_tokens * 3 // 4, min_dropped=dropped
                )
            trial.dropped_pairs = dropped
        return window

    def plan_messages(self, trial: Trial, reflections: Sequence[str]) -> list[Message]:
        raise NotImplementedError(f"{self.name} does not plan")

    def reflect_messages(self, trial: Trial, reflections: Sequence[str]) -> list[Message]:
        recent = trial.turns[-12:]  # the end of a failed trial says most about why it failed
        steps = "\n".join(f"> {t.command or t.reply}\n{t.observation}" for t in recent)
        plan = f"Plan:\n{trial.plan}\n" if trial.plan else ""
        return [
            {"role": "system", "content": REFLECT_SYSTEM_PROMPT},
            {
                "role": "user",
                "content": f"Task: {trial.task}.\n{plan}Last steps of the attempt:\n{steps}\n"
                "The task was not completed. What went wrong, and what should be done "
                "differently next time?",
            },
        ]


class ZeroShotAgent(Agent):
    name = "zero_shot"
    description = "system instruction, the task, the current observation and the recent history as chat turns"


class FewShotAgent(Agent):
    name = "few_shot"
    description = "zero-shot plus three expert demonstrations from training games in the system message"

    def __init__(self, backend: Backend, **kwargs: Any):
        super().__init__(backend, **kwargs)
        if len(self.demonstrations) < 1:
            raise ValueError("the few_shot agent needs demonstrations: see evaluation.load_demonstrations")
        # The demonstrations come on top of the game's own window.
        self.window_tokens += backend.count_tokens([{"role": "system", "content": self._demo_block()}])

    def _demo_block(self) -> str:
        demos = "\n\n".join(f"Example {i}:\n{d.text}" for i, d in enumerate(self.demonstrations, 1))
        return f"{FEW_SHOT_HEADER}\n\n{demos}"

    def system_message(self, trial: Trial, reflections: Sequence[str]) -> str:
        return f"{self.system_prompt}\n\n{self._demo_block()}"


class ReactAgent(Agent):
    name = "react"
    description = "each reply is a Thought line and an Action line; thoughts stay in the history"
    max_new_tokens = 56  # a short thought plus the command
    system_prompt = REACT_SYSTEM_PROMPT

    def assistant_text(self, turn: Turn) -> str:
        return turn.reply


class ReflexionAgent(ReactAgent):
    name = "reflexion"
    description = "ReAct plus a self-critique after each failed trial, carried into the next (up to 3 trials)"
    trials = 3

    def system_message(self, trial: Trial, reflections: Sequence[str]) -> str:
        if not reflections:
            return self.system_prompt
        notes = "\n".join(f"- Attempt {i}: {r}" for i, r in enumerate(reflections, 1))
        return f"{self.system_prompt}\n\nNotes from your earlier failed attempts at this task:\n{notes}"


class HierarchicalAgent(Agent):
    name = "hierarchical"
    description = "a planner writes subgoals, an executor follows them; the critique of a failure targets the plan"
    trials = 3
    plans = True
    max_new_tokens = 24
    plan_tokens = 72

    def plan_messages(self, trial: Trial, reflections: Sequence[str]) -> list[Message]:
        critique = "".join(f"\nCritique of an earlier plan that failed: {r}" for r in reflections)
        return [
            {"role": "system", "content": PLANNER_SYSTEM_PROMPT},
            {
                "role": "user",
                "content": f"Task: {trial.task}.\nRoom: {trial.first_observation}{critique}\n"
                "Write the numbered subgoals.",
            },
        ]

    def system_message(self, trial: Trial, reflections: Sequence[str]) -> str:
        return f"{self.system_prompt}\n\nFollow this plan, one subgoal after the other:\n{trial.plan}"

    def reflect_messages(self, trial: Trial, reflections: Sequence[str]) -> list[Message]:
        messages = super().reflect_messages(trial, reflections)
        messages[1]["content"] += " Criticise the plan: which subgoal was wrong or missing?"
        return messages


AGENTS: dict[str, type[Agent]] = {
    cls.name: cls for cls in (ZeroShotAgent, FewShotAgent, ReactAgent, ReflexionAgent, HierarchicalAgent)
}
REFLECT_TOKENS = 64


def build_agent(name: str, backend: Backend, **kwargs: Any) -> Agent:
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}: choose from {', '.join(AGENTS)}")
    return AGENTS[name](backend, **kwargs)


class Episode:
    """One game played by one agent, step by step: `request()` says what to generate, `advance(reply)` plays it.

    The game is reset with `random.seed(seed)` at each trial (the expert's fallbacks use `random`).
    """

    def __init__(self, agent: Agent, gamefile: str | Path, *, max_steps: int, seed: int, expert: bool = False):
        from alfworld_sft.engine import AlfworldGame

        started = time.perf_counter()
        self.agent, self.max_steps, self.seed = agent, max_steps, seed
        self.game = AlfworldGame(gamefile, expert=expert)
        self.trials: list[Trial] = []
        self.reflections: list[str] = []
        self.counts = {"exact": 0, "normalized": 0, "closest": 0, "invalid": 0}
        self.tokens = 0
        self.finished = False
        self._start_trial()
        self.seconds = time.perf_counter() - started  # loading and resetting the engine is part of the cost

    def _start_trial(self) -> None:
        random.seed(self.seed + len(self.trials))
        self.state = self.game.reset()
        self.trials.append(Trial(self.state.task, self.state.observation, self.state.admissible_commands))
        self.phase = "plan" if self.agent.plans else "act"

    @property
    def trial(self) -> Trial:
        return self.trials[-1]

    def request(self) -> Request:
        agent = self.agent
        if self.phase == "plan":
            return Request(
                tuple(agent.plan_messages(self.trial, self.reflections)), agent.plan_tokens, session=id(self)
            )
        if self.phase == "reflect":
            return Request(
                tuple(agent.reflect_messages(self.trial, self.reflections)), REFLECT_TOKENS, session=id(self)
            )
        return Request(
            tuple(agent.act_messages(self.trial, self.reflections)),
            agent.max_new_tokens,
            expert_action=self.state.expert_action,
            session=id(self),
        )

    def advance(self, reply: Reply) -> None:
        started = time.perf_counter()
        self.tokens += reply.new_tokens
        if self.phase == "plan":
            self.trial.plan = reply.text.strip() or "1. complete the task"
            self.phase = "act"
        elif self.phase == "reflect":
            self.reflections.append(" ".join(reply.text.split()) or "The attempt failed; try other places.")
            self._start_trial()
        else:
            self._act(reply.text)
        self.seconds += reply.seconds + (time.perf_counter() - started)

    def _act(self, text: str) -> None:
        mapped = map_action(text, self.state.admissible_commands)
        self.counts[mapped.how] += 1
        if mapped.command is None:
            observation, admissible = NOTHING_HAPPENS, self.state.admissible_commands
        else:
            self.state = self.game.step(mapped.command)
            observation, admissible = self.state.observation, self.state.admissible_commands
        self.trial.turns.append(Turn(text, mapped.command, mapped.how, observation, admissible))
        if self.state.won:
            self.trial.won = True
            self._finish()
        elif self.state.done or len(self.trial.turns) >= self.max_steps:
            if len(self.trials) < self.agent.trials:
                self.phase = "reflect"
            else:
                self._finish()

    def _finish(self) -> None:
        self.finished = True
        self.game.close()

    def record(self) -> dict[str, Any]:
        """The finished game as a checkpoint line (without the agent and game keys the runner adds)."""
        return {
            "won": self.trial.won,
            "steps": sum(len(t.turns) for t in self.trials),
            "trials": len(self.trials),
            "invalid_replies": self.counts["invalid"],
            "mapped": dict(self.counts),
            "tokens_generated": self.tokens,
            "wall_s": round(self.seconds, 3),
            "task": self.trial.task,
            "reflections": list(self.reflections),
            "transcript": [
                {
                    "plan": t.plan,
                    "won": t.won,
                    "turns": [
                        {"reply": u.reply, "command": u.command, "how": u.how, "observation": u.observation}
                        for u in t.turns
                    ],
                }
                for t in self.trials
            ],
            "actions": [u.command or f"(invalid) {u.reply}" for t in self.trials for u in t.turns],
        }


def render_demonstration(record: dict[str, Any], *, max_observation_chars: int = 160) -> Demonstration:
    """A trajectory record (CONTRIBUTING.md) as a compact transcript: long observations are shortened."""
    conversations = record["conversations"]
    task = record.get("task", "")
    lines = [f"Task: {task}."]
    for message in conversations:
        content = message["content"].split("\nAdmissible commands:")[0]
        if message["role"] == "user":
            content = re.sub(r"^Task: .*?\n", "", content)
            if len(content) > max_observation_chars:
                content = content[:max_observation_chars].rsplit(" ", 1)[0] + " ..."
            lines.append(content)
        else:
            lines.append(f"> {content}")
    return Demonstration(record["game_id"], record.get("task_type", ""), "\n".join(lines))


def describe_agents() -> list[dict[str, Any]]:
    """Name, description, reply budget and trials of every agent (for the notebook)."""
    return [
        {
            "agent": cls.name,
            "description": cls.description,
            "max_new_tokens": cls.max_new_tokens,
            "trials": cls.trials,
            "plans": cls.plans,
        }
        for cls in AGENTS.values()
    ]
