"""GGUF (04, second section): a merged Hugging Face folder -> GGUF files, checked in llama.cpp.

* `convert_to_gguf` runs llama.cpp's own `convert_hf_to_gguf.py` (taken from the llama-cpp-python source package
  on PyPI and unpacked once into the course cache, field notes §6) to f32, f16, bf16 or q8_0.
* `quantize_gguf` runs llama.cpp's quantizer (the llama-cpp-python bindings) to a k-quant such as Q4_K_M, which
  the converter cannot write (`--outtype q4_k_m` fails, field notes §3).
* `export_gguf` does both, then checks every file in llama.cpp, the runtime Ollama uses: llama.cpp must tokenize
  each sample game prompt as transformers does, and greedy replies must match the merged model's (f16/bf16/q8_0;
  Q4_K_M's agreement is reported). The check plays the merged model in float32: where memory is short the export
  says so before converting, and `--verify-prompts 0` skips the check. It copies the training record beside the
  GGUF files, so that whatever plays them prompts the model as it was trained, and saves `gguf_record.json`.

    alfworld-sft export-gguf --merged results/sft_merged --output results/gguf --outtype f16 --quantize q4_k_m

The command also writes the Ollama Modelfile (`alfworld_sft.ollama`). Without the llama.cpp bindings
(`pip install -e '.[export]'`) the quantize step and llama.cpp checks are skipped with that advice; the
conversion still runs (the converter is pure Python) and is checked with transformers' own GGUF loader. Every
file is built under a name holding this process's id and renamed into place when complete; what a killed export
left is removed by the next one.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import io
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from alfworld_sft import files, flags, models, ollama, prompts, records
from alfworld_sft.flags import option
from alfworld_sft.merge import sample_conversations
from alfworld_sft.paths import cache_dir, resolve_repo_path
from alfworld_sft.results import write_result

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # the `export` extra's pin; its sdist vendors llama.cpp and its converter
EXPORT_INSTALL_HINT = "pip install -e '.[export]'"
GGUF_RECORD = "gguf_record.json"
CONVERTER_OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # what convert_hf_to_gguf.py --outtype writes
# llama.cpp's `llama_ftype` numbers for the quantizer (include/llama.h).
QUANTIZE_FTYPES = {"q4_k_m": 15, "q4_k_s": 14, "q5_k_m": 17, "q6_k": 18, "q8_0": 7}
# A f16/bf16/q8_0 GGUF must reproduce the merged model's greedy replies, except where the merged model itself
# barely prefers its token: a first divergence whose logit margin there is below this is a rounding-level tie.
NEAR_TIE_LOGITS = 0.1


class ToolMissingError(RuntimeError):
    """A llama.cpp tool that is not installed; the message says what to install."""


class CheckMemoryError(RuntimeError):
    """The check against the merged model needs more memory than this machine has free."""


class GGUFVerificationError(RuntimeError):
    """A GGUF whose prompt tokens or greedy replies differ from the merged model's beyond rounding."""


@dataclass(frozen=True)
class ExportConfig:
    """What `export_gguf` converts and checks. The fields with help are `alfworld-sft export-gguf` flags (`flags`);
    the folders have command-line defaults only (`CLI_DEFAULTS`)."""

    merged: Path = option(help="merged Hugging Face folder (default: %(default)s)")
    output: Path = option(
        help="output folder: the GGUF files, their training record and the Modelfile (default: %(default)s)"
    )
    # no choices: the command takes either case (`_run_export`)
    outtype: str = option("f16", f"converter type: {', '.join(CONVERTER_OUTTYPES)} (default: %(default)s)")
    quantize: str | None = option(  # None: no quantized file (`none` on the command line)
        "q4_k_m", f"then quantize with llama.cpp: {', '.join(QUANTIZE_FTYPES)} or none (default: %(default)s)"
    )
    name: str = option("alfworld-sft", "Ollama model name, and the GGUF files' stem (default: %(default)s)")
    verify_prompts: int = option(
        3,
        "game prompts whose greedy replies every file must reproduce; 0 skips the check, which loads the merged "
        "model in float32 (default: %(default)s)",
    )
    max_new_tokens: int = 16  # length of each compared greedy reply (Python only: no flag)


CLI_DEFAULTS = {"merged": "results/sft_merged", "output": "results/gguf"}  # the course's layout


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
    files.remove_stale_partials(target.parent)  # a 76 MB download a killed run left
    work = files.partial_path(target)
    try:
        work.mkdir()
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
            str(work),
        ]
        result = subprocess.run(command, check=False, capture_output=True, text=True)
        sdists = list(work.glob("llama_cpp_python-*.tar.gz"))
        if not sdists:
            raise ToolMissingError(
                f"could not download llama-cpp-python {version}'s source package, which carries llama.cpp's "
                f"converter ({' '.join(command)} said: {(result.stderr or result.stdout).strip()[-400:]}). "
                "Run that command where PyPI is reachable and unpack vendor/llama.cpp/convert_hf_to_gguf.py, "
                f"conversion/ and gguf-py/ into {target}"
            )
        prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
        unpacked = work / "unpacked"
        with tarfile.open(sdists[0]) as archive:
            members = [
                m
                for m in archive.getmembers()
                if m.name.startswith(prefix) and m.name[len(prefix) :].startswith(wanted)
            ]
            archive.extractall(unpacked, members=members, filter="data")
        os.replace(unpacked / prefix, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
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


def llama_cpp_missing() -> str | None:
    """Why llama.cpp's bindings cannot be used here (the import error and what to install), or None when they can."""
    try:
        load_llama_cpp()
    except ToolMissingError as error:
        return str(error)
    return None


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
    partial = files.partial_path(outfile)
    staging = files.partial_path(outfile.with_name(f"{outfile.stem}-source"))
    # The converter needs its own gguf-py (newer than the `gguf` wheel); NO_LOCAL_GGUF would hide it.
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    try:
        source = stage_for_converter(merged, staging)
        command = [sys.executable, str(script), str(source), "--outfile", str(partial), "--outtype", outtype]
        log(f"converting {merged} -> {outfile.name} ({outtype})")
        result = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
        if result.returncode != 0 or not partial.exists():
            raise RuntimeError(f"llama.cpp's converter failed ({' '.join(command)}):\n{result.stderr[-2000:]}")
        os.replace(partial, outfile)
    finally:
        partial.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    return outfile


def stage_for_converter(merged: Path, staging: Path) -> Path:
    """The folder for the converter: `merged` itself, or a linked copy under `staging` with a plain byte-level
    tokenizer.json.

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
    tokenizer = files.read_json_object(path, "the merged folder is damaged: merge again (`alfworld-sft merge`)")
    byte_level = (tokenizer.get("pre_tokenizer") or {}).get("type") == "ByteLevel"
    model = tokenizer.get("model") or {}
    if not (byte_level and model.get("type") == "BPE" and model.get("byte_fallback")):
        return merged
    staged = staging / merged.name  # the converter names the model after its folder
    staged.mkdir(parents=True)
    for item in merged.iterdir():
        if item.name != "tokenizer.json":
            (staged / item.name).symlink_to(item.resolve())
    model["byte_fallback"] = False
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
    partial = files.partial_path(outfile)
    # The quantizer writes a line per tensor straight to stderr (fd 2); keep it for the error message only.
    # (in Jupyter, llama-cpp-python's log callback prints to sys.stderr, which is not fd 2).
    python_log = io.StringIO()
    try:
        with (
            tempfile.TemporaryFile() as native,
            _redirect_fd(2, native.fileno()),
            contextlib.redirect_stderr(python_log),
        ):
            code = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params))
            native.seek(0)
            native_log = native.read().decode(errors="replace") + python_log.getvalue()
        if code != 0 or not partial.exists():
            raise RuntimeError(f"llama.cpp's quantizer returned {code} for {source} -> {qtype}:\n{native_log[-2000:]}")
        os.replace(partial, outfile)
    finally:
        partial.unlink(missing_ok=True)
    fallbacks = re.search(r"(\d+) of (\d+) tensor\(s\) required fallback", native_log)
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


# ------------------------------------------------------------------------------ checks against the merged model


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


# ------------------------------------------------------------------------------------------ export


def file_size_mb(path: Path) -> float:
    return round(path.stat().st_size / 1e6, 1)


def export_gguf(config: ExportConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Convert, quantize, verify, and put the training record beside the files; returns (and saves as
    gguf_record.json) what was done, with file sizes, agreement with the merged model and the file to serve.
    Steps whose tools are missing are listed under `skipped` with the install advice instead of failing."""
    started = time.perf_counter()
    merged, output = resolve_repo_path(config.merged), resolve_repo_path(config.output)
    if config.quantize and config.outtype in QUANTIZE_FTYPES:
        raise ValueError(
            f"--outtype {config.outtype} is already quantized and llama.cpp does not quantize it again to "
            f"{config.quantize}: convert with --outtype f16 and --quantize {config.outtype} (or {config.quantize}), "
            "or pass --quantize none"
        )
    if config.verify_prompts:
        check_reference_fits(merged)  # before the conversion: an 8B model's takes many minutes
    with files.output_folder(output):
        for stale in files.remove_stale_partials(output):
            log(f"removed {stale}, left by an export that was killed")
        training_record = records.read_training_record(merged, required=False)
        record: dict[str, Any] = {"merged": str(merged), "files": {}, "verification": {}, "skipped": []}
        converted = convert_to_gguf(merged, output / f"{config.name}-{config.outtype}.gguf", config.outtype, log)
        gguf_files = {config.outtype: converted}
        missing = llama_cpp_missing()
        has_llama_cpp = missing is None
        if config.quantize and has_llama_cpp:
            log(f"quantizing {converted.name} -> {config.quantize}")
            gguf_files[config.quantize] = quantize_gguf(
                converted, output / f"{config.name}-{config.quantize}.gguf", config.quantize, log=log
            )
        elif config.quantize:
            record["skipped"].append(f"quantize to {config.quantize}: {missing}")
        record["files"] = {kind: {"path": str(p), "size_mb": file_size_mb(p)} for kind, p in gguf_files.items()}
        record["served"] = str(gguf_files.get(config.quantize or "", converted))
        # The files are played as the model was trained only if their folder says how (prompt format, window, data
        # format); a record left from an earlier export of another model would say it wrong.
        if records.copy_training_record(merged, output) is None:
            (output / records.TRAINING_RECORD_FILE).unlink(missing_ok=True)

        if config.verify_prompts:
            verify_gguf_files(config, merged, gguf_files, training_record, record, has_llama_cpp, log)
        else:
            record["skipped"].append("the check against the merged model (--verify-prompts 0)")
        if not has_llama_cpp:
            record["skipped"].append(f"check in llama.cpp (the runtime Ollama uses): {missing}")
        for message in record["skipped"]:
            log(f"skipped: {message}")
        record["seconds"] = round(time.perf_counter() - started, 1)
        try:
            record["llama_cpp_python"] = metadata.version("llama-cpp-python")
        except metadata.PackageNotFoundError:
            record["llama_cpp_python"] = None
        write_result(output / GGUF_RECORD, record)
        failed = [
            k
            for k, v in record["verification"].items()
            if (v["must_match"] and any(margin > NEAR_TIE_LOGITS for margin in v["divergence_margins"]))
            or v["prompts_tokenized_identically"] not in (None, v["replies"])
        ]
        if failed:
            raise GGUFVerificationError(
                f"the {', '.join(failed)} GGUF's prompt tokens or greedy replies differ from the merged model's "
                f"beyond near-ties (top-two logits within {NEAR_TIE_LOGITS}) (see {output / GGUF_RECORD}): "
                "the conversion lost more than rounding"
            )
        return record


def check_reference_fits(merged: Path) -> None:
    """The check plays the merged model in float32 on the CPU beside llama.cpp: say so before converting when this
    machine's free memory cannot hold it (an 8B model needs ~32 GB)."""
    import psutil
    from safetensors import safe_open

    parameters = 0
    for shard in sorted(merged.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as handle:
            for name in handle.keys():
                parameters += math.prod(handle.get_slice(name).get_shape())
    needed, available = parameters * 4, psutil.virtual_memory().available
    if needed > available:
        raise CheckMemoryError(
            f"the check against the merged model loads it in float32 on the CPU: {needed / 1e9:.1f} GB for "
            f"{parameters / 1e9:.2f} B parameters, and this machine has {available / 1e9:.1f} GB of memory free. "
            "Convert without the check (--verify-prompts 0), or export on a machine with more memory."
        )


def verify_gguf_files(
    config: ExportConfig,
    merged: Path,
    gguf_files: Mapping[str, Path],
    training_record: records.TrainingRecord | None,
    record: dict[str, Any],
    has_llama_cpp: bool,
    log: Callable[[str], None],
) -> None:
    """Greedy replies of every GGUF file on sample game prompts against the merged model's, into `record`."""
    import torch

    tokenizer = models.load_tokenizer(str(merged))
    conversations = sample_conversations(config.verify_prompts, training_record)
    prompt_ids = prompt_token_ids(tokenizer, conversations)
    prompt_texts = [
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        for messages in conversations
    ]
    stop_ids = models.stop_token_ids(tokenizer, training_record.end_of_turn if training_record else None)
    model = models.load_model(str(merged), dtype=torch.float32)
    reference = generate_greedy_hf(model, prompt_ids, stop_ids, config.max_new_tokens)
    record["reference_replies"] = [tokenizer.decode(r) for r in reference]
    for kind, path in gguf_files.items():
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
    del model


def export_gguf_when_installed(config: ExportConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """`export_gguf` when llama.cpp's tools are installed; otherwise say what to install and skip (notebook 04
    keeps going, so the course runs on a machine without the `export` extra)."""
    missing = llama_cpp_missing()
    if missing is not None:
        advice = f"GGUF export skipped: {missing}"
        log(advice)
        return {"skipped": [advice], "files": {}, "verification": {}, "served": None}
    return export_gguf(config, log)


def format_gguf_table(record: Mapping[str, Any], parameters: int) -> str:
    """The GGUF files of an export record: size, bits per weight, agreement with the merged model."""
    if not record["files"]:
        return "no GGUF files: " + "; ".join(record["skipped"])
    rows = [f"{'file':<34} {'MB':>8} {'bits/weight':>12} {'identical replies':>18} {'token agreement':>16}"]
    for kind, entry in record["files"].items():
        check = record["verification"].get(kind, {})
        bits = entry["size_mb"] * 1e6 * 8 / parameters
        replies = f"{check.get('identical_replies', '-')}/{check.get('replies', '-')}"
        agreement = f"{check['token_agreement']:.0%}" if "token_agreement" in check else "-"
        name = Path(entry["path"]).name
        rows.append(f"{name:<34} {entry['size_mb']:>8.1f} {bits:>12.2f} {replies:>18} {agreement:>16}")
    return "\n".join(rows)


def summarize_export(merge: Mapping[str, Any], gguf: Mapping[str, Any], modelfile: Mapping[str, Any]) -> dict[str, Any]:
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
        "ollama_create": modelfile.get("ollama_create"),
        "skipped": list(dict.fromkeys([*gguf["skipped"], *modelfile.get("skipped", [])])),
    }


# --------------------------------------------------------------------------------------------- CLI


def configure_parser(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser("export-gguf", help="convert a merged folder to GGUF, quantize, write a Modelfile")
    flags.add_options(export, ExportConfig, defaults=CLI_DEFAULTS)
    # Not an ExportConfig field: it decides what the Modelfile step does (ollama.ModelfileConfig.create_ollama).
    export.add_argument("--no-ollama", action="store_true", help="only print the `ollama create` command")
    export.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    files.check_output(resolve_repo_path(args.output), "--output", folder=True)
    quantize = None if args.quantize in (None, "", "none") else args.quantize.lower()
    config = flags.config_from_args(ExportConfig, args, outtype=args.outtype.lower(), quantize=quantize)
    record = export_gguf(config)
    modelfile = ollama.write_modelfile(
        ollama.ModelfileConfig(
            gguf=Path(record["served"]), merged=config.merged, name=args.name, create_ollama=not args.no_ollama
        )
    )
    print(
        json.dumps(
            {
                "files": record["files"],
                "modelfile": modelfile["modelfile"],
                "ollama_create": modelfile["ollama_create"],
                "skipped": record["skipped"],
            },
            indent=2,
        )
    )
    return 0
