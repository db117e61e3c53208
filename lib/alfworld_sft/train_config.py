"""What `alfworld-sft train` trains: `TrainConfig`, its checks, and notebook 03's run.

A `TrainConfig` is one training run: the data, the output folder, the base model and the values that decide what is
trained. The fields left at None are the base model's recipe (`recipes`), filled by `recipes.resolve_recipe`;
`check_config` refuses values out of range naming the command-line flag (`flag_of`), and `format_recipe` says on the
console what a run trains against its recipe. `course_config` is notebook 03's run, full or small. How this machine
runs a config is `train_setup`; the run itself is `training.train`.

    from alfworld_sft import train_config, training
    config = train_config.course_config(small=True, seed=0)       # notebook 03's small run, recipe filled in
    train_config.check_config(config)                              # a ValueError naming the flag, or nothing
    training.train(config)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from alfworld_sft import formatting, models, prompts, recipes, records
from alfworld_sft.paths import resolve_repo_path

LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTIONS = ("auto", "sdpa", "flash_attention_2", "varlen")  # --attention choices
TRAIN_DTYPES = ("auto", "bfloat16", "float16")  # --dtype choices


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
SPEED_FIELDS = (
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


# Here rather than in `train_setup`, which raises it too: `packing` raises it, and `train_setup` imports `packing`.
class TrainingSetupError(RuntimeError):
    """The machine cannot run the asked set-up (no GPU, a missing package); the message says what to do."""


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


def format_recipe(described: Mapping[str, Any]) -> str:
    """One paragraph for the console: the recipe (`recipes.describe_recipe`), its values, and what was overridden."""
    values = ", ".join(f"{flag_of(name)} {value}" for name, value in described["values"].items())
    overrides = described["overrides"]
    changed = ", ".join(f"{flag_of(name)} {value}" for name, value in overrides.items())
    return f"recipe {described['name']} ({described['measured']}): {values}" + (
        f"; overridden: {changed}" if overrides else "; nothing overridden"
    )


# -------------------------------------------------------------------------------------------- notebook 03


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
