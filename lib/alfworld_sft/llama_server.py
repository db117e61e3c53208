"""llama-cpp-python's OpenAI-compatible server on one GGUF file, and what a GGUF file is.

`LlamaServer` (a context manager) runs `python -m llama_cpp.server` on a GGUF in a process group of its own, on a
free local port (or the port given, refused at once when something listens there). It is ready when `/v1/models`
answers; if the process dies first, the error shows the last lines it wrote. It is stopped with every process it
started when the `with` ends, on an error or Ctrl-C inside it, at interpreter exit, and on Linux also when this
process is killed outright (the kernel signals the server when its parent dies). `served.py` plays games through
it: `alfworld-sft evaluate --model gguf:PATH`.

`read_gguf_info` reads what identifies a GGUF file from its header (sha256, quant type, architecture and shape);
`check_gguf_base` refuses a GGUF whose shape is not that of the base model its training record names.

    with LlamaServer(LlamaServerConfig(gguf=Path("results/gguf/alfworld-sft-q4_k_m.gguf"))) as server:
        print(server.url)  # http://127.0.0.1:PORT/v1: OpenAI's API

The server comes with the `export` extra (`pip install -e '.[export]'`: llama-cpp-python and its server extra).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import hashlib
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alfworld_sft import files, models, records
from alfworld_sft.gguf import EXPORT_INSTALL_HINT, GGUF_RECORD

SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "pydantic_settings", "starlette_context")
GGUF_MAGIC = b"GGUF"
STOP_GRACE_S = 10.0  # how long the server may take to exit on SIGTERM before it is killed
LOG_TAIL_LINES = 15  # lines of the server's output an error shows
LLAMA_ERROR = re.compile(r"(?i)\berror\b|failed")  # how llama.cpp's log lines say what went wrong
QUANT_IN_NAME = re.compile(r"(?i)(?:^|[-_.])(i?q\d_k_[sml]|iq\d_\w+|q\d_k|q\d_\d|bf16|f16|f32)(?=$|[-_.])")


class ServerStartError(RuntimeError):
    """A llama.cpp server that could not start: the message says why (its last lines) and what to do."""


class PortTakenError(RuntimeError):
    """The port asked for is already in use."""


class GgufBaseError(ValueError):
    """A GGUF whose shape is not that of the base model its training record names."""


# ------------------------------------------------------------------------------------------- a GGUF file


@dataclass(frozen=True)
class GgufInfo:
    """What identifies a GGUF file, read from its header."""

    path: Path
    sha256: str  # of the whole file
    quant: str  # llama.cpp's file type (Q4_K_M, F16, ...), else what the file name says, else "unknown"
    architecture: str | None  # general.architecture (llama, qwen2, ...)
    layers: int | None  # <arch>.block_count
    width: int | None  # <arch>.embedding_length
    vocabulary: int | None  # tokens of its tokenizer
    context_length: int | None  # the context the model was built for
    has_chat_template: bool  # whether the server can render chat messages with the model's own template

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "quant": self.quant,
            "architecture": self.architecture,
            "layers": self.layers,
            "width": self.width,
            "vocabulary": self.vocabulary,
        }


def locate_gguf(path: str | os.PathLike[str]) -> Path:
    """The GGUF file `path` names: the file itself, or in a folder the file its export served (`gguf_record.json`),
    else its only .gguf file."""
    path = Path(path).expanduser()
    if path.is_dir():
        record = path / GGUF_RECORD
        served = None
        if record.is_file():
            served = files.read_json_object(record, "export the GGUF again (`alfworld-sft export-gguf`)").get("served")
        if served and Path(served).is_file():
            path = Path(served)
        else:
            found = sorted(path.glob("*.gguf"))
            if len(found) != 1:
                listed = ", ".join(p.name for p in found) or "none"
                raise FileNotFoundError(
                    f"{path} holds {len(found)} .gguf files ({listed}): pass gguf:FILE with the one to play "
                    "(`alfworld-sft export-gguf` writes them)"
                )
            path = found[0]
    if not path.is_file():
        raise FileNotFoundError(
            f"no GGUF file at {path}: export one first (`alfworld-sft export-gguf`, notebook 04), or pass "
            "gguf:PATH with an existing .gguf file or its folder"
        )
    with open(path, "rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise files.CorruptFileError(
                f"{path} is not a GGUF file (it does not start with {GGUF_MAGIC!r}): pass a .gguf file written by "
                "`alfworld-sft export-gguf` or llama.cpp"
            )
    return Path(os.path.abspath(path))  # not resolved: the training record is looked up beside the path given


def file_sha256(path: Path) -> str:
    """The sha256 of a file, computed once per process for a given size and modification time."""
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_gguf_info(path: Path) -> GgufInfo:
    """The identity and shape of the GGUF file at `path` (from its header; the tensors are not read)."""
    from gguf import GGUFReader, LlamaFileType

    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError, IndexError) as error:  # a torn header or tensor table
        raise files.CorruptFileError(
            f"{path} is damaged ({type(error).__name__}: {error}): export the GGUF again (`alfworld-sft export-gguf`)"
        ) from None

    def value(key: str) -> Any:
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    architecture = value("general.architecture")
    file_type = value("general.file_type")
    quant = None
    if file_type is not None:
        with contextlib.suppress(ValueError):
            quant = LlamaFileType(file_type).name.removeprefix("MOSTLY_")
    if quant is None:
        match = QUANT_IN_NAME.search(path.stem)
        quant = match.group(1).upper() if match else "unknown"
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    return GgufInfo(
        path=path,
        sha256=file_sha256(path),
        quant=quant,
        architecture=architecture,
        layers=value(f"{architecture}.block_count"),
        width=value(f"{architecture}.embedding_length"),
        vocabulary=len(tokens.data) if tokens is not None else None,
        context_length=value(f"{architecture}.context_length"),
        has_chat_template="tokenizer.chat_template" in reader.fields,
    )


def check_gguf_base(info: GgufInfo, record: records.TrainingRecord, record_folder: Path) -> str | None:
    """Refuse a GGUF whose layers, width or vocabulary differ from those of the base model its training record names
    (`GgufBaseError`). Returns a note instead when that base model cannot be read here (nothing was compared)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(models.resolve_model(record.base_model))
    except (models.ModelUnavailableError, OSError, ValueError) as error:
        return f"the GGUF's shape was not compared with its base model {record.base_model!r}, unreadable here: {error}"
    shape = models.ModelShape.from_config(config)
    expected = {"layers": shape.layers, "width": shape.hidden, "vocabulary": shape.vocab}
    found = {"layers": info.layers, "width": info.width, "vocabulary": info.vocabulary}
    differ = [f"{key} {found[key]} where it has {expected[key]}" for key in expected if found[key] != expected[key]]
    if differ:
        raise GgufBaseError(
            f"{info.path} is not a model of {record.base_model!r}, the base its training record "
            f"({record_folder / records.TRAINING_RECORD_FILE}) names: {', '.join(differ)}. Export the GGUF from the "
            "merged model of that training run (`alfworld-sft export-gguf`), or pass --record with the folder of the "
            "GGUF's own training record"
        )
    return None


# ------------------------------------------------------------------------------------------- the server


def server_missing() -> str | None:
    """Why llama-cpp-python's server cannot run here (what is missing and what to install), or None when it can."""
    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (
        f"llama-cpp-python's server needs {', '.join(missing)}, not installed here: install it with "
        f"`{EXPORT_INSTALL_HINT}` (llama-cpp-python and its server extra)"
    )


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on, naming it (before a server starts and fails on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise PortTakenError(
                f"port {port} on {host} is taken ({error.strerror or error}): another server listens there. "
                "Stop it, pass another --server-port, or leave --server-port 0 for a free port"
            ) from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class LlamaServerConfig:
    gguf: Path  # the GGUF file to serve
    port: int = 0  # 0: a free port
    host: str = "127.0.0.1"  # local only: the server has no authentication
    n_ctx: int = 4096  # context window in tokens (prompt + reply)
    threads: int | None = None  # CPU threads; None: every CPU
    ready_timeout_s: float = 300.0  # how long loading the model may take (an 8B file from a slow disk)


class LlamaServer:
    """One `python -m llama_cpp.server` process on `config.gguf` (module docstring); `url` is its API base."""

    def __init__(self, config: LlamaServerConfig):
        self.config = config
        self.process: subprocess.Popen | None = None
        self.port = config.port
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}/v1"

    @property
    def alias(self) -> str:
        """The model name the server lists: the GGUF's file name."""
        return self.config.gguf.name

    def __enter__(self) -> LlamaServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.config.port:
            check_port_free(self.config.host, self.config.port)
        else:
            self.port = free_port(self.config.host)
        missing = server_missing()
        if missing is not None:
            raise ServerStartError(missing)
        threads = str(self.config.threads or os.cpu_count() or 1)
        command = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.config.gguf), "--model_alias", self.alias,
            "--host", self.config.host, "--port", str(self.port),
            "--n_ctx", str(self.config.n_ctx), "--n_threads", threads, "--n_threads_batch", threads,
            "--n_gpu_layers", "-1",  # every layer on the GPU when llama.cpp was built with one; ignored otherwise
            "--interrupt_requests", "False",  # a new request must never cut a game's reply short
        ]  # fmt: skip
        # The server's output goes to a file: a pipe nobody reads would fill and stall it.
        self._log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped whole, and Ctrl-C in a terminal is ours to handle
            preexec_fn=_die_with_parent() if sys.platform == "linux" else None,
        )
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.config.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"llama-cpp-python's server on {self.config.gguf} exited with code {self.process.returncode} "
                    f"before it answered; its last lines:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/models", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.2)
        raise ServerStartError(
            f"llama-cpp-python's server on {self.config.gguf} did not answer at {self.url} within "
            f"{self.config.ready_timeout_s:.0f} s; its last lines:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The server's last lines, after the lines where llama.cpp said what failed (above Python's traceback)."""
        if self._log is None:
            return ""
        written = Path(self._log.name).read_text(encoding="utf-8", errors="replace").strip().splitlines()
        reasons = [line for line in written[:-lines] if LLAMA_ERROR.search(line)][-5:]
        return "\n".join([*reasons, *(["..."] if reasons else []), *written[-lines:]])

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Stop the server and every process of its group (SIGTERM, then SIGKILL after `STOP_GRACE_S`); idempotent."""
        process, self.process = self.process, None
        if process is not None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
            _signal_group(process.pid, signal.SIGKILL)  # anything of its group that outlived it
            atexit.unregister(self.stop)
        if self._log is not None:
            self._log.close()
            Path(self._log.name).unlink(missing_ok=True)
            self._log = None


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _die_with_parent() -> Callable[[], Any]:
    """What the server's process runs before the server: ask the kernel for SIGTERM when this process (the thread that
    starts the server) dies, even by SIGKILL, where no `finally` or atexit handler runs (prctl PR_SET_PDEATHSIG).
    Looked up here, in the parent: the child only calls it."""
    return functools.partial(ctypes.CDLL(None, use_errno=True).prctl, 1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
