"""Formatting: real expert trajectories -> tokenized examples whose labels are exactly the assistant's commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alfworld_sft import files, formatting, models, prompts
from alfworld_sft.files import MalformedRecordError
from chat_templates import build_llama31_tokenizer

DEFAULT_FORMAT = prompts.PromptFormat()


def write_expert_records(path: Path, n_games: int, fmt: prompts.PromptFormat = DEFAULT_FORMAT, seed: int = 0) -> Path:
    """Real records: the collection stage's expert plays `n_games` train games (balanced over task types)."""
    from alfworld_sft.collect import CollectConfig, collect_trajectories

    config = CollectConfig(split="train", output=path, limit=n_games, seed=seed, prompt_format=fmt, progress=False)
    summary = collect_trajectories(config)
    assert summary.won > 0, summary
    return path


@pytest.fixture(scope="module")
def records_path(train_games, tmp_path_factory) -> Path:
    return write_expert_records(tmp_path_factory.mktemp("records") / "trajectories.jsonl", 4)


@pytest.fixture(scope="module")
def chatml_tokenizer():
    return models.load_tokenizer(models.DEFAULT_MODEL)


def labelled_runs(example: dict) -> list[list[int]]:
    runs, current = [], []
    for label in example["labels"]:
        if label == formatting.IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    return runs + ([current] if current else [])


def assert_labels_are_commands(example: dict, window: list[dict], tokenizer, marker: str) -> None:
    commands = [m["content"].strip() for m in window if m["role"] == "assistant"]
    decoded = [tokenizer.decode(run) for run in labelled_runs(example)]
    assert decoded == [command + marker for command in commands]
    assert all(label in (formatting.IGNORE_INDEX, i) for label, i in zip(example["labels"], example["input_ids"]))


@pytest.mark.slow
@pytest.mark.parametrize("style", ["chatml", "llama31"])
def test_labels_cover_assistant_commands_and_end_of_turn_only(records_path, chatml_tokenizer, style):
    tokenizer = chatml_tokenizer if style == "chatml" else build_llama31_tokenizer()
    marker = models.end_of_turn_marker(tokenizer)
    assert marker == {"chatml": "<|im_end|>", "llama31": "<|eot_id|>"}[style]
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    for record in formatting.load_records(records_path):
        example = formatting.build_example(record, tokenizer, max_seq_len=100_000)
        window = prompts.build_messages(record["system"], record["conversations"])
        assert example["dropped_pairs"] == 0
        assert_labels_are_commands(example, window, tokenizer, marker)
        if style == "llama31":
            assert tokenizer.decode(example["input_ids"]).startswith("<|begin_of_text|><|start_header_id|>system")
            assert tokenizer.convert_tokens_to_ids("<|eot_id|>") in example["labels"]


@pytest.mark.slow
def test_long_records_keep_system_and_task_and_match_the_agents_window(records_path, chatml_tokenizer):
    records = formatting.load_records(records_path)
    longest = max(records, key=lambda r: len(r["conversations"]))
    messages = prompts.build_messages(longest["system"], longest["conversations"])
    full = formatting.count_template_tokens(chatml_tokenizer, messages)
    max_seq_len = full * 2 // 3
    example = formatting.build_example(longest, chatml_tokenizer, max_seq_len)
    window, dropped = prompts.select_window(
        messages, lambda m: formatting.count_template_tokens(chatml_tokenizer, m), max_seq_len
    )
    assert example["dropped_pairs"] == dropped > 0
    assert example["num_tokens"] <= max_seq_len < example["full_tokens"] == full
    text = chatml_tokenizer.decode(example["input_ids"])
    assert text.startswith("<|im_start|>system\n" + prompts.SYSTEM_PROMPT)
    assert longest["conversations"][0]["content"] in text  # the task turn stays
    assert longest["conversations"][-1]["content"] + "<|im_end|>" in text  # so does the winning command
    assert_labels_are_commands(example, window, chatml_tokenizer, "<|im_end|>")


@pytest.mark.slow
def test_dataset_split_by_game_seeded_with_stats_plot_and_saved(records_path, chatml_tokenizer, tmp_path):
    config = formatting.FormatConfig(max_seq_len=768, eval_fraction=0.3, seed=3)
    dataset = formatting.format_records(records_path, config, tokenizer=chatml_tokenizer)
    train_games, eval_games = set(dataset["train"]["game_id"]), set(dataset["eval"]["game_id"])
    assert train_games and eval_games and not train_games & eval_games
    again = formatting.format_records(records_path, config, tokenizer=chatml_tokenizer)
    assert set(again["eval"]["game_id"]) == eval_games
    stats = formatting.summarize_lengths(dataset, 768)
    tokens = stats["tokens"]
    assert tokens["min"] <= tokens["median"] <= tokens["p95"] <= tokens["max"] <= 768
    assert stats["truncated_examples"] == sum(d > 0 for s in dataset.values() for d in s["dropped_pairs"])
    out = formatting.save_formatted(dataset, tmp_path / "sft_data", source=records_path, config=config)
    assert (out / "lengths.png").stat().st_size > 0
    loaded, info = formatting.load_formatted(out)
    assert loaded["train"]["input_ids"] == dataset["train"]["input_ids"]
    assert info["max_seq_len"] == 768
    assert info["prompt_format"] == {"show_admissible_commands": False, "show_memory": False}
    assert info["source_sha256"] == files.sha256_file(records_path)
    example = dataset["train"][0]
    shown = formatting.render_trained_text(example, chatml_tokenizer)
    assert "⟦" in shown and shown.replace("⟦", "").replace("⟧", "") == chatml_tokenizer.decode(example["input_ids"])
    assert '<span style="background' in formatting.render_trained_html(example, chatml_tokenizer)


@pytest.mark.slow
def test_admissible_commands_format_is_carried(tmp_path, chatml_tokenizer):
    path = write_expert_records(tmp_path / "t.jsonl", 1, prompts.PromptFormat(show_admissible_commands=True))
    records = formatting.load_records(path)
    assert formatting.prompt_format_of(records).show_admissible_commands
    example = formatting.build_example(records[0], chatml_tokenizer, 100_000)
    assert "Admissible commands:" in chatml_tokenizer.decode(example["input_ids"])


GOOD = {
    "system": "s",
    "conversations": [
        {"role": "user", "content": "Task: x.\nObservation: y"},
        {"role": "assistant", "content": "look"},
    ],
    "admissible_commands": [["look"]],
    "prompt_format": {"show_admissible_commands": False},
    "game_id": "g1",
    "gamefile": "/g1/game.tw-pddl",
    "task_type": "pick_and_place_simple",
    "task": "x",
    "split": "train",
    "seed": 0,
    "steps": 1,
    "won": True,
    "format_version": 2,
}


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("{not json", "malformed JSON"),
        (json.dumps({**GOOD, "conversations": []}), "empty conversation"),
        (
            json.dumps({**GOOD, "conversations": [{"role": "assistant", "content": "look"}]}),
            "expected 'user'",
        ),
        (json.dumps({**GOOD, "conversations": GOOD["conversations"][:1]}), "ends with a user turn"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "game_id"}), "'game_id'"),
    ],
)
def test_malformed_input_names_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + bad_line + "\n")
    with pytest.raises(MalformedRecordError) as caught:
        formatting.load_records(path)
    assert caught.value.line_number == 3 and f"{path}:3" in str(caught.value) and message in str(caught.value)


def test_missing_file_and_mixed_formats_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError):
        formatting.load_records(tmp_path / "none.jsonl")
    other = {**GOOD, "prompt_format": {"show_admissible_commands": True}}
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(other) + "\n")
    with pytest.raises(ValueError, match="mixes prompt formats"):
        formatting.load_records(path)


def test_pad_equal_to_eos_is_refused(tmp_path, chatml_tokenizer):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "game_id": "g2"}) + "\n")
    tokenizer = models.load_tokenizer(models.DEFAULT_MODEL)
    tokenizer.pad_token = tokenizer.eos_token
    with pytest.raises(ValueError, match="pads with its eos"):
        formatting.format_records(path, formatting.FormatConfig(eval_fraction=0.5), tokenizer=tokenizer)
    dataset = formatting.format_records(path, formatting.FormatConfig(eval_fraction=0.5), tokenizer=chatml_tokenizer)
    assert len(dataset["train"]) == len(dataset["eval"]) == 1


THREE_TURNS = {
    **GOOD,
    "conversations": [
        {"role": "user", "content": "Task: x.\nObservation: y"},
        {"role": "assistant", "content": "go to shelf 1"},
        {"role": "user", "content": "Observation: You arrive at shelf 1."},
        {"role": "assistant", "content": "go to drawer 3"},
        {"role": "user", "content": "Observation: Nothing happens."},
        {"role": "assistant", "content": "take mug 1 from shelf 1"},
    ],
    "admissible_commands": [["look"], ["look"], ["look"]],
    "steps": 3,
    "trained": [True, False, True],
    "thoughts": ["The mug may be on a shelf.", None, "I found the mug 1, so I take it."],
}


@pytest.mark.parametrize("style", ["chatml", "llama31"])
def test_untrained_turns_are_context_without_a_loss(chatml_tokenizer, style):
    """A DAgger example: the model's own earlier command stays in the prompt, only the expert's labels are trained."""
    tokenizer = chatml_tokenizer if style == "chatml" else build_llama31_tokenizer()
    marker = models.end_of_turn_marker(tokenizer)
    record = {key: value for key, value in THREE_TURNS.items() if key != "thoughts"}
    example = formatting.build_example(record, tokenizer, max_seq_len=100_000)
    decoded = [tokenizer.decode(run) for run in labelled_runs(example)]
    assert decoded == ["go to shelf 1" + marker, "take mug 1 from shelf 1" + marker]
    assert "go to drawer 3" in tokenizer.decode(example["input_ids"])  # context, no loss
    assert example["trained_tokens"] == sum(len(run) for run in labelled_runs(example))


def test_the_thoughts_format_trains_thought_and_action(chatml_tokenizer):
    record = {
        **THREE_TURNS,
        "trained": [True, True, True],
        "thoughts": ["The mug may be on a shelf.", "Maybe a drawer holds it.", "I found the mug 1, so I take it."],
    }
    example = formatting.build_example(record, chatml_tokenizer, max_seq_len=100_000, data_format="thoughts")
    decoded = [chatml_tokenizer.decode(run) for run in labelled_runs(example)]
    assert decoded[0] == "Thought: The mug may be on a shelf.\nAction: go to shelf 1<|im_end|>"
    text = chatml_tokenizer.decode(example["input_ids"])
    assert text.startswith("<|im_start|>system\n" + prompts.THOUGHTS_SYSTEM_PROMPT)
    with pytest.raises(ValueError, match="no thought for every command"):
        formatting.build_example({**record, "thoughts": None}, chatml_tokenizer, 100_000, data_format="thoughts")


def test_a_window_without_a_trained_turn_gives_no_example(chatml_tokenizer):
    record = {**THREE_TURNS, "trained": [True, False, False]}
    record.pop("thoughts")
    full = formatting.count_template_tokens(
        chatml_tokenizer, prompts.build_messages(prompts.SYSTEM_PROMPT, record["conversations"])
    )
    assert formatting.build_example(record, chatml_tokenizer, max_seq_len=full - 25) is None


def test_label_table_and_split_check(chatml_tokenizer):
    toy = [{"role": "user", "content": "Task: look."}, {"role": "assistant", "content": "look"}]
    rows = formatting.label_table(chatml_tokenizer, toy)
    trained = [row["token"] for row in rows if row["label"] != formatting.IGNORE_INDEX]
    assert "".join(trained) == "look<|im_end|>"
    from datasets import Dataset, DatasetDict

    clean = DatasetDict(
        {"train": Dataset.from_dict({"game_id": ["a", "b"]}), "eval": Dataset.from_dict({"game_id": ["c"]})}
    )
    assert formatting.check_split(clean) == {"train": 2, "eval": 1}
    leaky = DatasetDict({"train": Dataset.from_dict({"game_id": ["a"]}), "eval": Dataset.from_dict({"game_id": ["a"]})})
    with pytest.raises(ValueError, match="both sides of the split"):
        formatting.check_split(leaky)
