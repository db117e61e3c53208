"""Merge, export and serve (04): LoRA adapter -> full Hugging Face folder -> GGUF -> Ollama Modelfile.

* `merge_adapter` loads the base model the adapter was trained on (read from the adapter's own
  `training_record.json` / `adapter_config.json`), unquantized (bf16 on GPU, fp32 on CPU; merging into a
  4-bit copy rounds the LoRA delta away, field notes §3), merges, saves a full folder (safetensors,
  tokenizer, chat template, a generation config that stops at the end-of-turn token) and checks, in the
  same run, that the saved model's logits match base+adapter on sample game prompts.
* `export_gguf` converts that folder with llama.cpp's own `convert_hf_to_gguf.py` (taken from the
  llama-cpp-python source package on PyPI and unpacked once into the course cache), quantizes to Q4_K_M
  with llama.cpp's quantizer (the llama-cpp-python bindings; `--outtype q4_k_m` is not a converter type),
  checks every GGUF's greedy replies against the merged model, and writes an Ollama `Modelfile` whose
  TEMPLATE renders conversations exactly as the tokenizer's chat template does.

    alfworld-sft merge --adapter results/sft_adapter --output results/sft_merged
    alfworld-sft export-gguf --merged results/sft_merged --output results/gguf --outtype f16 --quantize q4_k_m

Without the llama.cpp bindings (`pip install -e '.[export]'`) the quantize and GGUF checks are skipped
with that advice; the f16/bf16/q8_0 conversion still runs (the converter is pure Python) and is checked
with transformers' own GGUF loader.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from alfworld_sft import models, prompts
from alfworld_sft.files import read_json, write_text
from alfworld_sft.paths import cache_dir, resolve_repo_path
from alfworld_sft.results import write_result

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # the `export` extra's pin; its sdist vendors llama.cpp and its converter
EXPORT_INSTALL_HINT = "pip install -e '.[export]'"
TRAINING_RECORD = "training_record.json"
MERGE_RECORD = "merge_record.json"
GGUF_RECORD = "gguf_record.json"
CONVERTER_OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # what convert_hf_to_gguf.py --outtype writes
# llama.cpp's `llama_ftype` numbers for the quantizer (include/llama.h).
QUANTIZE_FTYPES = {"q4_k_m": 15, "q4_k_s": 14, "q5_k_m": 17, "q6_k": 18, "q8_0": 7}
# Tokens that end a turn in the chat formats the course meets; whichever the vocabulary has become stops.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|end|>")
# A f16/bf16/q8_0 GGUF must reproduce the merged model's greedy replies, except where the merged model itself
# barely prefers its token: a first divergence whose logit margin there is below this is a rounding-level tie.
NEAR_TIE_LOGITS = 0.1
# Merged vs base+adapter logits: fp32 differ only by summation order; bf16 rounds W + BA to 8 mantissa bits.
LOGIT_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.5}


class BaseModelMismatchError(ValueError):
    """A --base that is not the model the adapter was trained on."""


class MergeVerificationError(RuntimeError):
    """A merged model whose logits do not match base+adapter."""


class ToolMissingError(RuntimeError):
    """A llama.cpp tool that is not installed; the message says what to install."""


@dataclass(frozen=True)
class MergeConfig:
    adapter: Path  # the LoRA adapter folder training wrote (results/sft_adapter)
    output: Path  # the merged Hugging Face folder to write (results/sft_merged)
    base: str | None = None  # must name the adapter's own base when given; None reads it from the adapter
    verify_prompts: int = 3  # sample game prompts whose logits are compared after the merge


@dataclass(frozen=True)
class ExportConfig:
    merged: Path  # the merged Hugging Face folder (results/sft_merged)
    output: Path  # where the GGUF files and the Modelfile go (results/gguf)
    outtype: str = "f16"  # converter output: f32, f16, bf16 or q8_0
    quantize: str | None = "q4_k_m"  # llama.cpp quantizer type applied to the converted file, or None
    name: str = "alfworld-sft"  # the Ollama model name and the GGUF file stem
    verify_prompts: int = 3  # game prompts whose greedy replies are compared with the merged model
    max_new_tokens: int = 16  # length of each compared greedy reply
    create_ollama: bool = True  # run `ollama create` when ollama is on PATH


# ALFWorld openings (shortened from valid_seen games) and one next step, for the checks after merge/export.
SAMPLE_GAMES = (
    (
        "put a clean ladle in countertop",
        (
            "You are in the middle of a room. Looking quickly around you, you see a cabinet 3, a cabinet 2, "
            "a cabinet 1, a coffeemachine 1, a countertop 2, a countertop 1, a drawer 2, a drawer 1, "
            "a fridge 1, a garbagecan 1, a microwave 1, a sinkbasin 1, a stoveburner 2, a stoveburner 1, "
            "and a toaster 1."
        ),
        ("go to sinkbasin 1", "On the sinkbasin 1, you see a ladle 1 and a spatula 2."),
    ),
    (
        "look at alarmclock under the desklamp",
        (
            "You are in the middle of a room. Looking quickly around you, you see a bed 1, a desk 1, "
            "a drawer 2, a drawer 1, a dresser 1, a garbagecan 1, a safe 1, a sidetable 2, and a sidetable 1."
        ),
        ("go to desk 1", "On the desk 1, you see a alarmclock 1, a desklamp 1, and a pen 2."),
    ),
    (
        "put a cool tomato in microwave",
        (
            "You are in the middle of a room. Looking quickly around you, you see a countertop 1, "
            "a fridge 1, "
            "a microwave 1, a sinkbasin 1, and a stoveburner 1."
        ),
        ("go to countertop 1", "On the countertop 1, you see a tomato 1 and a knife 1."),
    ),
)


def sample_conversations(fmt: prompts.PromptFormat, count: int = 3) -> list[list[prompts.Message]]:
    """`count` game prompts as the model sees them in play: the first turn, then one command later."""
    conversations: list[list[prompts.Message]] = []
    for index in range(count):
        task, observation, (command, next_observation) = SAMPLE_GAMES[index % len(SAMPLE_GAMES)]
        commands = ["look", "inventory", command]
        first = {"role": "user", "content": prompts.render_first_turn(task, observation, commands, fmt)}
        turns = [first]
        if index >= len(SAMPLE_GAMES) or index % 2:
            turns += [
                {"role": "assistant", "content": command},
                {"role": "user", "content": prompts.render_turn(next_observation, commands, fmt)},
            ]
        conversations.append(prompts.build_messages(prompts.SYSTEM_PROMPT, turns))
    return conversations


# ---------------------------------------------------------------------------------------------- merge


def read_adapter_base(adapter: Path) -> tuple[str, dict[str, Any]]:
    """The base model an adapter was trained on, and its training record ({} when there is none)."""
    if not adapter.exists():
        raise FileNotFoundError(
            f"no adapter at {adapter}: run notebook 03 (training) first, which saves it there, "
            "or pass the adapter folder with --adapter"
        )
    if not (adapter / "adapter_config.json").exists():
        raise FileNotFoundError(
            f"{adapter} holds no adapter_config.json: it is not a LoRA adapter folder. Train one first "
            "(notebook 03 or `alfworld-sft train`), then pass its folder with --adapter"
        )
    record = read_json(adapter / TRAINING_RECORD) if (adapter / TRAINING_RECORD).exists() else {}
    base = record.get("base_model") or read_json(adapter / "adapter_config.json").get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{adapter} names no base model (neither {TRAINING_RECORD} 'base_model' nor adapter_config.json "
            "'base_model_name_or_path'): pass --base with the model it was trained on"
        )
    return base, record


def check_base_model(adapter: Path, base: str | None) -> str:
    """The adapter's own base; a different --base raises `BaseModelMismatchError` (field notes §3)."""
    own, _ = read_adapter_base(adapter)
    if base is None or base == own:
        return own
    config_base = read_json(adapter / "adapter_config.json").get("base_model_name_or_path")
    if base == config_base or _same_model(base, own):
        return own
    raise BaseModelMismatchError(
        f"the adapter in {adapter} was trained on {own!r}, but --base is {base!r}. An adapter merged into "
        f"another model (e.g. Instruct vs base) gives a broken model: drop --base, or pass --base {own}"
    )


def _same_model(a: str, b: str) -> bool:
    try:
        return Path(models.resolve_model(a)).resolve() == Path(models.resolve_model(b)).resolve()
    except (models.ModelUnavailableError, OSError):
        return False


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """eos plus every end-of-turn token of the vocabulary, so that generation stops after one reply."""
    vocab = tokenizer.get_vocab()
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids += [vocab[token] for token in END_OF_TURN_TOKENS if token in vocab]
    return list(dict.fromkeys(ids))


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

    Returns the merge record (also saved as `merge_record.json` in the output folder). Raises RuntimeError
    when the saved model's logits differ from base+adapter by more than the tolerance."""
    import torch
    from peft import PeftModel

    started = time.perf_counter()
    adapter, output = resolve_repo_path(config.adapter), resolve_repo_path(config.output)
    base = check_base_model(adapter, config.base)
    _, training_record = read_adapter_base(adapter)
    base_path = models.resolve_model(base)
    if (Path(base_path) / "config.json").exists() and "quantization_config" in read_json(
        Path(base_path) / "config.json"
    ):
        raise ValueError(
            f"{base_path} is a quantized checkpoint: merging into quantized weights rounds the adapter away "
            "(field notes §3). Point the adapter's base at the unquantized model"
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    dtype_name = str(dtype).removeprefix("torch.")
    log(f"base {base} ({base_path}) in {dtype_name} on {device}; adapter {adapter}")
    tokenizer_source = adapter if (adapter / "tokenizer_config.json").exists() else None
    tokenizer = models.load_tokenizer(str(tokenizer_source) if tokenizer_source else base)
    fmt = prompts.PromptFormat(**training_record.get("prompt_format", {}))
    conversations = sample_conversations(fmt, config.verify_prompts)

    model = models.load_model(base, dtype=dtype).to(device)
    model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    with model.disable_adapter():
        base_logits = compute_logits(model, tokenizer, conversations)
    adapter_logits = compute_logits(model, tokenizer, conversations)
    merged = model.merge_and_unload()

    eot = end_of_turn_ids(tokenizer)
    parameters = sum(p.numel() for p in merged.parameters())
    merged.generation_config.eos_token_id = eot
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    merged.generation_config.do_sample = False
    merged.config.eos_token_id = eot[0]
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.parent / f".{output.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    keep_partial = False  # a folder that failed the logit check stays for inspection, never under `output`
    try:
        merged.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        if training_record:
            shutil.copy2(adapter / TRAINING_RECORD, partial / TRAINING_RECORD)
        del model, merged
        saved = models.load_model(str(partial), dtype=dtype).to(device)
        saved_logits = compute_logits(saved, tokenizer, conversations)
        del saved
        diff = max_abs_diff(saved_logits, adapter_logits)
        tolerance = LOGIT_TOLERANCE[dtype_name]
        record = {
            "adapter": str(adapter),
            "base_model": base,
            "base_path": base_path,
            "dtype": dtype_name,
            "device": device,
            "parameters": parameters,
            "prompts": len(conversations),
            "max_abs_logit_diff": diff,
            "adapter_effect_max_abs_logit_diff": max_abs_diff(adapter_logits, base_logits),
            "tolerance": tolerance,
            "end_of_turn_token_ids": eot,
            "seconds": round(time.perf_counter() - started, 1),
        }
        if diff > tolerance:
            keep_partial = True
            raise MergeVerificationError(
                f"merged logits differ from base+adapter by {diff:.3g} > {tolerance} on {len(conversations)} "
                f"game prompts: the merge is wrong; {partial} is left for inspection"
            )
        write_result(partial / MERGE_RECORD, record)  # with the versions that decided the merge
        if output.exists():
            shutil.rmtree(output)
        os.replace(partial, output)
    finally:
        if not keep_partial:
            shutil.rmtree(partial, ignore_errors=True)
    log(
        f"merged into {output}: max |logit diff| {diff:.2e} (tolerance {tolerance}) on {len(conversations)} "
        f"prompts; the adapter moves logits by up to {record['adapter_effect_max_abs_logit_diff']:.2f}"
    )
    return record


# ------------------------------------------------------------------------------------- llama.cpp tools


def converter_dir(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    return cache_dir() / "llama.cpp" / f"llama-cpp-python-{version}"


def ensure_converter(version: str = LLAMA_CPP_PYTHON_VERSION, log: Callable[[str], None] = print) -> Path:
    """llama.cpp's `convert_hf_to_gguf.py` (with its `conversion` package and `gguf-py`), unpacked once from
    the llama-cpp-python sdist into the course cache; returns the script's path."""
    target = converter_dir(version)
    script = target / "convert_hf_to_gguf.py"
    if script.exists():
        return script
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        log(f"downloading the llama-cpp-python {version} source package (76 MB) for llama.cpp's converter")
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-binary",
            ":all:",
            "--no-deps",
            f"llama-cpp-python=={version}",
            "-d",
            tmp,
        ]
        result = subprocess.run(command, check=False, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if not sdists:
            raise ToolMissingError(
                f"could not download llama-cpp-python {version}'s source package, which carries llama.cpp's "
                f"converter ({' '.join(command)} said: {(result.stderr or result.stdout).strip()[-400:]}). "
                "Run that command where PyPI is reachable and unpack vendor/llama.cpp/convert_hf_to_gguf.py, "
                f"conversion/ and gguf-py/ into {target}"
            )
        prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(sdists[0]) as archive:
            members = [
                m
                for m in archive.getmembers()
                if m.name.startswith(prefix) and m.name[len(prefix) :].startswith(wanted)
            ]
            archive.extractall(unpacked, members=members, filter="data")
        os.replace(unpacked / prefix, target)
    return script


def load_llama_cpp() -> Any:
    """The llama-cpp-python bindings (llama.cpp's quantizer and runtime), or advice on installing them."""
    try:
        import llama_cpp
    except ImportError as error:
        raise ToolMissingError(
            f"llama.cpp's quantizer and GGUF runtime are not installed (import llama_cpp failed: {error}). "
            f"Install them with `{EXPORT_INSTALL_HINT}` (compiles llama.cpp, several minutes), then rerun"
        ) from None
    # llama.cpp logs every tensor it loads or quantizes through this logger; keep errors only.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    return llama_cpp


def llama_cpp_available() -> bool:
    try:
        load_llama_cpp()
    except ToolMissingError:
        return False
    return True


def convert_to_gguf(merged: Path, outfile: Path, outtype: str = "f16", log: Callable[[str], None] = print) -> Path:
    """Run llama.cpp's converter on a merged Hugging Face folder; the file appears only when complete."""
    if outtype not in CONVERTER_OUTTYPES:
        hint = (
            f" {outtype} is a quantizer type, not a converter type "
            "(the seed guide's `--outtype q4_k_m` fails): "
            f"convert to f16 and quantize with --quantize {outtype}"
            if outtype in QUANTIZE_FTYPES
            else ""
        )
        raise ValueError(f"--outtype must be one of {', '.join(CONVERTER_OUTTYPES)}, not {outtype!r}.{hint}")
    if not (merged / "config.json").exists():
        raise FileNotFoundError(
            f"{merged} holds no config.json: merge the adapter first (`alfworld-sft merge`, notebook 04)"
        )
    if importlib.util.find_spec("sentencepiece") is None:
        # The converter imports it before it looks at the tokenizer, even for byte-level BPE vocabularies.
        raise ToolMissingError(
            f"llama.cpp's converter needs the sentencepiece package: install it with `{EXPORT_INSTALL_HINT}`"
        )
    script = ensure_converter(log=log)
    partial = outfile.with_name(f".{outfile.name}.partial")
    # The converter needs its own gguf-py (newer than the `gguf` wheel); NO_LOCAL_GGUF would hide it.
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    with tempfile.TemporaryDirectory(dir=outfile.parent) as tmp:
        source = stage_for_converter(merged, Path(tmp))
        command = [sys.executable, str(script), str(source), "--outfile", str(partial), "--outtype", outtype]
        log(f"converting {merged} -> {outfile.name} ({outtype})")
        result = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    if result.returncode != 0 or not partial.exists():
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"llama.cpp's converter failed ({' '.join(command)}):\n{result.stderr[-2000:]}")
    os.replace(partial, outfile)
    return outfile


def stage_for_converter(merged: Path, tmp: Path) -> Path:
    """The folder for the converter: `merged` itself, or a linked copy with a plain byte-level tokenizer.json.

    transformers' GGUF import (how the default model is made, models.py) writes a byte-level BPE tokenizer
    with SentencePiece leftovers (byte_fallback, a Metaspace-style decoder). Encoding is the same either way,
    since every byte has a byte-level token, but llama.cpp's converter takes those leftovers for a
    SentencePiece vocabulary and writes one that llama.cpp tokenizes differently. Dropping them gives the
    gpt2/smollm vocabulary the original GGUF had; `export_gguf` checks llama.cpp's tokens against
    transformers'.
    """
    path = merged / "tokenizer.json"
    if not path.exists():
        return merged
    tokenizer = read_json(path)
    byte_level = (tokenizer.get("pre_tokenizer") or {}).get("type") == "ByteLevel"
    if not (byte_level and tokenizer["model"].get("type") == "BPE" and tokenizer["model"].get("byte_fallback")):
        return merged
    staged = tmp / merged.name
    staged.mkdir()
    for item in merged.iterdir():
        if item.name != "tokenizer.json":
            (staged / item.name).symlink_to(item.resolve())
    tokenizer["model"]["byte_fallback"] = False
    tokenizer["decoder"] = {
        "type": "ByteLevel",
        "add_prefix_space": True,
        "trim_offsets": True,
        "use_regex": True,
    }
    (staged / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    return staged


def quantize_gguf(
    source: Path, outfile: Path, qtype: str = "q4_k_m", threads: int = 2, log: Callable[[str], None] = print
) -> Path:
    """llama.cpp's quantizer (`llama_model_quantize`) from a f32/f16/bf16 GGUF to `qtype`."""
    if qtype not in QUANTIZE_FTYPES:
        raise ValueError(f"--quantize must be one of {', '.join(QUANTIZE_FTYPES)}, not {qtype!r}")
    llama_cpp = load_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTIZE_FTYPES[qtype]
    params.nthread = threads
    partial = outfile.with_name(f".{outfile.name}.partial")
    # The quantizer writes a line per tensor straight to stderr (fd 2); keep it for the error message only.
    # (in Jupyter, llama-cpp-python's log callback prints to sys.stderr, which is not fd 2).
    python_log = io.StringIO()
    with (
        tempfile.TemporaryFile() as native,
        _redirect_fd(2, native.fileno()),
        contextlib.redirect_stderr(python_log),
    ):
        code = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params))
        native.seek(0)
        native_log = native.read().decode(errors="replace") + python_log.getvalue()
    fallbacks = re.search(r"(\d+) of (\d+) tensor\(s\) required fallback", native_log)
    if code != 0 or not partial.exists():
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"llama.cpp's quantizer returned {code} for {source} -> {qtype}:\n{native_log[-2000:]}")
    os.replace(partial, outfile)
    if fallbacks:
        log(
            f"{fallbacks.group(0)}: rows of {qtype} blocks need a multiple of 256 columns, so llama.cpp used a "
            "simpler type there (a small model's 576-wide tensors; an 8B model's 4096 are fine)"
        )
    return outfile


@contextlib.contextmanager
def _redirect_fd(fd: int, target: int) -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(fd)
    os.dup2(target, fd)
    try:
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def prompt_token_ids(tokenizer: Any, conversations: Sequence[list[prompts.Message]]) -> list[list[int]]:
    return [
        list(tokenizer.apply_chat_template(m, add_generation_prompt=True, return_dict=True)["input_ids"])
        for m in conversations
    ]


def generate_greedy_hf(
    model: Any, prompt_ids: list[list[int]], stop_ids: Sequence[int], max_new_tokens: int
) -> list[list[int]]:
    """Greedy continuations (token ids, without the stop token) of a transformers model."""
    import torch

    replies = []
    with torch.no_grad():
        for ids in prompt_ids:
            inputs = torch.tensor([ids], device=model.device)
            out = model.generate(
                input_ids=inputs,
                attention_mask=torch.ones_like(inputs),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=list(stop_ids),
                pad_token_id=stop_ids[0],
            )
            reply = out[0, len(ids) :].tolist()
            replies.append(_cut_at_stop(reply, stop_ids))
    return replies


def generate_greedy_gguf(
    gguf: Path,
    prompt_ids: list[list[int]],
    stop_ids: Sequence[int],
    max_new_tokens: int,
    prompt_texts: Sequence[str] = (),
) -> tuple[list[list[int]], int]:
    """Greedy continuations of a GGUF in llama.cpp (the runtime Ollama uses), fed the same token ids; and how
    many of `prompt_texts` llama.cpp's own tokenizer turns into exactly those ids (what Ollama will feed)."""
    llama_cpp = load_llama_cpp()
    llm = llama_cpp.Llama(
        model_path=str(gguf),
        n_ctx=max(len(i) for i in prompt_ids) + max_new_tokens + 8,
        n_threads=2,
        n_batch=512,
        verbose=False,
    )
    same_tokens = sum(
        llm.tokenize(text.encode(), add_bos=False, special=True) == ids for text, ids in zip(prompt_texts, prompt_ids)
    )
    replies = []
    for ids in prompt_ids:
        reply: list[int] = []
        for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            if token in stop_ids or len(reply) >= max_new_tokens:
                break
            reply.append(token)
        replies.append(reply)
    llm.close()
    return replies, same_tokens


def generate_greedy_transformers_gguf(
    gguf: Path, prompt_ids: list[list[int]], stop_ids: Sequence[int], max_new_tokens: int
) -> list[list[int]]:
    """The same check without llama.cpp: transformers dequantizes the GGUF (f16/bf16/q8_0 and k-quants)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return generate_greedy_hf(model, prompt_ids, stop_ids, max_new_tokens)


def _cut_at_stop(reply: list[int], stop_ids: Sequence[int]) -> list[int]:
    for position, token in enumerate(reply):
        if token in stop_ids:
            return reply[:position]
    return reply


def divergence_margins(
    model: Any,
    prompt_ids: list[list[int]],
    reference: list[list[int]],
    candidate: list[list[int]],
    stop_ids: Sequence[int],
) -> list[float]:
    """For each reply that diverges from the reference: the merged model's logit of its own (greedy) token
    minus that of the candidate's token, at the first divergence. Small means a near-tie that rounding flips."""
    import torch

    margins = []
    for ids, ref, cand in zip(prompt_ids, reference, candidate, strict=True):
        position = next((i for i, (a, b) in enumerate(zip(ref, cand)) if a != b), min(len(ref), len(cand)))
        if ref[position : position + 1] == cand[position : position + 1]:
            continue  # identical, or both cut at max_new_tokens
        with torch.no_grad():
            inputs = torch.tensor([ids + ref[:position]], device=model.device)
            logits = model(input_ids=inputs).logits[0, -1].float()
        best_stop = max(stop_ids, key=lambda t: float(logits[t]))
        ref_token = ref[position] if position < len(ref) else best_stop
        cand_token = cand[position] if position < len(cand) else best_stop
        margins.append(round(float(logits[ref_token] - logits[cand_token]), 4))
    return margins


def compare_replies(reference: list[list[int]], candidate: list[list[int]]) -> dict[str, Any]:
    """How far two sets of greedy replies agree: identical replies, and matching tokens before the first
    divergence over all reference tokens."""
    prefix = 0
    for ref, cand in zip(reference, candidate, strict=True):
        for a, b in zip(ref, cand):
            if a != b:
                break
            prefix += 1
    total = sum(max(len(r), len(c)) for r, c in zip(reference, candidate))
    return {
        "identical_replies": sum(r == c for r, c in zip(reference, candidate)),
        "replies": len(reference),
        "token_agreement": round(prefix / total, 4) if total else 1.0,
    }


# ------------------------------------------------------------------------------------------- Ollama


def chat_family(tokenizer: Any) -> str:
    """Which Ollama TEMPLATE fits this tokenizer's chat template: 'chatml' or 'llama3'."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
    )
    if "<|im_start|>" in rendered:
        return "chatml"
    if "<|start_header_id|>" in rendered:
        return "llama3"
    raise ValueError(
        f"no Ollama TEMPLATE is known for this chat template (it renders {rendered!r}): "
        "write the Modelfile's "
        "TEMPLATE by hand from the tokenizer's chat_template"
    )


def _probe(tokenizer: Any, messages: list[prompts.Message], generation: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def build_ollama_template(tokenizer: Any) -> str:
    """A Go template (Ollama's TEMPLATE) rendering `.Messages` as the tokenizer's chat template does.

    The family's skeleton comes from lib/alfworld_sft/templates/; what varies inside a family (a default
    system prompt, Llama-3.1's dated system header, a BOS the template writes itself) is read off the
    tokenizer by rendering probe conversations."""
    family = chat_family(tokenizer)
    text = resources.files("alfworld_sft").joinpath("templates", f"ollama_{family}.gotmpl").read_text().strip()
    user = [{"role": "user", "content": "\x00"}]
    if family == "chatml":
        lone = _probe(tokenizer, user)
        default = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n<\|im_start\|>user", lone, re.DOTALL)
        block = (
            (
                '{{- if and (eq $i 0) (ne .Role "system") }}<|im_start|>system\n'
                + default.group(1)
                + "<|im_end|>\n{{ end }}"
            )
            if default
            else ""
        )
        return text.replace("@DEFAULT_SYSTEM@", block)
    with_system = _probe(tokenizer, [{"role": "system", "content": "\x01"}, *user])
    header = "<|start_header_id|>system<|end_header_id|>\n\n"
    start = with_system.index(header) + len(header)
    system_prefix = with_system[start : with_system.index("\x01")]
    lone = _probe(tokenizer, user)
    lone_system = lone[start : lone.index("<|eot_id|>")] if lone.startswith(with_system[:start]) else None
    text = text.replace("@SYSTEM_PREFIX@", system_prefix)
    if lone_system is None:
        return text.replace("@DEFAULT_SYSTEM@", "")
    return text.replace(
        "@DEFAULT_SYSTEM@",
        '{{- if and (eq $i 0) (ne .Role "system") }}' + header + lone_system + "<|eot_id|>{{ end }}",
    )


def template_prefix_added_by_runtime(tokenizer: Any) -> str:
    """Text the chat template writes that llama.cpp adds as a token instead (a leading BOS)."""
    rendered = _probe(tokenizer, [{"role": "user", "content": "x"}])
    bos = tokenizer.bos_token
    writes_bos = "bos_token" in (tokenizer.chat_template or "")
    return bos if bos and writes_bos and rendered.startswith(bos) else ""


def check_ollama_template(tokenizer: Any, template: str) -> list[dict[str, Any]]:
    """Render sample conversations with the Go template and with the tokenizer's chat template; raise
    ValueError on the first difference. Returns the compared cases."""
    bos = template_prefix_added_by_runtime(tokenizer)
    cases = []
    system = {"role": "system", "content": prompts.SYSTEM_PROMPT}
    for messages in (
        [{"role": "user", "content": "Task: put a mug in shelf.\nObservation: you see a shelf 1."}],
        sample_conversations(prompts.PromptFormat(), 2)[1],
        [system, {"role": "user", "content": "Observation: hi"}, {"role": "assistant", "content": "look"}],
    ):
        ends_with_reply = messages[-1]["role"] == "assistant"
        expected = _probe(tokenizer, messages, generation=not ends_with_reply).removeprefix(bos)
        rendered = render_go_template(
            template, {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
        )
        if rendered != expected:
            raise ValueError(
                "the Ollama TEMPLATE renders a conversation differently from the tokenizer's chat template:\n"
                f"template : {rendered!r}\ntokenizer: {expected!r}"
            )
        cases.append({"messages": len(messages), "ends_with_reply": ends_with_reply, "chars": len(rendered)})
    return cases


def build_modelfile(gguf_name: str, template: str, stop_tokens: Sequence[str], num_ctx: int | None = None) -> str:
    if '"""' in template:
        raise ValueError('the chat template contains """, which a Modelfile TEMPLATE cannot quote')
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    lines += [f'PARAMETER stop "{token}"' for token in stop_tokens]
    lines += ["PARAMETER temperature 0"]
    # Ollama's default context is shorter than a long game; it would silently cut the oldest turns.
    lines += [f"PARAMETER num_ctx {num_ctx}"] if num_ctx else []
    lines += [""]
    return "\n".join(lines)


def write_modelfile(
    output: Path, gguf: Path, tokenizer: Any, name: str, num_ctx: int | None = None
) -> tuple[Path, str]:
    """Write `output/Modelfile` for `gguf` (context `num_ctx`: the training record's max_seq_len);
    returns its path and the `ollama create` command."""
    template = build_ollama_template(tokenizer)
    check_ollama_template(tokenizer, template)
    stops = [tokenizer.convert_ids_to_tokens(i) for i in end_of_turn_ids(tokenizer)]
    path = write_text(output / "Modelfile", build_modelfile(gguf.name, template, stops, num_ctx))
    return path, f"ollama create {name} -f {path}"


# ------------------------------------------------------------------- a renderer for the Go templates above

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_TOKEN = re.compile(r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|:=|,|-?\d+|\$?[A-Za-z_]*(?:\.[A-Za-z_]\w*)+|\$\w*|\.|[A-Za-z_]\w*)')


def render_go_template(template: str, data: dict[str, Any]) -> str:
    """Render the subset of Go's text/template that the Modelfile templates use: text, `{{- -}}` trimming,
    `range $i, $m := pipeline`, `if`/`else`/`end`, `$x := pipeline`, fields, string and integer literals,
    and the functions eq, ne, and, or, not, len, slice. Anything else raises ValueError."""
    nodes, _ = _parse_nodes(_lex(template), 0, top=True)
    out: list[str] = []
    _render(nodes, data, {"$": data}, out)
    return "".join(out)


def _lex(template: str) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    position = 0
    for match in _ACTION.finditer(template):
        text = template[position : match.start()]
        if match.group(1):
            text = text.rstrip(" \t\r\n")
        items.append(("text", text))
        items.append(("action", match.group(2).strip()))
        position = match.end()
        if match.group(3):
            trailing = template[position:]
            position += len(trailing) - len(trailing.lstrip(" \t\r\n"))
    items.append(("text", template[position:]))
    return [item for item in items if item != ("text", "")]


def _parse_nodes(items: list[tuple[str, str]], index: int, top: bool = False) -> tuple[list[Any], int]:
    nodes: list[Any] = []
    while index < len(items):
        kind, value = items[index]
        index += 1
        if kind == "text":
            nodes.append(("text", value))
        elif value in ("end", "else"):
            if top:
                raise ValueError(f"unexpected {{{{ {value} }}}} in template")
            return nodes + [("stop", value)], index
        elif value.startswith(("if ", "range ")):
            keyword, _, expression = value.partition(" ")
            body, index = _parse_nodes(items, index)
            other: list[Any] = []
            if body[-1] == ("stop", "else"):
                other, index = _parse_nodes(items, index)
                if other[-1] != ("stop", "end"):
                    raise ValueError("{{ else }} must be followed by {{ end }}")
            nodes.append((keyword, expression, body[:-1], other[:-1]))
        else:
            nodes.append(("action", value))
    if not top:
        raise ValueError("template ends inside an if/range block: a {{ end }} is missing")
    return nodes, index


def _render(nodes: list[Any], dot: Any, variables: dict[str, Any], out: list[str]) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "action":
            name, _, expression = node[1].partition(" := ")
            if expression and name.startswith("$"):
                variables[name] = _evaluate(expression, dot, variables)
            else:
                value = _evaluate(node[1], dot, variables)
                out.append("" if value is None else str(value))
        elif node[0] == "if":
            branch = node[2] if _truthy(_evaluate(node[1], dot, variables)) else node[3]
            _render(branch, dot, dict(variables), out)
        elif node[0] == "range":
            match = re.fullmatch(r"(?:(\$\w+)(?:\s*,\s*(\$\w+))?\s*:=\s*)?(.+)", node[1])
            first, second, expression = match.groups()
            items = _evaluate(expression, dot, variables)
            for position, item in enumerate(items or []):
                scope = dict(variables)
                if first and second:
                    scope[first], scope[second] = position, item
                elif first:
                    scope[first] = item
                _render(node[2], item, scope, out)
            if not items:
                _render(node[3], dot, dict(variables), out)


def _truthy(value: Any) -> bool:
    return bool(value) if not isinstance(value, (int, float)) or isinstance(value, bool) else value != 0


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "eq": lambda a, *others: any(a == other for other in others),
    "ne": lambda a, b: a != b,
    "not": lambda a: not _truthy(a),
    "len": len,
    "slice": lambda items, start=0, stop=None: items[start:stop],  # Go: slice x 1 is x[1:]
}


def _evaluate(expression: str, dot: Any, variables: dict[str, Any]) -> Any:
    tokens = [t for t in _TOKEN.findall(expression) if t]
    if "".join(tokens) != re.sub(r"\s+", "", expression):
        raise ValueError(f"unsupported template expression {expression!r}")
    value, position = _command(tokens, 0, dot, variables)
    if position != len(tokens):
        raise ValueError(f"unsupported template expression {expression!r}")
    return value


def _command(tokens: list[str], position: int, dot: Any, variables: dict[str, Any]) -> tuple[Any, int]:
    head = tokens[position]
    if head in ("and", "or"):
        args, position = _arguments(tokens, position + 1, dot, variables)
        pick = (lambda v: not _truthy(v)) if head == "and" else _truthy
        return next((a for a in args if pick(a)), args[-1]), position
    if head in _FUNCTIONS:
        args, position = _arguments(tokens, position + 1, dot, variables)
        return _FUNCTIONS[head](*args), position
    if re.fullmatch(r"[A-Za-z_]\w*", head):
        raise ValueError(f"unsupported template function {head!r}")
    return _operand(tokens, position, dot, variables)


def _arguments(tokens: list[str], position: int, dot: Any, variables: dict[str, Any]) -> tuple[list[Any], int]:
    args = []
    while position < len(tokens) and tokens[position] != ")":
        value, position = _operand(tokens, position, dot, variables)
        args.append(value)
    return args, position


def _operand(tokens: list[str], position: int, dot: Any, variables: dict[str, Any]) -> tuple[Any, int]:
    token = tokens[position]
    if token == "(":
        value, position = _command(tokens, position + 1, dot, variables)
        if position >= len(tokens) or tokens[position] != ")":
            raise ValueError("unbalanced parentheses in template expression")
        return value, position + 1
    if token.startswith('"'):
        return json.loads(token), position + 1
    if re.fullmatch(r"-?\d+", token):
        return int(token), position + 1
    root, *fields = token.split(".")
    if root.startswith("$"):
        if root not in variables:
            raise ValueError(f"undefined template variable {root}")
        value = variables[root]
    else:
        value = dot
    for field in filter(None, fields):
        if not isinstance(value, dict) or field not in value:
            raise ValueError(f"template field .{field} does not exist")
        value = value[field]
    return value, position + 1


# ------------------------------------------------------------------------------------------ export


def file_size_mb(path: Path) -> float:
    return round(path.stat().st_size / 1e6, 1)


def export_gguf(config: ExportConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Convert, quantize, verify and write the Modelfile; returns (and saves as gguf_record.json) what was
    done, with file sizes and agreement with the merged model. Steps whose tools are missing are listed
    under `skipped` with the install advice instead of failing."""
    import torch

    started = time.perf_counter()
    merged, output = resolve_repo_path(config.merged), resolve_repo_path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"merged": str(merged), "files": {}, "verification": {}, "skipped": []}
    converted = convert_to_gguf(merged, output / f"{config.name}-{config.outtype}.gguf", config.outtype, log)
    files = {config.outtype: converted}
    has_llama_cpp = llama_cpp_available()
    if config.quantize and has_llama_cpp:
        log(f"quantizing {converted.name} -> {config.quantize}")
        files[config.quantize] = quantize_gguf(
            converted, output / f"{config.name}-{config.quantize}.gguf", config.quantize, log=log
        )
    elif config.quantize:
        record["skipped"].append(
            f"quantize to {config.quantize}: install llama.cpp's tools with `{EXPORT_INSTALL_HINT}`"
        )
    record["files"] = {kind: {"path": str(p), "size_mb": file_size_mb(p)} for kind, p in files.items()}

    tokenizer = models.load_tokenizer(str(merged))
    training_record = read_json(merged / TRAINING_RECORD) if (merged / TRAINING_RECORD).exists() else {}
    fmt = prompts.PromptFormat(**training_record.get("prompt_format", {}))
    conversations = sample_conversations(fmt, config.verify_prompts)
    prompt_ids = prompt_token_ids(tokenizer, conversations)
    prompt_texts = [_probe(tokenizer, messages, generation=True) for messages in conversations]
    stop_ids = end_of_turn_ids(tokenizer)
    model = models.load_model(str(merged), dtype=torch.float32)
    reference = generate_greedy_hf(model, prompt_ids, stop_ids, config.max_new_tokens)
    record["reference_replies"] = [tokenizer.decode(r) for r in reference]
    for kind, path in files.items():
        tokenized = None
        if has_llama_cpp:
            runtime = "llama.cpp"
            replies, tokenized = generate_greedy_gguf(path, prompt_ids, stop_ids, config.max_new_tokens, prompt_texts)
        else:
            runtime = "transformers"
            replies = generate_greedy_transformers_gguf(path, prompt_ids, stop_ids, config.max_new_tokens)
        agreement = compare_replies(reference, replies)
        agreement["prompts_tokenized_identically"] = tokenized
        agreement["divergence_margins"] = divergence_margins(model, prompt_ids, reference, replies, stop_ids)
        must_match = kind in CONVERTER_OUTTYPES
        agreement.update(runtime=runtime, must_match=must_match, replies_text=[tokenizer.decode(r) for r in replies])
        record["verification"][kind] = agreement
        log(
            f"{path.name}: {file_size_mb(path)} MB, "
            f"{agreement['identical_replies']}/{agreement['replies']} replies "
            f"identical to the merged model's, token agreement {agreement['token_agreement']:.0%} ({runtime}); "
            f"logit margins where they part: {agreement['divergence_margins'] or 'none'}"
        )
    if not has_llama_cpp:
        record["skipped"].append(f"check in llama.cpp (the runtime Ollama uses): `{EXPORT_INSTALL_HINT}`")

    served = files.get(config.quantize or "", converted)
    num_ctx = training_record.get("max_seq_len")
    modelfile, command = write_modelfile(output, served, tokenizer, config.name, num_ctx)
    record.update(modelfile=str(modelfile), ollama_create=command, ollama_created=False)
    if config.create_ollama and shutil.which("ollama"):
        result = subprocess.run(command.split(), check=False, capture_output=True, text=True)
        record["ollama_created"] = result.returncode == 0
        log(result.stdout + result.stderr)
    else:
        log(f"ollama is not on PATH; to serve the model, install it (https://ollama.com) and run:\n  {command}")
    for message in record["skipped"]:
        log(f"skipped: {message}")
    record["seconds"] = round(time.perf_counter() - started, 1)
    try:
        record["llama_cpp_python"] = metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        record["llama_cpp_python"] = None
    write_result(output / GGUF_RECORD, record)
    del model
    failed = [
        k
        for k, v in record["verification"].items()
        if (v["must_match"] and any(margin > NEAR_TIE_LOGITS for margin in v["divergence_margins"]))
        or v["prompts_tokenized_identically"] not in (None, v["replies"])
    ]
    if failed:
        raise RuntimeError(
            f"the {', '.join(failed)} GGUF's prompt tokens or greedy replies differ from the merged model's "
            f"beyond near-ties (top-two logits within {NEAR_TIE_LOGITS}) "
            "(see "
            f"{output / GGUF_RECORD}): the conversion lost more than rounding"
        )
    return record


def export_gguf_when_installed(config: ExportConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """`export_gguf` when llama.cpp's tools are installed; otherwise say what to install and skip (notebook 04
    keeps going, so the course runs on a machine without the `export` extra)."""
    if not llama_cpp_available():
        advice = (
            "GGUF export skipped: llama.cpp's tools are not installed; " + f"install them with `{EXPORT_INSTALL_HINT}`"
        )
        log(advice)
        return {"skipped": [advice], "files": {}, "verification": {}}
    return export_gguf(config, log)


def format_gguf_table(record: dict[str, Any], parameters: int) -> str:
    """The GGUF files of an export record: size, bits per weight, agreement with the merged model."""
    rows = [f"{'file':<34} {'MB':>8} {'bits/weight':>12} {'identical replies':>18} {'token agreement':>16}"]
    for kind, entry in record["files"].items():
        check = record["verification"].get(kind, {})
        bits = entry["size_mb"] * 1e6 * 8 / parameters
        replies = f"{check.get('identical_replies', '-')}/{check.get('replies', '-')}"
        agreement = f"{check['token_agreement']:.0%}" if "token_agreement" in check else "-"
        name = Path(entry["path"]).name
        rows.append(f"{name:<34} {entry['size_mb']:>8.1f} {bits:>12.2f} {replies:>18} {agreement:>16}")
    return "\n".join(rows)


def summarize_export(merge: dict[str, Any], gguf: dict[str, Any]) -> dict[str, Any]:
    """The figures notebook 04 keeps: the merge check, GGUF sizes and agreement, the Ollama command."""
    merge_keys = (
        "base_model",
        "dtype",
        "max_abs_logit_diff",
        "tolerance",
        "adapter_effect_max_abs_logit_diff",
        "seconds",
    )
    check_keys = (
        "identical_replies",
        "replies",
        "token_agreement",
        "prompts_tokenized_identically",
        "runtime",
    )
    return {
        "merge": {key: merge[key] for key in merge_keys},
        "gguf_files": gguf["files"],
        "gguf_verification": {
            kind: {key: check[key] for key in check_keys} for kind, check in gguf["verification"].items()
        },
        "ollama_create": gguf.get("ollama_create"),
        "skipped": gguf["skipped"],
    }


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


# --------------------------------------------------------------------------------------------- CLI


def configure_parser(subparsers: argparse._SubParsersAction) -> None:
    merge = subparsers.add_parser("merge", help="merge a LoRA adapter into its unquantized base and verify it")
    merge.add_argument("--adapter", default="results/sft_adapter", help="adapter folder (default: %(default)s)")
    merge.add_argument("--output", default="results/sft_merged", help="merged folder (default: %(default)s)")
    merge.add_argument("--base", default=None, help="optional: must be the model the adapter was trained on")
    merge.add_argument("--verify-prompts", type=int, default=MergeConfig.verify_prompts)
    merge.set_defaults(func=_run_merge)
    export = subparsers.add_parser("export-gguf", help="convert a merged folder to GGUF, quantize, write a Modelfile")
    export.add_argument("--merged", default="results/sft_merged", help="merged folder (default: %(default)s)")
    export.add_argument("--output", default="results/gguf", help="output folder (default: %(default)s)")
    export.add_argument(
        "--outtype",
        default=ExportConfig.outtype,
        help=f"converter type: {', '.join(CONVERTER_OUTTYPES)} (default: %(default)s)",
    )
    export.add_argument(
        "--quantize",
        default=ExportConfig.quantize,
        help=f"then quantize: {', '.join(QUANTIZE_FTYPES)} or none (default: %(default)s)",
    )
    export.add_argument("--name", default=ExportConfig.name, help="Ollama model name (default: %(default)s)")
    export.add_argument("--no-ollama", action="store_true", help="only print the `ollama create` command")
    export.set_defaults(func=_run_export)


def _run_merge(args: argparse.Namespace) -> int:
    merge_adapter(
        MergeConfig(
            adapter=Path(args.adapter),
            output=Path(args.output),
            base=args.base,
            verify_prompts=args.verify_prompts,
        )
    )
    return 0


def _run_export(args: argparse.Namespace) -> int:
    quantize = None if args.quantize in (None, "", "none") else args.quantize.lower()
    config = ExportConfig(
        merged=Path(args.merged),
        output=Path(args.output),
        outtype=args.outtype.lower(),
        quantize=quantize,
        name=args.name,
        create_ollama=not args.no_ollama,
    )
    record = export_gguf(config)
    print(json.dumps({k: record[k] for k in ("files", "modelfile", "ollama_create", "skipped")}, indent=2))
    return 0
