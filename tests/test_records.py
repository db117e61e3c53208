"""The records that travel between stages (`alfworld_sft.records`): a trajectory record the expert really played,
checked against the contract and broken in every way the contract names; the training record written, read,
copied, and refused when torn or wrong; an adapter folder checked before any model loads."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from alfworld_sft import collect, files, prompts, records
from conftest import games_of_type


@pytest.fixture(scope="module")
def played(train_games) -> dict:
    """A trajectory record as collection writes it: the teacher plays a real game (with its thoughts)."""
    gamefile = games_of_type(train_games, "pick_and_place_simple")[0]
    outcome = collect.play_game(gamefile, split="train", seed=0)
    assert outcome.won and outcome.record is not None
    return outcome.record


@pytest.fixture
def record(played) -> dict:
    """A fresh copy to break."""
    return copy.deepcopy(played)


# ---------------------------------------------------------------------------------------- trajectory record


def test_a_played_record_follows_the_contract(record):
    assert records.validate_record(record) is None
    records.check_record(record)
    commands = [turn["content"] for turn in record["conversations"][1::2]]
    assert record["format_version"] == records.FORMAT_VERSION and len(commands) == record["steps"] > 1
    assert list(record)[: len(records.RECORD_KEYS)] == list(records.RECORD_KEYS)
    assert records.trained_turns(record) == [True] * len(commands)  # an expert record: every turn trained
    assert records.assistant_texts(record, "commands") == commands
    thoughts = records.assistant_texts(record, "thoughts")
    assert thoughts == [f"Thought: {t}\nAction: {c}" for t, c in zip(record["thoughts"], commands, strict=True)]


def test_the_transcript_shows_the_task_every_thought_and_command(record):
    text = records.render_transcript(record)
    lines = text.splitlines()
    assert lines[:2] == [f"[{record['task_type']}] {record['game_id']}", f"won=True in {record['steps']} steps"]
    assert record["conversations"][0]["content"] in text
    commands = [turn["content"] for turn in record["conversations"][1::2]]
    assert [line[2:] for line in lines if line.startswith("> ")] == commands
    assert [line for line in lines if line.startswith("  (thought: ")] == [
        f"  (thought: {t})" for t in record["thoughts"]
    ]


def test_a_dagger_record_trains_only_the_experts_turns(record):
    """The model's own commands are context (untrained), shown as such; a record that trains nothing is refused."""
    steps = record["steps"]
    record["trained"] = [index % 2 == 0 for index in range(steps)]
    assert records.validate_record(record) is None
    assert records.trained_turns(record) == record["trained"]
    marked = [line for line in records.render_transcript(record).splitlines() if line.startswith(">")]
    assert [line.startswith("> (model, untrained) ") for line in marked] == [not flag for flag in record["trained"]]
    record["trained"] = [False] * steps
    assert (
        records.validate_record(record)
        == "no assistant turn is trained ('trained' is all false): the record teaches nothing"
    )


def test_a_version_1_record_is_read_as_every_turn_trained_without_thoughts(record):
    for key in records.OPTIONAL_TURN_KEYS:
        record.pop(key, None)
    record["format_version"] = 1
    assert records.validate_record(record) is None
    assert records.trained_turns(record) == [True] * record["steps"]
    assert "(thought: " not in records.render_transcript(record)
    with pytest.raises(ValueError, match=f"record of {record['game_id']} has no thought for every command"):
        records.assistant_texts(record, "thoughts")


def _set(key: str, value) -> Callable[[dict], None]:
    return lambda record: record.__setitem__(key, value)


def _turn(index: int, value) -> Callable[[dict], None]:
    return lambda record: record["conversations"].__setitem__(index, value)


# Each way to break the contract, and what validate_record says about it (the first problem found).
BROKEN = {
    "missing key": (lambda r: r.pop("game_id"), "keys ['game_id'] are missing"),
    "system not text": (_set("system", None), "key 'system' is not a str"),
    "conversations not a list": (_set("conversations", "look"), "key 'conversations' is not a list"),
    "prompt_format not an object": (_set("prompt_format", []), "key 'prompt_format' is not a dict"),
    "unknown version": (_set("format_version", 3), "format_version 3 is not one of (1, 2): collect it again"),
    "empty conversation": (_set("conversations", []), "empty conversation: a record needs at least one user"),
    "turn not a message": (_turn(0, "Task: x"), "conversation turn 0 is not a {'role': ..., 'content': str} message"),
    "content not text": (_turn(1, {"role": "assistant", "content": 3}), "conversation turn 1 is not a {'role'"),
    "roles out of order": (
        _turn(0, {"role": "assistant", "content": "look"}),
        "conversation turn 0 has role 'assistant', expected 'user' (turns alternate user/assistant",
    ),
    "empty command": (_turn(1, {"role": "assistant", "content": "  "}), "conversation turn 1 is an empty assistant"),
    "ends with a user turn": (
        lambda r: r["conversations"].pop(),
        "the conversation ends with a user turn; the last turn must be an assistant command",
    ),
    "admissible lists miscounted": (
        lambda r: r["admissible_commands"].pop(),
        "one admissible-command list per user turn expected",
    ),
    "admissible lists not a list": (_set("admissible_commands", {}), "one admissible-command list per user turn"),
    "steps miscounted": (_set("steps", 99), "steps=99 but the conversation has"),
    "no task turn": (
        lambda r: r["conversations"][0].__setitem__("content", "Observation: a room"),
        "the first user turn must hold the task ('Task: ...')",
    ),
    "thoughts miscounted": (lambda r: r["thoughts"].pop(), "'thoughts' must hold one entry per assistant turn"),
    "trained not a list": (_set("trained", True), "'trained' must hold one entry per assistant turn"),
}


@pytest.mark.parametrize("breakage", list(BROKEN))
def test_each_broken_record_is_named_with_its_problem(record, breakage):
    breaks, message = BROKEN[breakage]
    breaks(record)
    problem = records.validate_record(record)
    assert problem is not None and problem.startswith(message), problem
    with pytest.raises(ValueError) as refused:
        records.check_record(record)
    assert str(refused.value) == f"record of {record.get('game_id', '?')}: {problem}"


def test_what_is_no_record_at_all_is_named():
    assert records.validate_record([]) == "a record is a JSON object, not list"
    assert records.validate_record("{}") == "a record is a JSON object, not str"
    with pytest.raises(ValueError, match=r"^record of \?: a record is a JSON object, not NoneType$"):
        records.check_record(None)


# ------------------------------------------------------------------------------------------ training record

RECORD = records.TrainingRecord(
    base_model="smollm2-135m-instruct",
    prompt_format=prompts.PromptFormat(show_admissible_commands=True),
    max_seq_len=1024,
    end_of_turn="<|im_end|>",
    data_format="thoughts",
    details={"config": {"lr": 2e-4}, "global_step": 12},
)


def without_meta(record: records.TrainingRecord) -> records.TrainingRecord:
    return dataclasses.replace(record, details={k: v for k, v in record.details.items() if k != "meta"})


def test_a_training_record_is_read_back_as_it_was_written(tmp_path):
    path = records.write_training_record(tmp_path / "adapter", RECORD, seed=3)
    assert path == tmp_path / "adapter" / records.TRAINING_RECORD_FILE
    assert [p.name for p in path.parent.iterdir()] == [records.TRAINING_RECORD_FILE]  # no temporary file left
    read = records.read_training_record(tmp_path / "adapter")
    assert without_meta(read) == RECORD
    assert read.details["meta"]["seed"] == 3  # the run metadata every result carries
    assert json.loads(path.read_text())["prompt_format"] == {"show_admissible_commands": True, "show_memory": False}
    assert records.parse_training_record(read.to_json(), "in memory") == read


def test_an_older_training_record_reads_with_the_defaults_and_a_broken_one_is_named(tmp_path):
    assert records.read_training_record(tmp_path, required=False) is None
    (tmp_path / "training_record.json").write_text(
        json.dumps(
            {
                "base_model": "smollm2-135m-instruct",
                "prompt_format": {"show_admissible_commands": True},
                "max_seq_len": 1024,
            }
        )
    )
    record = records.read_training_record(tmp_path)
    assert record.max_seq_len == 1024 and record.prompt_format.show_admissible_commands
    assert record.data_format == "commands" and record.end_of_turn is None  # an older record: defaults
    (tmp_path / "training_record.json").write_text("{}")
    with pytest.raises(records.TrainingRecordError, match="training_record.json lacks base_model"):
        records.read_training_record(tmp_path)
    (tmp_path / "training_record.json").write_text('{"base_model": "x", "prompt')
    with pytest.raises(records.TrainingRecordError, match="training_record.json is not valid JSON"):
        records.read_training_record(tmp_path)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, r"is not valid JSON \(.*\): retrain, or restore the file"),  # the first half of a real record
        (b"\xff\xfe{}", "is not UTF-8 text: retrain"),
        (b"[1, 2]", "is not a training record \\(a JSON object\\): retrain"),
        (b'{"prompt_format": {}}', "lacks base_model, max_seq_len: it was not written by `alfworld-sft train`"),
        (b'{"base_model": "m", "prompt_format": {}, "max_seq_len": "long"}', r"has an invalid value \(invalid literal"),
        (b'{"base_model": "m", "prompt_format": {"colour": 1}, "max_seq_len": 8}', r"has an invalid value \(.*colour"),
        (
            b'{"base_model": "m", "prompt_format": {}, "max_seq_len": 8, "data_format": "poems"}',
            r"has an invalid value \(data_format must be one of",
        ),
    ],
    ids=["torn", "not-utf8", "not-an-object", "keys-missing", "not-a-number", "unknown-format-key", "unknown-format"],
)
def test_an_unreadable_training_record_is_refused_naming_the_file(tmp_path, content, says):
    path = records.write_training_record(tmp_path, RECORD, seed=0)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2] if content is None else content)
    with pytest.raises(records.TrainingRecordError, match=f"^{re.escape(str(path))} {says}"):
        records.read_training_record(tmp_path)
    # ...and it is not copied on beside a merged model either.
    with pytest.raises(records.TrainingRecordError):
        records.copy_training_record(tmp_path, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_a_missing_training_record_says_what_the_folder_should_be(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / records.TRAINING_RECORD_FILE} is missing: is")):
        records.read_training_record(tmp_path)
    with pytest.raises(FileNotFoundError, match="no folder given"):
        records.read_training_record(None)
    assert records.read_training_record(None, required=False) is None
    with pytest.raises(ValueError, match="data_format must be one of"):
        dataclasses.replace(RECORD, data_format="poems")


def test_the_training_record_is_copied_beside_a_merged_model(tmp_path):
    records.write_training_record(tmp_path / "adapter", RECORD, seed=0)
    copied = records.copy_training_record(tmp_path / "adapter", tmp_path / "out" / "merged")
    assert without_meta(copied) == RECORD
    assert records.read_training_record(tmp_path / "out" / "merged") == copied
    assert (tmp_path / "out" / "merged" / records.TRAINING_RECORD_FILE).read_bytes() == (
        tmp_path / "adapter" / records.TRAINING_RECORD_FILE
    ).read_bytes()
    # A base model has none: nothing is copied, and no folder made.
    assert records.copy_training_record(tmp_path / "out" / "merged" / "none", tmp_path / "other") is None
    assert not (tmp_path / "other").exists()


# ---------------------------------------------------------------------------------------------- the adapter


def write_adapter(folder: Path) -> Path:
    """An adapter folder's two files as PEFT writes them: a config and weights in safetensors."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / records.ADAPTER_CONFIG).write_text('{"peft_type": "LORA", "r": 8}')
    save_file({"lora_A.weight": torch.ones(2, 2)}, str(folder / "adapter_model.safetensors"))
    return folder


def test_an_adapter_folder_is_checked_before_any_model_loads(tmp_path):
    folder = write_adapter(tmp_path / "adapter")
    assert records.check_adapter(folder) == {"peft_type": "LORA", "r": 8}
    with pytest.raises(
        FileNotFoundError, match=f"no adapter at {re.escape(str(tmp_path / 'none'))}: run notebook 03.*--init-adapter"
    ):
        records.check_adapter(tmp_path / "none", "--init-adapter")
    with pytest.raises(FileNotFoundError, match="holds no adapter_config.json: it is not a LoRA adapter folder"):
        records.check_adapter(tmp_path)
    weights = folder / "adapter_model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])  # a save cut short
    with pytest.raises(files.CorruptFileError, match=f"{re.escape(str(weights))} is damaged .*train it again"):
        records.check_adapter(folder)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="holds no adapter weights .*adapter_model.safetensors or "):
        records.check_adapter(folder)
    (folder / records.ADAPTER_CONFIG).write_text('{"peft_type": "LO')
    with pytest.raises(files.CorruptFileError, match="adapter_config.json .*train it again"):
        records.check_adapter(folder)


@pytest.mark.slow
def test_a_trained_adapter_passes_the_check(adapter):
    config = records.check_adapter(adapter)
    assert config["peft_type"] == "LORA" and config["r"] == 8


# ------------------------------------------------------------------------------------------- the rollout record


@pytest.fixture(scope="module")
def rollout(eval_games):
    """The rollout record of one real game played by the expert backend."""
    from alfworld_sft.backends import ExpertBackend
    from alfworld_sft.rollouts import RolloutConfig, play_rollouts

    [game] = games_of_type(eval_games, "pick_and_place_simple")[:1]
    result = play_rollouts(ExpertBackend(), [game], RolloutConfig(max_steps=30, workers=0, progress=False))
    [played] = result.records
    return played


def test_a_played_game_is_a_rollout_record_of_this_version(rollout):
    assert records.validate_rollout(rollout) is None
    assert rollout["rollout_version"] == records.ROLLOUT_VERSION and rollout["won"]
    assert rollout["task_type"] == "pick_and_place_simple" and rollout["transcript"][0]["turns"]


@pytest.mark.parametrize(
    ("breakage", "says"),
    [
        (lambda r: r.pop("transcript"), "keys ['transcript'] are missing"),
        (lambda r: r.update(won="yes"), "keys ['won'] have the wrong type"),
        (lambda r: r.update(rollout_version=99), "rollout_version 99 is not 1"),
        (lambda r: r.update(transcript=[]), "no trial with turns"),
    ],
)
def test_each_broken_rollout_is_named_with_its_problem(rollout, breakage, says):
    broken = copy.deepcopy(rollout)
    breakage(broken)
    assert says in records.validate_rollout(broken)
    assert records.validate_rollout(["not", "a", "record"]) == "not a JSON object"


def test_the_one_reader_keeps_rollouts_and_sets_other_lines_aside(rollout, tmp_path):
    log, key = tmp_path / "run.ckpt.jsonl", {"model": "expert", "split": "eval_in_distribution"}
    files.append_game_log(log, key, rollout)
    trajectory_like = {k: v for k, v in rollout.items() if k != "transcript"}  # e.g. a hand-edited line
    files.append_game_log(log, key, {**trajectory_like, "game_id": "json_2.1.1/other"})
    with pytest.warns(UserWarning, match="malformed game log line"):
        [read] = records.read_rollouts(log, key)
    assert read == {"run": key, **rollout}
    assert len(log.with_name("run.ckpt.jsonl.malformed").read_text().splitlines()) == 1
