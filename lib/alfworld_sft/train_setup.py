"""What this machine runs for a `TrainConfig`: device, method, kernels and how the batches reach the GPU.

`resolve_setup` turns a config into a `TrainSetup` and `describe_setup` says it in one line, printed when training
starts:

* the method: QLoRA (nf4, double quantization, bf16 compute) through PEFT + bitsandbytes on CUDA, or Unsloth with
  `--backend unsloth` (`auto` takes PEFT: packed, it out-ran Unsloth on an H200, `benchmarks/train_speed.py`);
  plain LoRA in fp32 on CPU;
* packing (default on CUDA with PEFT): TRL's padding-free collator concatenates a micro-batch's sequences into
  one row with restarting `position_ids`, so no compute goes to padding; attention stays inside each sequence
  (flash-attention's varlen kernel when `flash_attn` imports, else PyTorch's own varlen flash kernel,
  `packing.VARLEN_ATTENTION`, else sdpa with transformers' packed-sequence mask: `choose_attention`). Without
  packing, micro-batches are padded (labels with -100, attention mask from lengths) and grouped by length;
* how many tokens a forward pass holds and gradient checkpointing come from the card's free memory (or
  `--memory-budget-gib`), the model's shape and `--max-seq-len` (`plan_memory`, on `estimate_training_memory`),
  keeping the effective batch `--batch x --grad-accum`: packed, each optimizer step's sequences are cut into
  passes of at most `--tokens-per-pass` tokens between sequences (`packing.split_packed_batch`), padded, into
  micro-batches of a fixed number of sequences;
* Liger's fused kernels when liger-kernel is installed (no full-vocabulary logits);
* the dtype: bfloat16, or float16 on a GPU without it (a T4), float32 on CPU (`choose_dtype`).

`--packing/--no-packing`, `--tokens-per-pass`, `--micro-batch`, `--gradient-checkpointing/--no-gradient-checkpointing`,
`--attention` and `--liger/--no-liger` override the choices; on CPU nothing is planned (padded batches of `--batch`,
in passes of at most `CPU_MICRO_BATCH` sequences). `plan_gpu_setups` says what full mode would train on a card of a
given size before any weights are on it (notebook 00).

    from alfworld_sft import train_config, train_setup
    setup = train_setup.resolve_setup(train_config.course_config(small=False, seed=0))
    print(train_setup.describe_setup(setup))
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass

from alfworld_sft import models, recipes
from alfworld_sft.models import ModelShape
from alfworld_sft.packing import VARLEN_ATTENTION, packed_attention_works
from alfworld_sft.train_config import LORA_TARGET_MODULES, TrainConfig, TrainingSetupError, check_config

GIB = 1024**3


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


class TrainingOutOfMemoryError(RuntimeError):
    """The GPU ran out of memory, or the plan finds no set-up that fits; the message lists what to shrink."""


# ------------------------------------------------------------------------------------------ the memory plan


# Constants of the estimate. nf4 with double quantization stores 4 bits a weight plus ~0.13 bits of scales.
NF4_BYTES_PER_PARAM = 0.516
LORA_BYTES_PER_PARAM = 16  # fp32 weight, its gradient and Adam's two moments
WORKSPACE_BYTES = 1.5 * GIB  # a dequantized weight, cuBLAS and attention workspaces, allocator fragmentation
ACTIVATION_SLACK = 1.25  # temporaries the per-layer count below leaves out
LOSS_BYTES_PER_LOGIT = 12  # without Liger: bf16 logits, their fp32 copy, log-softmax and its gradient
# Without recomputation a pass must still hold enough tokens to keep the GPU busy; below this many tokens a larger
# micro-batch with gradient checkpointing is the faster choice.
NO_RECOMPUTE_MIN_TOKENS = 4096
# sdpa over a packed pass (no varlen kernel: a T4) attends through one block-diagonal mask of the pass's tokens
# squared, and holds one layer's scores and their softmax at a time: 2 + 2 bytes per head and pair of tokens in 16
# bits. Checked on an H100 forced to a T4's set-up (2026-12-05: float16, sdpa, the 135M default): a pass of 13,236
# tokens peaked at 19.6 GiB, planned at 15.0 without this term and 20.9 with it.
SDPA_PACKED_BYTES_PER_SCORE = 4


def estimate_training_memory(
    shape: ModelShape,
    *,
    tokens: int,
    quantization: str,
    checkpointing: bool,
    liger: bool,
    lora_r: int,
    targets: Sequence[str],
    packed_sdpa: bool = False,
) -> float:
    """Bytes of GPU memory a LoRA/QLoRA step on `tokens` tokens in one forward pass needs, at most (bf16); with
    `packed_sdpa` (packing without a varlen kernel) the pass's mask and one layer's scores, quadratic in `tokens`."""
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
    scores = SDPA_PACKED_BYTES_PER_SCORE * shape.heads * tokens**2 if packed_sdpa else 0
    return weights + lora + ACTIVATION_SLACK * activations + logits + scores + WORKSPACE_BYTES


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
    packed_sdpa: bool = False,
) -> MemoryPlan:
    """The fastest layout of `effective_batch` sequences of up to `max_seq_len` tokens that fits `budget_bytes`
    at its largest pass (a run must not run out of memory at its longest batch).

    Packed (and `micro_batch` not given), a pass holds up to a number of tokens, whatever the sequences' count:
    the most that fit (or `tokens_per_pass`). Padded, a micro-batch holds a number of sequences, sized as if each
    were `max_seq_len` long. Without recomputation when a pass still holds `NO_RECOMPUTE_MIN_TOKENS` tokens (or
    the whole step); otherwise with gradient checkpointing and the largest pass that fits.
    `gradient_checkpointing` pins that choice; `packed_sdpa` says a pass's sequences are packed into one row that
    attends through sdpa's mask (its square counted), whether the pass is sized in tokens or in sequences."""
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
            packed_sdpa=packed_sdpa,
        )

    def most_tokens(checkpointing: bool) -> int:  # the estimate grows with the tokens of a pass: bisect it
        fewest, most = 0, whole_step
        while fewest < most:
            middle = (fewest + most + 1) // 2
            fewest, most = (middle, most) if need(middle, checkpointing) <= budget_bytes else (fewest, middle - 1)
        return fewest

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


def plan_gpu_setups(budget_bytes: float, *, liger: bool, attention: str = VARLEN_ATTENTION) -> dict[str, str]:
    """What full mode trains on a GPU with this much memory, for the default model's recipe and an 8B's (QLoRA):
    packed passes of how many tokens, with or without recomputation, or why it does not fit (notebook 00).
    `attention` is the kernel packed passes use (sdpa on a T4: its mask grows with the square of a pass)."""
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
                packed_sdpa=attention == "sdpa",
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
    """The transformers attention implementation for `asked` (`train_config.ATTENTIONS`) on `device`."""
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
    # Packing is proven here to keep sequences apart with the attentions PEFT loads (tests/test_packing.py); under
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
        packed_sdpa=packing and attention == "sdpa",
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


def explain_oom(config: TrainConfig, setup: TrainSetup) -> TrainingOutOfMemoryError:
    """The error to raise when training ran out of GPU memory anyway: what to shrink, for this set-up."""
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
