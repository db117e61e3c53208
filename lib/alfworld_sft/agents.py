"""The five evaluation agents and the mapping from a model's reply to a game command.

Each agent is a small class over `Agent` that says which prompts it sends; `Episode` plays one game with one
agent as a little state machine (plan -> act ... -> reflect -> next trial), so that the rollout loop
(`alfworld_sft.rollouts`) can keep many games in flight and answer their requests together. An agent knows the
model only through its `PromptCodec` (training record and tokenizer): a fine-tuned model is prompted exactly as it
was trained (prompt format, window, and data format: bare commands, or "Thought: ...\nAction: ..." replies).

* `zero_shot`: the system instruction and the game so far as chat turns (the shared user-turn text of
  `prompts`), windowed to the recent history. A fine-tuned model gets exactly its training format.
* `few_shot`: the same, with three expert demonstrations from TRAINING games in the system message.
* `react`: every reply is "Thought: ...\\nAction: ..."; the thought stays in the history as a scratchpad.
* `reflexion`: ReAct; after a failed trial the model writes a short self-critique, carried into the next
  trial (up to 3 trials per game).
* `hierarchical`: a planner writes a numbered subgoal list, an executor follows it; after a failed trial the
  critique targets the plan, and the next trial's planner reads it.

A multi-trial agent (reflexion, hierarchical) also carries what its failed trials saw into the next: for a model
whose prompt format shows the game's memory line, the places an earlier trial searched and where it saw the task's
objects, before it moved anything, are in that line from the next trial's first turn on (`Trial.recalled`).

Reply -> command (`map_action`), the documented rule:
1. exact: the reply's command (`prompts.parse_reply`: after the last "Action:", else the first line that is no
   thought; without ">", quotes, a final period) is admissible;
2. normalized: equal after lower-casing, collapsing spaces, dropping punctuation and reading the old
   "put X in/on Y" syntax as "move X to Y";
3. closest: among admissible commands with the same numbers in the same order (so "drawer 3" never
   becomes "drawer 2"), the one with the highest `difflib` similarity ratio, if that ratio is >= 0.8;
4. otherwise the reply is invalid: the game is told "Nothing happens." (what the engine says to a command it
   does not understand) and the turn counts as a step.

With `actions="constrained"` the reply's command is chosen among the engine's admissible commands: a local model
scores every admissible command whole and plays the one it finds most likely (`decoding.SlotDecoder`, one forward
over the trie of the tokenized commands); a served model is held to them token by token by a grammar
(`served.choice_grammar`). For a thinking agent only the `Action:` line is constrained, the thought stays free. Every
command is then exact.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from alfworld_sft import prompts
from alfworld_sft.backends import PromptCodec, Reply, Request
from alfworld_sft.prompts import Message, PromptFormat

NOTHING_HAPPENS = "Nothing happens."
CLOSEST_MIN_RATIO = 0.8
# A base model (no training record) sees the admissible commands: it cannot guess ALFWorld's command grammar.
BASE_PROMPT_FORMAT = PromptFormat(show_admissible_commands=True)
BASE_WINDOW_TOKENS = 768  # prompt budget for a base model: system prompt, task, the last turn or two (CPU cost)

ACTIONS = ("free", "constrained")  # how a reply becomes a command: mapped afterwards, or chosen while decoding
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


def normalize_command(text: str) -> str:
    text = text.lower().replace("in/on", "to")
    text = re.sub(r"[^a-z0-9 ]+", " ", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"^put (.+?) (?:in|on|into|onto|to) ", r"move \1 to ", text)
    return text


def map_action(reply: str, admissible_commands: Sequence[str]) -> MappedAction:
    """Map a model reply to an admissible command by the rule in the module docstring."""
    _, command = prompts.parse_reply(reply)
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
    """One step of a trial: what the model said, what was played and what the game answered, with what the
    expert following the game would have played in the state the model saw (DAgger's label)."""

    reply: str
    command: str | None
    how: str
    observation: str
    admissible_commands: tuple[str, ...]
    expert_action: str | None = None
    expert_thought: str | None = None
    expert_guess: bool = False


@dataclass
class Trial:
    task: str
    first_observation: str
    first_admissible: tuple[str, ...]
    plan: str = ""
    turns: list[Turn] = field(default_factory=list)
    won: bool = False
    dropped_pairs: int = 0  # oldest (reply, observation) pairs the prompt window has left behind
    recalled: tuple[str, ...] = ()  # what earlier trials saw before they moved anything (the game's memory reads it)


class Agent:
    """How one kind of agent prompts the model. Subclasses set the class attributes and override prompts."""

    name: ClassVar[str]
    description: ClassVar[str]
    max_new_tokens: ClassVar[int] = 24  # a command is a handful of tokens
    trials: ClassVar[int] = 1
    plans: ClassVar[bool] = False
    writes_thoughts: ClassVar[bool] = False  # replies "Thought: ...\nAction: ..." whatever the model was trained on

    def __init__(
        self,
        codec: PromptCodec,
        *,
        window_tokens: int | None = None,
        demonstrations: Sequence[Demonstration] = (),
        actions: str = "free",
        temperature: float = 0.0,
    ):
        if actions not in ACTIONS:
            raise ValueError(f"actions must be one of {', '.join(ACTIONS)}, not {actions!r}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.codec = codec
        record = codec.training_record
        self.fmt = record.prompt_format if record else BASE_PROMPT_FORMAT
        self.thinks = self.writes_thoughts or codec.data_format == "thoughts"
        # Grounded commands start after the thought, at "Action:", for a model that writes one. A model fine-tuned
        # on bare commands answers react and reflexion with a bare command too: grounded after the marker, that
        # command would pass for a thought and the forced "Action:" pick the step after it (react won 0 of 140 so).
        replies_bare = record is not None and codec.data_format == "commands"
        self.choice_after = "Action:" if self.thinks and not replies_bare else None
        if self.thinks and self.max_new_tokens < ReactAgent.max_new_tokens:
            self.max_new_tokens = ReactAgent.max_new_tokens  # a thought needs room before its command
        data_format = "thoughts" if self.thinks else "commands"
        # A fine-tuned model plays under the system prompt it was trained with (its record), not today's prompts.py.
        trained_under = record is not None and record.data_format == data_format
        self.system_prompt = record.system() if trained_under else prompts.system_prompt(data_format)
        if window_tokens is None:
            window_tokens = record.max_seq_len - self.max_new_tokens if record else BASE_WINDOW_TOKENS
        if window_tokens < 64:
            raise ValueError(f"window_tokens must leave room for a prompt (at least 64), got {window_tokens}")
        self.window_tokens = window_tokens
        self.demonstrations = tuple(demonstrations)
        self.actions, self.temperature = actions, temperature

    # --- prompts -------------------------------------------------------------------------------------------
    def system_message(self, trial: Trial, reflections: Sequence[str]) -> str:
        return self.system_prompt

    def assistant_text(self, turn: Turn) -> str:
        """What the history shows as the model's turn: its whole reply when it thinks, else the command played (its
        raw reply when invalid)."""
        return turn.reply if self.thinks else turn.command or turn.reply

    def act_messages(self, trial: Trial, reflections: Sequence[str]) -> list[Message]:
        later = [(turn.observation, turn.admissible_commands) for turn in trial.turns]
        users = prompts.render_user_turns(
            trial.task, trial.first_observation, trial.first_admissible, later, self.fmt, trial.recalled
        )
        conversation: list[Message] = [{"role": "user", "content": users[0]}]
        for turn, user in zip(trial.turns, users[1:]):
            conversation.append({"role": "assistant", "content": self.assistant_text(turn)})
            conversation.append({"role": "user", "content": user})
        messages = prompts.build_messages(self.system_message(trial, reflections), conversation)
        try:
            window, dropped = prompts.select_window(
                messages, self.codec.count_tokens, self.window_tokens, min_dropped=trial.dropped_pairs
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
                    messages, self.codec.count_tokens, self.window_tokens * 3 // 4, min_dropped=dropped
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

    def __init__(self, codec: PromptCodec, **kwargs: Any):
        super().__init__(codec, **kwargs)
        if len(self.demonstrations) < 1:
            raise ValueError("the few_shot agent needs demonstrations: see evaluation.load_demonstrations")
        # The demonstrations come on top of the game's own window.
        self.window_tokens += codec.count_tokens([{"role": "system", "content": self._demo_block()}])

    def _demo_block(self) -> str:
        demos = "\n\n".join(f"Example {i}:\n{d.text}" for i, d in enumerate(self.demonstrations, 1))
        return f"{FEW_SHOT_HEADER}\n\n{demos}"

    def system_message(self, trial: Trial, reflections: Sequence[str]) -> str:
        return f"{self.system_prompt}\n\n{self._demo_block()}"


class ReactAgent(Agent):
    name = "react"
    description = "each reply is a Thought line and an Action line; thoughts stay in the history"
    max_new_tokens = 56  # a short thought plus the command
    writes_thoughts = True


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


def build_agent(name: str, codec: PromptCodec, **kwargs: Any) -> Agent:
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}: choose from {', '.join(AGENTS)}")
    return AGENTS[name](codec, **kwargs)


def session_of(agent: str, game_id: str) -> str:
    """The conversation a game's requests continue: one per agent and game, so that two agents playing the same
    game in one batch never share a cached prefix."""
    return f"{agent}/{game_id}"


class Episode:
    """One game played by one agent, step by step: `request()` says what to generate, `advance(reply)` plays it.

    Each trial resets the game with its own seed (`engine.expert_seed` of the run's seed and the game, and the
    trial number); sampled replies are seeded by game, trial and step. So a game plays the same whichever other
    games share the batch or the process. With an `expert` following the game, every turn also records what the
    expert would have played in the state the model saw.
    """

    def __init__(
        self, agent: Agent, gamefile: str | Path, *, game_id: str, max_steps: int, seed: int, expert: str | None = None
    ):
        from alfworld_sft.engine import AlfworldGame

        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        started = time.perf_counter()
        self.agent, self.game_id, self.max_steps, self.seed = agent, game_id, max_steps, seed
        self.game = AlfworldGame(gamefile, expert=expert)
        self.trials: list[Trial] = []
        self.reflections: list[str] = []
        self.counts = {"exact": 0, "normalized": 0, "closest": 0, "invalid": 0}
        self.tokens = 0
        self.finished = False
        self._start_trial()
        self.seconds = time.perf_counter() - started  # loading and resetting the engine is part of the cost

    def _start_trial(self) -> None:
        from alfworld_sft.engine import expert_seed

        # The first trial is seeded as the collection plays the game (a generated game's walkthrough replays).
        seed = expert_seed(self.seed, self.game_id)
        self.state = self.game.reset(seed=f"{seed}:{len(self.trials)}" if self.trials else seed)
        recalled = tuple(
            text for trial in self.trials for text in prompts.observed_before_moving(t.observation for t in trial.turns)
        )
        state = self.state
        self.trials.append(Trial(state.task, state.observation, state.admissible_commands, recalled=recalled))
        self.phase = "plan" if self.agent.plans else "act"

    @property
    def trial(self) -> Trial:
        return self.trials[-1]

    def request(self) -> Request:
        agent = self.agent
        if self.phase == "plan":
            messages, budget = agent.plan_messages(self.trial, self.reflections), agent.plan_tokens
        elif self.phase == "reflect":
            messages, budget = agent.reflect_messages(self.trial, self.reflections), REFLECT_TOKENS
        else:
            messages, budget = agent.act_messages(self.trial, self.reflections), agent.max_new_tokens
        acting = self.phase == "act"
        ids = agent.codec.encode(messages)
        step = sum(len(t.turns) for t in self.trials)
        return Request(
            tuple(messages),
            budget,
            expert_action=self.state.expert_action if acting else None,
            session=session_of(agent.name, self.game_id),
            prompt_ids=tuple(ids) if ids is not None else None,
            choices=self.state.admissible_commands if acting and agent.actions == "constrained" else None,
            choice_after=agent.choice_after if acting else None,
            temperature=agent.temperature,
            sample_seed=_seed_of(f"{self.seed}:{self.game_id}:{len(self.trials)}:{self.phase}:{step}"),
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
        before = self.state
        if mapped.command is None:
            observation, admissible = NOTHING_HAPPENS, self.state.admissible_commands
        else:
            self.state = self.game.step(mapped.command)
            observation, admissible = self.state.observation, self.state.admissible_commands
        self.trial.turns.append(
            Turn(
                text,
                mapped.command,
                mapped.how,
                observation,
                admissible,
                expert_action=before.expert_action,
                expert_thought=before.expert_thought,
                expert_guess=before.expert_guess,
            )
        )
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

    def close(self) -> None:
        """Free the engine of a game given up before its end."""
        if not self.finished:
            self.game.close()

    def record(self) -> dict[str, Any]:
        """The finished game as a game log line (without the agent and game keys the runner adds)."""

        def turn(u: Turn) -> dict[str, Any]:
            entry = {
                "reply": u.reply,
                "command": u.command,
                "how": u.how,
                "observation": u.observation,
                "admissible": list(u.admissible_commands),  # what the next user turn lists (DAgger's records)
            }
            if u.expert_action is not None:
                entry["expert"] = {"command": u.expert_action, "thought": u.expert_thought, "guess": u.expert_guess}
            return entry

        return {
            "won": self.trial.won,
            "steps": sum(len(t.turns) for t in self.trials),
            "trials": len(self.trials),
            "invalid_replies": self.counts["invalid"],
            "mapped": dict(self.counts),
            "tokens_generated": self.tokens,
            "wall_s": round(self.seconds, 3),
            "task": self.trial.task,
            "first_observation": self.trials[0].first_observation,
            "first_admissible": list(self.trials[0].first_admissible),
            "reflections": list(self.reflections),
            "transcript": [{"plan": t.plan, "won": t.won, "turns": [turn(u) for u in t.turns]} for t in self.trials],
            "actions": [u.command or f"(invalid) {u.reply}" for t in self.trials for u in t.turns],
        }


def _seed_of(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


def render_demonstration(record: dict[str, Any], *, max_observation_chars: int = 160) -> Demonstration:
    """A trajectory record (records.py) as a compact transcript: admissible lists dropped (`prompts.parse_turn`),
    long observations shortened."""
    lines = [f"Task: {record.get('task', '')}."]
    for message in record["conversations"]:
        if message["role"] == "assistant":
            lines.append(f"> {message['content']}")
            continue
        _, observation, _ = prompts.parse_turn(message["content"])
        if len(observation) > max_observation_chars:
            observation = observation[:max_observation_chars].rsplit(" ", 1)[0] + " ..."
        lines.append(f"Observation: {observation}")
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
