"""Labelling: how a finished rollout becomes trajectory records, for DAgger and self-imitation (stage 06).

A rollout (a `rollouts.play_rollouts` record, played with the expert following the game: each turn holds what the
model played and what the expert would have played in the state the model saw) becomes records of format version 2
(`records`), their per-turn `trained` flags saying which assistant turns carry a loss (`label_rollout`):

* **DAgger** (Ross, Gordon and Bagnell 2011; ALFWorld's TextDAgger) keeps the model's game with the turns where it
  agreed with the expert trained in place, plus one record per state where it did not: the model's own history as
  untrained context, ending with the expert's command, the only trained turn.
* **Self-imitation** (LM-butlers, Micheli and Fleuret 2021) keeps the won games with their valid turns trained; no
  expert needed. `both` does both (`METHODS`).
* A state where the expert only guesses, or has no command, is not labelled; an invalid reply stays in the history
  as written, answered "Nothing happens.". User turns are rendered as the model saw them (the playing adapter's
  prompt format), so a record shows the model exactly its own context.

`label_rollouts` labels a round's rollouts and sums what was counted (`LABEL_COUNTS`, the summary's `labels`);
`jsonl_text` writes the records as the same bytes on every rerun; `count_trained_tokens` weighs what they train.
For notebook 06: `describe_turns` shows a rollout turn by turn with the rule each state falls under, and
`render_trained_tokens` a record with its trained tokens marked.

    from alfworld_sft import labelling, prompts
    settings = labelling.LabelSettings(method="dagger", prompt_format=prompts.PromptFormat(), round_number=1)
    found, counts = labelling.label_rollouts(rollouts, settings)   # the records, and what was counted
    text = labelling.jsonl_text(found)                              # round_N/labelled.jsonl's bytes
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from alfworld_sft import engine, formatting, models, paths, prompts, records

METHODS = ("dagger", "self_imitation", "both")  # expert labels on the model's states; its won games; both
# What labelling counts (`label_rollout`), in the order summaries list them.
LABEL_COUNTS = ("states", "labelled", "agreed", "disagreed", "guesses", "unlabelled", "cut", "invalid_replies",
                "rollout_records", "label_records", "trained_turns")  # fmt: skip


@dataclass(frozen=True)
class LabelSettings:
    """How one round's rollouts become trajectory records."""

    method: str  # one of METHODS
    prompt_format: prompts.PromptFormat  # how user turns are rendered: the playing adapter's (its training record)
    data_format: str = "commands"  # thoughts: a record needs a thought for every command
    round_number: int = 1  # written into every record (`dagger_round`)
    seed: int = 0  # the seed the games were played with (every record's `seed`)
    expert: str | None = engine.DEFAULT_EXPERT  # who labelled (every label record's `expert`)


def _shown_command(turn: Mapping[str, Any], data_format: str) -> str:
    """The turn as the model's history shows it: the command played, or for an invalid reply what the model wrote
    (the whole reply; in the thoughts format its Action part, the thought being kept apart)."""
    if turn["command"] is not None:
        return turn["command"]
    return prompts.parse_reply(turn["reply"])[1] if data_format == "thoughts" else turn["reply"].strip()


def label_rollout(rollout: Mapping[str, Any], settings: LabelSettings) -> tuple[list[dict[str, Any]], Counter]:
    """One finished rollout (a `rollouts.play_rollouts` record) as trajectory records, and what labelling counted.

    * the **rollout record**: the model's game, each turn `trained` where the model's command equals the expert's
      label (DAgger) or, for a won game, every valid turn (self-imitation); left out when nothing is trained;
    * one **label record** per state where the model's command differs from the expert's (DAgger): the model's
      history up to that state, its turns `trained: false`, ending with the expert's command, trained.

    User turns are rendered as the model saw them (`prompts.render_user_turns` in `settings.prompt_format`); an
    invalid reply stays in the history as written, answered "Nothing happens.".
    States where the expert only guesses are not labelled (`guesses`), nor those without an expert command
    (`unlabelled`). `thoughts` holds the model's own thought for its turns and the expert's for a label, when all
    are known; in the thoughts format a reply without a thought (or a blank one, in any format) cannot be written
    as the model saw it, so the game is cut there (`cut` states).
    """
    trials = rollout["transcript"]
    if len(trials) != 1:
        raise ValueError(f"rollout of {rollout['game_id']} has {len(trials)} trials: label one-trial agents' games")
    turns = trials[0]["turns"]
    fmt, data_format = settings.prompt_format, settings.data_format
    later = [(turn["observation"], turn["admissible"]) for turn in turns[:-1]]
    users = prompts.render_user_turns(
        rollout["task"], rollout["first_observation"], rollout["first_admissible"], later, fmt
    )
    admissible = [list(rollout["first_admissible"])] + [list(turn["admissible"]) for turn in turns[:-1]]
    commands = [_shown_command(turn, data_format) for turn in turns]
    thoughts = [prompts.parse_reply(turn["reply"])[0] for turn in turns]
    shown = len(turns)  # turns the records can show as the model saw them
    for step, (command, thought) in enumerate(zip(commands, thoughts)):
        if not command or (data_format == "thoughts" and thought is None):
            shown = step
            break
    dagger = settings.method in ("dagger", "both")
    imitate = settings.method in ("self_imitation", "both") and bool(rollout["won"]) and shown == len(turns)
    counts = Counter(games=1, won=int(bool(rollout["won"])), states=len(turns), cut=max(0, len(turns) - shown - 1))
    counts["invalid_replies"] = sum(turn["command"] is None for turn in turns)

    def build(trained: list[bool], last: str, last_thought: str | None, won: bool) -> dict[str, Any]:
        """A record of the first len(trained) states; its last assistant turn is `last`."""
        steps = len(trained)
        shown_commands, shown_thoughts = [*commands[: steps - 1], last], [*thoughts[: steps - 1], last_thought]
        conversation = []
        for user, command in zip(users, shown_commands):
            conversation += [{"role": "user", "content": user}, {"role": "assistant", "content": command}]
        record = {
            "system": prompts.SYSTEM_PROMPT,
            "conversations": conversation,
            "admissible_commands": admissible[:steps],
            "prompt_format": fmt.as_dict(),
            **{key: rollout[key] for key in ("game_id", "gamefile", "task_type", "task")},
            "split": "train",
            "seed": settings.seed,
            "steps": steps,
            "won": won,
            "format_version": records.FORMAT_VERSION,
            "trained": trained,
        }
        if all(shown_thoughts):
            record["thoughts"] = shown_thoughts
        return {**record, "dagger_round": settings.round_number}

    trained: list[bool] = []  # the rollout record's flags
    labels: list[dict[str, Any]] = []
    for step, turn in enumerate(turns[: shown + 1]):
        label = turn.get("expert") if dagger else None
        agrees = False
        if dagger and label is None:
            counts["unlabelled"] += 1
        elif label is not None and label["guess"]:
            counts["guesses"] += 1
        elif label is not None:
            counts["labelled"] += 1
            agrees = label["command"] == turn["command"]
            counts["agreed" if agrees else "disagreed"] += 1
            if not agrees:
                if data_format == "thoughts" and not label["thought"]:
                    raise ValueError(
                        f"the thoughts format needs the expert's thought for every label, and expert "
                        f"{settings.expert!r} gave none ({rollout['game_id']}, step {step}): use the commands format, "
                        "or label with an expert that explains its commands (the course's teacher)"
                    )
                record = build([*[False] * step, True], label["command"], label["thought"], won=False)
                labels.append({**record, "dagger_kind": "label", "label_step": step, "expert": settings.expert})
        if step < shown:
            trained.append(turn["command"] is not None and (agrees or imitate))
    found = []
    if any(trained):
        won = bool(rollout["won"]) and shown == len(turns)
        found.append({**build(trained, commands[shown - 1], thoughts[shown - 1], won), "dagger_kind": "rollout"})
    found += labels
    counts["rollout_records"] = len(found) - len(labels)
    counts["label_records"] = len(labels)
    counts["trained_turns"] = sum(sum(record["trained"]) for record in found)
    for record in found:
        records.check_record(record)
    return found, counts


def label_rollouts(
    rollouts: Sequence[Mapping[str, Any]], settings: LabelSettings, *, progress: bool = False
) -> tuple[list[dict[str, Any]], Counter]:
    """Every rollout's records (in the rollouts' order) and the summed counts."""
    from tqdm.auto import tqdm

    found: list[dict[str, Any]] = []
    counts: Counter = Counter()
    for rollout in tqdm(rollouts, desc=f"label round {settings.round_number}", unit="game", disable=not progress):
        labelled, counted = label_rollout(rollout, settings)
        found += labelled
        counts.update(counted)
    return found, counts


def jsonl_text(found: Sequence[Mapping[str, Any]]) -> str:
    """Records as JSONL text, serialized as `files.append_jsonl` writes them (a rerun gives the same bytes)."""
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in found)


def count_trained_tokens(found: Sequence[Mapping[str, Any]], tokenizer: Any, data_format: str) -> int:
    """Tokens of the records' trained assistant turns (without the chat template around them): what a round's
    labels add to the loss (its summary's `trained_tokens_added`)."""
    total = 0
    for record in found:
        for text, trained in zip(records.assistant_texts(record, data_format), records.trained_turns(record)):
            total += len(tokenizer(text, add_special_tokens=False)["input_ids"]) if trained else 0
    return total


# -------------------------------------------------------------------------------------- the notebook's view


def describe_turns(rollout: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A rollout turn by turn: what the model wrote and played, what the expert would have played, and which rule
    of `label_rollout` DAgger applies to that state."""
    rows = []
    for step, turn in enumerate(rollout["transcript"][0]["turns"]):
        label = turn.get("expert")
        if label is None:
            verdict = "no expert command: not labelled"
        elif label["guess"]:
            verdict = "the expert guesses: not labelled"
        elif label["command"] == turn["command"]:
            verdict = "agrees: trained in place"
        else:
            verdict = "differs: the expert's command is the label"
        rows.append(
            {
                "step": step,
                "model wrote": turn["reply"],
                "played": turn["command"] or "(invalid)",
                "expert": label["command"] if label else None,
                "DAgger": verdict,
                "observation": turn["observation"][:80],
            }
        )
    return rows


def render_trained_tokens(
    record: Mapping[str, Any], adapter: str | os.PathLike[str], data_format: str | None = None
) -> str:
    """HTML of the record as the model trains on it (`formatting.build_example` with the tokenizer and window of
    `adapter`'s training record; `data_format`, None: the adapter's): loss on the trained turns only."""
    trained = records.read_training_record(paths.resolve_repo_path(adapter))
    tokenizer = models.load_tokenizer(trained.base_model)
    data_format = data_format or trained.data_format
    example = formatting.build_example(dict(record), tokenizer, trained.max_seq_len, data_format=data_format)
    if example is None:
        raise ValueError(f"no trained turn of {record['game_id']} fits in {trained.max_seq_len} tokens")
    return formatting.render_trained_html(example, tokenizer)
