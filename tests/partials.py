"""Real processes killed mid-work: writers of `files.partial_path` leftovers (a process that builds its partial and
then lives, or is killed), and a course command SIGKILLed once its output holds its first line."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_WRITER = """
import sys, time
from pathlib import Path
from alfworld_sft.files import partial_path
partial = partial_path(Path(sys.argv[1]))
partial.mkdir()
(partial / "model.safetensors").write_bytes(b"half a model")
print(partial, flush=True)
time.sleep(300)
"""


def start_partial_writer(target: Path) -> tuple[subprocess.Popen, Path]:
    """A python process that has begun building `target` (its partial folder exists) and is still at work."""
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    return writer, Path(writer.stdout.readline().strip())


def leave_killed_partial(target: Path) -> Path:
    """The partial folder of a writer of `target` that was SIGKILLed mid-write (and reaped, as a shell would)."""
    writer, partial = start_partial_writer(target)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    writer.stdout.close()
    assert partial.is_dir()
    return partial


def kill_after_first_line(
    command: Sequence[str],
    output: Path,
    *,
    timeout: float,
    before_kill: Callable[[int], object] | None = None,
) -> None:
    """Run `command` until `output` holds its first whole line (a record, a finished game), then SIGKILL it, as a
    user's `kill -9` or a machine's out-of-memory killer would, and reap it. `before_kill(pid)` runs just before the
    kill (to see the process's children while they are still its own). After `timeout` s, or when the command ends
    by itself, it is killed (or reaped) all the same: the caller's assertions on `output` tell what happened."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            if output.exists() and output.read_text().count("\n") >= 1:
                break
            time.sleep(0.05)
        if before_kill is not None:
            before_kill(process.pid)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
