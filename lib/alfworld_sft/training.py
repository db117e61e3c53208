"""Stage 03: supervised fine-tuning of a LoRA adapter on the formatted trajectories, resumable.

On CUDA the base model is loaded in 4 bits (QLoRA: nf4, double quantization, bf16 compute) through PEFT +
bitsandbytes, or through Unsloth with `--backend unsloth` (measured on an H200 with the 8B shape,
`benchmarks/train_speed.py`: the packed PEFT set-up below 6,362 useful tokens/s within 16 GiB, Unsloth 5,541 at
8.1 GiB, so `auto` takes PEFT); on CPU it is plain LoRA in fp32, so the course runs anywhere on the embedded
default model. The trainer is TRL's `SFTTrainer`, given the dataset of stage 02
already tokenized with its `labels` (loss on the assistant's commands and their end-of-turn token only): TRL
keeps a ready `labels` column as it is (no re-tokenizing, no re-masking).

How the batches reach the GPU is chosen from the machine and printed when training starts (`resolve_setup`):

* packing (default on CUDA with PEFT): TRL's padding-free collator concatenates a micro-batch's sequences into
  one row with restarting `position_ids`, so no compute goes to padding; attention stays inside each sequence
  (flash-attention's varlen kernel when `flash_attn` imports, else PyTorch's own varlen flash kernel registered
  here as `VARLEN_ATTENTION`, else sdpa with transformers' packed-sequence mask). Without packing, micro-batches
  are padded (labels with -100, attention mask from lengths) and grouped by length;
* how many tokens a forward pass holds and gradient checkpointing come from the card's free memory (or
  `--memory-budget-gib`), the model's shape and `--max-seq-len` (`plan_memory`), keeping the effective batch
  `--batch x --grad-accum`: packed, each optimizer step's sequences are cut into passes of at most
  `--tokens-per-pass` tokens between sequences (`split_packed_batch`: a pass holds as many sequences as their
  lengths allow, not a count sized for the longest), padded, into micro-batches of a fixed number of sequences;
* Liger's fused kernels when liger-kernel is installed (no full-vocabulary logits).

`--packing/--no-packing`, `--tokens-per-pass`, `--micro-batch`, `--gradient-checkpointing/--no-gradient-checkpointing`,
`--attention` and `--liger/--no-liger` override the choices; on CPU nothing is planned (padded batches of `--batch`).

    alfworld-sft train --data results/oracle/trajectories.jsonl --output results/sft_adapter \\
        --base meta-llama/Llama-3.1-8B-Instruct --epochs 3 --batch 4 --lr 2e-4 --max-seq-len 2048
    alfworld-sft train --data results/small/oracle/trajectories.jsonl --output results/small/sft_adapter \\
        --epochs 1 --max-seq-len 1024 --eval-steps 5 --save-steps 5        # CPU, the default model

Several GPUs of one machine (data parallel, one process per GPU; the effective batch is
batch x grad-accum x GPUs):

    accelerate launch --num_processes 2 --multi_gpu -m alfworld_sft.cli train --data ... --output ... --base ...

(checked on 2 H100s with a tiny Llama-shaped model: QLoRA nf4 + Liger, world size 2, half the steps per epoch).

Interrupted? Rerun the same command: it resumes from the last complete checkpoint in `--output` (a checkpoint
cut short by a kill is skipped and removed, with a message); a checkpoint made with a different configuration or
data is refused with a message. Rerunning a finished run changes nothing ("already trained"). The output folder
ends with the adapter, the tokenizer, `training_log.json`, `loss_curve.png` and `training_record.json`
(`records.TrainingRecord`: base model, prompt format, data format, max_seq_len, end-of-turn marker; in its
details the data sha256, the full configuration, the set-up, the losses and package versions), which the export
and evaluation stages read through `records.read_training_record`.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from alfworld_sft import files, formatting, models, prompts, recipes, records
from alfworld_sft.paths import resolve_repo_path

LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TRAINING_LOG = "training_log.json"
LOSS_PLOT = "loss_curve.png"
RUN_CONFIG = "run_config.json"  # written when a run starts: a rerun resumes only with the same one
CHECKPOINT_MANIFEST = "manifest.json"  # written last into a checkpoint: its files' sizes (without it: incomplete)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # what a finished run has saved
VARLEN_ATTENTION = "alfworld_sft_varlen"  # the name `attend_packed` is registered under in transformers
ATTENTIONS = ("auto", "sdpa", "flash_attention_2", "varlen")  # --attention choices
GIB = 1024**3


@dataclass(frozen=True)
class TrainConfig:
    """One training run. The fields left at None take the values of the base model's recipe (`recipes`); any value
    given wins and is recorded as an override. The default base is the embedded model (see `DEFAULT_BASE_NOTE`)."""

    data: str = "results/oracle/trajectories.jsonl"  # trajectories JSONL, or a folder from `alfworld-sft format`
    output: str = "results/sft_adapter"  # adapter, tokenizer, checkpoints, log, plot, training_record.json
    base: str = models.DEFAULT_MODEL  # model id, local folder or the embedded default's name
    data_format: str = "commands"  # what an assistant turn holds: "commands" or "thoughts" (prompts.DATA_FORMATS)
    recipe: str = "auto"  # recipes.RECIPES: the values of every field below left at None; auto: by the base's size
    epochs: float | None = None  # passes over the training split
    batch: int | None = None  # sequences per pass on CPU; everywhere batch x grad_accum x GPUs is the effective batch
    lr: float | None = None  # peak learning rate
    max_seq_len: int | None = None  # tokens per example; longer games lose their oldest middle turns
    grad_accum: int | None = None  # passes per optimizer update (on CUDA re-split by the plan, same effective batch)
    lora_r: int | None = None  # LoRA rank
    lora_alpha: int | None = None  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float | None = None  # dropout on the LoRA path
    target_modules: tuple[str, ...] = LORA_TARGET_MODULES  # linear layers that get adapters
    lr_scheduler: str = "cosine"  # learning-rate schedule after warm-up
    warmup_ratio: float | None = None  # share of all optimizer steps spent warming up
    logging_steps: int | None = None  # optimizer steps between train-loss log lines
    eval_steps: int | None = None  # optimizer steps between evaluations of the held-out games
    save_steps: int | None = None  # optimizer steps between checkpoints (a multiple of eval_steps, to keep the best)
    save_total_limit: int = 2  # checkpoints kept (the best one is never deleted)
    load_best: bool = True  # end with the checkpoint of lowest eval loss
    eval_fraction: float | None = None  # share of games held out for eval loss
    seed: int = 42  # split, LoRA init and data order
    max_steps: int = -1  # stop after this many optimizer steps (-1: run all epochs)
    device: str = "auto"  # "auto" (CUDA if present), "cuda" or "cpu"
    quantization: str | None = None  # "auto" (nf4 on CUDA, none on CPU), "nf4" or "none"
    backend: str = "auto"  # "auto" (PEFT: packed, it out-ran Unsloth on an H200), "unsloth" or "peft"
    gradient_checkpointing: bool | None = None  # recompute activations; None: off on CPU, planned on CUDA
    group_by_length: bool = True  # padded batches of similar lengths (benchmark: padding 34% -> 14%); off when packing
    liger: bool | None = None  # Liger fused kernels (no full-vocabulary logits); None: on with CUDA if installed
    packing: bool | None = None  # padding-free micro-batches (one row, restarting positions); None: on with CUDA + PEFT
    micro_batch: int | None = None  # sequences per forward pass; None: --batch on CPU, planned from memory on CUDA
    tokens_per_pass: int | None = None  # packed: forward passes of at most this many tokens; None: planned on CUDA
    attention: str = "auto"  # "auto", "sdpa", "flash_attention_2" or "varlen" (PyTorch's flash kernel, packing only)
    dtype: str = "auto"  # CUDA compute dtype: auto (bfloat16, float16 on a GPU without it: a T4), bfloat16, float16
    memory_budget_gib: float | None = None  # GPU memory the plan may fill; None: what the card has free now
    init_adapter: str | None = None  # start from this adapter's weights (DAgger's "continue"); None: fresh LoRA


DEFAULT_BASE_NOTE = (
    "The seed guide trains meta-llama/Llama-3.1-8B. The course's default is the embedded "
    f"{models.DEFAULT_MODEL}: it runs on any machine, offline, without a licence; on a GPU pass "
    "--base meta-llama/Llama-3.1-8B-Instruct (the instruct model: its chat template and end-of-turn token are "
    "the ones the adapter learns and the agents play with)."
)

# Fields that change how fast a run goes, not what it trains: a rerun may change them and still resume (or find
# the run finished). Everything else must match the run in the folder. The recipe's name is here too: the values it
# gave are compared field by field.
_SPEED_FIELDS = (
    "output",
    "recipe",
    "dtype",
    "gradient_checkpointing",
    "liger",
    "packing",
    "micro_batch",
    "tokens_per_pass",
    "attention",
    "memory_budget_gib",
)

# Command-line spellings of the fields whose flag is not `--` + the field name with dashes.
_FLAGS = {"data_format": "--format", "load_best": "--no-load-best"}


def flag_of(name: str) -> str:
    """The command-line option that sets TrainConfig field `name`."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


@dataclass(frozen=True)
class TrainSetup:
    """What this machine runs for a `TrainConfig` (`resolve_setup`): the device, the method and the batch layout."""

    device: str  # "cuda" or "cpu"
    quantization: str  # "nf4" (QLoRA) or "none"
    backend: str  # "unsloth" or "peft"
    liger: bool  # Liger's fused kernels (RMSNorm, SwiGLU, RoPE, linear + cross-entropy)
    packing: bool  # each micro-batch's sequences concatenated into one row with restarting position ids
    attention: str  # the transformers attention implementation the model is loaded with
    micro_batch: int  # sequences the trainer hands a step per device and accumulation (with tokens_per_pass: all)
    grad_accum: int  # micro-batches per optimizer step (micro_batch x grad_accum = the config's batch x grad_accum)
    gradient_checkpointing: bool  # recompute activations in the backward pass (less memory, ~1.5x the compute)
    plan: str = ""  # how the layout and gradient checkpointing were chosen (empty: as configured)
    tokens_per_pass: int | None = None  # packed: the step's sequences cut into passes of at most this many tokens
    dtype: str = "float32"  # the base weights' and the computation's dtype: float32 on CPU, bfloat16 or float16 on CUDA


@dataclass(frozen=True)
class TrainResult:
    output: Path  # the adapter folder
    global_step: int  # optimizer steps done, over all runs into this folder
    train_loss: float | None  # mean training loss per optimizer step over the whole run (all runs into the folder)
    eval_loss_initial: float | None  # eval loss of the untrained adapter (None without an eval split)
    eval_loss_best: float | None  # lowest eval loss seen
    resumed_from: str | None  # the checkpoint this call continued from
    runtime_s: float  # wall time of this call
    messages: tuple[str, ...] = ()  # what this call said about the run (resumed, skipped checkpoints, already done)
    already_trained: bool = False  # the folder held this run, finished: nothing was trained or written
    record: records.TrainingRecord | None = None  # the training record (None on non-main processes)


class TrainingSetupError(RuntimeError):
    """The machine cannot run the asked set-up (no GPU, a missing package); the message says what to do."""


class ResumeMismatchError(ValueError):
    """The output folder holds a run (checkpoints or a finished adapter) with another configuration or other data."""


class TrainingOutOfMemoryError(RuntimeError):
    """The GPU ran out of memory, or the plan finds no set-up that fits; the message lists what to shrink."""


class TrainingFileError(files.CorruptFileError):
    """A file of a run or of its data that cannot be read or does not hold what it should; the message names the
    file and what to do (files.read_json_object raises the parent class for torn or non-JSON files)."""


# ------------------------------------------------------------------------------------------ checking input


def check_config(config: TrainConfig) -> None:
    """Refuse values out of range, naming the flag (a ValueError the CLI shows without a traceback)."""
    config = recipes.resolve_recipe(config)

    def refuse(name: str, rule: str) -> None:
        raise ValueError(f"{flag_of(name)} must be {rule}, got {getattr(config, name)!r}")

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def is_number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    counts = ("batch", "grad_accum", "max_seq_len", "lora_r", "lora_alpha", "logging_steps", "eval_steps")
    for name in counts + ("save_steps", "save_total_limit"):
        if not is_int(getattr(config, name)) or getattr(config, name) < 1:
            refuse(name, "a whole number of at least 1")
    if not is_int(config.max_steps) or not (config.max_steps >= 1 or config.max_steps == -1):
        refuse("max_steps", "a whole number of at least 1, or -1 to train for --epochs")
    if not is_int(config.seed) or not 0 <= config.seed < 2**32:
        refuse("seed", "a whole number from 0 to 2**32 - 1")
    if not is_number(config.epochs) or config.epochs <= 0:
        refuse("epochs", "a number above 0")
    if not is_number(config.lr) or not 0 < config.lr < 1:
        refuse("lr", "a number above 0 and below 1 (the course uses 2e-4)")
    for name in ("lora_dropout", "warmup_ratio", "eval_fraction"):
        if not is_number(getattr(config, name)) or not 0 <= getattr(config, name) < 1:
            refuse(name, "a number from 0 up to (not including) 1")
    if config.micro_batch is not None and (not is_int(config.micro_batch) or config.micro_batch < 1):
        refuse("micro_batch", "a whole number of at least 1 (or left out: planned from memory)")
    if config.tokens_per_pass is not None and (
        not is_int(config.tokens_per_pass) or config.tokens_per_pass < config.max_seq_len
    ):
        refuse("tokens_per_pass", f"a whole number of at least --max-seq-len ({config.max_seq_len}): none is cut")
    if config.tokens_per_pass is not None and config.micro_batch is not None:
        raise ValueError("--tokens-per-pass and --micro-batch both size a forward pass: give one of them")
    if config.tokens_per_pass is not None and config.packing is False:
        raise ValueError("--tokens-per-pass cuts packed steps: drop --no-packing, or give --micro-batch instead")
    if config.memory_budget_gib is not None and (
        not is_number(config.memory_budget_gib) or config.memory_budget_gib <= 0
    ):
        refuse("memory_budget_gib", "a number of GiB above 0 (or left out: the card's free memory)")
    if not config.target_modules or not all(isinstance(m, str) and m for m in config.target_modules):
        refuse("target_modules", "one or more module names")
    from transformers.trainer_utils import SchedulerType

    choices = {
        "data_format": prompts.DATA_FORMATS,
        "device": ("auto", "cuda", "cpu"),
        "quantization": ("auto", "nf4", "none"),
        "backend": ("auto", "unsloth", "peft"),
        "attention": ATTENTIONS,
        "dtype": TRAIN_DTYPES,
        "lr_scheduler": tuple(kind.value for kind in SchedulerType),
    }
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            refuse(name, "one of " + ", ".join(allowed))
    effective = config.batch * config.grad_accum
    if config.micro_batch is not None and effective % config.micro_batch:
        raise ValueError(
            f"--micro-batch must divide the effective batch --batch x --grad-accum ({config.batch} x "
            f"{config.grad_accum} = {effective}), got {config.micro_batch}"
        )
    if config.init_adapter is not None:
        record = records.read_training_record(resolve_repo_path(config.init_adapter))
        if record.base_model != config.base:
            raise ValueError(
                f"--init-adapter {config.init_adapter} was trained on {record.base_model!r}, not --base "
                f"{config.base!r}: continue an adapter on its own base"
            )
    if config.attention == "varlen" and config.packing is False:
        raise ValueError("--attention varlen attends within packed sequences only: drop --no-packing, or pick sdpa")
    if config.load_best and config.eval_fraction > 0 and config.save_steps % config.eval_steps:
        raise ValueError(
            f"--save-steps ({config.save_steps}) must be a multiple of --eval-steps ({config.eval_steps}) "
            "to keep the best checkpoint (or pass --no-load-best)"
        )


# ------------------------------------------------------------------------------------------ the memory plan


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer that its training memory depends on."""

    layers: int  # decoder layers
    hidden: int  # model width
    intermediate: int  # MLP width
    heads: int  # attention heads
    kv_heads: int  # key/value heads (grouped-query attention)
    head_dim: int  # width of one head
    vocab: int  # vocabulary (embedding rows)
    tied_embeddings: bool  # the output head shares the embedding matrix

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = text.num_attention_heads
        return cls(
            layers=text.num_hidden_layers,
            hidden=text.hidden_size,
            intermediate=text.intermediate_size,
            heads=heads,
            kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
            vocab=text.vocab_size,
            tied_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
        )

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer, by the name LoRA targets."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.module_shapes().values())

    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    def lora_params(self, rank: int, targets: Sequence[str]) -> int:
        shapes = self.module_shapes()
        return self.layers * sum(rank * (shapes[name][0] + shapes[name][1]) for name in targets if name in shapes)


# Constants of the estimate. nf4 with double quantization stores 4 bits a weight plus ~0.13 bits of scales.
NF4_BYTES_PER_PARAM = 0.516
LORA_BYTES_PER_PARAM = 16  # fp32 weight, its gradient and Adam's two moments
WORKSPACE_BYTES = 1.5 * GIB  # a dequantized weight, cuBLAS and attention workspaces, allocator fragmentation
ACTIVATION_SLACK = 1.25  # temporaries the per-layer count below leaves out
LOSS_BYTES_PER_LOGIT = 12  # without Liger: bf16 logits, their fp32 copy, log-softmax and its gradient
# Without recomputation a pass must still hold enough tokens to keep the GPU busy; below this many tokens a larger
# micro-batch with gradient checkpointing is the faster choice.
NO_RECOMPUTE_MIN_TOKENS = 4096


def estimate_training_memory(
    shape: ModelShape,
    *,
    tokens: int,
    quantization: str,
    checkpointing: bool,
    liger: bool,
    lora_r: int,
    targets: Sequence[str],
) -> float:
    """Bytes of GPU memory a LoRA/QLoRA step on `tokens` tokens in one forward pass needs, at most (bf16)."""
    weights = shape.linear_params() * (NF4_BYTES_PER_PARAM if quantization == "nf4" else 2)
    weights += shape.embedding_params() * 2
    lora = shape.lora_params(lora_r, targets) * LORA_BYTES_PER_PARAM
    kv = shape.kv_heads * shape.head_dim
    # Saved for the backward pass per token and layer (bf16): the norms' inputs and outputs, q/k/v, the attention
    # output, the MLP's gate and up (Liger's SwiGLU recomputes the rest of it) and the down projection's input, and
    # a copy of its input per adapted projection (PEFT casts the input to the adapter's dtype). Calibrated on an
    # H200 (2026-12-02, Llama-3.1-8B shape, nf4, Liger, r 16): 87.9 GiB measured for a pass of 10,385 tokens
    # without recomputation (this estimate: 94.6 GiB), 9.5 GiB for 6,243 tokens with it (11.0 GiB).
    shapes = shape.module_shapes()
    adapter_inputs = sum(shapes[name][0] for name in targets if name in shapes)
    per_layer = 2 * (7 * shape.hidden + 2 * kv + (3 if liger else 5) * shape.intermediate + adapter_inputs)
    if checkpointing:  # each layer's input is kept; one layer at a time is recomputed
        activations = tokens * (shape.layers * shape.hidden * 2 + per_layer)
    else:
        activations = tokens * shape.layers * per_layer
    logits = 0 if liger else tokens * shape.vocab * LOSS_BYTES_PER_LOGIT
    return weights + lora + ACTIVATION_SLACK * activations + logits + WORKSPACE_BYTES


@dataclass(frozen=True)
class MemoryPlan:
    """A batch layout that fits the memory budget."""

    micro_batch: int  # sequences per micro-batch (with tokens_per_pass: the whole step's)
    grad_accum: int  # micro-batches per optimizer step
    gradient_checkpointing: bool  # recompute activations
    estimate_gib: float  # the estimate for the largest pass: micro_batch x max_seq_len tokens, or tokens_per_pass
    budget_gib: float  # what it had to fit in
    tokens_per_pass: int | None = None  # packed: a step's sequences in passes of at most this many tokens


def plan_memory(
    shape: ModelShape,
    *,
    effective_batch: int,
    max_seq_len: int,
    budget_bytes: float,
    quantization: str,
    liger: bool,
    lora_r: int,
    targets: Sequence[str],
    packing: bool = False,
    micro_batch: int | None = None,
    tokens_per_pass: int | None = None,
    gradient_checkpointing: bool | None = None,
) -> MemoryPlan:
    """The fastest layout of `effective_batch` sequences of up to `max_seq_len` tokens that fits `budget_bytes`
    at its largest pass (a run must not run out of memory at its longest batch).

    Packed (and `micro_batch` not given), a pass holds up to a number of tokens, whatever the sequences' count:
    the most that fit (or `tokens_per_pass`). Padded, a micro-batch holds a number of sequences, sized as if each
    were `max_seq_len` long. Without recomputation when a pass still holds `NO_RECOMPUTE_MIN_TOKENS` tokens (or
    the whole step); otherwise with gradient checkpointing and the largest pass that fits.
    `gradient_checkpointing` pins that choice."""
    whole_step = effective_batch * max_seq_len

    def need(tokens: int, checkpointing: bool) -> float:
        return estimate_training_memory(
            shape,
            tokens=tokens,
            quantization=quantization,
            checkpointing=checkpointing,
            liger=liger,
            lora_r=lora_r,
            targets=targets,
        )

    def most_tokens(checkpointing: bool) -> int:  # the estimate is linear in the tokens of a pass
        fixed, per_token = need(0, checkpointing), need(1, checkpointing) - need(0, checkpointing)
        return min(whole_step, max(0, math.floor((budget_bytes - fixed) / per_token)))

    by_tokens = packing and micro_batch is None
    micros = [micro_batch] if micro_batch else [m for m in range(effective_batch, 0, -1) if effective_batch % m == 0]
    for checkpointing in [gradient_checkpointing] if gradient_checkpointing is not None else [False, True]:
        if by_tokens:
            tokens = tokens_per_pass or most_tokens(checkpointing)
            if tokens < max_seq_len or need(tokens, checkpointing) > budget_bytes:
                continue
            micro, accum = effective_batch, 1
        else:
            fitting = [m for m in micros if need(m * max_seq_len, checkpointing) <= budget_bytes]
            if not fitting:
                continue
            micro, accum, tokens = fitting[0], effective_batch // fitting[0], fitting[0] * max_seq_len
        busy = tokens >= min(NO_RECOMPUTE_MIN_TOKENS, whole_step)
        if not checkpointing and gradient_checkpointing is None and not busy:
            continue
        return MemoryPlan(
            micro_batch=micro,
            grad_accum=accum,
            gradient_checkpointing=checkpointing,
            estimate_gib=round(need(tokens, checkpointing) / GIB, 1),
            budget_gib=round(budget_bytes / GIB, 1),
            tokens_per_pass=tokens if by_tokens else None,
        )
    smallest = tokens_per_pass or (micros[-1] if not by_tokens else 1) * max_seq_len
    least = need(smallest, gradient_checkpointing if gradient_checkpointing is not None else True)
    advice = ["a shorter --max-seq-len", "--liger (liger-kernel)" if not liger else None]
    advice += ["--quantization nf4" if quantization != "nf4" else None, "a GPU with more free memory"]
    raise TrainingOutOfMemoryError(
        f"a pass of {smallest} tokens ({max_seq_len} a sequence at most) needs about {least / GIB:.1f} GiB, more "
        f"than the {budget_bytes / GIB:.1f} GiB available: try " + "; or ".join(a for a in advice if a)
    )


# The bases the recipes were measured on, so that a machine's plan can be said before any weights are on it.
SMOLLM2_135M = ModelShape(layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, head_dim=64, vocab=49152,
                          tied_embeddings=True)  # fmt: skip
LLAMA_3_1_8B = ModelShape(layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8, head_dim=128,
                          vocab=128256, tied_embeddings=False)  # fmt: skip


def plan_gpu_setups(budget_bytes: float, *, liger: bool) -> dict[str, str]:
    """What full mode trains on a GPU with this much memory, for the default model's recipe and an 8B's (QLoRA):
    packed passes of how many tokens, with or without recomputation, or why it does not fit (notebook 00)."""
    plans = {}
    for name, shape, recipe in (
        (models.DEFAULT_MODEL, SMOLLM2_135M, recipes.LORA_BF16),
        ("Llama-3.1-8B", LLAMA_3_1_8B, recipes.QLORA_NF4),
    ):
        values = recipe.values
        quantization = "nf4" if values["quantization"] == "auto" else values["quantization"]
        try:
            plan = plan_memory(
                shape,
                effective_batch=values["batch"] * values["grad_accum"],
                max_seq_len=values["max_seq_len"],
                budget_bytes=budget_bytes,
                quantization=quantization,
                liger=liger,
                lora_r=values["lora_r"],
                targets=LORA_TARGET_MODULES,
                packing=True,
            )
        except TrainingOutOfMemoryError as error:
            plans[name] = f"{recipe.name} does not fit: {error}"
            continue
        recompute = "with" if plan.gradient_checkpointing else "without"
        plans[name] = (
            f"{recipe.name}, passes of {plan.tokens_per_pass:,} tokens {recompute} recomputation "
            f"(~{plan.estimate_gib} of {plan.budget_gib} GiB)"
        )
    return plans


def cut_by_tokens(lengths: Sequence[int], budget: int) -> list[range]:
    """Consecutive runs of sequences (indices into `lengths`) whose lengths add up to at most `budget` tokens;
    a sequence longer than the budget is a run of its own (the plan keeps the budget >= --max-seq-len)."""
    runs: list[range] = []
    start = total = 0
    for index, length in enumerate(lengths):
        if index > start and total + length > budget:
            runs.append(range(start, index))
            start, total = index, 0
        total += length
    if lengths:
        runs.append(range(start, len(lengths)))
    return runs


def split_packed_batch(inputs: Mapping[str, Any], budget: int) -> list[dict[str, Any]]:
    """A padding-free batch (one row, `position_ids` restarting at 0 at each sequence, as TRL's collator builds
    it) as forward passes of at most `budget` tokens each, cut between sequences, in order."""
    positions = inputs["position_ids"]
    if positions.dim() != 2 or positions.shape[0] != 1:
        raise ValueError(f"a packed batch is one row; got position_ids of shape {tuple(positions.shape)}")
    width = positions.shape[1]
    starts = (positions[0] == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        raise ValueError("a packed batch's position_ids start at 0 for each sequence")
    bounds = starts + [width]
    runs = cut_by_tokens([bounds[i + 1] - bounds[i] for i in range(len(starts))], budget)
    if len(runs) == 1:
        return [dict(inputs)]
    passes = []
    for run in runs:
        first, last = bounds[run.start], bounds[run.stop]
        piece = {}
        for key, value in inputs.items():
            if not (hasattr(value, "dim") and value.dim() == 2 and value.shape[1] == width):
                raise ValueError(f"cannot cut the packed batch's {key!r} between sequences")
            piece[key] = value[:, first:last]
        passes.append(piece)
    return passes


# ------------------------------------------------------------------------------------------------ the set-up


@functools.cache
def unsloth_imports() -> bool:
    """Whether Unsloth is installed and imports here (it patches transformers, trl and peft as it does: it must
    be imported before them, which this does on its first call)."""
    if importlib.util.find_spec("unsloth") is None:
        return False
    try:
        import unsloth  # noqa: F401
    except Exception as error:  # an Unsloth that does not import here (versions, no GPU) is one that is not used
        print(f"Unsloth is installed but does not import ({type(error).__name__}: {error})", flush=True)
        return False
    return True


TRAIN_DTYPES = ("auto", "bfloat16", "float16")  # --dtype choices
# Sequences in one CPU forward pass at most: 8 of 2,048 tokens in float32 (the recipe's batch) filled 24 GB with the
# 49k-vocabulary logits and their gradients, and the kernel was killed (notebook 06's retraining, 2026-12-04).
CPU_MICRO_BATCH = 4


def choose_dtype(asked: str, device: str) -> str:
    """The dtype training computes in: float32 on CPU; on CUDA bfloat16 where the GPU has it, else float16 (a T4:
    fp16 with loss scaling, the LoRA weights kept in float32)."""
    import torch

    if device != "cuda":
        if asked != "auto":
            raise TrainingSetupError(f"--dtype {asked} is for CUDA: the CPU trains in float32 (drop --dtype)")
        return "float32"
    has_bf16 = torch.cuda.is_bf16_supported()
    if asked == "bfloat16" and not has_bf16:
        raise TrainingSetupError(f"{torch.cuda.get_device_name()} has no bfloat16: pass --dtype float16 (or auto)")
    return asked if asked != "auto" else "bfloat16" if has_bf16 else "float16"


def choose_attention(asked: str, device: str, packing: bool, dtype: str = "bfloat16") -> str:
    """The transformers attention implementation for `asked` (ATTENTIONS) on `device`."""
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if asked == "flash_attention_2":
        if device != "cuda" or not has_flash:
            raise TrainingSetupError("--attention flash_attention_2 needs CUDA and `pip install flash-attn`")
        return asked
    if asked == "varlen":
        if not packing:
            raise TrainingSetupError("--attention varlen needs packing (--packing)")
        if device == "cuda" and not packed_attention_works(dtype):
            raise TrainingSetupError(
                "PyTorch's varlen flash kernel does not work here (see above): use --attention sdpa"
            )
        return VARLEN_ATTENTION
    if asked == "sdpa" or device != "cuda":
        return "sdpa"  # with packing, transformers masks sdpa per packed sequence (from the position ids)
    if has_flash:
        return "flash_attention_2"
    return VARLEN_ATTENTION if packing and packed_attention_works(dtype) else "sdpa"


def resolve_setup(config: TrainConfig) -> TrainSetup:
    """What this machine runs for `config`: device, quantization, backend, kernels, batch layout (planned from the
    card's free memory on CUDA); clear errors when it cannot."""
    import torch

    config = recipes.resolve_recipe(config)
    check_config(config)
    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        raise TrainingSetupError(
            f"CUDA was asked for but torch {torch.__version__} sees no GPU (built for CUDA {torch.version.cuda}): "
            "run on a machine with an NVIDIA GPU and a CUDA build of torch, or pass --device cpu "
            "(plain LoRA on the default model)"
        )
    device = "cuda" if config.device == "auto" and cuda else config.device if config.device != "auto" else "cpu"
    quantization = config.quantization if config.quantization != "auto" else ("nf4" if device == "cuda" else "none")
    if quantization == "nf4" and importlib.util.find_spec("bitsandbytes") is None:
        raise TrainingSetupError(
            "QLoRA needs bitsandbytes: `pip install bitsandbytes==0.50.2`, or pass --quantization none "
            "(plain LoRA in bf16: about 4x the GPU memory for the base weights)"
        )
    has_unsloth = device == "cuda" and quantization == "nf4" and config.backend == "unsloth" and unsloth_imports()
    if config.backend == "unsloth" and not has_unsloth:
        raise TrainingSetupError(
            "Unsloth was asked for but "
            + (
                "runs only on CUDA with --quantization nf4"
                if device != "cuda" or quantization != "nf4"
                else "does not import"
            )
            + ": install it with torch in one command (`pip install torch==X torchvision==Y unsloth==2026.10.9 "
            "unsloth_zoo==2026.10.9`, README GPU route), or pass --backend peft"
        )
    backend = "unsloth" if has_unsloth else "peft"
    has_liger = importlib.util.find_spec("liger_kernel") is not None
    if config.liger and not has_liger:
        raise TrainingSetupError("--liger needs liger-kernel: `pip install liger-kernel==0.8.5`, or pass --no-liger")
    # Liger's kernels are Triton (GPU) kernels; Unsloth brings its own fused loss.
    liger = (config.liger if config.liger is not None else has_liger and device == "cuda") and backend == "peft"
    # Packing is proven here to keep sequences apart with the attentions PEFT loads (tests/test_training.py); under
    # Unsloth's own attention it is not, so there it is only on when asked for.
    packing = config.packing if config.packing is not None else device == "cuda" and backend == "peft"
    dtype = choose_dtype(config.dtype, device)
    attention = choose_attention(config.attention, device, packing, dtype)
    if config.tokens_per_pass is not None and not packing:
        raise TrainingSetupError("--tokens-per-pass cuts packed steps: add --packing, or give --micro-batch instead")
    # Under `accelerate launch` every process must make as many forward passes a step as the others (TRL gathers
    # metrics across them in each): there, packed micro-batches hold a fixed number of sequences.
    several_processes = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if config.tokens_per_pass is not None and several_processes:
        raise TrainingSetupError("--tokens-per-pass runs in a single process: give --micro-batch under accelerate")
    effective = config.batch * config.grad_accum
    pinned = config.micro_batch is not None or config.tokens_per_pass is not None
    if device != "cuda" or (pinned and config.gradient_checkpointing is not None):
        checkpointing = config.gradient_checkpointing if config.gradient_checkpointing is not None else device == "cuda"
        # Token-budgeted: the trainer gets the whole step and cuts it into passes itself. On the CPU nothing is
        # planned from memory, so a pass holds at most CPU_MICRO_BATCH sequences (the effective batch kept).
        cpu_micro = max(m for m in range(1, min(config.batch, CPU_MICRO_BATCH) + 1) if effective % m == 0)
        micro = effective if config.tokens_per_pass else config.micro_batch or cpu_micro
        return TrainSetup(
            device,
            quantization,
            backend,
            liger,
            packing,
            attention,
            micro,
            effective // micro,
            checkpointing,
            tokens_per_pass=config.tokens_per_pass,
            dtype=dtype,
        )
    from transformers import AutoConfig

    shape = ModelShape.from_config(AutoConfig.from_pretrained(models.resolve_model(config.base, flag="--base")))
    if config.memory_budget_gib is not None:
        budget, source = config.memory_budget_gib * GIB, "--memory-budget-gib"
    else:
        free, _ = torch.cuda.mem_get_info(int(os.environ.get("LOCAL_RANK", "0")))
        budget, source = max(free - GIB, 0), f"free on {torch.cuda.get_device_name()}, less 1 GiB"
    plan = plan_memory(
        shape,
        effective_batch=effective,
        max_seq_len=config.max_seq_len,
        budget_bytes=budget,
        quantization=quantization,
        liger=liger,
        lora_r=config.lora_r,
        targets=config.target_modules,
        packing=packing and not several_processes,
        micro_batch=config.micro_batch,
        tokens_per_pass=config.tokens_per_pass,
        gradient_checkpointing=config.gradient_checkpointing,
    )
    largest = (
        f"{plan.tokens_per_pass:,} tokens a pass"
        if plan.tokens_per_pass
        else f"{plan.micro_batch} x {config.max_seq_len} tokens"
    )
    why = f"{largest} need at most ~{plan.estimate_gib} GiB of {plan.budget_gib} GiB ({source})"
    return TrainSetup(
        device,
        quantization,
        backend,
        liger,
        packing,
        attention,
        plan.micro_batch,
        plan.grad_accum,
        plan.gradient_checkpointing,
        why,
        plan.tokens_per_pass,
        dtype,
    )


def describe_setup(setup: TrainSetup) -> str:
    """One line for the log: what was picked."""
    method = "QLoRA nf4" if setup.quantization == "nf4" else "LoRA"
    attention = "PyTorch varlen flash" if setup.attention == VARLEN_ATTENTION else setup.attention
    parts = [
        f"{setup.device}, {method} via {setup.backend} in {setup.dtype}",
        "Liger kernels" if setup.liger else "no Liger",
        f"packing ({attention} attention)" if setup.packing else f"padded batches ({attention} attention)",
        f"{setup.micro_batch} sequences a step in passes of at most {setup.tokens_per_pass:,} tokens"
        if setup.tokens_per_pass
        else f"micro-batch {setup.micro_batch} x {setup.grad_accum} accumulation",
        "gradient checkpointing" if setup.gradient_checkpointing else "no gradient checkpointing",
    ]
    return "set-up: " + ", ".join(parts) + (f" [{setup.plan}]" if setup.plan else "")


# ------------------------------------------------------------------------------------------ packed attention


_bounds_cache: list[Any] = [None, None]  # [position_ids tensor, (cu_seqlens, max_len)]: one forward's layers share it


def sequence_bounds(position_ids: Any) -> tuple[Any, int]:
    """(cumulative sequence starts as int32 with the total at the end, longest sequence) of a packed row: a new
    sequence starts wherever the position does not follow the previous one (TRL restarts them at 0)."""
    import torch

    if _bounds_cache[0] is position_ids:
        return _bounds_cache[1]
    positions = position_ids[0]
    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[1:] = positions[1:] != positions[:-1] + 1
    cu = torch.nonzero(starts).flatten().to(torch.int32)
    cu = torch.cat([cu, torch.tensor([positions.numel()], dtype=torch.int32, device=cu.device)])
    bounds = (cu, int((cu[1:] - cu[:-1]).max()))
    _bounds_cache[:] = [position_ids, bounds]
    return bounds


@functools.cache
def _varlen_parameters() -> frozenset[str]:
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    return frozenset(inspect.signature(varlen_attn).parameters)


def _flash_varlen(query: Any, key: Any, value: Any, cu: Any, max_len: int, scale: float) -> Any:
    """PyTorch's varlen flash-attention kernel, causal within each sequence ((tokens, heads, dim) in and out)."""
    from torch.nn.attention.varlen import varlen_attn

    # After RoPE, q and k are (tokens, heads, dim) views with the heads outermost; the kernel wants rows in order.
    query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
    params = _varlen_parameters()
    kwargs: dict[str, Any] = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    if "scale" in params:
        kwargs["scale"] = scale
    elif not math.isclose(scale, query.shape[-1] ** -0.5):
        raise TrainingSetupError("this torch's varlen attention has no scale argument: use --attention sdpa")
    groups = query.shape[1] // key.shape[1]
    if groups > 1 and "enable_gqa" in params:
        kwargs["enable_gqa"] = True
    elif groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    return varlen_attn(query, key, value, cu, cu, max_len, max_len, **kwargs)


def reference_packed_attention(query: Any, key: Any, value: Any, cu: Any, scale: float) -> Any:
    """The same attention, one sequence at a time through sdpa: the CPU path and the reference it is tested on."""
    import torch

    groups = query.shape[1] // key.shape[1]
    pieces = []
    bounds = cu.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        q, k, v = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (query, key, value))
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        pieces.append(out[0].transpose(0, 1))
    return torch.cat(pieces)


@functools.cache
def packed_attention_works(dtype: str = "bfloat16") -> bool:
    """Whether PyTorch's varlen flash kernel (torch.nn.attention.varlen: Ampere or newer) runs on this GPU, forward
    and backward, and agrees with sdpa run one sequence at a time: checked once per process on small sequences with
    grouped heads, so that a torch without the kernel, or with one that computes otherwise, falls back to sdpa."""
    import torch

    if importlib.util.find_spec("torch.nn.attention.varlen") is None or torch.cuda.get_device_capability()[0] < 8:
        return False
    try:
        generator = torch.Generator(device="cuda").manual_seed(0)
        lengths = [5, 17, 9]
        tensors = [  # query, key, value: 4 query heads sharing 2 key-value heads
            torch.randn(
                1, heads, sum(lengths), 64, device="cuda", dtype=getattr(torch, dtype), generator=generator
            ).requires_grad_()
            for heads in (4, 2, 2)
        ]
        positions = torch.cat([torch.arange(n, device="cuda") for n in lengths]).unsqueeze(0)
        out, _ = attend_packed(None, *tensors, None, scaling=64**-0.5, position_ids=positions)
        out.float().sum().backward()
        cu, _ = sequence_bounds(positions)
        q, k, v = (t.detach()[0].transpose(0, 1) for t in tensors)
        reference = reference_packed_attention(q, k, v, cu, 64**-0.5).unsqueeze(0)
        agrees = torch.allclose(out.float(), reference.float(), atol=2e-2, rtol=2e-2)
        if not agrees or any(t.grad is None or not t.grad.isfinite().all() for t in tensors):
            print("PyTorch's varlen flash kernel disagrees with sdpa here: packing uses sdpa", flush=True)
            return False
    except (RuntimeError, TypeError, ValueError, ImportError) as error:
        print(f"PyTorch's varlen flash kernel does not run here ({error}): packing uses sdpa", flush=True)
        return False
    return True


def attend_packed(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """A transformers attention function for padding-free rows: causal attention inside each packed sequence
    (bounds from `position_ids`), never across. Query (1, heads, tokens, dim) in, (1, tokens, heads, dim) out."""
    position_ids = kwargs.get("position_ids")
    if attention_mask is not None or position_ids is None or query.shape[0] != 1:
        raise ValueError(
            f"{VARLEN_ATTENTION} attention takes one packed row with position ids and no attention mask (TRL's "
            "padding-free collator); this batch is padded: train with --packing, or use --attention sdpa"
        )
    if dropout:
        raise ValueError(f"{VARLEN_ATTENTION} attention has no attention dropout (the model's is {dropout})")
    cu, max_len = sequence_bounds(position_ids)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = _flash_varlen(q, k, v, cu, max_len, scale) if q.is_cuda else reference_packed_attention(q, k, v, cu, scale)
    return out.unsqueeze(0), None


def register_packed_attention() -> None:
    """Make `VARLEN_ATTENTION` an attention implementation transformers can load models with (no mask is built:
    the bounds come from the position ids, as for flash-attention)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(VARLEN_ATTENTION, attend_packed)
    AttentionMaskInterface.register(VARLEN_ATTENTION, flash_attention_mask)


class _PackedAttentionWarning(logging.Filter):
    """TRL warns that padding-free batches are only safe with flash-attention. transformers 5.17 keeps sdpa inside
    packed sequences too, and this module's varlen attention does by construction; tests/test_training.py checks
    both, so the warning would only mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Padding-free training is enabled, but the attention implementation" not in record.getMessage()


# -------------------------------------------------------------------------------------------------- the model


def load_lora_model(config: TrainConfig, setup: TrainSetup) -> Any:
    """The base model with fresh LoRA adapters, as `setup` says (Unsloth, PEFT + bitsandbytes, or plain)."""
    config = recipes.resolve_recipe(config)
    import torch

    resolved = models.resolve_model(config.base, flag="--base")
    if setup.backend == "unsloth" and config.init_adapter is not None:
        raise ValueError("--init-adapter continues a PEFT adapter: pass --backend peft")
    if setup.backend == "unsloth":
        from unsloth import FastLanguageModel

        model, _ = FastLanguageModel.from_pretrained(
            model_name=resolved, max_seq_length=config.max_seq_len, dtype=None, load_in_4bit=True
        )
        model.config.use_cache = False  # with a cache, transformers never looks for packed sequences
        return FastLanguageModel.get_peft_model(
            model,
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            bias="none",
            target_modules=list(config.target_modules),
            random_state=config.seed,
            use_gradient_checkpointing="unsloth" if setup.gradient_checkpointing else False,
        )
    from peft import LoraConfig, get_peft_model

    if setup.attention == VARLEN_ATTENTION:
        register_packed_attention()
    kwargs: dict[str, Any] = {"attn_implementation": setup.attention}
    if setup.device == "cuda":
        from accelerate import PartialState

        # One full copy per process under `accelerate launch`: data parallel, each on its own GPU.
        kwargs["device_map"] = {"": PartialState().local_process_index}
    kwargs["dtype"] = getattr(torch, setup.dtype)
    if setup.quantization == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, setup.dtype),
        )
    model = models.load_model(config.base, flag="--base", **kwargs)
    # No KV cache in training; it also matters for packing: with a cache transformers never derives the packed
    # sequences' mask from the position ids, and sdpa would attend across them.
    model.config.use_cache = False
    if setup.gradient_checkpointing:
        # Not prepare_model_for_kbit_training: it upcasts the embeddings, norms and the 128k-vocabulary head to
        # fp32, which cost 1.5x in speed and 4 GiB in the benchmark (benchmarks/train_speed.py); bf16 trains fine.
        model.enable_input_require_grads()
    if config.init_adapter is not None:
        from peft import PeftModel

        # The adapter's own rank and modules: training continues its weights.
        return PeftModel.from_pretrained(model, str(resolve_repo_path(config.init_adapter)), is_trainable=True)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=list(config.target_modules),
    )
    return get_peft_model(model, lora)


# ---------------------------------------------------------------------------------------------------- the data


@dataclass(frozen=True)
class DataSource:
    """The training data as given, identified before anything is loaded."""

    path: Path  # the trajectories JSONL, or a folder from `alfworld-sft format`
    sha256: str  # of the trajectories JSONL (for a folder: of the JSONL it was formatted from)
    format_info: Mapping[str, Any] | None  # a formatted folder's format_info.json (None for a JSONL)


def identify_data(config: TrainConfig) -> DataSource:
    """Where the data is and its sha256; a formatted folder is checked against `config` (model, window, data
    format) here, before any model is loaded."""
    config = recipes.resolve_recipe(config)
    path = resolve_repo_path(config.data)
    if not path.is_dir():
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: pass the trajectories JSONL or a formatted folder")
        return DataSource(path, formatting.sha256_file(path), None)
    info_path = path / formatting.FORMAT_INFO
    if not info_path.exists():
        raise FileNotFoundError(
            f"{path} is not a formatted dataset (no {formatting.FORMAT_INFO}): run `alfworld-sft format` first"
        )
    remedy = f"format the data again (`alfworld-sft format --output {path}`), or pass the trajectories JSONL"
    info = files.read_json_object(
        info_path, remedy, ("source", "source_sha256", "config", "prompt_format", "max_seq_len")
    )
    made_with = info["config"] if isinstance(info["config"], dict) else {}
    data_format = made_with.get("data_format", "commands")
    if (made_with.get("model"), info["max_seq_len"], data_format) != (
        config.base,
        config.max_seq_len,
        config.data_format,
    ):
        raise ValueError(
            f"{path} was formatted for model {made_with.get('model')!r} with max_seq_len {info['max_seq_len']} in the "
            f"{data_format!r} format, not {config.base!r} with {config.max_seq_len} in {config.data_format!r}: "
            f"reformat it (`alfworld-sft format --model {config.base} --max-seq-len {config.max_seq_len}`) or pass "
            "the trajectories JSONL"
        )
    return DataSource(path, str(info["source_sha256"]), info)


def build_format_config(config: TrainConfig) -> formatting.FormatConfig:
    """How a JSONL given to `train` is formatted: as `alfworld-sft format` would with the same settings."""
    config = recipes.resolve_recipe(config)
    return formatting.FormatConfig(
        model=config.base,
        max_seq_len=config.max_seq_len,
        eval_fraction=config.eval_fraction,
        seed=config.seed,
        data_format=config.data_format,
    )


def load_training_data(config: TrainConfig, tokenizer: Any, source: DataSource) -> tuple[Any, dict[str, Any]]:
    """(DatasetDict, facts about it: prompt_format, data format, data file and sha256, stats)."""
    if source.format_info is not None:
        dataset, info = formatting.load_formatted(source.path)
        return dataset, {
            "data_file": info["source"],
            "data_sha256": source.sha256,
            "prompt_format": info["prompt_format"],
            "data_format": config.data_format,
            "stats": info.get("stats") or formatting.summarize_lengths(dataset, config.max_seq_len),
        }
    records_ = formatting.load_records(source.path)
    dataset = formatting.format_records(source.path, build_format_config(config), tokenizer=tokenizer)
    return dataset, {
        "data_file": str(source.path),
        "data_sha256": source.sha256,
        "prompt_format": asdict(formatting.prompt_format_of(records_)),
        "data_format": config.data_format,
        "stats": formatting.summarize_lengths(dataset, config.max_seq_len),
    }


# -------------------------------------------------------------------------------------- resuming, finishing


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    """The fields that decide what is trained, JSON-shaped; a config saved before a field existed reads as its
    default."""
    values = {**json.loads(json.dumps(asdict(TrainConfig()))), **json.loads(json.dumps(dict(config)))}
    return {k: v for k, v in values.items() if k not in _SPEED_FIELDS and k in TrainConfig.__dataclass_fields__}


def describe_changes(saved_config: Mapping[str, Any], saved_sha256: str, config: TrainConfig, sha256: str) -> str:
    """What differs between a run in a folder and `config` on data `sha256` ('' when nothing does)."""
    saved, wanted = _comparable(saved_config), _comparable(asdict(config))
    changes = [f"{k}: {saved.get(k)!r} -> {wanted[k]!r}" for k in wanted if saved.get(k) != wanted[k]]
    if saved_sha256 != sha256:
        changes.append("data (its sha256)")
    return ", ".join(changes)


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


def find_finished_run(output: Path, config: TrainConfig, data_sha256: str) -> TrainResult | None:
    """The result of a finished run of `config` on this data in `output` (its training record is there and
    complete), or None when there is none. A finished run of another configuration is refused."""
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
    message = (
        f"already trained: {output} holds the adapter of this configuration and data "
        f"({details.get('global_step')} steps); nothing changed. To train again, pass a new --output or delete it"
    )
    return TrainResult(
        output=output,
        global_step=details.get("global_step", 0),
        train_loss=details.get("train_loss"),
        eval_loss_initial=details.get("eval_loss_initial"),
        eval_loss_best=details.get("eval_loss_best"),
        resumed_from=None,
        runtime_s=0.0,
        messages=(message,),
        already_trained=True,
        record=record,
    )


def load_checkpoint_weights(model: Any, checkpoint: Path) -> None:
    """Put a checkpoint's adapter weights into the LoRA model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(checkpoint / "adapter_model.safetensors")))


# ------------------------------------------------------------------------------------------------- reporting


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


def mean_train_loss(log_history: Sequence[Mapping[str, Any]]) -> float | None:
    """The mean training loss per optimizer step over every logged step of the whole run (all runs into the
    folder: a resumed run's log starts with the checkpoint's). Each logged loss is the mean since the previous
    log line, so it counts for the steps it covers."""
    total = covered = 0.0
    previous = 0
    for entry in log_history:
        if "loss" in entry and isinstance(entry.get("step"), int) and entry["step"] > previous:
            total += entry["loss"] * (entry["step"] - previous)
            covered += entry["step"] - previous
            previous = entry["step"]
    return total / covered if covered else None


def _explain_oom(config: TrainConfig, setup: TrainSetup) -> TrainingOutOfMemoryError:
    advice = [
        f"a smaller --tokens-per-pass (now {setup.tokens_per_pass}; at least --max-seq-len)"
        if setup.tokens_per_pass
        else f"a smaller --micro-batch (now {setup.micro_batch}; the effective batch --batch x --grad-accum stays)",
        f"a shorter --max-seq-len (now {config.max_seq_len})",
    ]
    if setup.quantization == "none" and setup.device == "cuda":
        advice.append("QLoRA instead of LoRA (--quantization nf4: the base weights take a quarter of the memory)")
    if not setup.gradient_checkpointing:
        advice.append("--gradient-checkpointing")
    if setup.device == "cuda":
        advice.append("--memory-budget-gib below what other processes on the GPU leave free")
    return TrainingOutOfMemoryError(
        "out of GPU memory while training: try " + "; or ".join(advice) + ". Rerun to resume from the last checkpoint."
    )


# -------------------------------------------------------------------------------------------------- training


def build_sft_config(config: TrainConfig, setup: TrainSetup, has_eval: bool) -> Any:
    config = recipes.resolve_recipe(config)
    from trl import SFTConfig

    cuda = setup.device == "cuda"
    return SFTConfig(
        output_dir=str(resolve_repo_path(config.output)),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=setup.micro_batch,
        # Evaluation passes are not cut: as many sequences as the longest fit in one pass.
        per_device_eval_batch_size=max(1, setup.tokens_per_pass // config.max_seq_len)
        if setup.tokens_per_pass
        else setup.micro_batch,
        gradient_accumulation_steps=setup.grad_accum,
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
        bf16=setup.dtype == "bfloat16",
        fp16=setup.dtype == "float16",
        use_cpu=not cuda,
        gradient_checkpointing=setup.gradient_checkpointing and setup.backend != "unsloth",
        gradient_checkpointing_kwargs={"use_reentrant": False},
        # Examples arrive cut by the window, so TRL's own truncation never bites; padding-free batches need None.
        max_length=None if setup.packing else config.max_seq_len,
        padding_free=setup.packing,
        use_liger_kernel=setup.liger,
        # Length grouping only saves padding, and packed batches have none.
        train_sampling_strategy="group_by_length" if config.group_by_length and not setup.packing else "random",
        packing=False,  # never TRL's dataset packing: a sequence is never cut or mixed into another's example
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # LoRA under `accelerate launch`: every trainable weight gets a gradient
        disable_tqdm=False,
    )


def build_trainer(setup: TrainSetup, **kwargs: Any) -> Any:
    """TRL's `SFTTrainer` with `kwargs`; with `setup.tokens_per_pass`, one whose optimizer step runs its packed
    sequences as passes of at most that many tokens (`split_packed_batch`), their gradients accumulated and each
    pass's loss a share of the whole step's (every pass divides by the step's count of trained tokens)."""
    from trl import SFTTrainer

    if not setup.tokens_per_pass:
        return SFTTrainer(**kwargs)
    budget = setup.tokens_per_pass

    class TokenBudgetTrainer(SFTTrainer):
        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            passes = split_packed_batch(inputs, budget)
            if len(passes) == 1:
                return super().training_step(model, inputs, num_items_in_batch)
            if not self.model_accepts_loss_kwargs and self.compute_loss_func is None:
                # Its loss would be each pass's own mean, and their sum not the step's: refuse, never mis-weight.
                raise TrainingSetupError(
                    "this model's loss does not take the step's token count (num_items_in_batch), so passes cut by "
                    "--tokens-per-pass cannot add up to the step's loss: pass --micro-batch instead"
                )
            if num_items_in_batch is None:
                num_items_in_batch = sum(int((p["labels"] != formatting.IGNORE_INDEX).sum()) for p in passes)
            # One process only (resolve_setup): no gradients to exchange between the passes.
            return sum(super(TokenBudgetTrainer, self).training_step(model, p, num_items_in_batch) for p in passes)

    return TokenBudgetTrainer(**kwargs)


def keep_initial_eval_callback(entry: dict[str, Any]) -> Any:
    """A callback that puts the untrained eval loss first in the log (train() starts a fresh log, and the
    entry then travels in every checkpoint, so a resumed run still plots it)."""
    from transformers import TrainerCallback

    class KeepInitialEval(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not any(e.get("step") == 0 and "eval_loss" in e for e in state.log_history):
                state.log_history.insert(0, dict(entry))

    return KeepInitialEval()


def is_main_process() -> bool:
    """Rank 0 under `accelerate launch` (which sets RANK), or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


def train(config: TrainConfig, *, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train (or resume, or find finished) a LoRA adapter as `config` says and save everything into
    `config.output`. What it decides on the way (resuming, skipping a torn checkpoint, nothing to do, the
    set-up) is printed and returned in `TrainResult.messages`."""
    started = time.perf_counter()
    messages: list[str] = []

    def say(message: str) -> None:
        messages.append(message)
        if is_main_process():
            print(message, flush=True)

    config = recipes.resolve_recipe(config)
    check_config(config)
    recipe = recipes.describe_recipe(config)
    say(recipes.format_recipe(recipe))
    output = resolve_repo_path(config.output)
    source = identify_data(config)
    finished = find_finished_run(output, config, source.sha256)
    if finished is not None:
        say(finished.messages[0])
        return finished
    resume, notes = find_resume_checkpoint(output, config, source.sha256)
    for note in notes:
        say(note)
    setup = resolve_setup(config)
    say(describe_setup(setup))
    import torch
    from transformers import TrainerState

    tokenizer = models.load_tokenizer(config.base, flag="--base")
    dataset, data_facts = load_training_data(config, tokenizer, source)
    if len(dataset["train"]) == 0:
        raise ValueError(f"{config.data}: no training examples after the train/eval split: collect more games")
    has_eval = "eval" in dataset and len(dataset["eval"]) > 0
    columns = ["input_ids", "labels"]
    train_set = dataset["train"].select_columns(columns)
    eval_set = dataset["eval"].select_columns(columns) if has_eval else None

    final_state = None
    if resume is not None:
        state = read_checkpoint_state(Path(resume)) or {}
        if state.get("max_steps") and state["global_step"] >= state["max_steps"]:
            # Killed after its last checkpoint but before the adapter was saved: resuming would train one step
            # past the end (transformers restarts the epoch loop), so the adapter is taken from the checkpoints.
            final_state = Path(resume)
            say(f"{Path(resume).name} is the run's last step: saving the adapter from it without training further")
        else:
            say(f"resuming from {Path(resume).name}")

    trl_logger = logging.getLogger("trl.trainer.sft_trainer")
    if setup.packing and not any(isinstance(f, _PackedAttentionWarning) for f in trl_logger.filters):
        trl_logger.addFilter(_PackedAttentionWarning())
    model = load_lora_model(config, setup)
    trainer = build_trainer(
        setup,
        model=model,
        args=build_sft_config(config, setup, has_eval),
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        callbacks=[manifest_callback(), *callbacks],
    )
    if trainer.is_world_process_zero():
        output.mkdir(parents=True, exist_ok=True)
        files.write_json(output / RUN_CONFIG, {"config": asdict(config), "data_sha256": source.sha256})
    try:
        if final_state is not None:
            trainer.state = TrainerState.load_from_json(str(final_state / "trainer_state.json"))
            best = trainer.state.best_model_checkpoint
            best_path = output / Path(best).name if best else None
            use_best = config.load_best and has_eval and best_path is not None and best_path.is_dir()
            load_checkpoint_weights(trainer.model, best_path if use_best else final_state)
        else:
            if has_eval and resume is None:
                eval_loss_initial = trainer.evaluate()["eval_loss"]
                trainer.add_callback(keep_initial_eval_callback({"step": 0, "eval_loss": eval_loss_initial}))
            trainer.train(resume_from_checkpoint=resume)
    except torch.OutOfMemoryError as error:
        raise _explain_oom(config, setup) from error

    history = trainer.state.log_history
    eval_loss_initial = next((e["eval_loss"] for e in history if e.get("step") == 0 and "eval_loss" in e), None)
    eval_losses = [e["eval_loss"] for e in history if "eval_loss" in e and e.get("step", 0) > 0]
    train_loss = mean_train_loss(history)
    record = None
    if trainer.is_world_process_zero():
        trainer.save_model(str(output))
        tokenizer.save_pretrained(str(output))
        files.write_json(output / TRAINING_LOG, history)
        plot_loss_curve(history, output / LOSS_PLOT)
        record = records.TrainingRecord(
            base_model=config.base,
            prompt_format=prompts.PromptFormat(**data_facts["prompt_format"]),
            max_seq_len=config.max_seq_len,
            end_of_turn=models.end_of_turn_marker(tokenizer),
            data_format=data_facts["data_format"],
            details={
                "base_model_identity": models.identify_model(config.base),
                "seed": config.seed,
                "data_file": data_facts["data_file"],
                "data_sha256": data_facts["data_sha256"],
                "config": json.loads(json.dumps(asdict(config))),
                "recipe": recipe,
                "setup": asdict(setup),
                "data_stats": data_facts["stats"],
                "global_step": trainer.state.global_step,
                "train_loss": train_loss,
                "eval_loss_initial": eval_loss_initial,
                "eval_loss_best": min(eval_losses) if eval_losses else None,
                "best_checkpoint": trainer.state.best_model_checkpoint,
                "resumed_from": resume,
                "world_size": trainer.args.world_size,
                "runtime_s": round(time.perf_counter() - started, 1),
                # What this call's process allocated at most on its GPU (torch's count, without the CUDA context).
                "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / GIB, 2)
                if setup.device == "cuda"
                else None,
            },
        )
        records.write_training_record(output, record, seed=config.seed)
        record = records.read_training_record(output)  # as the later stages will see it (with its run metadata)
    return TrainResult(
        output=output,
        global_step=trainer.state.global_step,
        train_loss=train_loss,
        eval_loss_initial=eval_loss_initial,
        eval_loss_best=min(eval_losses) if eval_losses else None,
        resumed_from=resume,
        runtime_s=round(time.perf_counter() - started, 1),
        messages=tuple(messages),
        record=record,
    )


def course_config(
    small: bool,
    seed: int,
    base: str = models.DEFAULT_MODEL,
    data_format: str = "commands",
    dtype: str = "auto",
    memory_budget_gib: float | None = None,
) -> TrainConfig:
    """Notebook 03's run: the data notebook 02 formatted (in `data_format`), into `run_dir(small)/sft_adapter`.

    Full mode: the base model's recipe, as measured (`recipes`). Small mode (CPU, a few minutes): the recipe with one
    epoch, batch 2 without accumulation, a higher learning rate so that a handful of steps show a falling loss,
    frequent evals, and notebook 02's shorter window and larger eval share (all recorded as overrides). `dtype` and
    `memory_budget_gib` choose how a GPU computes (a T4: float16 within 15 GiB), not what is trained.
    """
    from alfworld_sft.paths import run_dir

    paths = {"data": str(run_dir(small) / "sft_data"), "output": str(run_dir(small) / "sft_adapter")}
    common = {
        **paths,
        "base": base,
        "seed": seed,
        "data_format": data_format,
        "dtype": dtype,
        "memory_budget_gib": memory_budget_gib,
    }
    if not small:
        return recipes.resolve_recipe(TrainConfig(**common))
    fmt = formatting.course_format_config(small, seed, base, data_format)
    return recipes.resolve_recipe(
        TrainConfig(
            **common,
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
    )


def load_adapter(adapter: str | os.PathLike[str], **kwargs: Any) -> Any:
    """The trained adapter on its (unquantized) base model, for checks and generation."""
    from peft import PeftModel

    record = records.read_training_record(resolve_repo_path(adapter))
    base = models.load_model(record.base_model, **kwargs)
    return PeftModel.from_pretrained(base, str(resolve_repo_path(adapter)))


def compare_with_base(
    adapter: str | os.PathLike[str], messages: list[dict[str, str]], max_new_tokens: int = 16
) -> dict[str, str]:
    """Greedy replies of the base model and of base + adapter to the same messages (CPU-friendly check)."""
    import torch

    record = records.read_training_record(resolve_repo_path(adapter))
    tokenizer = models.load_tokenizer(record.base_model)
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


# ------------------------------------------------------------------------------------------------------- CLI


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
    parser.add_argument(
        "--format",
        dest="data_format",
        choices=prompts.DATA_FORMATS,
        default=defaults.data_format,
        help="assistant turns: bare commands, or a thought and the command (a JSONL is formatted so)",
    )
    parser.add_argument(
        "--recipe",
        choices=recipes.RECIPE_CHOICES,
        default=defaults.recipe,
        help="the recipe the flags below default to (auto: bf16 LoRA below 3B parameters, QLoRA nf4 from 3B on)",
    )
    recipe_flag = {"default": None, "help": "default: the recipe's"}
    parser.add_argument("--epochs", type=float, **recipe_flag)
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="with --grad-accum, the sequences of an optimizer step per device (the micro-batch on CPU); "
        "default: the recipe's",
    )
    parser.add_argument("--lr", type=float, **recipe_flag)
    parser.add_argument("--max-seq-len", type=int, **recipe_flag)
    parser.add_argument("--grad-accum", type=int, **recipe_flag)
    parser.add_argument("--lora-r", type=int, **recipe_flag)
    parser.add_argument("--lora-alpha", type=int, **recipe_flag)
    parser.add_argument("--lora-dropout", type=float, **recipe_flag)
    parser.add_argument("--warmup-ratio", type=float, **recipe_flag)
    parser.add_argument("--logging-steps", type=int, **recipe_flag)
    parser.add_argument("--eval-steps", type=int, **recipe_flag)
    parser.add_argument("--save-steps", type=int, **recipe_flag)
    parser.add_argument("--save-total-limit", type=int, default=defaults.save_total_limit)
    parser.add_argument("--eval-fraction", type=float, **recipe_flag)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--max-steps", type=int, default=defaults.max_steps, help="optimizer steps (default -1: all --epochs)"
    )
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default=defaults.device)
    parser.add_argument("--quantization", choices=("auto", "nf4", "none"), **recipe_flag)
    parser.add_argument("--backend", choices=("auto", "unsloth", "peft"), default=defaults.backend)
    parser.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: off on CPU, planned from GPU memory on CUDA",
    )
    parser.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=defaults.group_by_length)
    parser.add_argument(
        "--liger",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Liger fused kernels (default: on with CUDA when liger-kernel is installed)",
    )
    parser.add_argument(
        "--packing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="padding-free micro-batches (default: on with CUDA and PEFT)",
    )
    parser.add_argument(
        "--micro-batch",
        type=int,
        default=None,
        help="sequences per forward pass, a divisor of --batch x --grad-accum (default: --batch on CPU, the most "
        "that fits on CUDA)",
    )
    parser.add_argument(
        "--tokens-per-pass",
        type=int,
        default=None,
        help="packed: cut each step's sequences into forward passes of at most this many tokens, at least "
        "--max-seq-len (default on CUDA: the most that fit)",
    )
    parser.add_argument("--attention", choices=ATTENTIONS, default=defaults.attention)
    parser.add_argument(
        "--dtype",
        choices=TRAIN_DTYPES,
        default=defaults.dtype,
        help="CUDA compute dtype (default: bfloat16 where the GPU has it, else float16, as on a T4)",
    )
    parser.add_argument(
        "--memory-budget-gib",
        type=float,
        default=None,
        help="GPU memory the plan may use (default: what the card has free)",
    )
    parser.add_argument("--no-load-best", dest="load_best", action="store_false", help="keep the last weights")
    parser.add_argument(
        "--init-adapter",
        default=None,
        help="continue training this adapter (its rank and modules) instead of a fresh one",
    )
    parser.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    names = {f.name for f in fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    files.check_output(resolve_repo_path(config.output), "--output", folder=True)
    result = train(config)
    if result.record is None or result.already_trained:  # only the main process reports; train() said it
        return 0
    loss = "n/a" if result.train_loss is None else f"{result.train_loss:.4f}"
    print(
        f"trained {result.global_step} steps (mean train loss {loss} over the run; eval loss "
        f"{result.eval_loss_initial} -> {result.eval_loss_best}) in {result.runtime_s:.0f} s -> {result.output}",
        file=sys.stdout,
    )
    return 0
