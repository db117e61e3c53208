"""Crash-safe file writing shared by every stage: atomic JSON files and append-only JSONL logs.

A JSON file is written to a temporary sibling and renamed into place, so a reader never sees half of it.
A JSONL file grows one flushed line per record; `read_jsonl` reports a malformed line by path and line
number, and `repair_jsonl_tail` cuts a torn last line left by a killed writer so that the run can resume.
`read_json_object` reads a JSON file another step wrote and names it, with what to do, when it is torn.
Large outputs (a model folder, a GGUF file) are built at `partial_path(target)` and renamed into place;
`remove_stale_partials` clears what a killed writer left there, leaving a running writer's work alone.

A game log (evaluation's finished games, a DAgger round's rollouts: what a rerun resumes from) is such a JSONL log
with the key of the run that wrote it on every line: `append_game_log` adds a finished game, `read_game_log` reads
back this run's games and moves a file of another run aside. `sha256_file` identifies a data file by its bytes.

    files.append_game_log(path, key, records.make_rollout(...))
    done = {line["game_id"] for line in records.read_rollouts(path, key)}  # read_game_log with the rollout keys
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class MalformedRecordError(ValueError):
    """A JSONL line that is not a JSON object; the message names the file and line."""

    def __init__(self, path: Path, line_number: int, reason: str):
        self.path, self.line_number = Path(path), line_number
        super().__init__(f"{path}:{line_number}: {reason}")


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write `payload` as indented JSON atomically (temporary file, fsync, rename)."""
    return write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write text (UTF-8) atomically."""
    return write_bytes(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


class WrongFileKindError(ValueError):
    """A file that holds no line of the kind a command reads and writes: refused, never rewritten."""


class OutputInUseError(RuntimeError):
    """Another live process writes the same output."""


class CorruptFileError(ValueError):
    """A file that exists but cannot be read as what it should be; the message names it and what to do."""


def read_json_object(path: str | os.PathLike[str], remedy: str, required_keys: Iterable[str] = ()) -> dict[str, Any]:
    """The JSON object in `path`, or `CorruptFileError` naming the file and `remedy` (what to do) when it is torn,
    not UTF-8, not an object, or lacks one of `required_keys`."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CorruptFileError(f"{path} is not UTF-8 text: {remedy}") from None
    except ValueError as error:
        raise CorruptFileError(f"{path} is not valid JSON ({error}; a torn write?): {remedy}") from None
    if not isinstance(raw, dict):
        raise CorruptFileError(f"{path} holds a JSON {type(raw).__name__}, not an object: {remedy}")
    missing = [key for key in required_keys if key not in raw]
    if missing:
        raise CorruptFileError(f"{path} lacks {', '.join(map(repr, missing))}: {remedy}")
    return raw


def partial_path(target: str | os.PathLike[str]) -> Path:
    """Where to build `target` before renaming it into place: a hidden sibling named after this process, so that
    `remove_stale_partials` can tell a killed writer's leftovers from a running writer's work."""
    target = Path(target)
    return target.parent / f".{target.name}.partial-{os.getpid()}"


_PARTIAL = re.compile(r"\..+\.partial-(\d+)")


def remove_stale_partials(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the `partial_path` files and folders in `folder` whose process is dead (killed mid-write); a live
    process's are left alone. Returns what was removed."""
    removed = []
    folder = Path(folder)
    for path in folder.iterdir() if folder.is_dir() else ():
        match = _PARTIAL.fullmatch(path.name)
        if not match or is_process_alive(int(match.group(1))):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def is_process_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        # /proc/PID/stat: "pid (name) state ..."; the name may hold spaces, so read after the last ')'.
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): signal 0 reached it


def repair_jsonl_tail(path: str | os.PathLike[str]) -> bool:
    """Cut a torn (unterminated or unparsable) last line off `path`; True when something was cut."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return False
    with open(path, "rb+") as handle:
        data = handle.read()
        end = len(data)
        if data.endswith(b"\n"):
            last_start = data.rfind(b"\n", 0, end - 1) + 1
            try:
                json.loads(data[last_start:end])
                return False
            except ValueError:
                cut = last_start
        else:
            cut = data.rfind(b"\n") + 1
        handle.truncate(cut)
    return True


def read_jsonl(path: str | os.PathLike[str], *, skip_malformed: bool = False) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a JSONL file; a bad line raises `MalformedRecordError` with its line number,
    or, with `skip_malformed`, is skipped with a warning naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                failure = MalformedRecordError(path, number, f"not UTF-8 text ({error.reason})")
                if not skip_malformed:
                    raise failure from None
                warnings.warn(f"skipped {failure}", stacklevel=2)
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise TypeError(f"expected a JSON object, found {type(record).__name__}")
            except (ValueError, TypeError) as error:
                failure = MalformedRecordError(path, number, f"malformed JSON line ({error})")
                if not skip_malformed:
                    raise failure from None
                warnings.warn(f"skipped {failure}", stacklevel=2)
                continue
            yield record


def append_jsonl(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> int:
    """Append records one flushed line each; returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            count += 1
    return count


def load_jsonl_log(path: str | os.PathLike[str], *, required: dict[str, type], label: str) -> list[dict[str, Any]]:
    """The records of an append-only log this course wrote (collection ledger and records, the game logs of
    evaluation and DAgger), ready to resume from. A torn last line (a killed writer) is cut; a line that is not a JSON
    object with the `required` keys (of those types) is reported by path and line, moved aside to
    `<name>.malformed`, and treated as not done. Nothing is lost: the bad lines stay inspectable."""
    path = Path(path)
    if not path.exists():
        return []
    if repair_jsonl_tail(path):
        warnings.warn(f"{path}: cut a torn last line left by an interrupted run; its work will be redone", stacklevel=2)
    found, keep, bad = [], [], []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
                if not isinstance(record, dict):
                    raise TypeError(f"a JSON {type(record).__name__}, not an object")
                wrong = [key for key, kind in required.items() if not isinstance(record.get(key), kind)]
                if wrong:
                    raise TypeError(f"keys {wrong} missing or of the wrong type")
            except (ValueError, TypeError) as error:
                bad.append((number, raw, error))
                continue
            found.append(record)
            keep.append(raw)
    if bad and not found:
        # Not one line of this kind: the file is another one (the trajectories given as a game log, say). It is
        # the user's data, so it is left as it is rather than emptied into `.malformed`.
        number, _, error = bad[0]
        raise WrongFileKindError(
            f"{path} is not a {label} file: none of its {len(bad)} lines is one (line {number}: {error}); it was "
            "left untouched: give the path of a file this command wrote, or a new path"
        )
    for number, _, error in bad:
        warnings.warn(
            f"{path}:{number}: malformed {label} line ({error}): moved to {path.name}.malformed, "
            "its work will be redone",
            stacklevel=2,
        )
    if bad:
        with open(path.with_name(f"{path.name}.malformed"), "ab") as handle:
            handle.writelines(line if line.endswith(b"\n") else line + b"\n" for _, line, _ in bad)
        write_bytes(path, b"".join(keep))
    return found


def append_game_log(path: str | os.PathLike[str], key: dict[str, Any], record: dict[str, Any]) -> None:
    """Append one finished game to a game log, under the key of the run that played it."""
    append_jsonl(path, [{"run": key, **record}])


def read_game_log(path: Path, key: dict[str, Any], required: dict[str, Any]) -> list[dict[str, Any]]:
    """Finished games of this run, each line holding the `required` keys (of their types) beside its run key. A
    torn last line is cut and malformed lines are set aside (`load_jsonl_log`); a game log written by another run
    is moved aside whole, with a warning that says what differs, and this run starts fresh. The lines are rollout
    records: `records.read_rollouts` is the reader every stage calls."""
    lines = load_jsonl_log(path, required={"run": dict, **required}, label="game log")
    other = next((line["run"] for line in lines if line["run"] != key), None)
    if other is not None:
        aside = path.with_name(f"{path.stem}.other-run-{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}")
        os.replace(path, aside)
        differs = sorted(k for k in set(key) | set(other) if key.get(k) != other.get(k))
        warnings.warn(
            f"{path} was written by another run (it differs in {', '.join(differs)}): moved to {aside.name}, "
            "starting a fresh game log",
            stacklevel=2,
        )
        return []
    kept, seen = [], set()
    for line in lines:
        pair = (line["agent"], line["game_id"])
        if pair not in seen:  # a line written twice by hand-merged game logs counts once
            seen.add(pair)
            kept.append(line)
    return kept


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write bytes atomically: a temporary sibling, fsync, rename, so a reader never sees half of it."""
    path = Path(path)
    if path.is_dir():  # else the rename below fails naming its temporary file, not the path the user gave
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make results unreadable to others
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class UnwritableOutputError(ValueError):
    """An output path that cannot be written; found before any work, the message names the flag and the path."""


def check_output(path: str | os.PathLike[str], flag: str, *, folder: bool = False) -> Path:
    """Refuse, before any work, an output the command could not write at its end: a folder where a file goes (or a
    file where a folder goes), a file on the way to it, or a place this user may not write. Writes nothing: the
    probe file it makes in the nearest existing folder is removed at once."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        want = "a folder" if folder else "a file"
        raise UnwritableOutputError(f"{flag} {path} is {'a folder' if path.is_dir() else 'a file'}: give {want}")
    nearest = path
    while not nearest.exists():
        nearest = nearest.parent
    if not nearest.is_dir():
        raise UnwritableOutputError(f"{flag} {path}: {nearest} is a file where a folder is expected: give another path")
    if nearest == path:  # an existing output folder is written into; an existing file is replaced from its folder
        nearest = path if folder else path.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=nearest)
    except OSError as error:
        raise UnwritableOutputError(
            f"{flag} {path}: {nearest} cannot be written ({error.strerror}): choose a path you can write, or fix "
            "its permissions"
        ) from None
    os.close(fd)
    os.unlink(probe)
    return path


@contextlib.contextmanager
def hold_output(path: str | os.PathLike[str], flag: str = "--output") -> Iterator[None]:
    """One process at a time writes an output: an exclusive `flock` on `<path>.lock`, which names the holder (the
    kernel drops the lock when its holder dies, so a killed run never blocks the next one). A second process is
    refused at once, before it reads or moves anything (two evaluations on one output used to split its games
    between them). The lock file is removed by its holder, while still held, so none is left behind."""
    lock = Path(f"{path}.lock")
    with output_folder(lock.parent):  # a run that fails leaves no folder it made for its output
        with _locked(lock, path, flag):
            yield


@contextlib.contextmanager
def _locked(lock: Path, path: str | os.PathLike[str], flag: str) -> Iterator[None]:
    while True:
        handle = open(lock, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise OutputInUseError(
                f"{path} is being written by {holder}: wait for it to finish, or pass another {flag}"
            ) from None
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(lock).st_ino:
                break  # the lock file on disk is the one this process holds
        except FileNotFoundError:
            pass  # its last holder removed it between our open and our lock: take the new one
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} (`{' '.join(sys.argv)[:300]}`)")
        handle.flush()
        yield
    finally:
        lock.unlink(missing_ok=True)
        handle.close()


@contextlib.contextmanager
def output_folder(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Create `folder` (and its missing parents) for a command's outputs; if the command fails before anything was
    written there, remove the folders it created, so that a failed run leaves no empty output behind."""
    folder = Path(folder)
    created = [path for path in (folder, *folder.parents) if not path.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for path in created:
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise
