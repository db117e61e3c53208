"""The three records that travel between stages, each with one definition, one reader and one writer.

* The **trajectory record** (one JSON object per line of `trajectories.jsonl`): written by collection and by the
  DAgger and self-imitation rounds, read by formatting. `validate_record` holds the contract's rules (CONTRIBUTING.md,
  "The trajectory record"), `trained_turns` says which assistant turns carry a loss, `render_transcript` shows a
  record as text.
* The **rollout record** (one JSON object per finished game, a line of a game log): made by the rollout loop
  (`make_rollout`), read back by evaluation, reports and DAgger through `read_rollouts` alone; `validate_rollout`
  holds its rules (CONTRIBUTING.md, "The rollout record").
* The **training record** (`training_record.json` beside an adapter, a merged model or a Modelfile): written by
  training, read by merging, export and every evaluation backend, so that a model is always played as it was
  trained. `TrainingRecord` is its typed form; `read_training_record` / `write_training_record` its only reader and
  writer.

    from alfworld_sft import records
    problem = records.validate_record(record)         # None, or what is wrong
    record = records.read_training_record("results/sft_adapter")
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alfworld_sft import files, prompts

# --------------------------------------------------------------------------------------- trajectory record

# Version 2 adds the optional per-assistant-turn lists `trained` (DAgger: the model's own turns are context only)
# and `thoughts` (the expert's reason for each command, for the `thoughts` data format). Version 1 records are
# read as "every turn trained, no thoughts".
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
RECORD_KEYS = (
    "system",
    "conversations",
    "admissible_commands",
    "prompt_format",
    "game_id",
    "gamefile",
    "task_type",
    "task",
    "split",
    "seed",
    "steps",
    "won",
    "format_version",
)
OPTIONAL_TURN_KEYS = ("trained", "thoughts")  # one entry per assistant turn when present


def validate_record(record: Any) -> str | None:
    """What is wrong with a trajectory record (the first problem found), or None when it follows the contract."""
    if not isinstance(record, dict):
        return f"a record is a JSON object, not {type(record).__name__}"
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        return f"keys {missing} are missing"
    for key, kind in (("system", str), ("conversations", list), ("game_id", str), ("prompt_format", dict)):
        if not isinstance(record[key], kind):
            return f"key {key!r} is not a {kind.__name__}"
    if record["format_version"] not in READABLE_VERSIONS:
        return f"format_version {record['format_version']!r} is not one of {READABLE_VERSIONS}: collect it again"
    turns = record["conversations"]
    if not turns:
        return "empty conversation: a record needs at least one user and one assistant turn"
    for index, message in enumerate(turns):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            return f"conversation turn {index} is not a {{'role': ..., 'content': str}} message"
        expected = "user" if index % 2 == 0 else "assistant"
        if message.get("role") != expected:
            return (
                f"conversation turn {index} has role {message.get('role')!r}, expected {expected!r} "
                "(turns alternate user/assistant, starting with user)"
            )
        if expected == "assistant" and not message["content"].strip():
            return f"conversation turn {index} is an empty assistant command"
    if turns[-1]["role"] != "assistant":
        return "the conversation ends with a user turn; the last turn must be an assistant command"
    commands = len(turns) // 2
    if not isinstance(record["admissible_commands"], list) or len(record["admissible_commands"]) != commands:
        return f"one admissible-command list per user turn expected ({commands}), found another count"
    if record["steps"] != commands:
        return f"steps={record['steps']} but the conversation has {commands} commands"
    if not turns[0]["content"].startswith("Task: "):
        return "the first user turn must hold the task ('Task: ...')"
    for key in OPTIONAL_TURN_KEYS:
        if key in record and (not isinstance(record[key], list) or len(record[key]) != commands):
            return f"{key!r} must hold one entry per assistant turn ({commands})"
    if "trained" in record and not any(record["trained"]):
        return "no assistant turn is trained ('trained' is all false): the record teaches nothing"
    return None


def check_record(record: Any) -> None:
    """Raise ValueError naming the record's game and what breaks the contract."""
    problem = validate_record(record)
    if problem:
        game = record.get("game_id", "?") if isinstance(record, dict) else "?"
        raise ValueError(f"record of {game}: {problem}")


def trained_turns(record: Mapping[str, Any]) -> list[bool]:
    """Per assistant turn: does it carry a loss? (Version 1 records: every turn.)"""
    commands = len(record["conversations"]) // 2
    return [bool(flag) for flag in record.get("trained", [True] * commands)]


def assistant_texts(record: Mapping[str, Any], data_format: str) -> list[str]:
    """Each assistant turn as the model writes it in `data_format` (`prompts.render_reply`)."""
    commands = [turn["content"] for turn in record["conversations"][1::2]]
    thoughts = record.get("thoughts") or [None] * len(commands)
    if data_format == "thoughts" and any(thought is None for thought in thoughts):
        raise ValueError(
            f"record of {record.get('game_id', '?')} has no thought for every command: the thoughts format needs "
            "records collected with the course's teacher (alfworld-sft collect)"
        )
    return [prompts.render_reply(command, thought, data_format) for command, thought in zip(commands, thoughts)]


def render_transcript(record: Mapping[str, Any]) -> str:
    """A record as readable text: the task, then each command (with its thought, if any) and what the engine said.
    Commands the model played itself (a DAgger record's untrained turns) are marked."""
    lines = [f"[{record['task_type']}] {record['game_id']}", f"won={record['won']} in {record['steps']} steps", ""]
    thoughts = record.get("thoughts") or [None] * (len(record["conversations"]) // 2)
    trained = trained_turns(record)
    for index, turn in enumerate(record["conversations"]):
        if turn["role"] == "user":
            lines.append(turn["content"])
            continue
        step = index // 2
        if thoughts[step]:
            lines.append(f"  (thought: {thoughts[step]})")
        lines.append(("> " if trained[step] else "> (model, untrained) ") + turn["content"])
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- training record

# ----------------------------------------------------------------------------------------- the rollout record
ROLLOUT_VERSION = 1
# What every rollout record holds, with its type; anything else a game's play adds (mapped, actions, reflections,
# timing, first observation, ...) travels along unchecked.
ROLLOUT_KEYS: dict[str, type | tuple[type, ...]] = {
    "agent": str,
    "game_id": str,
    "task_type": str,
    "gamefile": str,
    "won": bool,
    "steps": int,
    "trials": int,
    "invalid_replies": int,
    "tokens_generated": int,
    "wall_s": (int, float),
    "transcript": list,
}


def make_rollout(agent: str, gamefile: str, game_id: str, played: Mapping[str, Any]) -> dict[str, Any]:
    """The rollout record of one finished game: who played which game, then what the play produced."""
    from alfworld_sft import games

    record = {
        "rollout_version": ROLLOUT_VERSION,
        "agent": agent,
        "game_id": game_id,
        "task_type": games.read_task_type(gamefile),
        "gamefile": str(gamefile),
        **played,
    }
    problem = validate_rollout(record)
    if problem:
        raise ValueError(f"a rollout of {game_id} by {agent} is not a rollout record: {problem}")
    return record


def validate_rollout(record: Any) -> str | None:
    """None when `record` is a rollout record, else what is wrong with it."""
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [key for key in ROLLOUT_KEYS if key not in record]
    if missing:
        return f"keys {missing} are missing"
    wrong = [key for key, kind in ROLLOUT_KEYS.items() if not isinstance(record[key], kind)]
    if wrong:
        return f"keys {wrong} have the wrong type"
    if record.get("rollout_version", ROLLOUT_VERSION) != ROLLOUT_VERSION:
        return f"rollout_version {record['rollout_version']} is not {ROLLOUT_VERSION}: play it again with this course"
    if not record["transcript"] or not all(isinstance(trial.get("turns"), list) for trial in record["transcript"]):
        return "its transcript holds no trial with turns"
    return None


def read_rollouts(path: str | os.PathLike[str], key: dict[str, Any]) -> list[dict[str, Any]]:
    """The rollout records of the run `key` in the game log at `path` (the one reader: evaluation, DAgger,
    reports); lines that are not rollout records are set aside as malformed, another run's log is moved aside."""
    return files.read_game_log(Path(path), key, required=ROLLOUT_KEYS)


# ----------------------------------------------------------------------------------------- the training record
TRAINING_RECORD_FILE = "training_record.json"
DATA_FORMATS = prompts.DATA_FORMATS


class TrainingRecordError(ValueError):
    """A training record that cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class TrainingRecord:
    """What training wrote beside an adapter: how to play the model exactly as it was trained."""

    base_model: str  # the model the adapter was trained on (a merge must use the same, unquantized)
    prompt_format: prompts.PromptFormat  # how user turns were rendered
    max_seq_len: int  # the training window; play windows prompts to fit it
    end_of_turn: str | None = None  # the chat template's end-of-turn marker (models.end_of_turn_marker); None: probe
    data_format: str = "commands"  # "commands" (bare commands) or "thoughts" ("Thought: ...\nAction: ...")
    # The system prompt the model was trained under: play, the merge check and the Modelfile use this text, never
    # today's `prompts.py`. None in records older than the field: `prompts.system_prompt(data_format)` stands in.
    system_prompt: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)  # everything else training wrote (config, losses, meta)

    def __post_init__(self) -> None:
        if self.data_format not in DATA_FORMATS:
            raise ValueError(f"data_format must be one of {DATA_FORMATS}, not {self.data_format!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            **self.details,
            "base_model": self.base_model,
            "prompt_format": self.prompt_format.as_dict(),
            "max_seq_len": self.max_seq_len,
            "end_of_turn": self.end_of_turn,
            "data_format": self.data_format,
            "system_prompt": self.system_prompt,
        }

    def system(self) -> str:
        """The system prompt to play this model with: the one it was trained under."""
        return self.system_prompt if self.system_prompt is not None else prompts.system_prompt(self.data_format)

    def system_sha256(self) -> str:
        """What identifies that prompt in a game log's run key (a prompt edited since is another run)."""
        return hashlib.sha256(self.system().encode("utf-8")).hexdigest()[:16]


def parse_training_record(raw: Any, source: str | os.PathLike[str]) -> TrainingRecord:
    """A `TrainingRecord` from its JSON form; `source` names the file in the error."""
    if not isinstance(raw, dict):
        raise TrainingRecordError(f"{source} is not a training record (a JSON object): retrain, or restore the file")
    missing = [key for key in ("base_model", "prompt_format", "max_seq_len") if key not in raw]
    if missing:
        raise TrainingRecordError(
            f"{source} lacks {', '.join(missing)}: it was not written by `alfworld-sft train` (or was cut short); "
            "retrain, or restore the file"
        )
    try:
        typed = {"base_model", "prompt_format", "max_seq_len", "end_of_turn", "data_format", "system_prompt"}
        return TrainingRecord(
            base_model=str(raw["base_model"]),
            prompt_format=prompts.read_prompt_format(raw["prompt_format"]),
            max_seq_len=int(raw["max_seq_len"]),
            end_of_turn=raw.get("end_of_turn"),
            data_format=raw.get("data_format") or "commands",
            system_prompt=raw.get("system_prompt"),
            details={key: value for key, value in raw.items() if key not in typed},
        )
    except (TypeError, ValueError) as error:
        raise TrainingRecordError(f"{source} has an invalid value ({error}): retrain, or restore the file") from None


def read_training_record(folder: str | os.PathLike[str] | None, *, required: bool = True) -> TrainingRecord | None:
    """The training record in `folder`. Absent: FileNotFoundError, or None when not `required` (a base model).
    Unreadable (torn, not JSON, keys missing): `TrainingRecordError` naming the file."""
    if folder is None:
        if required:
            raise FileNotFoundError("no folder given to read a training record from")
        return None
    path = Path(folder).expanduser() / TRAINING_RECORD_FILE
    if not path.exists():
        if required:
            raise FileNotFoundError(
                f"{path} is missing: is {folder} an adapter (or merged model) folder written by `alfworld-sft train`?"
            )
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise TrainingRecordError(f"{path} is not UTF-8 text: retrain, or restore the file") from None
    except ValueError as error:
        raise TrainingRecordError(f"{path} is not valid JSON ({error}): retrain, or restore the file") from None
    return parse_training_record(raw, path)


def write_training_record(folder: str | os.PathLike[str], record: TrainingRecord, *, seed: int | None) -> Path:
    """Write `record` atomically into `folder` (with the run metadata every result carries)."""
    from alfworld_sft.results import write_result

    return write_result(Path(folder) / TRAINING_RECORD_FILE, record.to_json(), seed=seed)


def copy_training_record(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> TrainingRecord | None:
    """Carry `source`'s training record into the folder `target` (a merged model, a GGUF folder), checked first;
    None when `source` has none."""
    import shutil

    record = read_training_record(source, required=False)
    if record is not None:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(source) / TRAINING_RECORD_FILE, Path(target) / TRAINING_RECORD_FILE)
    return record


# ---------------------------------------------------------------------------------------------- the adapter

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # what PEFT saves, in the order it prefers
RETRAIN = "the adapter is damaged (a save cut short?): train it again (notebook 03 or `alfworld-sft train`)"


def check_adapter(folder: Path, flag: str = "--adapter") -> dict[str, Any]:
    """The adapter configuration of a LoRA adapter folder that every stage can load: the folder, a whole
    adapter_config.json and weights whose safetensors header and sizes hold. Otherwise an error that names the
    file and what to do, before any model is loaded."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no adapter at {folder}: run notebook 03 (training) first, which saves it there, "
            f"or pass the adapter folder with {flag}"
        )
    if not (folder / ADAPTER_CONFIG).exists():
        raise FileNotFoundError(
            f"{folder} holds no {ADAPTER_CONFIG}: it is not a LoRA adapter folder. Train one first "
            f"(notebook 03 or `alfworld-sft train`), then pass its folder with {flag}"
        )
    config = files.read_json_object(folder / ADAPTER_CONFIG, RETRAIN, required_keys=("peft_type",))
    weights = next((folder / name for name in ADAPTER_WEIGHTS if (folder / name).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder} holds no adapter weights ({' or '.join(ADAPTER_WEIGHTS)}): {RETRAIN}")
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(weights), framework="pt") as handle:
                handle.keys()
        except Exception as error:  # safetensors raises its own SafetensorError for a torn header or buffer
            raise files.CorruptFileError(f"{weights} is damaged ({error}): {RETRAIN}") from None
    return config
