"""What a training output folder already holds: the run's configuration, its checkpoints, a finished adapter.

`training.train` reads the folder before it trains: a finished run of the same configuration and data is found
(`find_finished_run`: nothing is trained again), a run cut short resumes from its last complete checkpoint
(`find_resume_checkpoint`), and a run of another configuration is refused (`ResumeMismatchError`, naming what
differs: `describe_changes`). A checkpoint is complete when every file its manifest lists is there at its size
(`write_checkpoint_manifest`, written last by `manifest_callback`; `why_incomplete`); one cut short by a kill is
removed, with a message. The folder ends with the adapter, the tokenizer, `TRAINING_LOG`, `LOSS_PLOT` and the
training record (`records.TRAINING_RECORD_FILE`); `remove_checkpoints` deletes the checkpoints of a finished run.

    from alfworld_sft import train_outputs
    train_outputs.why_incomplete(Path("results/sft_adapter/checkpoint-200"))   # None, or why it cannot resume
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from alfworld_sft import files, records
from alfworld_sft.paths import resolve_repo_path
from alfworld_sft.train_config import SPEED_FIELDS, TrainConfig

TRAINING_LOG = "training_log.json"
LOSS_PLOT = "loss_curve.png"
RUN_CONFIG = "run_config.json"  # written when a run starts: a rerun resumes only with the same one
CHECKPOINT_MANIFEST = "manifest.json"  # written last into a checkpoint: its files' sizes (without it: incomplete)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # what a finished run has saved


class ResumeMismatchError(ValueError):
    """The output folder holds a run (checkpoints or a finished adapter) with another configuration or other data."""


class TrainingFileError(files.CorruptFileError):
    """A file of a run or of its data that cannot be read or does not hold what it should; the message names the
    file and what to do (files.read_json_object raises the parent class for torn or non-JSON files)."""


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    """The fields that decide what is trained, JSON-shaped; a config saved before a field existed reads as its
    default."""
    values = {**json.loads(json.dumps(asdict(TrainConfig()))), **json.loads(json.dumps(dict(config)))}
    return {k: v for k, v in values.items() if k not in SPEED_FIELDS and k in TrainConfig.__dataclass_fields__}


def describe_changes(saved_config: Mapping[str, Any], saved_sha256: str, config: TrainConfig, sha256: str) -> str:
    """What differs between a run in a folder and `config` on data `sha256` ('' when nothing does)."""
    saved, wanted = _comparable(saved_config), _comparable(asdict(config))
    changes = [f"{k}: {saved.get(k)!r} -> {wanted[k]!r}" for k in wanted if saved.get(k) != wanted[k]]
    if saved_sha256 != sha256:
        changes.append("data (its sha256)")
    return ", ".join(changes)


def write_run_config(output: Path, config: TrainConfig, data_sha256: str) -> None:
    """What a run trains, written when it starts: a rerun resumes its checkpoints only with the same."""
    files.write_json(output / RUN_CONFIG, {"config": asdict(config), "data_sha256": data_sha256})


def read_run_config(output: Path) -> dict[str, Any]:
    remedy = f"restore it, or pass a new --output (or delete {output}) to start over"
    raw = files.read_json_object(output / RUN_CONFIG, remedy, ("config", "data_sha256"))
    if not isinstance(raw["config"], dict) or not isinstance(raw["data_sha256"], str):
        raise TrainingFileError(f"{output / RUN_CONFIG} has a config or data_sha256 of the wrong type: {remedy}")
    return raw


def read_checkpoint_state(checkpoint: Path) -> dict[str, Any] | None:
    """A checkpoint's trainer_state.json (written last when it is saved), or None when it is missing or torn."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("global_step"), int) else None


def list_checkpoints(output: Path) -> list[Path]:
    """`checkpoint-N` folders, newest (highest N) first."""
    numbered = [p for p in output.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(numbered, key=lambda p: int(p.name.split("-", 1)[1]), reverse=True)


def write_checkpoint_manifest(checkpoint: Path) -> None:
    """Every file of a saved checkpoint with its size, written last (atomically): the mark of a complete one."""
    sizes = {
        path.relative_to(checkpoint).as_posix(): path.stat().st_size
        for path in sorted(checkpoint.rglob("*"))
        if path.is_file() and path.name != CHECKPOINT_MANIFEST
    }
    files.write_json(checkpoint / CHECKPOINT_MANIFEST, sizes)


def manifest_callback() -> Any:
    """A trainer callback that writes each checkpoint's manifest once the trainer has saved all of it."""
    from transformers import TrainerCallback

    class WriteManifest(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                write_checkpoint_manifest(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    return WriteManifest()


def why_incomplete(checkpoint: Path) -> str | None:
    """Why a checkpoint cannot be resumed from (a run killed while saving it leaves any of its files torn), or None
    when every file its manifest lists is there at its size."""
    if read_checkpoint_state(checkpoint) is None:
        return "no readable trainer_state.json"
    try:
        sizes = json.loads((checkpoint / CHECKPOINT_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"no readable {CHECKPOINT_MANIFEST}, written when all its files are saved"
    for name, size in sizes.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} is {path.stat().st_size:,} bytes, its manifest says {size:,}"
    return None


def find_resume_checkpoint(output: Path, config: TrainConfig, data_sha256: str) -> tuple[str | None, list[str]]:
    """(the last complete checkpoint to resume from, after checking it was made by this configuration on this
    data; what was noticed on the way). A checkpoint with a file missing or torn (`why_incomplete`) was cut short
    while being saved: it is removed and the one before it is used."""
    notes: list[str] = []
    last = None
    for checkpoint in list_checkpoints(output) if output.exists() else []:
        reason = why_incomplete(checkpoint)
        if reason is None:
            last = checkpoint
            break
        shutil.rmtree(checkpoint)
        notes.append(f"{checkpoint.name} is incomplete ({reason}: the run was stopped while saving it); removed it")
    if last is None:
        if notes:
            notes.append("no complete checkpoint left: training starts from the beginning")
        return None, notes
    if not (output / RUN_CONFIG).exists():
        raise ResumeMismatchError(
            f"{output} holds {last.name} but no {RUN_CONFIG}: it was not made by this course; "
            "use another --output or delete the folder"
        )
    saved = read_run_config(output)
    changes = describe_changes(saved["config"], saved["data_sha256"], config, data_sha256)
    if changes:
        raise ResumeMismatchError(
            f"{output} holds checkpoints of a run with a different configuration ({changes}). "
            "Rerun with the same settings to resume, or pass a new --output (or delete the old folder) to start over"
        )
    return str(last), notes


def find_finished_run(output: Path, config: TrainConfig, data_sha256: str) -> records.TrainingRecord | None:
    """The training record of a finished run of `config` on this data in `output` (its record is there and its
    adapter complete), or None when there is none. A finished run of another configuration is refused."""
    record = records.read_training_record(output, required=False)
    if record is None:
        return None
    path = output / records.TRAINING_RECORD_FILE
    details = record.details
    remedy = f"pass a new --output (or delete {output}) to train again"
    if not isinstance(details.get("config"), dict) or not isinstance(details.get("data_sha256"), str):
        raise TrainingFileError(f"{path} lacks the run's config or data_sha256 (an older course wrote it?): {remedy}")
    changes = describe_changes(details["config"], details["data_sha256"], config, data_sha256)
    if changes:
        raise ResumeMismatchError(
            f"{output} holds an adapter trained with a different configuration ({changes}): {remedy}"
        )
    missing = [name for name in ADAPTER_FILES if not (output / name).exists()]
    if missing:
        raise TrainingFileError(f"{path} says training finished, but {', '.join(missing)} are missing: {remedy}")
    return record


def load_checkpoint_weights(model: Any, checkpoint: Path) -> None:
    """Put a checkpoint's adapter weights into the LoRA model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(checkpoint / "adapter_model.safetensors")))


def remove_checkpoints(output: str | os.PathLike[str]) -> int:
    """Delete the checkpoint folders of a finished run (they hold optimizer state: several times the adapter)."""
    removed = 0
    for checkpoint in resolve_repo_path(output).glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
        removed += 1
    return removed
