"""Models behind an HTTP server that speaks OpenAI's API: `ServedBackend`, the rollout loop's backend for them.

    alfworld-sft evaluate --model gguf:results/gguf/alfworld-sft-q4_k_m.gguf --agents zero_shot --num-games 10
    alfworld-sft evaluate --model openai:http://127.0.0.1:8080/v1/alfworld-sft --record results/gguf

* `openai:URL/v1/NAME` plays a model a running server serves: llama.cpp's `llama-server`, llama-cpp-python's
  server, `vllm serve`, Ollama's `/v1`, `transformers serve`. The URL up to and including its `/v1` segment is the
  API base; what follows is the model's name as the server lists it, slashes and all
  (`openai:http://gpu:8000/v1/meta-llama/Llama-3.1-8B-Instruct`); with no name, the server's only model.
  `--record` names the folder of the model's training record (the export's GGUF folder).
* `gguf:PATH` starts llama-cpp-python's server on a GGUF file (or the file an export folder served), plays, and
  stops it (`llama_server.LlamaServer`). The training record beside the file says how the model was trained; a file
  whose shape is not its record's base model is refused; its sha256 and quant type go into the results.

How requests are sent is decided once, by asking the server (`probe_server`), and recorded in the results:

* the prompt: `text` renders the conversation here with the training tokenizer's chat template and sends it to
  `/v1/completions`, so that the model reads the tokens it was trained on (a BOS the server adds itself is left
  out of the text); it needs the training record's base model here, and a server that does not wrap a completion
  prompt in its own template again (Ollama does: it gets `chat`). `chat` sends the messages to
  `/v1/chat/completions`, rendered by the server's template (a GGUF's own). `--served-prompt auto`: text where it can.
* the stop: the training record's end-of-turn marker and the tokenizer's eos, besides the server's own end of
  generation. Greedy stays greedy: llama.cpp's default repeat penalty (1.1) and top-k/min-p are switched off.
* grounded commands (`Request.choices`): a GBNF grammar (`choice_grammar`) in the request's `grammar` field, which
  llama.cpp's servers take: the reply is one of the commands, or (`choice_after`) a thought line, then "Action: " and
  one of the commands. A server that refuses or ignores grammars (vLLM, Ollama) does not ground (`grounds_choices`
  False): evaluation then plays free replies mapped to the closest admissible command, and says so.
* many requests in flight: each is an HTTP request on a thread of a pool of `slots`, so that the rollout loop's
  continuous batching keeps a batching server (`llama-server --parallel N`, vLLM) busy. llama-cpp-python's server
  (`gguf:`) answers them one after the other and caches only its last prompt: there one game plays at a time.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from alfworld_sft import llama_server, ollama, records
from alfworld_sft.backends import (
    Backend,
    BackendChoice,
    BackendError,
    CodecSpec,
    PromptCodec,
    Reply,
    Request,
    loadable_tokenizer,
)
from alfworld_sft.prompts import Message

PROMPT_MODES = ("auto", "text", "chat")  # --served-prompt
API_SEGMENT = "v1"  # the path segment that ends an OpenAI-compatible API base
PROBE_GRAMMAR, PROBE_REPLY = 'root ::= "zq"', "zq"  # a reply no model writes unless the grammar makes it
CONNECT_TIMEOUT_S = 10.0
REPLY_TIMEOUT_S = 1800.0  # a reply waits behind every game's request on a server that answers one at a time
PROBE_TIMEOUT_S = 300.0  # the probe's four-token replies, behind whatever else the server is answering
STEP_WAIT_S = 0.05  # how long `step` waits for a reply before the rollout loop looks at the engine again
THOUGHT_CHARS_PER_TOKEN = 4  # a grounded reply's free thought may be this many characters per token of its budget
MAX_STOPS = 4  # OpenAI's API takes at most four stop strings
# llama.cpp's sampling defaults (repeat penalty 1.1, top-k 40, min-p 0.05) would make greedy and sampled replies
# differ from the model's own distribution; servers that are not llama.cpp's ignore these fields (or refuse them,
# and the probe then leaves them out).
LLAMA_SAMPLING = {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0}
START_HINT = (
    "start one, e.g. `python -m llama_cpp.server --model FILE.gguf --port 8080`, `llama-server -m FILE.gguf "
    "--port 8080`, `vllm serve MODEL` or `ollama serve`; or play a GGUF file directly with --model gguf:PATH"
)


class ServerUnreachableError(BackendError):
    """No server answers at the URL: the message names it and what to start."""


class ModelNotServedError(BackendError):
    """The server does not serve the model asked for: the message lists what it serves."""


def parse_openai_model(spec: str) -> tuple[str, str | None]:
    """The API base (through its `/v1` segment) and the model's name (None: the server's only model) of
    `openai:URL/v1/NAME` (module docstring)."""
    text = spec.removeprefix("openai:")
    parts = urlsplit(text)
    example = "openai:http://127.0.0.1:8080/v1/MODEL"
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--model openai:{text} is not an http(s) URL: write it as {example}")
    segments = parts.path.split("/")
    if API_SEGMENT not in segments:
        raise ValueError(
            f"--model openai:{text} has no /{API_SEGMENT} segment, which ends the server's API base: write it as "
            f"{example} (the model's name after /{API_SEGMENT}/, or nothing for the server's only model)"
        )
    end = segments.index(API_SEGMENT) + 1
    base = urlunsplit((parts.scheme, parts.netloc, "/".join(segments[:end]), "", ""))
    return base, "/".join(segments[end:]).strip("/") or None


def gbnf_literal(text: str) -> str:
    """`text` as a GBNF string literal: quotes, backslashes and control characters escaped."""
    escaped = []
    for char in text:
        if char in '"\\':
            escaped.append("\\" + char)
        elif char in "\n\r\t":
            escaped.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\x{ord(char):02X}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def choice_grammar(choices: Sequence[str], choice_after: str | None = None, thought_chars: int = 224) -> str:
    """A GBNF grammar whose sentences are the `choices`; with `choice_after` ("Action:"), an optional free line of
    at most `thought_chars` characters (the thought) first, then the marker, a space and one of the choices. The
    server ends the reply at its end of turn once a choice is complete."""
    if not choices:
        raise ValueError("a grounded request needs at least one choice")
    lines = ["command ::= " + " | ".join(gbnf_literal(choice) for choice in dict.fromkeys(choices))]
    if choice_after is None:
        return "root ::= command\n" + lines[0] + "\n"
    marker = gbnf_literal(choice_after.strip() + " ")
    return f'root ::= ([^\\n]{{0,{thought_chars}}} "\\n")? {marker} command\n' + lines[0] + "\n"


# ------------------------------------------------------------------------------------------- the probe


@dataclass(frozen=True)
class ServerProbe:
    """What a server was found to take, asked once when the backend opens."""

    url: str  # the API base, ending in /v1
    model: str  # the model's name as the server lists it
    served: tuple[str, ...]  # every model the server lists
    prompt: str  # "text" (/v1/completions, rendered here) or "chat" (/v1/chat/completions, the server's template)
    grammar: bool  # whether it honours GBNF grammars (grounded commands)
    grammar_note: str  # "gbnf", or why grounded commands are not available
    llama_sampling: bool  # whether `LLAMA_SAMPLING`'s fields are sent


def probe_server(url: str, model: str | None, *, prompt: str = "auto", can_render: bool = False) -> ServerProbe:
    """Ask the server at `url` what it serves and takes: the model (refused with the served names when it is not
    there), the prompt mode (`prompt`, "auto" resolved: text when `can_render`, a tokenizer is at hand, and the
    server is not Ollama) and whether grammars work (a request whose grammar allows only `PROBE_REPLY`)."""
    import httpx

    if prompt not in PROMPT_MODES:
        raise ValueError(f"--served-prompt must be one of {', '.join(PROMPT_MODES)}, not {prompt!r}")
    with httpx.Client(timeout=httpx.Timeout(PROBE_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)) as client:
        served = list_served_models(client, url)
        if model is None:
            if len(served) != 1:
                raise ModelNotServedError(
                    f"the server at {url} serves {len(served)} models ({', '.join(served) or 'none'}): name one, "
                    f"openai:{url}/NAME"
                )
            model = served[0]
        elif model not in served:
            raise ModelNotServedError(
                f"the server at {url} does not serve {model!r}; it serves: {', '.join(served) or 'nothing'}. Pass "
                f"one of those names after /{API_SEGMENT}/ (openai:{url}/NAME), or start the server with your model"
            )
        mode = prompt
        if prompt == "text" and not can_render:
            raise BackendError(
                "--served-prompt text renders prompts with the training tokenizer's chat template, and there is none "
                "here: pass --record with the folder of the model's training record (its base model must load "
                "here), or --served-prompt chat"
            )
        if prompt == "auto":
            mode = "text" if can_render and not _is_ollama(client, url) else "chat"
        refusals = []
        for grammar, sampling in ((True, True), (False, True), (False, False)):
            response = _post(client, url, _probe_body(model, mode, grammar, sampling), mode)
            if response.status_code == 404 and mode == "text" and prompt == "auto":
                mode = "chat"  # no /v1/completions (transformers serve): the server's chat template it is
                response = _post(client, url, _probe_body(model, mode, grammar, sampling), mode)
            if response.status_code < 400:
                if not grammar:
                    note = f"the server refused a grammar ({refusals[0]})"
                elif _reply_text(response.json(), mode).strip() == PROBE_REPLY:
                    note = "gbnf"
                else:
                    note = "the server ignored the request's grammar"
                return ServerProbe(url, model, tuple(served), mode, note == "gbnf", note, sampling)
            refusals.append(f"{response.status_code}: {response.text[:300]}")
    raise BackendError(f"the server at {url} refused every request to {model!r} ({'; '.join(refusals)})")


def list_served_models(client: Any, url: str) -> list[str]:
    """The names `GET /v1/models` lists; `ServerUnreachableError` when nothing answers at `url`."""
    import httpx

    try:
        response = client.get(url + "/models", timeout=CONNECT_TIMEOUT_S)
    except httpx.HTTPError as error:
        raise ServerUnreachableError(
            f"no OpenAI-compatible server answers at {url} ({type(error).__name__}: {error}): {START_HINT}"
        ) from None
    if response.status_code >= 400:
        raise ServerUnreachableError(
            f"{url}/models answered {response.status_code} ({response.text[:200]}): is {url} the API base of an "
            f"OpenAI-compatible server? {START_HINT}"
        )
    try:
        return [str(entry["id"]) for entry in response.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise ServerUnreachableError(
            f"{url}/models did not list models as OpenAI's API does ({response.text[:200]}): is {url} the API base "
            "of an OpenAI-compatible server?"
        ) from None


def _is_ollama(client: Any, url: str) -> bool:
    """Ollama wraps a `/v1/completions` prompt in the model's template: it must get chat messages."""
    import httpx

    root = url[: -len(API_SEGMENT) - 1]
    try:
        response = client.get(root + "/api/version", timeout=CONNECT_TIMEOUT_S)
        return response.status_code == 200 and "version" in response.json()
    except (httpx.HTTPError, ValueError, TypeError):
        return False


def _probe_body(model: str, mode: str, grammar: bool, sampling: bool) -> dict[str, Any]:
    text = "Reply with one word."
    body: dict[str, Any] = {"model": model, "max_tokens": 4, "temperature": 0.0}
    body.update({"prompt": text} if mode == "text" else {"messages": [{"role": "user", "content": text}]})
    if grammar:
        body["grammar"] = PROBE_GRAMMAR
    if sampling:
        body.update(LLAMA_SAMPLING)
    return body


def _post(client: Any, url: str, body: dict[str, Any], mode: str) -> Any:
    import httpx

    endpoint = "/completions" if mode == "text" else "/chat/completions"
    try:
        return client.post(url + endpoint, json=body)
    except httpx.HTTPError as error:
        raise ServerUnreachableError(
            f"the server at {url} stopped answering ({type(error).__name__}: {error}): {START_HINT}"
        ) from None


def _reply_text(answer: dict[str, Any], mode: str) -> str:
    choice = answer["choices"][0]
    return (choice.get("text") if mode == "text" else (choice.get("message") or {}).get("content")) or ""


# ------------------------------------------------------------------------------------------- the backend


class ServedBackend(Backend):
    """A model behind an OpenAI-compatible server (module docstring); `server` is the llama.cpp server it started
    (gguf:), stopped by `close` or by leaving a `with`."""

    def __init__(
        self,
        name: str,
        codec: PromptCodec,
        probe: ServerProbe,
        *,
        slots: int = 8,
        server: llama_server.LlamaServer | None = None,
        details: dict[str, Any] | None = None,
    ):
        import httpx

        super().__init__(name, codec)
        if slots < 1:
            raise ValueError(f"--batch-size (requests in flight) must be at least 1, got {slots}")
        self.probe, self.server, self.slots = probe, server, slots
        self.grounds_choices = probe.grammar
        self.details = dict(details or {})
        self._client = httpx.Client(
            timeout=httpx.Timeout(REPLY_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_connections=slots, max_keepalive_connections=slots),
        )
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="served")
        self._futures: dict[Future, Hashable] = {}
        tokenizer, record = codec.tokenizer, codec.training_record
        marker = record.end_of_turn if record else None
        stops = ollama.modelfile_stop_tokens(tokenizer, marker) if tokenizer is not None else [marker]
        self.stops = [stop for stop in stops if stop][:MAX_STOPS]
        self._bos = None
        if tokenizer is not None and tokenizer.bos_token is not None:
            ids = tokenizer("a")["input_ids"]  # add_special_tokens: does this tokenizer, and so the server, add BOS?
            self._bos = tokenizer.bos_token if ids and ids[0] == tokenizer.bos_token_id else None

    def __enter__(self) -> ServedBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def render(self, messages: Sequence[Message]) -> str:
        """The `text` prompt: the training tokenizer's chat template, less a BOS the server adds itself."""
        text = self.codec.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return text[len(self._bos) :] if self._bos and text.startswith(self._bos) else text

    def request_body(self, request: Request) -> dict[str, Any]:
        """The JSON body of one request (module docstring)."""
        body: dict[str, Any] = {"model": self.probe.model, "max_tokens": request.max_new_tokens}
        body.update(temperature=request.temperature, top_p=1.0)
        if request.temperature > 0:
            body["seed"] = request.sample_seed % (1 << 31)
        if self.probe.llama_sampling:
            body.update(LLAMA_SAMPLING)
        if self.stops:
            body["stop"] = self.stops
        if self.probe.prompt == "text":
            body["prompt"] = self.render(request.messages)
        else:
            body["messages"] = list(request.messages)
        if request.choices is not None:
            thought = THOUGHT_CHARS_PER_TOKEN * request.max_new_tokens if request.choice_after else 0
            body["grammar"] = choice_grammar(request.choices, request.choice_after, thought)
            # A grounded reply may run past its budget to finish its command (as `decoding` lets it); the grammar
            # bounds it: every token is at least a character of the thought, marker or longest command.
            longest = max(len(choice) for choice in request.choices)
            body["max_tokens"] = max(request.max_new_tokens, thought + len(request.choice_after or "") + longest + 8)
        return body

    def submit(self, key: Hashable, request: Request) -> None:
        self._check_request(request)
        self._futures[self._pool.submit(self._answer_one, request)] = key

    def step(self) -> list[tuple[Hashable, Reply]]:
        if not self._futures:
            return []
        done, _ = wait(list(self._futures), timeout=STEP_WAIT_S, return_when=FIRST_COMPLETED)
        return [(self._futures.pop(future), future.result()) for future in done]

    def answer(self, requests: Sequence[Request]) -> list[Reply]:
        return self.generate(requests)

    @property
    def busy(self) -> bool:
        return bool(self._futures)

    def abort(self) -> None:
        for future in self._futures:
            future.cancel()  # a request already sent finishes on its thread, and its reply is dropped
        self._futures.clear()

    def close(self) -> None:
        self.abort()
        # The server first: a request still in flight then fails at once, instead of holding its thread (and the
        # client's close, and the interpreter's exit, which joins the pool) until a reply nobody wants is written.
        if self.server is not None:
            self.server.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def _answer_one(self, request: Request) -> Reply:
        import httpx

        started = time.perf_counter()
        mode = self.probe.prompt
        endpoint = "/completions" if mode == "text" else "/chat/completions"
        try:
            response = self._client.post(self.probe.url + endpoint, json=self.request_body(request))
        except httpx.HTTPError as error:
            raise self._failure(f"stopped answering ({type(error).__name__}: {error})") from None
        if response.status_code >= 400:
            raise self._failure(f"answered {response.status_code}: {response.text[:300]}")
        answer = response.json()
        text = _reply_text(answer, mode)
        for stop in self.stops:  # a server that returns its stop string with the reply
            text = text.split(stop, 1)[0]
        tokens = int((answer.get("usage") or {}).get("completion_tokens") or 0)
        return Reply(text=text.strip(), new_tokens=tokens, seconds=time.perf_counter() - started)

    def _failure(self, what: str) -> BackendError:
        message = f"the server at {self.probe.url} ({self.probe.model}) {what}"
        if self.server is not None and not self.server.alive:
            message += f"; llama-cpp-python's server is gone, its last lines:\n{self.server.log_tail()}"
        return BackendError(message)

    def describe(self) -> dict[str, Any]:
        """What the results record about how this model was played."""
        how = {
            "text": "/v1/completions, rendered here by the training tokenizer's chat template (the training tokens)",
            "chat": "/v1/chat/completions, rendered by the server's chat template",
        }
        return {
            **self.details,
            "url": self.probe.url,
            "served_model": self.probe.model,
            "prompt": self.probe.prompt,
            "prompt_rendering": how[self.probe.prompt],
            "grammar": self.probe.grammar_note,
            "stop": self.stops,
        }


# ------------------------------------------------------------------------------------------- loading


def served_codec(choice: BackendChoice) -> PromptCodec:
    """The codec of a served model: its training record (--record, or beside the GGUF) and the tokenizer of the
    base model the record names, when that loads here (else prompts go as chat messages)."""
    record = choice.training_record()
    tokenizer = loadable_tokenizer(record.base_model) if record else None
    folder = choice.record_folder if record else None
    return PromptCodec(CodecSpec(tokenizer, str(folder) if folder else None))


def probe_choice(choice: BackendChoice, prompt: str = "auto") -> ServerProbe:
    """`probe_server` for an `openai:` choice (evaluation asks before it keys its game log on the actions)."""
    url, model = parse_openai_model(choice.model)
    record = choice.training_record()
    can_render = record is not None and loadable_tokenizer(record.base_model) is not None
    return probe_server(url, model, prompt=prompt, can_render=can_render)


def load_served_backend(
    choice: BackendChoice,
    *,
    probe: ServerProbe | None = None,
    prompt: str = "auto",
    batch_size: int = 8,
    threads: int | None = None,
    port: int = 0,
) -> ServedBackend:
    """The backend of an `openai:` choice (`batch_size` requests in flight) or a `gguf:` one. For a GGUF: its shape
    checked against its training record's base model, then llama-cpp-python's server started on it (on `port`, 0: a
    free one; `threads` CPU threads), stopped again by `close` or by leaving a `with`, and by any error before the
    backend is returned."""
    if choice.kind == "openai":
        probe = probe or probe_choice(choice, prompt)
        return ServedBackend(choice.name, served_codec(choice), probe, slots=batch_size, details={"backend": "openai"})
    if choice.kind != "gguf":
        raise BackendError(f"{choice.name} is not a served model: load it with backends.load_backend")
    path = Path(choice.model)
    info = llama_server.read_gguf_info(path)
    record = choice.training_record()
    # Before the codec loads the tokenizer of the record's base model, which a wrong base may not even have.
    note = llama_server.check_gguf_base(info, record, Path(choice.record_folder)) if record else None
    codec = served_codec(choice)
    # The prompt window (few-shot demonstrations ride on top of it) and the reply, within what the model was built for.
    n_ctx = max(4096, 2 * record.max_seq_len) if record else 4096
    n_ctx = min(n_ctx, info.context_length or n_ctx)
    config = llama_server.LlamaServerConfig(gguf=path, port=port, n_ctx=n_ctx, threads=threads)
    server = llama_server.LlamaServer(config)
    server.start()
    try:
        probe = probe_server(server.url, server.alias, prompt=prompt, can_render=codec.tokenizer is not None)
        details = {
            "backend": "gguf",
            "gguf": info.as_dict(),
            "training_record": str(Path(choice.record_folder) / records.TRAINING_RECORD_FILE) if record else None,
            "base_check": note or ("shape matches the training record's base model" if record else "no record"),
            "n_ctx": n_ctx,
        }
        backend = ServedBackend(choice.name, codec, probe, slots=1, server=server, details=details)
        # llama-cpp-python's server answers one request at a time and keeps the cache of the last prompt only: one
        # game at a time extends its own prompt every step, where interleaved games recompute theirs (4 games of 10
        # steps on the 2-core machine: 26 s of model time against 304 s with 4 in flight, 2026-12-05).
        backend.games_at_once = 1
        return backend
    except BaseException:
        server.stop()
        raise


def describe_choice(choice: BackendChoice) -> dict[str, Any]:
    """What the results record about a served model when the run loaded none (every game already played)."""
    if choice.kind == "gguf":
        return {"backend": "gguf", "gguf": llama_server.read_gguf_info(Path(choice.model)).as_dict()}
    url, model = parse_openai_model(choice.model)
    return {"backend": "openai", "url": url, "served_model": model}
