"""Stage 03: supervised fine-tuning of a LoRA adapter on the formatted trajectories, resumable.

On CUDA the base model is loaded in 4 bits (QLoRA: nf4, double quantization, bf16 compute), through Unsloth
when it is installed and otherwise through PEFT + bitsandbytes; on CPU it is plain LoRA in fp32, so the course
runs anywhere on the embedded default model. The trainer is TRL's `SFTTrainer`, given the dataset of stage 02
already tokenized with its `labels` (loss on the assistant's commands and their end-of-turn token only): TRL
keeps a ready `labels` column as it is (no re-tokenizing, no re-masking) and its collator pads labels with -100
and builds the attention mask from lengths, so padding never hides the end-of-turn label.

    alfworld-sft train --data results/oracle/trajectories.jsonl --output results/sft_adapter \\
        --base meta-llama/Llama-3.1-8B-Instruct --epochs 3 --batch 4 --lr 2e-4 --max-seq-len 2048
    alfworld-sft train --data results/small/oracle/trajectories.jsonl --output results/small/sft_adapter \\
        --epochs 1 --max-seq-len 1024 --eval-steps 5 --save-steps 5        # CPU, the default model

Several GPUs of one machine (data parallel, one process per GPU; the effective batch is
batch x grad-accum x GPUs):

    accelerate launch --num_processes 2 --multi_gpu -m alfworld_sft.cli train --data ... --output ... --base ...

(checked on 2 H100s with a tiny Llama-shaped model: QLoRA nf4 + Liger, world size 2, half the steps per epoch).

Interrupted? Rerun the same command: it resumes from the last checkpoint in `--output`; a checkpoint made with
a different configuration or data is refused with a message. The output folder ends with the adapter, the
tokenizer, `training_log.json`, `loss_curve.png` and `training_record.json` (base model as given and resolved,
data sha256, the full configuration, the prompt format, max_seq_len, seed and package versions), which the
export and evaluation stages read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alfworld_sft import files, formatting, models, results
from alfworld_sft.paths import resolve_repo_path

LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TRAINING_RECORD = "training_record.json"  # read by export and evaluation: keep its key names
TRAINING_LOG = "training_log.json"
LOSS_PLOT = "loss_curve.png"
RUN_CONFIG = "run_config.json"  # written when a run starts: a rerun resumes only with the same one


@dataclass(frozen=True)
class TrainConfig:
    """One training run; defaults are the seed guide's values, except the base model (see `DEFAULT_BASE_NOTE`)."""

    data: str = "results/oracle/trajectories.jsonl"  # trajectories JSONL, or a folder from `alfworld-sft format`
    output: str = "results/sft_adapter"  # adapter, tokenizer, checkpoints, log, plot, training_record.json
    base: str = models.DEFAULT_MODEL  # model id, local folder or the embedded default's name
    epochs: float = 3.0  # passes over the training split
    batch: int = 4  # sequences per device per step
    lr: float = 2e-4  # peak learning rate
    max_seq_len: int = 2048  # tokens per example; longer games lose their oldest middle turns
    grad_accum: int = 4  # steps accumulated per optimizer update (effective batch = batch x grad_accum x GPUs)
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 16  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.0  # dropout on the LoRA path
    target_modules: tuple[str, ...] = LORA_TARGET_MODULES  # linear layers that get adapters
    lr_scheduler: str = "cosine"  # learning-rate schedule after warm-up
    warmup_ratio: float = 0.05  # share of all optimizer steps spent warming up
    logging_steps: int = 10  # optimizer steps between train-loss log lines
    eval_steps: int = 100  # optimizer steps between evaluations of the held-out games
    save_steps: int = 200  # optimizer steps between checkpoints (a multiple of eval_steps, to keep the best)
    save_total_limit: int = 2  # checkpoints kept (the best one is never deleted)
    load_best: bool = True  # end with the checkpoint of lowest eval loss
    eval_fraction: float = 0.05  # share of games held out for eval loss
    seed: int = 42  # split, LoRA init and data order
    max_steps: int = -1  # stop after this many optimizer steps (-1: run all epochs)
    device: str = "auto"  # "auto" (CUDA if present), "cuda" or "cpu"
    quantization: str = "auto"  # "auto" (nf4 on CUDA, none on CPU), "nf4" or "none"
    backend: str = "auto"  # "auto" (Unsloth if installed, on CUDA), "unsloth" or "peft"
    gradient_checkpointing: bool | None = None  # recompute activations; None: on with CUDA, off on CPU
    group_by_length: bool = True  # batch sequences of similar length together: less padding (benchmark: 34% -> 14%)
    liger: bool | None = None  # Liger fused kernels (no full-vocabulary logits); None: on with CUDA if installed


DEFAULT_BASE_NOTE = (
    "The seed guide trains meta-llama/Llama-3.1-8B. The course's default is the embedded "
    f"{models.DEFAULT_MODEL}: it runs on any machine, offline, without a licence; on a GPU pass "
    "--base meta-llama/Llama-3.1-8B-Instruct (the instruct model: its chat template and end-of-turn token are "
    "the ones the adapter learns and the agents play with)."
)

# Fields a resumed run may change without changing what is trained.
_RESUMABLE_FIELDS = ("output",)


@dataclass(frozen=True)
class TrainResult:
    output: Path  # the adapter folder
    global_step: int  # optimizer steps done, over all runs into this folder
    train_loss: float | None  # mean training loss reported by the trainer
    eval_loss_initial: float | None  # eval loss of the untrained adapter (None when resumed or no eval split)
    eval_loss_best: float | None  # lowest eval loss seen
    resumed_from: str | None  # the checkpoint this run continued from
    runtime_s: float  # wall time of this call
    record: dict[str, Any] = field(default_factory=dict)  # the training_record.json written


class TrainingSetupError(RuntimeError):
    """The machine cannot run the asked set-up (no GPU, a missing package); the message says what to do."""


class ResumeMismatchError(ValueError):
    """The output folder holds checkpoints of a run with another configuration or other data."""


class TrainingOutOfMemoryError(RuntimeError):
    """The GPU ran out of memory; the message lists what to shrink."""


# ------------------------------------------------------------------------------------------- the set-up


def resolve_setup(config: TrainConfig) -> dict[str, Any]:
    """Which device, quantization and backend this machine gives for `config`; clear errors when it cannot."""
    import importlib.util

    import torch

    if config.device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be auto, cuda or cpu, got {config.device!r}")
    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        raise TrainingSetupError(
            f"CUDA was asked for but torch {torch.__version__} sees no GPU (built for CUDA {torch.version.cuda}): "
            "run on a machine with an NVIDIA GPU and a CUDA build of torch, or pass --device cpu "
            "(plain LoRA on the default model)"
        )
    device = "cuda" if config.device == "auto" and cuda else config.device if config.device != "auto" else "cpu"
    quantization = config.quantization if config.quantization != "auto" else ("nf4" if device == "cuda" else "none")
    if quantization not in ("nf4", "none"):
        raise ValueError(f"quantization must be auto, nf4 or none, got {config.quantization!r}")
    if quantization == "nf4" and importlib.util.find_spec("bitsandbytes") is None:
        raise TrainingSetupError(
            "QLoRA needs bitsandbytes: `pip install bitsandbytes==0.50.2`, or pass --quantization none "
            "(plain LoRA in bf16: about 4x the GPU memory for the base weights)"
        )
    if config.backend not in ("auto", "unsloth", "peft"):
        raise ValueError(f"backend must be auto, unsloth or peft, got {config.backend!r}")
    has_unsloth = device == "cuda" and importlib.util.find_spec("unsloth") is not None
    if config.backend == "unsloth" and not has_unsloth:
        raise TrainingSetupError(
            "Unsloth was asked for but is "
            + ("only for CUDA machines" if device != "cuda" else "not installed")
            + ": install it with torch in one command (`pip install torch==X torchvision==Y unsloth==2026.10.9 "
            "unsloth_zoo==2026.10.9`, README GPU route), or pass --backend peft"
        )
    backend = "unsloth" if config.backend in ("auto", "unsloth") and has_unsloth and quantization == "nf4" else "peft"
    has_liger = importlib.util.find_spec("liger_kernel") is not None
    if config.liger and not has_liger:
        raise TrainingSetupError("--liger needs liger-kernel: `pip install liger-kernel==0.8.5`, or pass --no-liger")
    # Liger's kernels are Triton (GPU) kernels; Unsloth brings its own fused loss.
    liger = (config.liger if config.liger is not None else has_liger and device == "cuda") and backend == "peft"
    checkpointing = config.gradient_checkpointing if config.gradient_checkpointing is not None else device == "cuda"
    return {
        "device": device,
        "quantization": quantization,
        "backend": backend,
        "gradient_checkpointing": checkpointing,
        "liger": liger,
    }


def load_lora_model(config: TrainConfig, setup: dict[str, Any]) -> Any:
    """The base model with fresh LoRA adapters, as `setup` says (Unsloth, PEFT + bitsandbytes, or plain)."""
    import torch

    resolved = models.resolve_model(config.base)
    if setup["backend"] == "unsloth":
        from unsloth import FastLanguageModel

        model, _ = FastLanguageModel.from_pretrained(
            model_name=resolved, max_seq_length=config.max_seq_len, dtype=None, load_in_4bit=True
        )
        return FastLanguageModel.get_peft_model(
            model,
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            bias="none",
            target_modules=list(config.target_modules),
            random_state=config.seed,
            use_gradient_checkpointing="unsloth" if setup["gradient_checkpointing"] else False,
        )
    from peft import LoraConfig, get_peft_model

    kwargs: dict[str, Any] = {}
    if setup["device"] == "cuda":
        from accelerate import PartialState

        # One full copy per process under `accelerate launch`: data parallel, each on its own GPU.
        kwargs["device_map"] = {"": PartialState().local_process_index}
        kwargs["dtype"] = torch.bfloat16
        kwargs["attn_implementation"] = "sdpa"
    else:
        kwargs["dtype"] = torch.float32
    if setup["quantization"] == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    model = models.load_model(config.base, **kwargs)
    model.config.use_cache = False
    if setup["gradient_checkpointing"]:
        # Not prepare_model_for_kbit_training: it upcasts the embeddings, norms and the 128k-vocabulary head to
        # fp32, which cost 1.5x in speed and 4 GiB in the benchmark (benchmarks/train_speed.py); bf16 trains fine.
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=list(config.target_modules),
    )
    return get_peft_model(model, lora)


# ---------------------------------------------------------------------------------------------- the data


def load_training_data(config: TrainConfig, tokenizer: Any) -> tuple[Any, dict[str, Any]]:
    """(DatasetDict, facts about it: prompt_format, data sha256, stats) from a JSONL or a formatted folder."""
    path = resolve_repo_path(config.data)
    if path.is_dir():
        dataset, info = formatting.load_formatted(path)
        made_with = info["config"]
        if made_with["model"] != config.base or info["max_seq_len"] != config.max_seq_len:
            raise ValueError(
                f"{path} was formatted for model {made_with['model']!r} with max_seq_len {info['max_seq_len']}, "
                f"not {config.base!r} with {config.max_seq_len}: reformat it (`alfworld-sft format --model "
                f"{config.base} --max-seq-len {config.max_seq_len}`) or pass the trajectories JSONL"
            )
        return dataset, {
            "data_file": info["source"],
            "data_sha256": info["source_sha256"],
            "prompt_format": info["prompt_format"],
            "stats": info["stats"],
        }
    records = formatting.load_records(path)
    format_config = formatting.FormatConfig(
        model=config.base,
        max_seq_len=config.max_seq_len,
        eval_fraction=config.eval_fraction,
        seed=config.seed,
    )
    dataset = formatting.format_records(path, format_config, tokenizer=tokenizer)
    return dataset, {
        "data_file": str(path),
        "data_sha256": formatting.sha256_file(path),
        "prompt_format": asdict(formatting.prompt_format_of(records)),
        "stats": formatting.summarize_lengths(dataset, config.max_seq_len),
    }


# ------------------------------------------------------------------------------------------- resuming


def _comparable(config: TrainConfig) -> dict[str, Any]:
    values = json.loads(json.dumps(asdict(config)))
    return {k: v for k, v in values.items() if k not in _RESUMABLE_FIELDS}


def find_resume_checkpoint(output: Path, config: TrainConfig, data_sha256: str) -> str | None:
    """The last checkpoint to resume from, after checking it was made by this configuration on this data."""
    from transformers.trainer_utils import get_last_checkpoint

    if not output.exists():
        return None
    last = get_last_checkpoint(str(output))
    if last is None:
        return None
    run_config = output / RUN_CONFIG
    if not run_config.exists():
        raise ResumeMismatchError(
            f"{output} holds {Path(last).name} but no {RUN_CONFIG}: it was not made by this course; "
            "use another --output or delete the folder"
        )
    saved = files.read_json(run_config)
    wanted = {"config": _comparable(config), "data_sha256": data_sha256}
    changed = [k for k in wanted["config"] if saved["config"].get(k) != wanted["config"][k]]
    if saved["data_sha256"] != data_sha256:
        changed.append("data (its sha256)")
    if changed:
        details = ", ".join(
            f"{k}: {saved['config'].get(k)!r} -> {wanted['config'][k]!r}" for k in changed if k in wanted["config"]
        )
        raise ResumeMismatchError(
            f"{output} holds checkpoints of a run with a different configuration ({details or ', '.join(changed)}). "
            "Rerun with the same settings to resume, or pass a new --output (or delete the old folder) to start over"
        )
    return last


# ------------------------------------------------------------------------------------------- reporting


def plot_loss_curve(log_history: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Train and eval loss against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    figure, axis = plt.subplots(figsize=(7, 3.5))
    if train:
        axis.plot(*zip(*train), label="train loss", marker=".")
    if evals:
        axis.plot(*zip(*evals), label="eval loss", marker="o")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss (assistant tokens)")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _explain_oom(config: TrainConfig, setup: dict[str, Any]) -> TrainingOutOfMemoryError:
    advice = [
        f"a smaller --batch (now {config.batch}; raise --grad-accum to keep the effective batch)",
        f"a shorter --max-seq-len (now {config.max_seq_len})",
    ]
    if setup["quantization"] == "none" and setup["device"] == "cuda":
        advice.append("QLoRA instead of LoRA (--quantization nf4: the base weights take a quarter of the memory)")
    if not setup["gradient_checkpointing"]:
        advice.append("--gradient-checkpointing")
    return TrainingOutOfMemoryError(
        "out of GPU memory while training: try " + "; or ".join(advice) + ". Rerun to resume from the last checkpoint."
    )


# ------------------------------------------------------------------------------------------- training


def build_sft_config(config: TrainConfig, setup: dict[str, Any], has_eval: bool) -> Any:
    from trl import SFTConfig

    cuda = setup["device"] == "cuda"
    return SFTConfig(
        output_dir=str(resolve_repo_path(config.output)),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch,
        per_device_eval_batch_size=config.batch,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # transformers 5: a float below 1 is a ratio of all steps
        logging_steps=config.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=config.load_best and has_eval,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        bf16=cuda,
        use_cpu=not cuda,
        gradient_checkpointing=setup["gradient_checkpointing"] and setup["backend"] != "unsloth",
        gradient_checkpointing_kwargs={"use_reentrant": False},
        max_length=config.max_seq_len,  # examples arrive cut by the window: TRL's own truncation never bites
        use_liger_kernel=setup["liger"],
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        packing=False,
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # LoRA under `accelerate launch`: every trainable weight gets a gradient
        disable_tqdm=False,
    )


def keep_initial_eval_callback(entry: dict[str, Any]) -> Any:
    """A callback that puts the untrained eval loss first in the log (train() starts a fresh log, and the
    entry then travels in every checkpoint, so a resumed run still plots it)."""
    from transformers import TrainerCallback

    class KeepInitialEval(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not any(e.get("step") == 0 and "eval_loss" in e for e in state.log_history):
                state.log_history.insert(0, dict(entry))

    return KeepInitialEval()


def train(config: TrainConfig, *, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train (or resume) a LoRA adapter as `config` says and save everything into `config.output`."""
    started = time.perf_counter()
    setup = resolve_setup(config)
    if setup["backend"] == "unsloth":
        import unsloth  # noqa: F401  (patches transformers, trl and peft: it must come first)
    import torch
    from trl import SFTTrainer

    output = resolve_repo_path(config.output)
    tokenizer = models.load_tokenizer(config.base)
    dataset, data_facts = load_training_data(config, tokenizer)
    resume = find_resume_checkpoint(output, config, data_facts["data_sha256"])
    if len(dataset["train"]) == 0:
        raise ValueError(f"{config.data}: no training examples after the train/eval split: collect more games")
    has_eval = "eval" in dataset and len(dataset["eval"]) > 0
    if has_eval and config.load_best and config.save_steps % config.eval_steps:
        raise ValueError(
            f"save_steps ({config.save_steps}) must be a multiple of eval_steps ({config.eval_steps}) "
            "to keep the best checkpoint"
        )
    columns = ["input_ids", "labels"]
    train_set = dataset["train"].select_columns(columns)
    eval_set = dataset["eval"].select_columns(columns) if has_eval else None

    model = load_lora_model(config, setup)
    trainer = SFTTrainer(
        model=model,
        args=build_sft_config(config, setup, has_eval),
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    if trainer.is_world_process_zero():
        output.mkdir(parents=True, exist_ok=True)
        files.write_json(output / RUN_CONFIG, {"config": _comparable(config), "data_sha256": data_facts["data_sha256"]})
    eval_loss_initial = None
    try:
        if has_eval and resume is None:
            eval_loss_initial = trainer.evaluate()["eval_loss"]
            trainer.add_callback(keep_initial_eval_callback({"step": 0, "eval_loss": eval_loss_initial}))
        outcome = trainer.train(resume_from_checkpoint=resume)
    except torch.OutOfMemoryError as error:
        raise _explain_oom(config, setup) from error

    history = trainer.state.log_history
    if resume is not None:  # the untrained eval loss is kept in the log of the first run
        eval_loss_initial = next((e["eval_loss"] for e in history if e.get("step") == 0 and "eval_loss" in e), None)
    eval_losses = [e["eval_loss"] for e in history if "eval_loss" in e and e.get("step", 0) > 0]
    record: dict[str, Any] = {}
    if trainer.is_world_process_zero():
        trainer.save_model(str(output))
        tokenizer.save_pretrained(str(output))
        files.write_json(output / TRAINING_LOG, history)
        plot_loss_curve(history, output / LOSS_PLOT)
        record = {
            "base_model": config.base,
            "base_model_resolved": models.resolve_model(config.base),
            "prompt_format": data_facts["prompt_format"],
            "max_seq_len": config.max_seq_len,
            "seed": config.seed,
            "data_file": data_facts["data_file"],
            "data_sha256": data_facts["data_sha256"],
            "config": json.loads(json.dumps(asdict(config))),
            "setup": setup,
            "end_of_turn": models.end_of_turn_marker(tokenizer),
            "data_stats": data_facts["stats"],
            "global_step": trainer.state.global_step,
            "train_loss": outcome.training_loss,
            "eval_loss_initial": eval_loss_initial,
            "eval_loss_best": min(eval_losses) if eval_losses else None,
            "best_checkpoint": trainer.state.best_model_checkpoint,
            "resumed_from": resume,
            "world_size": trainer.args.world_size,
            "runtime_s": round(time.perf_counter() - started, 1),
        }
        results.write_result(output / TRAINING_RECORD, record, seed=config.seed)
    return TrainResult(
        output=output,
        global_step=trainer.state.global_step,
        train_loss=outcome.training_loss,
        eval_loss_initial=eval_loss_initial,
        eval_loss_best=min(eval_losses) if eval_losses else None,
        resumed_from=resume,
        runtime_s=round(time.perf_counter() - started, 1),
        record=record,
    )


def course_config(small: bool, seed: int, base: str = models.DEFAULT_MODEL) -> TrainConfig:
    """Notebook 03's run: the data notebook 02 formatted, into `run_dir(small)/sft_adapter`.

    Full mode: the seed guide's values. Small mode (CPU, a few minutes): one epoch, batch 2 without
    accumulation, a higher learning rate so that a handful of steps show a falling loss, frequent evals.
    """
    from alfworld_sft.paths import run_dir

    paths = {"data": str(run_dir(small) / "sft_data"), "output": str(run_dir(small) / "sft_adapter")}
    fmt = formatting.course_format_config(small, seed, base)
    if not small:
        return TrainConfig(**paths, base=base, seed=seed, max_seq_len=fmt.max_seq_len, eval_fraction=fmt.eval_fraction)
    return TrainConfig(
        **paths,
        base=base,
        seed=seed,
        max_seq_len=fmt.max_seq_len,
        eval_fraction=fmt.eval_fraction,
        epochs=1,
        batch=2,
        grad_accum=1,
        lr=5e-4,
        logging_steps=1,
        eval_steps=2,
        save_steps=2,
    )


def read_training_record(adapter: str | os.PathLike[str]) -> dict[str, Any]:
    """The `training_record.json` of an adapter folder (base_model, prompt_format, max_seq_len, ...)."""
    path = resolve_repo_path(adapter) / TRAINING_RECORD
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: is {adapter} an adapter folder written by `alfworld-sft train`?")
    return files.read_json(path)


def load_adapter(adapter: str | os.PathLike[str], **kwargs: Any) -> Any:
    """The trained adapter on its (unquantized) base model, for checks and generation."""
    from peft import PeftModel

    record = read_training_record(adapter)
    base = models.load_model(record["base_model"], **kwargs)
    return PeftModel.from_pretrained(base, str(resolve_repo_path(adapter)))


def compare_with_base(
    adapter: str | os.PathLike[str], messages: list[dict[str, str]], max_new_tokens: int = 16
) -> dict[str, str]:
    """Greedy replies of the base model and of base + adapter to the same messages (CPU-friendly check)."""
    import torch

    record = read_training_record(adapter)
    tokenizer = models.load_tokenizer(record["base_model"])
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    tuned = load_adapter(adapter, dtype=dtype)
    replies = {"tuned": models.generate_reply(tuned, tokenizer, messages, max_new_tokens)}
    with tuned.disable_adapter():
        replies["base"] = models.generate_reply(tuned, tokenizer, messages, max_new_tokens)
    return replies


def remove_checkpoints(output: str | os.PathLike[str]) -> int:
    """Delete the checkpoint folders of a finished run (they hold optimizer state: several times the adapter)."""
    removed = 0
    for checkpoint in resolve_repo_path(output).glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
        removed += 1
    return removed


# ------------------------------------------------------------------------------------------------ CLI


def configure_parser(subparsers: argparse._SubParsersAction) -> None:
    defaults = TrainConfig()
    parser = subparsers.add_parser(
        "train",
        help="03: train a LoRA/QLoRA adapter on trajectories (resumes when rerun)",
        description=__doc__.split("\n\n")[0] + " " + DEFAULT_BASE_NOTE,
    )
    parser.add_argument(
        "--data", default=defaults.data, help="trajectories JSONL or a folder from `alfworld-sft format`"
    )
    parser.add_argument("--output", default=defaults.output, help="adapter folder (rerun to resume)")
    parser.add_argument("--base", default=defaults.base, help=f"base model (default {defaults.base}; see above)")
    parser.add_argument("--epochs", type=float, default=defaults.epochs)
    parser.add_argument("--batch", type=int, default=defaults.batch, help="sequences per device per step")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--max-seq-len", type=int, default=defaults.max_seq_len)
    parser.add_argument("--grad-accum", type=int, default=defaults.grad_accum)
    parser.add_argument("--lora-r", type=int, default=defaults.lora_r)
    parser.add_argument("--lora-alpha", type=int, default=defaults.lora_alpha)
    parser.add_argument("--lora-dropout", type=float, default=defaults.lora_dropout)
    parser.add_argument("--warmup-ratio", type=float, default=defaults.warmup_ratio)
    parser.add_argument("--logging-steps", type=int, default=defaults.logging_steps)
    parser.add_argument("--eval-steps", type=int, default=defaults.eval_steps)
    parser.add_argument("--save-steps", type=int, default=defaults.save_steps)
    parser.add_argument("--save-total-limit", type=int, default=defaults.save_total_limit)
    parser.add_argument("--eval-fraction", type=float, default=defaults.eval_fraction)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default=defaults.device)
    parser.add_argument("--quantization", choices=("auto", "nf4", "none"), default=defaults.quantization)
    parser.add_argument("--backend", choices=("auto", "unsloth", "peft"), default=defaults.backend)
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=defaults.group_by_length)
    parser.add_argument(
        "--liger",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Liger fused kernels (default: on with CUDA when liger-kernel is installed)",
    )
    parser.add_argument("--no-load-best", dest="load_best", action="store_false", help="keep the last weights")
    parser.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    names = {f for f in TrainConfig.__dataclass_fields__}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    result = train(config)
    if not result.record:  # under `accelerate launch`, only the main process reports
        return 0
    print(
        f"trained {result.global_step} steps (train loss {result.train_loss:.4f}; eval loss "
        f"{result.eval_loss_initial} -> {result.eval_loss_best}) in {result.runtime_s:.0f} s -> {result.output}",
        file=sys.stdout,
    )
    return 0
