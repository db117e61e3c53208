"""Merge (04, first section): a LoRA adapter -> a full Hugging Face model folder, proven equal to base + adapter.

`merge_adapter` loads the base model the adapter was trained on (its training record names it; an adapter
without one falls back on `adapter_config.json`), unquantized and in float32 where it fits (`choose_merge_dtype`):
merging into a 4-bit copy rounds the LoRA delta away (field notes §3), into bfloat16 it rounds it too. It merges,
saves a full folder (safetensors, tokenizer, chat template, a generation config that stops at the end of turn, the
adapter's training record) and checks in the same run that the saved model's logits match base + adapter on sample
game prompts, rendered as the model was trained (prompt format and data format from the record). The folder is
built beside the output under a name holding this process's id and renamed into place only when it passed; what a
killed merge left is removed by the next one.

    alfworld-sft merge --adapter results/sft_adapter --output results/sft_merged

`compare_answers` then shows what fine-tuning changed: base and fine-tuned greedy replies to one game prompt.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alfworld_sft import files, flags, models, prompts, recipes, records
from alfworld_sft.flags import option
from alfworld_sft.paths import resolve_repo_path
from alfworld_sft.results import write_result

MERGE_RECORD = "merge_record.json"
ADAPTER_CONFIG = records.ADAPTER_CONFIG
# Merged vs base+adapter logits, (absolute, relative to the largest logit): fp32 differ only by summation order (its
# reductions ordered otherwise on a GPU than on a CPU: the relative share); bf16 rounds W + BA to 8 mantissa bits,
# an error that grows with the logits' scale (an 8B model's random-weight logits reach ~60: 0.6 there is rounding).
LOGIT_TOLERANCE = {"float32": (1e-3, 1e-4), "bfloat16": (0.5, 0.01)}


def choose_merge_dtype(parameters: int, gpu_free_bytes: int | None) -> str:
    """float32 wherever the model fits in it (the CPU; a GPU with room for it): merged into bfloat16 weights, each
    delta is rounded to 8 bits of mantissa, and the 135M default's merge then differed from base + adapter by 2.3
    logits on an H100 (2026-12-05, notebook 04 refused it). bfloat16 only where float32 does not fit (an 8B on a
    card of less than ~50 GB), checked against the looser bfloat16 tolerance."""
    if gpu_free_bytes is None or parameters * 4 * 1.5 + 2 * 1024**3 <= gpu_free_bytes:
        return "float32"
    return "bfloat16"


def count_base_parameters(base: str, base_path: str | Path) -> int:
    """The base model's parameters from its config (`recipes.count_parameters`), or, for a config of another shape
    than a Llama-like decoder's, from its weight files' size at 2 bytes a parameter (a float32 checkpoint counts
    double: the merge then leans to bfloat16, never past the card's memory)."""
    try:
        return recipes.count_parameters(base)
    except (AttributeError, KeyError, TypeError, ValueError):
        return sum(path.stat().st_size for path in Path(base_path).glob("*.safetensors")) // 2


class BaseModelMismatchError(ValueError):
    """A --base that is not the model the adapter was trained on."""


class MergeVerificationError(RuntimeError):
    """A merged model whose logits do not match base+adapter."""


@dataclass(frozen=True)
class MergeConfig:
    """What `merge_adapter` merges, and how it checks it. Each field is an `alfworld-sft merge` flag (`flags`); the
    folders have command-line defaults only (`CLI_DEFAULTS`)."""

    adapter: Path = option(help="adapter folder, as training wrote it (default: %(default)s)")
    output: Path = option(help="merged Hugging Face folder to write (default: %(default)s)")
    base: str | None = option(
        None, "optional: must be the model the adapter was trained on (default: read from the adapter)"
    )
    verify_prompts: int = option(
        3, "sample game prompts whose logits are compared with base + adapter after the merge (default: %(default)s)"
    )


CLI_DEFAULTS = {"adapter": "results/sft_adapter", "output": "results/sft_merged"}  # the course's layout


@dataclass(frozen=True)
class Adapter:
    """What an adapter folder says about itself."""

    folder: Path  # the adapter folder
    base_model: str  # the model it was trained on: the training record's base_model, else adapter_config.json's
    config_base: str | None  # adapter_config.json's base_model_name_or_path (often a resolved local folder)
    training_record: records.TrainingRecord | None  # None for an adapter not trained by the course


# ALFWorld openings (shortened from valid_seen games), one expert step and its reason, for the checks after
# merge and export.
SAMPLE_GAMES = (
    (
        "put a clean ladle in countertop",
        (
            "You are in the middle of a room. Looking quickly around you, you see a cabinet 3, a cabinet 2, "
            "a cabinet 1, a coffeemachine 1, a countertop 2, a countertop 1, a drawer 2, a drawer 1, "
            "a fridge 1, a garbagecan 1, a microwave 1, a sinkbasin 1, a stoveburner 2, a stoveburner 1, "
            "and a toaster 1."
        ),
        ("go to sinkbasin 1", "A ladle is likely at the sinkbasin, where I can also clean it."),
        "On the sinkbasin 1, you see a ladle 1 and a spatula 2.",
    ),
    (
        "look at alarmclock under the desklamp",
        (
            "You are in the middle of a room. Looking quickly around you, you see a bed 1, a desk 1, "
            "a drawer 2, a drawer 1, a dresser 1, a garbagecan 1, a safe 1, a sidetable 2, and a sidetable 1."
        ),
        ("go to desk 1", "An alarmclock and a desklamp are often on the desk."),
        "On the desk 1, you see a alarmclock 1, a desklamp 1, and a pen 2.",
    ),
    (
        "put a cool tomato in microwave",
        (
            "You are in the middle of a room. Looking quickly around you, you see a countertop 1, "
            "a fridge 1, a microwave 1, a sinkbasin 1, and a stoveburner 1."
        ),
        ("go to countertop 1", "I need a tomato first; the countertop is the likeliest place."),
        "On the countertop 1, you see a tomato 1 and a knife 1.",
    ),
)


def sample_conversations(count: int = 3, record: records.TrainingRecord | None = None) -> list[list[prompts.Message]]:
    """`count` game prompts as the model sees them in play, rendered as `record` says it was trained (defaults
    without one): the first turn, or the first turn, one reply and the next observation."""
    fmt = record.prompt_format if record else prompts.PromptFormat()
    data_format = record.data_format if record else "commands"
    conversations: list[list[prompts.Message]] = []
    for index in range(count):
        task, observation, (command, thought), next_observation = SAMPLE_GAMES[index % len(SAMPLE_GAMES)]
        commands = ["look", "inventory", command]
        users = prompts.render_user_turns(task, observation, commands, [(next_observation, commands)], fmt)
        turns = [{"role": "user", "content": users[0]}]
        if index >= len(SAMPLE_GAMES) or index % 2:
            turns += [
                {"role": "assistant", "content": prompts.render_reply(command, thought, data_format)},
                {"role": "user", "content": users[1]},
            ]
        system = record.system() if record else prompts.system_prompt(data_format)
        conversations.append(prompts.build_messages(system, turns))
    return conversations


def read_adapter(adapter: Path) -> Adapter:
    """The adapter in `adapter` and the base it was trained on. A missing folder raises FileNotFoundError; a torn
    or incomplete adapter_config.json or training_record.json a ValueError naming the file and what to do."""
    config = records.check_adapter(adapter)
    record = records.read_training_record(adapter, required=False)
    config_base = config.get("base_model_name_or_path") or None
    base = record.base_model if record else config_base
    if not base:
        raise ValueError(
            f"{adapter} names no base model (it has no {records.TRAINING_RECORD_FILE}, and {ADAPTER_CONFIG} no "
            "'base_model_name_or_path'): pass --base with the model it was trained on"
        )
    return Adapter(folder=adapter, base_model=base, config_base=config_base, training_record=record)


def check_base_model(adapter: Adapter, base: str | None) -> str:
    """The adapter's own base; a different --base raises `BaseModelMismatchError` (field notes §3)."""
    own = adapter.base_model
    if base is None or base in (own, adapter.config_base) or _same_model(base, own):
        return own
    raise BaseModelMismatchError(
        f"the adapter in {adapter.folder} was trained on {own!r}, but --base is {base!r}. An adapter merged into "
        f"another model (e.g. Instruct vs base) gives a broken model: drop --base, or pass --base {own}"
    )


def _same_model(a: str, b: str) -> bool:
    try:
        return Path(models.resolve_model(a)).resolve() == Path(models.resolve_model(b)).resolve()
    except (models.ModelUnavailableError, OSError):
        return False


def compute_logits(model: Any, tokenizer: Any, conversations: Sequence[list[prompts.Message]]) -> list[Any]:
    """Next-token logits of every position of each rendered conversation (fp32, on the CPU)."""
    import torch

    out = []
    with torch.no_grad():
        for messages in conversations:
            ids = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )["input_ids"].to(model.device)
            out.append(model(input_ids=ids).logits[0].float().cpu())
    return out


def max_abs_diff(a: Sequence[Any], b: Sequence[Any]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def merge_adapter(config: MergeConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Merge `config.adapter` into its unquantized base, save `config.output`, verify its logits.

    Returns the merge record (also saved as `merge_record.json` in the output folder). Raises
    `MergeVerificationError` when the saved model's logits differ from base+adapter by more than the tolerance."""
    import torch
    from peft import PeftModel

    if (
        isinstance(config.verify_prompts, bool)
        or not isinstance(config.verify_prompts, int)
        or config.verify_prompts < 1
    ):
        raise ValueError(
            f"--verify-prompts must be a whole number of at least 1 (the merged model is checked against base + "
            f"adapter on that many game prompts before it is kept), got {config.verify_prompts!r}"
        )
    started = time.perf_counter()
    adapter_dir, output = resolve_repo_path(config.adapter), resolve_repo_path(config.output)
    for stale in files.remove_stale_partials(output.parent):
        log(f"removed {stale}, left by a merge that was killed")
    adapter = read_adapter(adapter_dir)
    base = check_base_model(adapter, config.base)
    base_path = models.resolve_model(base)
    base_config = Path(base_path) / "config.json"
    if base_config.exists() and "quantization_config" in files.read_json_object(
        base_config, "the base model's folder is damaged: download or convert it again"
    ):
        raise ValueError(
            f"{base_path} is a quantized checkpoint: merging into quantized weights rounds the adapter away "
            "(field notes §3). Point the adapter's base at the unquantized model"
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    free = torch.cuda.mem_get_info()[0] if device == "cuda" else None
    dtype_name = choose_merge_dtype(count_base_parameters(base, base_path), free)
    dtype = getattr(torch, dtype_name)
    log(f"base {base} ({base_path}) in {dtype_name} on {device}; adapter {adapter_dir}")
    own_tokenizer = (adapter_dir / "tokenizer_config.json").exists()
    tokenizer = models.load_tokenizer(str(adapter_dir) if own_tokenizer else base)
    record = adapter.training_record
    conversations = sample_conversations(config.verify_prompts, record)
    stop_ids = models.stop_token_ids(tokenizer, record.end_of_turn if record else None)

    model = models.load_model(base, dtype=dtype).to(device)
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    with model.disable_adapter():
        base_logits = compute_logits(model, tokenizer, conversations)
    adapter_logits = compute_logits(model, tokenizer, conversations)
    merged = model.merge_and_unload()

    parameters = sum(p.numel() for p in merged.parameters())
    merged.generation_config.eos_token_id = stop_ids
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    merged.generation_config.do_sample = False
    merged.config.eos_token_id = stop_ids[0]
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = files.partial_path(output)
    shutil.rmtree(partial, ignore_errors=True)  # this process's own, kept by a merge that failed its check
    keep_partial = False  # a folder that failed the logit check stays for inspection, never under `output`
    try:
        merged.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        records.copy_training_record(adapter_dir, partial)
        del model, merged
        saved = models.load_model(str(partial), dtype=dtype).to(device)
        saved_logits = compute_logits(saved, tokenizer, conversations)
        del saved
        diff = max_abs_diff(saved_logits, adapter_logits)
        absolute, relative = LOGIT_TOLERANCE[dtype_name]
        tolerance = absolute + relative * max(float(logits.abs().max()) for logits in adapter_logits)
        merge_record = {
            "adapter": str(adapter_dir),
            "base_model": base,
            "base_path": base_path,
            "dtype": dtype_name,
            "device": device,
            "parameters": parameters,
            "prompts": len(conversations),
            "max_abs_logit_diff": diff,
            "adapter_effect_max_abs_logit_diff": max_abs_diff(adapter_logits, base_logits),
            "tolerance": tolerance,
            "end_of_turn_token_ids": stop_ids,
            "seconds": round(time.perf_counter() - started, 1),
        }
        if diff > tolerance:
            keep_partial = True
            raise MergeVerificationError(
                f"merged logits differ from base+adapter by {diff:.3g} > {tolerance} on {len(conversations)} "
                f"game prompts: the merge is wrong; {partial} is left for inspection (the next merge removes it)"
            )
        write_result(partial / MERGE_RECORD, merge_record)  # with the versions that decided the merge
        if output.exists():
            shutil.rmtree(output)
        os.replace(partial, output)
    finally:
        if not keep_partial:
            shutil.rmtree(partial, ignore_errors=True)
    log(
        f"merged into {output}: max |logit diff| {diff:.2e} (tolerance {tolerance}) on {len(conversations)} "
        f"prompts; the adapter moves logits by up to {merge_record['adapter_effect_max_abs_logit_diff']:.2f}"
    )
    return merge_record


def compare_answers(
    base: str, merged: Path, messages: list[prompts.Message], max_new_tokens: int = 24
) -> dict[str, str]:
    """Greedy replies of the base model and of the merged fine-tuned model to the same game prompt."""
    import torch

    replies = {}
    for label, source in (("base", base), ("fine_tuned", str(resolve_repo_path(merged)))):
        model = models.load_model(source, dtype=torch.float32)
        tokenizer = models.load_tokenizer(source)
        replies[label] = models.generate_reply(model, tokenizer, messages, max_new_tokens=max_new_tokens)
        del model
    return replies


def configure_parser(subparsers: argparse._SubParsersAction) -> None:
    merge = subparsers.add_parser("merge", help="merge a LoRA adapter into its unquantized base and verify it")
    flags.add_options(merge, MergeConfig, defaults=CLI_DEFAULTS)
    merge.set_defaults(func=_run_merge)


def _run_merge(args: argparse.Namespace) -> int:
    files.check_output(resolve_repo_path(args.output), "--output", folder=True)
    merge_adapter(flags.config_from_args(MergeConfig, args))
    return 0
