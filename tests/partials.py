"""Real writers of `files.partial_path` leftovers: a process that builds its partial and then lives, or is killed."""

from __future__ import annotations

import signal
import subprocess
import sys
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
