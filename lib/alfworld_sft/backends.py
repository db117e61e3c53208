"""Model backends: one interface over several engines, continuous batching where the engine allows it.

A backend answers `Request`s. The rollout loop (`alfworld_sft.rollouts`) keeps many games in flight: it
`submit`s each game's request as soon as the game needs one, calls `step()` and hands every finished `Reply` back
to its game. `generate(requests)` is the same for a plain list.

* `TransformersBackend`: a local transformers model (the default's name, a hub id or a folder), optionally with a
  LoRA adapter (merged into its weights at load), on the GPU when there is one, decoded by `decoding.SlotDecoder`
  (continuous batching, per-game prefix reuse, grounded commands, seeded sampling).
* `OllamaBackend`: a model served by Ollama (`/api/chat`), e.g. the one notebook 04 exported.
* `VllmBackend`: vLLM's offline engine, when vLLM is installed (GPU machines).
* `served.ServedBackend`: a model behind any server that speaks OpenAI's API (`openai:URL/v1/NAME`: llama.cpp's
  `llama-server`, llama-cpp-python's server, `vllm serve`, Ollama's `/v1`, `transformers serve`), or a GGUF file
  played through llama-cpp-python's server, which it starts and stops (`gguf:PATH`); grounded commands through a
  GBNF grammar where the server takes one. `served.load_served_backend` loads it (`served` builds on this module).
* `ExpertBackend`: replays the expert's next action (the harness's own sanity check).

Every backend carries a `PromptCodec`: the model's training record (prompt format, window, data format, end of
turn: `records.TrainingRecord`) and its tokenizer, so that agents prompt it exactly as it was trained and count
prompt tokens as the model does. Engine worker processes rebuild the codec from `codec.spec()`.

`choose_backend` names the backend without loading anything (a finished run only summarizes) and refuses an
adapter on a base model it was not trained on; `load_backend` loads a local, Ollama or expert one.
`weights_fingerprint` identifies the weights behind a name, so that a game log of another adapter is never reused.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alfworld_sft import llama_server, records
from alfworld_sft.paths import resolve_repo_path
from alfworld_sft.prompts import Message

EXPERT_MODEL = "expert"  # `--model expert`: the scripted expert backend
OLLAMA_URL = "http://localhost:11434"
BACKENDS = ("auto", "transformers", "ollama", "vllm", "openai", "gguf", "expert")
SERVED_KINDS = ("openai", "gguf")  # played over HTTP by `served.ServedBackend`
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


class BackendError(RuntimeError):
    """A backend that cannot serve: the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Request:
    """One generation an agent asks for."""

    messages: tuple[Message, ...]  # system, then user/assistant turns, ending on a user turn
    max_new_tokens: int  # the most tokens this reply may have (a grounded command may run past it to finish)
    expert_action: str | None = None  # the expert's next command (read by ExpertBackend only)
    session: Hashable | None = None  # the conversation this request continues (a backend may reuse its prefix)
    prompt_ids: tuple[int, ...] | None = None  # the rendered prompt's token ids, when the caller encoded it
    choices: tuple[str, ...] | None = None  # grounded: the reply's command must be one of these
    choice_after: str | None = None  # grounding starts after this marker ("Action:"); None: from the first token
    temperature: float = 0.0  # 0: greedy; above: sampled
    sample_seed: int = 0  # seeds the sampling of this reply (independent of the other requests)


@dataclass(frozen=True)
class Reply:
    text: str  # the generated text, special tokens removed
    new_tokens: int  # tokens generated (up to and including the end-of-turn token)
    seconds: float  # this request's share of the model's time


# ------------------------------------------------------------------------------------------------- codec


@dataclass(frozen=True)
class CodecSpec:
    """What an engine worker needs to rebuild a backend's codec (picklable)."""

    tokenizer: str | None  # a model name, hub id or folder whose tokenizer renders prompts; None: estimate
    record_folder: str | None  # the folder holding the training record; None: a base model


class PromptCodec:
    """How prompts are rendered and counted for one model: its chat template and its training record."""

    def __init__(self, spec: CodecSpec, *, tokenizer: Any = None):
        from alfworld_sft import models

        self._spec = spec
        self.training_record = records.read_training_record(spec.record_folder, required=False)
        self.tokenizer = tokenizer
        if self.tokenizer is None and spec.tokenizer is not None:
            self.tokenizer = models.load_tokenizer(spec.tokenizer)

    def spec(self) -> CodecSpec:
        return self._spec

    @property
    def data_format(self) -> str:
        return self.training_record.data_format if self.training_record else "commands"

    def encode(self, messages: Sequence[Message]) -> list[int] | None:
        """The prompt's token ids (with the generation prompt), or None without a tokenizer."""
        if self.tokenizer is None:
            return None
        text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens of the rendered prompt; without a tokenizer, an estimate of 4 characters a token."""
        ids = self.encode(messages)
        if ids is None:
            return sum(len(m["content"]) for m in messages) // 4 + 4 * len(messages)
        return len(ids)


def codec_spec(model: str, adapter: str | Path | None = None) -> CodecSpec:
    """A local model's codec: the adapter's tokenizer (saved with it) or the model's, and the adapter's (or the
    model folder's) training record. Loads no weights: notebooks preview prompts with it."""
    if model == EXPERT_MODEL and adapter is None:
        return CodecSpec(None, None)  # the expert reads no prompt: no tokenizer to load
    record_folder = str(adapter) if adapter is not None else _local_folder(model)
    tokenizer = str(adapter) if adapter and (Path(adapter) / "tokenizer_config.json").exists() else model
    return CodecSpec(tokenizer, record_folder)


# ----------------------------------------------------------------------------------------------- backends


class Backend:
    """The interface every backend implements; `name` labels results.

    `submit`/`step` keep requests in flight; the base class answers everything queued at each `step` with one
    `answer` call (engines without continuous batching batch on their side, or not at all)."""

    def __init__(self, name: str, codec: PromptCodec):
        self.name = name
        self.codec = codec
        self._queue: dict[Hashable, Request] = {}

    def answer(self, requests: Sequence[Request]) -> list[Reply]:
        raise NotImplementedError

    def submit(self, key: Hashable, request: Request) -> None:
        self._check_request(request)
        self._queue[key] = request

    def step(self) -> list[tuple[Hashable, Reply]]:
        keys, requests = list(self._queue), list(self._queue.values())
        self._queue.clear()
        return list(zip(keys, self.answer(requests))) if requests else []

    @property
    def busy(self) -> bool:
        return bool(self._queue)

    def release(self, session: Hashable) -> None:
        """A game is finished: forget what was kept for it (nothing by default)."""

    def abort(self) -> None:
        """Drop every request in flight (a rollout that stopped early); the backend is ready for a new run."""
        self._queue.clear()

    def generate(self, requests: Sequence[Request]) -> list[Reply]:
        """Answer a list of requests (through submit/step, so every backend behaves as in a rollout)."""
        for index, request in enumerate(requests):
            self.submit(("generate", index), request)
        replies: dict[Hashable, Reply] = {}
        while self.busy:
            replies.update(self.step())
        return [replies[("generate", index)] for index in range(len(requests))]

    def _check_request(self, request: Request) -> None:
        if request.choices is not None and not self.grounds_choices:
            raise BackendError(
                f"grounded actions (--actions constrained) need the transformers backend; {self.name} decodes freely"
            )

    grounds_choices = False  # can restrict a reply to `Request.choices`
    slots = 8  # requests it answers together well: how many games the rollout loop keeps in flight by default
    games_at_once: int | None = None  # a cap on games in flight, whatever the engine workers; None: none

    def close(self) -> None:
        """Free what the backend holds (nothing by default)."""


class ExpertBackend(Backend):
    """Replies with the expert's next command (empty text where a request has none, e.g. a plan)."""

    grounds_choices = True  # the expert's command is always admissible

    def __init__(self) -> None:
        super().__init__(EXPERT_MODEL, PromptCodec(CodecSpec(None, None)))

    def answer(self, requests: Sequence[Request]) -> list[Reply]:
        return [Reply(text=r.expert_action or "", new_tokens=0, seconds=0.0) for r in requests]


class TransformersBackend(Backend):
    """A local transformers causal LM decoded by `decoding.SlotDecoder` (module docstring).

    Greedy replies do not depend on the batch, the rows or the prefix reuse (up to float rounding: tests compare
    float32). `batch_size` is the number of rows: games whose requests decode together and keep their cache."""

    grounds_choices = True

    def __init__(
        self,
        model: str,
        *,
        adapter: str | Path | None = None,
        dtype: str = "auto",
        threads: int | None = None,
        device: str = "auto",
        batch_size: int = 8,
    ):
        import torch

        from alfworld_sft import models
        from alfworld_sft.decoding import SlotDecoder, register_grouped_attention

        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"device {device!r} asked for, but torch sees no CUDA GPU: use --device cpu")
        if batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
        codec = PromptCodec(codec_spec(model, adapter))
        super().__init__(_label(model, adapter), codec)
        self.tokenizer = codec.tokenizer
        # On a CPU, eager attention decodes a batch of 8 over ~800 cached tokens in 54 ms where SDPA takes 125 ms
        # (bfloat16, 2 threads; SDPA falls back to its slow path with a mask), and eager without its key/value
        # copies faster still (`decoding.grouped_attention`); on a GPU SDPA is faster.
        attention = "sdpa" if device.startswith("cuda") else register_grouped_attention()
        self.dtype = models.resolve_dtype(dtype, device)
        self.model = models.load_model(model, dtype=getattr(torch, self.dtype), attn_implementation=attention)
        self.model.to(device)
        if adapter is not None:
            from peft import PeftModel

            # Folded into the weights once: every forward then runs the base model's kernels only. Unmerged, the
            # adapter's extra matmuls on seven projections a layer cost ~25% of a CPU decode and more on a GPU,
            # where a 135M model's forward is bound by kernel launches.
            tuned = PeftModel.from_pretrained(self.model, str(Path(adapter).expanduser()))
            self.model = tuned.merge_and_unload()
        self.model.eval()
        record = codec.training_record
        marker = record.end_of_turn if record and record.end_of_turn else None
        self.stop_ids = models.stop_token_ids(self.tokenizer, marker)
        self.decoder = SlotDecoder(self.model, self.tokenizer, stop_ids=self.stop_ids, rows=batch_size)
        self.slots = batch_size

    def submit(self, key: Hashable, request: Request) -> None:
        self._check_request(request)
        ids = request.prompt_ids if request.prompt_ids is not None else self.codec.encode(request.messages)
        self.decoder.submit(key, request, ids, request.session)

    def step(self) -> list[tuple[Hashable, Reply]]:
        started = time.perf_counter()
        finished = self.decoder.step()
        share = (time.perf_counter() - started) / max(1, len(finished))
        replies = []
        for key, ids in finished:
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            replies.append((key, Reply(text=text, new_tokens=len(ids), seconds=share)))
        return replies

    @property
    def busy(self) -> bool:
        return self.decoder.busy

    def release(self, session: Hashable) -> None:
        self.decoder.release(session)

    def abort(self) -> None:
        self.decoder.abort()

    def close(self) -> None:
        for row in self.decoder.rows:
            row.owner, row.tokens = None, []


class OllamaBackend(Backend):
    """A model served by Ollama, one HTTP chat request per game (Ollama batches on its side).

    `record_folder` holds the training record to play the model by: the GGUF folder notebook 04 wrote (export
    copies the adapter's record beside the Modelfile), the merged model or the adapter."""

    def __init__(
        self, model: str, *, url: str = OLLAMA_URL, timeout: float = 300.0, record_folder: str | Path | None = None
    ):
        record = records.read_training_record(record_folder, required=False)
        tokenizer = loadable_tokenizer(record.base_model) if record else None
        super().__init__(
            f"ollama:{model}",
            PromptCodec(CodecSpec(tokenizer, str(record_folder) if record_folder else None)),
        )
        self.model, self.url, self.timeout = model, url.rstrip("/"), timeout
        self._check_model()

    def _post(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        import httpx

        try:
            if payload is None:
                response = httpx.get(self.url + path, timeout=10.0)
            else:
                response = httpx.post(self.url + path, json=payload, timeout=self.timeout)
        except httpx.HTTPError as error:
            raise BackendError(
                f"cannot reach the Ollama server at {self.url} ({type(error).__name__}: {error}): start it with "
                "`ollama serve` (or pass --ollama-url with the right address)"
            ) from error
        if response.status_code == 404:
            raise BackendError(
                f"Ollama at {self.url} does not know model {self.model!r}: list models with `ollama list`, then "
                f"`ollama pull {self.model}` or `ollama create {self.model} -f Modelfile`"
            )
        if response.status_code >= 400:
            raise BackendError(f"Ollama at {self.url} answered {response.status_code}: {response.text[:300]}")
        return response.json()

    def _check_model(self) -> None:
        names = {m.get("name", "") for m in self._post("/api/tags").get("models", [])}
        wanted = self.model if ":" in self.model else f"{self.model}:latest"
        if wanted not in names and self.model not in names:
            raise BackendError(
                f"Ollama at {self.url} does not know model {self.model!r} "
                f"(it has: {', '.join(sorted(names)) or 'none'}): "
                f"`ollama pull {self.model}` or `ollama create {self.model} -f Modelfile`"
            )

    def answer(self, requests: Sequence[Request]) -> list[Reply]:
        replies = []
        for request in requests:
            started = time.perf_counter()
            options: dict[str, Any] = {"temperature": request.temperature, "num_predict": request.max_new_tokens}
            if request.temperature > 0:
                options["seed"] = request.sample_seed
            answer = self._post(
                "/api/chat",
                {"model": self.model, "messages": list(request.messages), "stream": False, "options": options},
            )
            text = answer.get("message", {}).get("content", "").strip()
            replies.append(
                Reply(text=text, new_tokens=int(answer.get("eval_count", 0)), seconds=time.perf_counter() - started)
            )
        return replies


class VllmBackend(Backend):
    """vLLM's offline engine (GPU), optionally with a LoRA adapter; a step is one batched `chat`."""

    def __init__(self, model: str, *, adapter: str | Path | None = None):
        try:
            from vllm import LLM
        except ImportError as error:
            raise BackendError(
                "vLLM is not installed: `pip install vllm` on a CUDA machine, or use --backend transformers"
            ) from error
        from alfworld_sft import models

        record_folder = str(adapter) if adapter is not None else _local_folder(model)
        super().__init__(f"vllm:{_label(model, adapter)}", PromptCodec(CodecSpec(model, record_folder)))
        self.llm = LLM(model=models.resolve_model(model), enable_lora=adapter is not None, seed=0)
        self.lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, str(Path(adapter).expanduser()))

    def answer(self, requests: Sequence[Request]) -> list[Reply]:
        from vllm import SamplingParams

        started = time.perf_counter()
        params = [
            SamplingParams(temperature=r.temperature, max_tokens=r.max_new_tokens, seed=r.sample_seed) for r in requests
        ]
        outputs = self.llm.chat([list(r.messages) for r in requests], params, lora_request=self.lora, use_tqdm=False)
        share = (time.perf_counter() - started) / max(1, len(requests))
        return [
            Reply(text=o.outputs[0].text.strip(), new_tokens=len(o.outputs[0].token_ids), seconds=share)
            for o in outputs
        ]


def _vllm_usable() -> bool:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def _local_folder(model: str) -> str | None:
    path = Path(model).expanduser()
    return str(path) if path.is_dir() else None


def loadable_tokenizer(model: str) -> str | None:
    """`model` when its tokenizer can be loaded here (the default, a folder, a cached hub id), else None."""
    from alfworld_sft import models

    try:
        models.resolve_model(model)
    except models.ModelUnavailableError:
        return None
    return model


def _label(model: str, adapter: str | Path | None) -> str:
    return model if adapter is None else f"{model}+{Path(adapter).name}"


# ------------------------------------------------------------------------------------------------ choosing


@dataclass(frozen=True)
class BackendChoice:
    """Which backend serves a model, decided without loading anything (a shard merge needs only the name)."""

    kind: str  # expert, ollama, vllm, transformers, openai or gguf
    model: str  # the model it serves (an adapter's base model; openai: the URL and name; gguf: the file's path)
    adapter: Path | None  # the LoRA adapter folder, if any
    record_folder: Path | None = None  # the training record to play it by (Ollama, openai: --record; gguf: its folder)

    @property
    def name(self) -> str:
        """The label results carry; the backend object has the same `name`."""
        if self.kind == "expert":
            return EXPERT_MODEL
        if self.kind in ("ollama", *SERVED_KINDS):
            return f"{self.kind}:{self.model}"
        label = _label(self.model, self.adapter)
        return f"vllm:{label}" if self.kind == "vllm" else label

    def training_record(self) -> records.TrainingRecord | None:
        folder = self.adapter or self.record_folder or _local_folder(self.model)
        return records.read_training_record(folder, required=False)

    @property
    def grounds_choices(self) -> bool:
        """Whether its backend can restrict a reply to the admissible commands (`--actions constrained`). A served model
        can where its server takes grammars: llama-cpp-python's does; an `openai:` server is asked (`served`)."""
        return self.kind in ("transformers", "expert", *SERVED_KINDS)


def choose_backend(
    model: str, *, adapter: str | Path | None = None, backend: str = "auto", record_folder: str | Path | None = None
) -> BackendChoice:
    """Pick the backend for `model`: `expert`, `ollama:NAME` (or backend="ollama"), `openai:URL/v1/NAME`, `gguf:PATH`
    (a file, or an export folder), vLLM when installed on a CUDA machine, else transformers. With `model` empty, an
    adapter's training record names the base model; an adapter trained on another base is refused."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    adapter_path = None if adapter is None else Path(adapter).expanduser()
    served = next((kind for kind in SERVED_KINDS if backend == kind or model.startswith(f"{kind}:")), None)
    if served is not None and adapter_path is not None:
        raise ValueError(
            f"--adapter plays with a local model; a {served} model is already merged and exported: drop --adapter "
            "(the training record comes from --record, or from beside a GGUF file)"
        )
    if adapter_path is not None:
        records.check_adapter(adapter_path)
    record = records.read_training_record(adapter_path, required=False)
    if not model:
        if record is None:
            raise ValueError("no --model given and the adapter has no training_record.json naming its base model")
        model = record.base_model
    elif record is not None and not _same_base(record.base_model, model):
        raise BackendError(
            f"the adapter in {adapter_path} was trained on {record.base_model!r}, not {model!r}: an adapter only "
            f"fits the model it was trained on. Drop --model (the record names the base) or pass "
            f"--model {record.base_model}"
        )
    record_path = None if record_folder is None else Path(record_folder).expanduser()
    if backend == "expert" or model == EXPERT_MODEL:
        return BackendChoice("expert", EXPERT_MODEL, None)
    if backend == "ollama" or model.startswith("ollama:"):
        return BackendChoice("ollama", model.removeprefix("ollama:"), None, record_path or adapter_path)
    if served is not None:
        if served == "openai":
            return BackendChoice("openai", model.removeprefix("openai:"), None, record_path)
        gguf = llama_server.locate_gguf(resolve_repo_path(model.removeprefix("gguf:")))
        return BackendChoice("gguf", str(gguf), None, record_path or gguf.parent)
    if backend == "vllm" or (backend == "auto" and _vllm_usable()):
        return BackendChoice("vllm", model, adapter_path)
    return BackendChoice("transformers", model, adapter_path)


def _same_base(trained_on: str, given: str) -> bool:
    if trained_on == given:
        return True
    from alfworld_sft import models

    try:
        return Path(models.resolve_model(trained_on)).resolve() == Path(models.resolve_model(given)).resolve()
    except (models.ModelUnavailableError, OSError):
        return False


def weights_fingerprint(choice: BackendChoice) -> str:
    """What identifies the weights behind `choice.name`: a hash of the adapter's weight files (and of a local model
    folder's weight file names, sizes and times), so that retraining an adapter in place changes it; a GGUF file's
    sha256 (a model behind an `openai:` server is known by its URL and name only)."""
    digest = hashlib.sha256(choice.name.encode())
    if choice.adapter is not None:
        for path in sorted(choice.adapter.iterdir()):
            if path.suffix in WEIGHT_SUFFIXES or path.name == records.TRAINING_RECORD_FILE:
                digest.update(path.name.encode())
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
    if choice.kind == "gguf":
        digest.update(llama_server.file_sha256(Path(choice.model)).encode())
    folder = _local_folder(choice.model) if choice.kind not in ("ollama", *SERVED_KINDS) else None
    if folder is not None:
        for path in sorted(Path(folder).iterdir()):
            if path.suffix in WEIGHT_SUFFIXES:
                stat = path.stat()
                digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def load_backend(
    model: str,
    *,
    adapter: str | Path | None = None,
    backend: str = "auto",
    ollama_url: str = OLLAMA_URL,
    dtype: str = "auto",
    threads: int | None = None,
    device: str = "auto",
    batch_size: int = 8,
    record_folder: str | Path | None = None,
) -> Backend:
    """Load the backend `choose_backend` picks (same arguments), with the engine settings for local models; a served
    one (`openai:`, `gguf:`) is loaded by `served.load_served_backend`, which builds on this module."""
    choice = choose_backend(model, adapter=adapter, backend=backend, record_folder=record_folder)
    if choice.kind in SERVED_KINDS:
        raise BackendError(f"{choice.name} is played over HTTP: load it with alfworld_sft.served.load_served_backend")
    if choice.kind == "expert":
        return ExpertBackend()
    if choice.kind == "ollama":
        return OllamaBackend(choice.model, url=ollama_url, record_folder=choice.record_folder)
    if choice.kind == "vllm":
        return VllmBackend(choice.model, adapter=choice.adapter)
    return TransformersBackend(
        choice.model, adapter=choice.adapter, dtype=dtype, threads=threads, device=device, batch_size=batch_size
    )
