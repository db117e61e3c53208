"""Stage 02: trajectory records -> a tokenized chat dataset with loss on the assistant's commands only.

Each record of `trajectories.jsonl` (CONTRIBUTING.md) becomes one training example: its messages rendered
with the model's own chat template, cut to `max_seq_len` tokens by `prompts.select_window` (the window the
evaluation agents show the model when it plays), tokenized once, with `labels` set to the token ids of every
assistant message's content plus its end-of-turn token and -100 everywhere else.

Labels come from rendering message prefixes, not from `{% generation %}` markers: neither SmolLM2's ChatML
template nor Llama-3.1's header template has them (field notes §2). The prefix up to an assistant turn with
`add_generation_prompt=True` gives where its content starts; the end-of-turn marker of the template (probed
once: `<|im_end|>`, `<|eot_id|>`) ends it. Padding never touches labels: the training collator pads labels
with -100 and masks padding by attention mask, and the tokenizer's pad token differs from its eos (§3).

    alfworld-sft format --data results/oracle/trajectories.jsonl --output results/sft_data
    alfworld-sft format --data results/small/oracle/trajectories.jsonl --output results/small/sft_data \\
        --max-seq-len 1024

Python: `format_records(path, FormatConfig(...))` returns a `datasets.DatasetDict` (train/eval, split by
game); `summarize_lengths`, `plot_lengths`, `render_trained_html` / `render_trained_text` show what it made.
"""

from __future__ import annotations

import argparse
import html
import math
import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from alfworld_sft import files, flags, models, prompts, recipes, records, results
from alfworld_sft.files import MalformedRecordError
from alfworld_sft.flags import option
from alfworld_sft.paths import resolve_repo_path

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips
FORMAT_INFO = "format_info.json"  # beside the saved dataset: what it was made from and with
DATASET_DIR = "dataset"


@dataclass(frozen=True)
class FormatConfig:
    """How records become training examples. Each field is an `alfworld-sft format` flag (`flags`)."""

    model: str = option(
        models.DEFAULT_MODEL, "model whose chat template and tokenizer render the messages (default: %(default)s)"
    )
    # the window is cut by prompts.select_window, as the evaluation agents cut what the model sees when it plays
    max_seq_len: int = option(
        2048, "tokens per example; longer conversations lose their oldest middle turns (default: %(default)s)"
    )
    eval_fraction: float = option(0.05, "share of games (not records) held out for evaluation (default: %(default)s)")
    seed: int = option(42, "shuffles the games before the train/eval split (default: %(default)s)")
    data_format: str = option(
        "commands",
        "assistant turns: bare commands, or 'Thought: ...\\nAction: ...' (records with the teacher's thoughts)",
        flag="--format",
        choices=prompts.DATA_FORMATS,
    )

    def __post_init__(self) -> None:
        if self.data_format not in prompts.DATA_FORMATS:
            raise ValueError(f"data_format must be one of {', '.join(prompts.DATA_FORMATS)}, not {self.data_format!r}")
        if self.max_seq_len < 128:
            raise ValueError(f"--max-seq-len must be at least 128, got {self.max_seq_len}")


# The small (CI, CPU) mode keeps examples shorter so that notebook 03 trains in a few minutes on 2 cores (the
# system prompt, task and last turn alone reach ~600 tokens in some games); the full mode uses the seed
# guide's 2048 tokens and 5% held-out games.
SMALL_MAX_SEQ_LEN = 1024
SMALL_EVAL_FRACTION = 0.2


def course_format_config(
    small: bool, seed: int, model: str = models.DEFAULT_MODEL, data_format: str = "commands"
) -> FormatConfig:
    """The formatting settings notebook 02 uses (and notebook 03 expects) in small or full mode: in full mode the
    window and eval share of the model's training recipe."""
    if small:
        return FormatConfig(
            model=model,
            max_seq_len=SMALL_MAX_SEQ_LEN,
            eval_fraction=SMALL_EVAL_FRACTION,
            seed=seed,
            data_format=data_format,
        )
    recipe = recipes.recipe_for(model).values
    return FormatConfig(
        model=model,
        max_seq_len=recipe["max_seq_len"],
        eval_fraction=recipe["eval_fraction"],
        seed=seed,
        data_format=data_format,
    )


# ----------------------------------------------------------------------------------------------- reading


def _record_line_numbers(path: Path) -> list[int]:
    # files.read_jsonl skips blank lines; the k-th record it yields sits on the k-th non-blank line.
    with open(path, "rb") as handle:  # bytes: a line that is not UTF-8 is reported by files.read_jsonl, by number
        return [number for number, line in enumerate(handle, start=1) if line.strip()]


def load_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a trajectories JSONL; a malformed one raises `MalformedRecordError` naming file and line."""
    path = resolve_repo_path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder: pass the trajectories JSONL file (e.g. .../trajectories.jsonl)")
    line_numbers = _record_line_numbers(path) if path.exists() else []
    found = []
    for index, record in enumerate(files.read_jsonl(path)):
        problem = records.validate_record(record)
        if problem:
            raise MalformedRecordError(path, line_numbers[index], f"{problem}; fix or delete this line")
        record["_line"] = line_numbers[index]
        found.append(record)
    if not found:
        raise ValueError(f"{path} holds no records: collect trajectories first (notebook 01 or `alfworld-sft collect`)")
    formats = {prompts.read_prompt_format(r["prompt_format"]) for r in found}
    if len(formats) > 1:
        raise ValueError(
            f"{path} mixes prompt formats {sorted(map(repr, formats))}: a model is trained on one format "
            "(the one it will be played with); collect into separate files"
        )
    return found


def prompt_format_of(loaded: Sequence[dict[str, Any]]) -> prompts.PromptFormat:
    """The one prompt format the records were rendered with (load_records checks they agree)."""
    return prompts.read_prompt_format(loaded[0]["prompt_format"])


# --------------------------------------------------------------------------------------------- rendering


def count_template_tokens(tokenizer: Any, messages: Sequence[prompts.Message]) -> int:
    """Tokens of a message list rendered with the chat template (no generation prompt)."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_messages(
    messages: Sequence[prompts.Message],
    tokenizer: Any,
    marker: str | None = None,
    trained: Sequence[bool] | None = None,
) -> dict[str, list[int]]:
    """input_ids, labels (the trained assistant turns' content + end-of-turn token, -100 elsewhere) and
    attention_mask. `trained` has one flag per assistant message (default: all trained); an untrained assistant
    message (the model's own command in a DAgger example) is context only."""
    marker = marker or models.end_of_turn_marker(tokenizer)
    messages = list(messages)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assistant_indices = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    flags = list(trained) if trained is not None else [True] * len(assistant_indices)
    if len(flags) != len(assistant_indices):
        raise ValueError(f"{len(flags)} trained flags for {len(assistant_indices)} assistant messages")
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True)
        if not text.startswith(before):
            raise models.TemplateError(
                "the chat template renders a conversation prefix that is not a prefix of the whole conversation; "
                "labels cannot be placed (is this a template that rewrites earlier turns?)"
            )
        content = message["content"].strip()  # templates such as Llama-3.1's trim message content
        start = text.find(content, len(before))
        end = start + len(content)
        if start < 0 or text[len(before) : start].strip() or not text.startswith(marker, end):
            raise models.TemplateError(
                f"assistant turn {index} ({content!r}) does not render as its content followed by {marker!r}"
            )
        if flags[assistant_indices.index(index)]:
            spans.append((start, end + len(marker)))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    labels = [IGNORE_INDEX] * len(ids)
    span_index = 0
    for position, (token_start, token_end) in enumerate(encoded["offset_mapping"]):
        while span_index < len(spans) and spans[span_index][1] <= token_start:
            span_index += 1
        if span_index < len(spans) and token_end > spans[span_index][0] and token_start < spans[span_index][1]:
            labels[position] = ids[position]
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}


def build_example(
    record: dict[str, Any],
    tokenizer: Any,
    max_seq_len: int,
    marker: str | None = None,
    data_format: str = "commands",
) -> dict[str, Any] | None:
    """One training example from one record: its messages in `data_format` (the system prompt and assistant turns
    of that format), the select_window window, tokenized with labels on its trained turns. None when the window
    keeps no trained turn."""
    replies = iter(records.assistant_texts(record, data_format))
    conversation = [
        {"role": turn["role"], "content": next(replies) if turn["role"] == "assistant" else turn["content"]}
        for turn in record["conversations"]
    ]
    messages = prompts.build_messages(prompts.system_prompt(data_format), conversation)
    lengths: list[int] = []

    def count(window: Sequence[prompts.Message]) -> int:
        lengths.append(count_template_tokens(tokenizer, window))
        return lengths[-1]

    window, dropped = prompts.select_window(messages, count, max_seq_len)
    trained = records.trained_turns(record)[dropped:]
    if not any(trained):
        return None
    example = tokenize_messages(window, tokenizer, marker, trained)
    return {
        **example,
        "game_id": record["game_id"],
        "task_type": str(record.get("task_type", "")),
        "num_tokens": len(example["input_ids"]),
        "full_tokens": lengths[0],  # select_window counts the whole conversation first
        "trained_tokens": sum(label != IGNORE_INDEX for label in example["labels"]),
        "dropped_pairs": dropped,
    }


def label_table(tokenizer: Any, messages: Sequence[prompts.Message], trained: Sequence[bool] | None = None) -> list:
    """Each token of a small conversation with its id and label (-100: no loss), for reading the masks."""
    example = tokenize_messages(messages, tokenizer, trained=trained)
    return [
        {"token": tokenizer.decode([token]), "input_id": token, "label": label}
        for token, label in zip(example["input_ids"], example["labels"])
    ]


# ------------------------------------------------------------------------------------------ the dataset


def split_games(game_ids: Sequence[str], eval_fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """(train games, eval games): a seeded shuffle of the distinct games, so no game is in both."""
    games = sorted(set(game_ids))
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"--eval-fraction must be in [0, 1), got {eval_fraction}")
    random.Random(seed).shuffle(games)
    n_eval = math.ceil(len(games) * eval_fraction) if eval_fraction > 0 else 0
    if eval_fraction > 0 and n_eval >= len(games):
        raise ValueError(
            f"only {len(games)} distinct game(s): too few to hold any out for evaluation; collect more games "
            "or set eval_fraction to 0"
        )
    return set(games[n_eval:]), set(games[:n_eval])


def check_split(dataset: Any) -> dict[str, int]:
    """Games per split; raises when a game has examples on both sides (the eval loss would then measure memory)."""
    sides = {name: set(split["game_id"]) for name, split in dataset.items()}
    shared = sides.get("train", set()) & sides.get("eval", set())
    if shared:
        raise ValueError(f"{len(shared)} games are on both sides of the split, e.g. {sorted(shared)[0]}")
    return {name: len(ids) for name, ids in sides.items()}


def format_records(path: str | os.PathLike[str], config: FormatConfig = FormatConfig(), tokenizer: Any = None) -> Any:
    """Trajectories JSONL -> `datasets.DatasetDict` {train, eval} of tokenized examples, split by game."""
    from datasets import Dataset, DatasetDict
    from tqdm.auto import tqdm

    path = resolve_repo_path(path)
    loaded = load_records(path)
    tokenizer = tokenizer if tokenizer is not None else models.load_tokenizer(config.model)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError(
            f"the tokenizer of {config.model} pads with its eos token {tokenizer.eos_token!r}: a collator that "
            "masks padding by id would hide the end-of-turn label (field notes §3); give it a distinct pad token"
        )
    marker = models.end_of_turn_marker(tokenizer)
    _, eval_games = split_games([r["game_id"] for r in loaded], config.eval_fraction, config.seed)
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
    for record in tqdm(loaded, desc="tokenizing", unit="record"):
        try:
            example = build_example(record, tokenizer, config.max_seq_len, marker, config.data_format)
        except ValueError as error:
            raise MalformedRecordError(path, record["_line"], str(error)) from error
        if example is not None:
            rows["eval" if record["game_id"] in eval_games else "train"].append(example)
    return DatasetDict(
        {name: Dataset.from_list(split_rows) for name, split_rows in rows.items() if split_rows or name == "train"}
    )


# -------------------------------------------------------------------------------------------- statistics


def _percentile(values: Sequence[int], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = (len(ordered) - 1) * q
    low, high = math.floor(rank), math.ceil(rank)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def summarize_lengths(dataset: Any, max_seq_len: int) -> dict[str, Any]:
    """Token-length statistics over all splits, and how many examples the window shortened."""
    lengths, full, trained, dropped, counts = [], [], [], [], {}
    for name, split in dataset.items():
        counts[name] = len(split)
        lengths += split["num_tokens"]
        full += split["full_tokens"]
        trained += split["trained_tokens"]
        dropped += split["dropped_pairs"]
    if not lengths:
        raise ValueError("the dataset is empty")
    return {
        "examples": counts,
        "games": {name: len(set(split["game_id"])) for name, split in dataset.items()},
        "max_seq_len": max_seq_len,
        "tokens": {
            "min": min(lengths),
            "median": _percentile(lengths, 0.5),
            "p95": _percentile(lengths, 0.95),
            "max": max(lengths),
            "total": sum(lengths),
        },
        "tokens_before_window": {
            "median": _percentile(full, 0.5),
            "p95": _percentile(full, 0.95),
            "max": max(full),
        },
        "trained_tokens_total": sum(trained),
        "truncated_examples": sum(d > 0 for d in dropped),
        "dropped_turn_pairs": sum(dropped),
    }


def plot_lengths(dataset: Any, max_seq_len: int, path: str | os.PathLike[str]) -> Path:
    """Histogram of example lengths before and after the window, with the max_seq_len line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = [n for split in dataset.values() for n in split["full_tokens"]]
    kept = [n for split in dataset.values() for n in split["num_tokens"]]
    figure, axis = plt.subplots(figsize=(7, 3.5))
    count = min(40, max(5, len(full) // 3))
    low, high = min(kept), max(full)
    bins = [low + (high - low) * i / count for i in range(count + 1)] if high > low else count  # shared by both
    axis.hist(full, bins=bins, alpha=0.5, label="whole conversation")
    axis.hist(kept, bins=bins, alpha=0.7, label="after the window")
    axis.axvline(max_seq_len, color="red", linestyle="--", label=f"max_seq_len = {max_seq_len}")
    axis.set_xlabel("tokens per example")
    axis.set_ylabel("examples")
    axis.legend()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# ----------------------------------------------------------------------------------------------- showing


def split_trained_segments(example: dict[str, Any], tokenizer: Any) -> list[tuple[str, bool]]:
    """The example's text as (text, trained) runs: consecutive tokens with or without a label."""
    segments: list[tuple[str, bool]] = []
    run: list[int] = []
    trained_run = False
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        trained = label != IGNORE_INDEX
        if run and trained != trained_run:
            segments.append((tokenizer.decode(run), trained_run))
            run = []
        run.append(token)
        trained_run = trained
    if run:
        segments.append((tokenizer.decode(run), trained_run))
    return segments


def render_trained_html(example: dict[str, Any], tokenizer: Any) -> str:
    """HTML of one example: trained tokens on green, masked tokens grey (for a notebook's `display(HTML(...))`)."""
    parts = []
    for text, trained in split_trained_segments(example, tokenizer):
        style = "background:#c8f7c5;color:#000;font-weight:bold" if trained else "color:#777"
        parts.append(f'<span style="{style}">{html.escape(text)}</span>')
    legend = (
        '<p><span style="background:#c8f7c5;font-weight:bold">trained (loss)</span> · '
        '<span style="color:#777">masked (no loss)</span></p>'
    )
    return legend + '<pre style="white-space:pre-wrap;font-size:12px">' + "".join(parts) + "</pre>"


def render_trained_text(example: dict[str, Any], tokenizer: Any) -> str:
    """Plain-text view of one example: trained tokens between ⟦ and ⟧, everything else masked."""
    return "".join(f"⟦{text}⟧" if trained else text for text, trained in split_trained_segments(example, tokenizer))


# ------------------------------------------------------------------------------------------ saving, CLI


def save_formatted(
    dataset: Any,
    output: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str],
    config: FormatConfig,
    loaded: Sequence[dict[str, Any]] | None = None,
) -> Path:
    """Write the dataset (`dataset/`), its length histogram and `format_info.json` into `output`, atomically."""
    output = resolve_repo_path(output)
    source = resolve_repo_path(source)
    loaded = loaded if loaded is not None else load_records(source)
    output.mkdir(parents=True, exist_ok=True)
    partial = output / f".{DATASET_DIR}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    dataset.save_to_disk(str(partial))
    final = output / DATASET_DIR
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    plot_lengths(dataset, config.max_seq_len, output / "lengths.png")
    info = {
        "source": str(source),
        "source_sha256": files.sha256_file(source),
        "config": asdict(config),
        "prompt_format": prompt_format_of(loaded).as_dict(),
        "data_format": config.data_format,
        "system_prompt": prompts.system_prompt(config.data_format),  # the text every example starts with
        "max_seq_len": config.max_seq_len,
        "stats": summarize_lengths(dataset, config.max_seq_len),
    }
    results.write_result(output / FORMAT_INFO, info, seed=config.seed)
    return output


def load_formatted(folder: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """(DatasetDict, format_info) of a folder written by `save_formatted` / `alfworld-sft format`."""
    from datasets import load_from_disk

    folder = resolve_repo_path(folder)
    if not (folder / FORMAT_INFO).exists() or not (folder / DATASET_DIR).exists():
        raise FileNotFoundError(
            f"{folder} is not a formatted dataset (no {FORMAT_INFO}): run `alfworld-sft format` first"
        )
    return load_from_disk(str(folder / DATASET_DIR)), files.read_json(folder / FORMAT_INFO)


def configure_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "format", help="02: tokenize trajectories into a chat dataset (loss on commands only)"
    )
    # Not FormatConfig fields: what is formatted and where it goes (format_records takes them as arguments).
    parser.add_argument("--data", default="results/oracle/trajectories.jsonl", help="trajectories JSONL")
    parser.add_argument("--output", default="results/sft_data", help="folder for the dataset, histogram and info")
    flags.add_options(parser, FormatConfig)
    parser.set_defaults(func=_run_format)


def _run_format(args: argparse.Namespace) -> int:
    files.check_output(resolve_repo_path(args.output), "--output", folder=True)
    config = flags.config_from_args(FormatConfig, args)
    loaded = load_records(args.data)
    dataset = format_records(args.data, config)
    output = save_formatted(dataset, args.output, source=args.data, config=config, loaded=loaded)
    stats = summarize_lengths(dataset, config.max_seq_len)
    print(
        f"{stats['examples']} examples, tokens {stats['tokens']}, truncated {stats['truncated_examples']} -> {output}"
    )
    return 0
