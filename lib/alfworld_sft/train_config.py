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

from alfworld_sft import flags, formatting, models, prompts, recipes, records
from alfworld_sft.flags import option
from alfworld_sft.paths import resolve_repo_path

LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTIONS = ("auto", "sdpa", "flash_attention_2", "varlen")  # --attention choices
TRAIN_DTYPES = ("auto", "bfloat16", "float16")  # --dtype choices
DEVICES = ("auto", "cuda", "cpu")  # --device choices
QUANTIZATIONS = ("auto", "nf4", "none")  # --quantization choices
BACKENDS = ("auto", "unsloth", "peft")  # --backend choices


def _recipe_option(help: str, **argparse_extras: Any) -> Any:
    """A field the recipe fills (`recipes`): None until `recipes.resolve_recipe`, a flag that says so."""
    return option(None, f"{help}; default: the recipe's", **argparse_extras)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. The fields left at None take the values of the base model's recipe (`recipes`); any value
    given wins and is recorded as an override. The default base is the embedded model (see `DEFAULT_BASE_NOTE`).
    Each field with help is an `alfworld-sft train` flag (`flags`)."""

    data: str = option(
        "results/oracle/trajectories.jsonl", "trajectories JSONL, or a folder from `alfworld-sft format`"
    )
    output: str = option(
        "results/sft_adapter",
        "adapter folder (rerun to resume): adapter, tokenizer, checkpoints, log, plot, training_record.json",
    )
    base: str = option(
        models.DEFAULT_MODEL,
        "base model: a model id, a local folder or the embedded default's name (default %(default)s; see above)",
    )
    data_format: str = option(
        "commands",
        "assistant turns: bare commands, or a thought and the command (a JSONL is formatted so)",
        flag="--format",
        choices=prompts.DATA_FORMATS,
    )
    recipe: str = option(
        "auto",
        "the recipe the flags below default to (auto: bf16 LoRA below 3B parameters, QLoRA nf4 from 3B on)",
        choices=recipes.RECIPE_CHOICES,
    )
    epochs: float | None = _recipe_option("passes over the training split")
    batch: int | None = _recipe_option(
        "with --grad-accum, the sequences of an optimizer step per device (the micro-batch on CPU); batch x "
        "grad-accum x GPUs is the effective batch"
    )
    lr: float | None = _recipe_option("peak learning rate")
    max_seq_len: int | None = _recipe_option("tokens per example; longer games lose their oldest middle turns")
    grad_accum: int | None = _recipe_option(
        "passes per optimizer update (on CUDA re-split by the plan, same effective batch)"
    )
    lora_r: int | None = _recipe_option("LoRA rank")
    lora_alpha: int | None = _recipe_option("LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float | None = _recipe_option("dropout on the LoRA path")
    target_modules: tuple[str, ...] = LORA_TARGET_MODULES  # linear layers that get adapters (Python only: no flag)
    lr_scheduler: str = "cosine"  # learning-rate schedule after warm-up (Python only: no flag)
    warmup_ratio: float | None = _recipe_option("share of all optimizer steps spent warming up")
    logging_steps: int | None = _recipe_option("optimizer steps between train-loss log lines")
    eval_steps: int | None = _recipe_option("optimizer steps between evaluations of the held-out games")
    save_steps: int | None = _recipe_option(
        "optimizer steps between checkpoints (a multiple of --eval-steps, to keep the best)"
    )
    save_total_limit: int = option(2, "checkpoints kept; the best one is never deleted (default %(default)s)")
    load_best: bool = option(
        True,
        "keep the last weights, not the checkpoint of lowest eval loss",
        flag="--no-load-best",
        action="store_false",
    )
    eval_fraction: float | None = _recipe_option("share of games held out for eval loss")
    seed: int = option(42, "seeds the split, the LoRA init and the data order (default %(default)s)")
    max_steps: int = option(-1, "optimizer steps (default -1: all --epochs)")
    device: str = option("auto", "where to train; auto: CUDA if present", choices=DEVICES)
    quantization: str | None = _recipe_option(
        "the base weights in 4 bits or not; auto: nf4 on CUDA, none on CPU", choices=QUANTIZATIONS
    )
    backend: str = option(
        "auto", "training library; auto: PEFT, packed (it out-ran Unsloth on an H200)", choices=BACKENDS
    )
    gradient_checkpointing: bool | None = option(
        None, "recompute activations in the backward pass (default: off on CPU, planned from GPU memory on CUDA)"
    )
    # benchmark: group_by_length cut the padding from 34% to 14%
    group_by_length: bool = option(True, "padded batches of similar lengths (default: on; off when packing)")
    liger: bool | None = option(
        None,
        "Liger fused kernels, no full-vocabulary logits (default: on with CUDA when liger-kernel is installed)",
    )
    packing: bool | None = option(
        None, "padding-free micro-batches: one row, restarting positions (default: on with CUDA and PEFT)"
    )
    micro_batch: int | None = option(
        None,
        "sequences per forward pass, a divisor of --batch x --grad-accum (default: --batch on CPU, the most that "
        "fits on CUDA)",
    )
    tokens_per_pass: int | None = option(
        None,
        "packed: cut each step's sequences into forward passes of at most this many tokens, at least "
        "--max-seq-len (default on CUDA: the most that fit)",
    )
    attention: str = option(
        "auto",
        "attention kernel; varlen: PyTorch's flash kernel within packed sequences (packing only)",
        choices=ATTENTIONS,
    )
    dtype: str = option(
        "auto",
        "CUDA compute dtype (default: bfloat16 where the GPU has it, else float16, as on a T4)",
        choices=TRAIN_DTYPES,
    )
    memory_budget_gib: float | None = option(
        None, "GPU memory the plan may fill, in GiB (default: what the card has free now)"
    )
    init_adapter: str | None = option(
        None, "continue training this adapter (its rank and modules) instead of a fresh LoRA, as DAgger's continue"
    )


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


def flag_of(name: str) -> str:
    """The command-line option that sets TrainConfig field `name` (declared on the field: `flags.flag_of`)."""
    return flags.flag_of(TrainConfig, name)


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
        "device": DEVICES,
        "quantization": QUANTIZATIONS,
        "backend": BACKENDS,
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
    attention: str = "auto",
) -> TrainConfig:
    """Notebook 03's run: the data notebook 02 formatted (in `data_format`), into `run_dir(small)/sft_adapter`.

    Full mode: the base model's recipe, as measured (`recipes`). Small mode (CPU, a few minutes): the recipe with one
    epoch, batch 2 without accumulation, a higher learning rate so that a handful of steps show a falling loss,
    frequent evals, and notebook 02's shorter window and larger eval share (all recorded as overrides). `dtype`,
    `memory_budget_gib` and `attention` choose how a GPU computes (a T4: float16, sdpa, within 15 GiB), not what is
    trained.
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
        "attention": attention,
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
