"""Model backends for evaluation: one interface, `Backend.generate(requests) -> replies`, over several engines.

* `TransformersBackend`: a local transformers model (the default's name, a hub id or a folder), optionally
  with a LoRA adapter (peft). All requests of one call are generated together in one left-padded batch,
  greedy, stopping at the end-of-turn token, so games played at the same time share each forward pass.
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
from collections.abc import Sequence
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
    """A local transformers causal LM; every call is one left-padded greedy batch."""

    def __init__(self, model: str, *, adapter: str | Path | None = None, dtype: str = "float32",
                 threads: int | None = None):
        import torch

        from alfworld_sft import models

        if threads:
            torch.set_num_threads(threads)
        record = read_training_record(adapter) or read_training_record(_local_folder(model))
        label = model if adapter is None else f"{model}+{Path(adapter).name}"
        super().__init__(name=label, training_record=record)
        self.tokenizer = models.load_tokenizer(model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None or self.tokenizer.pad_token_id == self.tokenizer.eos_token_id:
            raise BackendError(
                f"the tokenizer of {model} has no pad token distinct from eos ({self.tokenizer.eos_token!r}); "
                "left-padded batches would be cut at the padding: use a model whose tokenizer defines one"
            )
        self.model = models.load_model(model, dtype=getattr(torch, dtype))
        if adapter is not None:
            adapter_path = Path(adapter).expanduser()
            if not (adapter_path / "adapter_config.json").exists():
                raise BackendError(f"{adapter_path} holds no adapter_config.json: is it a LoRA adapter folder?")
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, str(adapter_path))
        self.model.eval()
        self.stop_ids = self._stop_token_ids()

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

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return len(self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"])

    def generate(self, requests: Sequence[Request]) -> list[Reply]:
        import torch

        if not requests:
            return []
        started = time.perf_counter()
        texts = [self.render(r.messages) for r in requests]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            self.model.device
        )
        longest = max(r.max_new_tokens for r in requests)
        with torch.no_grad():
            output = self.model.generate(
                **batch,
                max_new_tokens=longest,
                do_sample=False,
                eos_token_id=self.stop_ids,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = output[:, batch["input_ids"].shape[1] :].tolist()
        share = (time.perf_counter() - started) / len(requests)
        replies = []
        for request, ids in zip(requests, new):
            ids = ids[: request.max_new_tokens]
            stop = next((i for i, token in enumerate(ids) if token in self.stop_ids), None)
            kept = ids if stop is None else ids[: stop + 1]
            text = self.tokenizer.decode(kept, skip_special_tokens=True).strip()
            replies.append(Reply(text=text, new_tokens=len(kept), seconds=share))
        return replies


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
                f"Ollama at {self.url} does not know model {self.model!r} (it has: {', '.join(sorted(names)) or 'none'}): "
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
            replies.append(Reply(text=text, new_tokens=int(answer.get("eval_count", 0)),
                                 seconds=time.perf_counter() - started))
        return replies


class VllmBackend(Backend):
    """vLLM's offline engine (GPU), optionally with a LoRA adapter; a call is one batched `chat`."""

    def __init__(self, model: str, *, adapter: str | Path | None = None):
        try:
            from vllm import LLM
        except ImportError as error:
            raise BackendError("vLLM is not installed: `pip install vllm` on a CUDA machine, or use --backend transformers") from error
        from alfworld_sft import models

        record = read_training_record(adapter) or read_training_record(_local_folder(model))
        super().__init__(name=f"vllm:{model}", training_record=record)
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
        return [Reply(text=o.outputs[0].text.strip(), new_tokens=len(o.outputs[0].token_ids), seconds=share)
                for o in outputs]


def _vllm_usable() -> bool:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def _local_folder(model: str) -> Path | None:
    path = Path(model).expanduser()
    return path if path.is_dir() else None


def load_backend(model: str, *, adapter: str | Path | None = None, backend: str = "auto",
                 ollama_url: str = OLLAMA_URL, dtype: str = "float32", threads: int | None = None) -> Backend:
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

        warnings.warn(f"the adapter was trained on {record.base_model!r} but is loaded on {model!r}: "
                      "an adapter only fits the model it was trained on", stacklevel=2)
    if backend == "expert" or model == EXPERT_MODEL:
        return ExpertBackend()
    if backend == "ollama" or model.startswith("ollama:"):
        return OllamaBackend(model.removeprefix("ollama:"), url=ollama_url)
    if backend == "vllm" or (backend == "auto" and _vllm_usable()):
        return VllmBackend(model, adapter=adapter)
    return TransformersBackend(model, adapter=adapter, dtype=dtype, threads=threads)
