"""Model backends for evaluation: one interface, `Backend.generate(requests) -> replies`, over several engines.

* `TransformersBackend`: a local transformers model (the default's name, a hub id or a folder), optionally
  with a LoRA adapter (peft), on the GPU when there is one. Greedy, stopping at the end-of-turn token; each
  game's conversation keeps its key/value cache between steps (only the new tokens are computed) and the
  requests of one call decode together, one forward pass per token for all games played at the same time.
* `OllamaBackend`: an Ollama server over its HTTP API (`/api/chat`), by model name (`llama3.1:8b-sft`).
* `VllmBackend`: vLLM's offline engine, when vLLM is installed (GPU machines).
* `ExpertBackend`: replays the handcoded expert's next action; the harness's own sanity check (it must win
  about as often as the expert does).

`load_backend(model, adapter=..., backend="auto")` picks one. A fine-tuned adapter (or merged model) folder
holds `training_record.json` (`base_model`, `prompt_format`, `max_seq_len`); `read_training_record` reads it
so the agents prompt the model exactly as it was trained.
"""

from __future__ import annotations

import json
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alfworld_sft.prompts import Message

TRAINING_RECORD = "training_record.json"
EXPERT_MODEL = "expert"  # `--model expert`: the scripted expert backend
OLLAMA_URL = "http://localhost:11434"


class BackendError(RuntimeError):
    """A backend that cannot serve: the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Request:
    """One generation an agent asks for."""

    messages: tuple[Message, ...]  # system, then user/assistant turns, ending on a user turn
    max_new_tokens: int  # the most tokens this reply may have
    expert_action: str | None = None  # the handcoded expert's next command (read by ExpertBackend only)
    session: Hashable | None = None  # the conversation this request continues (a backend may reuse its prefix)


@dataclass(frozen=True)
class Reply:
    text: str  # the generated text, special tokens removed
    new_tokens: int  # tokens generated (up to and including the end-of-turn token)
    seconds: float  # this request's share of the call's wall time


@dataclass(frozen=True)
class TrainingRecord:
    """What the training engineer wrote beside an adapter or merged model."""

    base_model: str  # the model the adapter was trained on
    prompt_format: dict[str, Any]  # dataclasses.asdict(prompts.PromptFormat) used in training
    max_seq_len: int  # the training window; evaluation prompts are windowed to fit it


def read_training_record(folder: str | Path | None) -> TrainingRecord | None:
    """The training record in `folder`, or None when the folder has none (a base model)."""
    if folder is None:
        return None
    path = Path(folder).expanduser() / TRAINING_RECORD
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return TrainingRecord(
            base_model=str(raw["base_model"]),
            prompt_format=dict(raw["prompt_format"]),
            max_seq_len=int(raw["max_seq_len"]),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise BackendError(
            f"{path} is not a valid training record (needs base_model, prompt_format, max_seq_len): {error}"
        ) from error


@dataclass
class Backend:
    """The interface every backend implements; `name` labels results."""

    name: str
    training_record: TrainingRecord | None = field(default=None)

    def generate(self, requests: Sequence[Request]) -> list[Reply]:
        raise NotImplementedError

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens of the rendered prompt; backends without a tokenizer estimate 4 characters a token."""
        return sum(len(m["content"]) for m in messages) // 4 + 4 * len(messages)

    def close(self) -> None:
        """Free what the backend holds (nothing by default)."""


class ExpertBackend(Backend):
    """Replies with the handcoded expert's next command (empty text where a request has none, e.g. a plan)."""

    def __init__(self) -> None:
        super().__init__(name=EXPERT_MODEL)

    def generate(self, requests: Sequence[Request]) -> list[Reply]:
        return [Reply(text=r.expert_action or "", new_tokens=0, seconds=0.0) for r in requests]


class TransformersBackend(Backend):
    """A local transformers causal LM, greedy, with two things that make a game step cheap.

    * Prefix reuse: each request names its `session` (one game's conversation); the backend keeps the key/value
      states of that session's last prompt and reply, and the next prompt only computes its new tokens (the
      previous reply and the new observation) instead of the whole window again. On a CPU, processing the
      prompt is most of the cost of a step.
    * Batched decoding: the new tokens of each request are processed one request at a time (on a CPU that costs
      the same as a padded batch, without the padding), then all requests decode together, one token per
      forward pass for the whole batch, in a preallocated (static) cache with every row's prompt aligned on its
      right end. Decoding is bound by reading the weights, so a batch of 8 costs little more than one request.

    Greedy replies do not depend on the batch or on the reuse (up to float rounding: tests compare float32).
    Sessions missing from a call are forgotten, so memory stays bounded by the batch.
    """

    def __init__(
        self,
        model: str,
        *,
        adapter: str | Path | None = None,
        dtype: str = "float32",
        threads: int | None = None,
        device: str = "auto",
        prefix_cache: bool = True,
    ):
        import torch

        from alfworld_sft import models

        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"device {device!r} asked for, but torch sees no CUDA GPU: use --device cpu")
        record = read_training_record(adapter) or read_training_record(_local_folder(model))
        super().__init__(name=_label(model, adapter), training_record=record)
        self.tokenizer = models.load_tokenizer(model)
        # On a CPU, eager attention decodes a batch of 8 over ~800 cached tokens in 54 ms where SDPA takes 125 ms
        # (bfloat16, 2 threads; SDPA falls back to its slow path with a padding mask); on a GPU SDPA is faster.
        attention = "sdpa" if device.startswith("cuda") else "eager"
        self.model = models.load_model(model, dtype=getattr(torch, dtype), attn_implementation=attention).to(device)
        if adapter is not None:
            adapter_path = Path(adapter).expanduser()
            if not (adapter_path / "adapter_config.json").exists():
                raise BackendError(f"{adapter_path} holds no adapter_config.json: is it a LoRA adapter folder?")
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, str(adapter_path))
        self.model.eval()
        self.device = torch.device(device)
        self.prefix_cache = prefix_cache
        self.stop_ids = self._stop_token_ids()
        # session -> (token ids whose keys/values are kept, [(keys, values) per layer], each [1, heads, len, dim])
        self.sessions: dict[Hashable, tuple[list[int], list[tuple[Any, Any]]]] = {}
        self.prompt_tokens = 0  # prompt tokens of all requests so far
        self.reused_tokens = 0  # of which taken from a session's kept prefix instead of computed

    def _stop_token_ids(self) -> list[int]:
        # The end-of-turn token: ChatML's <|im_end|>, Llama-3's <|eot_id|>, and the tokenizer's own eos.
        vocab = self.tokenizer.get_vocab()
        ids = {self.tokenizer.eos_token_id}
        for token in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>"):
            if token in vocab:
                ids.add(vocab[token])
        return sorted(i for i in ids if i is not None)

    def render(self, messages: Sequence[Message]) -> str:
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)

    def encode(self, messages: Sequence[Message]) -> list[int]:
        return self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"]

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return len(self.encode(messages))

    def close(self) -> None:
        self.sessions.clear()

    def generate(self, requests: Sequence[Request]) -> list[Reply]:
        import torch

        if not requests:
            return []
        started = time.perf_counter()
        prompts = [self.encode(r.messages) for r in requests]
        with torch.no_grad():
            prefilled = [self._prefill(r.session, ids) for r, ids in zip(requests, prompts)]
            generated, caches = self._decode(prompts, prefilled, [r.max_new_tokens for r in requests])
        self._keep_sessions(requests, prompts, generated, caches)
        share = (time.perf_counter() - started) / len(requests)
        replies = []
        for ids in generated:
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            replies.append(Reply(text=text, new_tokens=len(ids), seconds=share))
        return replies

    def _prefill(self, session: Hashable | None, ids: list[int]) -> tuple[list[tuple[Any, Any]], int]:
        """Keys/values of the whole prompt and the greedy first reply token, reusing the session's prefix."""
        import torch
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        reused = 0
        if self.prefix_cache and session in self.sessions:
            kept_ids, kept = self.sessions[session]
            reused = min(_common_prefix(kept_ids, ids), len(ids) - 1)  # at least one new token gives the logits
            if reused:
                for layer, (keys, values) in enumerate(kept):
                    cache.update(keys[:, :, :reused], values[:, :, :reused], layer)
        self.prompt_tokens += len(ids)
        self.reused_tokens += reused
        new = torch.tensor([ids[reused:]], device=self.device)
        positions = torch.arange(reused, len(ids), device=self.device).unsqueeze(0)
        # Only the last position's logits are needed: the vocabulary projection of every prompt token would cost
        # a fifth of the model's compute and hundreds of MB.
        out = self.model(input_ids=new, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1)
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        return layers, int(out.logits[0, -1].argmax())

    def _decode(
        self, prompts: list[list[int]], prefilled: list[tuple[list[tuple[Any, Any]], int]], limits: list[int]
    ) -> tuple[list[list[int]], Any]:
        """Greedy decoding of all rows together; returns each row's reply ids (up to and including the stop
        token) and the static cache (columns: prompts right-aligned at `width`, then the fed reply tokens)."""
        import torch
        from transformers import StaticCache

        rows, width, longest = len(prompts), max(len(p) for p in prompts), max(limits)
        cache = StaticCache(config=self.model.config, max_cache_len=width + longest)
        for layer in range(len(prefilled[0][0])):
            sample = prefilled[0][0][layer][0]
            keys = sample.new_zeros((rows, sample.shape[1], width, sample.shape[3]))
            values = sample.new_zeros((rows, sample.shape[1], width, prefilled[0][0][layer][1].shape[3]))
            for row, (layers, _) in enumerate(prefilled):
                length = len(prompts[row])
                keys[row, :, width - length :] = layers[layer][0][0]
                values[row, :, width - length :] = layers[layer][1][0]
            cache.update(keys, values, layer)
        mask = torch.zeros((rows, width + longest), dtype=torch.long, device=self.device)
        for row, prompt in enumerate(prompts):
            mask[row, width - len(prompt) : width] = 1
        generated = [[first] for _, first in prefilled]
        done = [first in self.stop_ids or limit <= 1 for (_, first), limit in zip(prefilled, limits)]
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        step = 0
        while not all(done):
            column = width + step
            mask[:, column] = 1
            out = self.model(
                input_ids=torch.tensor([[ids[-1]] for ids in generated], device=self.device),
                position_ids=(lengths + step).unsqueeze(1),
                attention_mask=mask[:, : column + 1],
                past_key_values=cache,
                cache_position=torch.tensor([column], device=self.device),
                use_cache=True,
            )
            for row, token in enumerate(out.logits[:, -1].argmax(-1).tolist()):
                if not done[row]:
                    generated[row].append(token)
                    done[row] = token in self.stop_ids or len(generated[row]) >= limits[row]
            step += 1
        return generated, cache

    def _keep_sessions(
        self, requests: Sequence[Request], prompts: list[list[int]], generated: list[list[int]], cache: Any
    ) -> None:
        """Keep each session's prompt and fed reply tokens for the next call; forget sessions not in this call."""
        if not self.prefix_cache:
            return
        width = max(len(p) for p in prompts)
        kept: dict[Hashable, tuple[list[int], list[tuple[Any, Any]]]] = {}
        for row, (request, prompt, reply) in enumerate(zip(requests, prompts, generated)):
            if request.session is None:
                continue
            fed = len(reply) - 1  # the last reply token was never fed back, so it has no keys/values
            start, stop = width - len(prompt), width + fed
            layers = [
                (
                    layer.keys[row : row + 1, :, start:stop].clone(),
                    layer.values[row : row + 1, :, start:stop].clone(),
                )
                for layer in cache.layers
            ]
            kept[request.session] = (prompt + reply[:fed], layers)
        self.sessions = kept


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class OllamaBackend(Backend):
    """A model served by Ollama, one HTTP chat request per game (Ollama batches on its side)."""

    def __init__(self, model: str, *, url: str = OLLAMA_URL, timeout: float = 300.0):
        super().__init__(name=f"ollama:{model}")
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

    def generate(self, requests: Sequence[Request]) -> list[Reply]:
        replies = []
        for request in requests:
            started = time.perf_counter()
            answer = self._post(
                "/api/chat",
                {
                    "model": self.model,
                    "messages": list(request.messages),
                    "stream": False,
                    "options": {"temperature": 0, "num_predict": request.max_new_tokens},
                },
            )
            text = answer.get("message", {}).get("content", "").strip()
            replies.append(
                Reply(
                    text=text,
                    new_tokens=int(answer.get("eval_count", 0)),
                    seconds=time.perf_counter() - started,
                )
            )
        return replies


class VllmBackend(Backend):
    """vLLM's offline engine (GPU), optionally with a LoRA adapter; a call is one batched `chat`."""

    def __init__(self, model: str, *, adapter: str | Path | None = None):
        try:
            from vllm import LLM
        except ImportError as error:
            raise BackendError(
                "vLLM is not installed: `pip install vllm` on a CUDA machine, or use --backend transformers"
            ) from error
        from alfworld_sft import models

        record = read_training_record(adapter) or read_training_record(_local_folder(model))
        super().__init__(name=f"vllm:{_label(model, adapter)}", training_record=record)
        self.tokenizer = models.load_tokenizer(model)
        self.llm = LLM(model=models.resolve_model(model), enable_lora=adapter is not None, seed=0)
        self.lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, str(Path(adapter).expanduser()))

    def count_tokens(self, messages: Sequence[Message]) -> int:
        text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, requests: Sequence[Request]) -> list[Reply]:
        from vllm import SamplingParams

        started = time.perf_counter()
        params = [SamplingParams(temperature=0, max_tokens=r.max_new_tokens) for r in requests]
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


def _local_folder(model: str) -> Path | None:
    path = Path(model).expanduser()
    return path if path.is_dir() else None


@dataclass(frozen=True)
class BackendChoice:
    """Which backend serves a model, decided without loading anything (a shard merge needs only the name)."""

    kind: str  # expert, ollama, vllm or transformers
    model: str  # the model it serves (for an adapter: its base model)
    adapter: Path | None  # the LoRA adapter folder, if any

    @property
    def name(self) -> str:
        """The label results carry and checkpoints are keyed on; the backend object has the same `name`."""
        if self.kind == "expert":
            return EXPERT_MODEL
        if self.kind == "ollama":
            return f"ollama:{self.model}"
        label = _label(self.model, self.adapter)
        return f"vllm:{label}" if self.kind == "vllm" else label


def _label(model: str, adapter: str | Path | None) -> str:
    return model if adapter is None else f"{model}+{Path(adapter).name}"


def choose_backend(model: str, *, adapter: str | Path | None = None, backend: str = "auto") -> BackendChoice:
    """Pick the backend for `model`: `expert`, `ollama:NAME` (or backend="ollama"), vLLM when installed on a
    CUDA machine, else transformers. With `model` empty, an adapter's training record names the base model.
    """
    if backend not in ("auto", "transformers", "ollama", "vllm", "expert"):
        raise ValueError(f"unknown backend {backend!r}: choose auto, transformers, ollama, vllm or expert")
    if adapter is not None and not Path(adapter).expanduser().is_dir():
        raise FileNotFoundError(f"adapter folder {adapter} does not exist: pass the folder training wrote")
    record = read_training_record(adapter)
    if not model:
        if record is None:
            raise ValueError("no --model given and the adapter has no training_record.json naming its base model")
        model = record.base_model
    elif record is not None and record.base_model != model:
        import warnings

        warnings.warn(
            f"the adapter was trained on {record.base_model!r} but is loaded on {model!r}: "
            "an adapter only fits the model it was trained on",
            stacklevel=2,
        )
    adapter_path = None if adapter is None else Path(adapter).expanduser()
    if backend == "expert" or model == EXPERT_MODEL:
        return BackendChoice("expert", EXPERT_MODEL, None)
    if backend == "ollama" or model.startswith("ollama:"):
        return BackendChoice("ollama", model.removeprefix("ollama:"), None)
    if backend == "vllm" or (backend == "auto" and _vllm_usable()):
        return BackendChoice("vllm", model, adapter_path)
    return BackendChoice("transformers", model, adapter_path)


def load_backend(
    model: str,
    *,
    adapter: str | Path | None = None,
    backend: str = "auto",
    ollama_url: str = OLLAMA_URL,
    dtype: str = "float32",
    threads: int | None = None,
    device: str = "auto",
    prefix_cache: bool = True,
) -> Backend:
    """Load the backend `choose_backend` picks (same arguments), with the engine settings for local models."""
    choice = choose_backend(model, adapter=adapter, backend=backend)
    if choice.kind == "expert":
        return ExpertBackend()
    if choice.kind == "ollama":
        return OllamaBackend(choice.model, url=ollama_url)
    if choice.kind == "vllm":
        return VllmBackend(choice.model, adapter=choice.adapter)
    return TransformersBackend(
        choice.model,
        adapter=choice.adapter,
        dtype=dtype,
        threads=threads,
        device=device,
        prefix_cache=prefix_cache,
    )
