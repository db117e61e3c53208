"""The training recipes: what `alfworld-sft train` trains for each kind of base model, defined here and nowhere else.

A recipe is data, as in TRL's recipe files: the values of the `TrainConfig` fields that decide what is trained
(epochs, batch, learning rate, LoRA rank, quantization, ...). `TrainConfig` leaves those fields unset (None); the
recipe of the base model fills them (`resolve_recipe`), and a value given on the command line or in a notebook wins
over the recipe's and is recorded as an override. Notebook 03's full mode, `alfworld-sft train --data ...` with no
recipe flags, and DAgger's retraining (which repeats the starting adapter's recorded recipe) all train this.

    alfworld-sft train --data results/oracle/trajectories.jsonl              # the base model's recipe
    alfworld-sft train --data ... --recipe qlora-nf4 --epochs 1              # another recipe, one value overridden

Every training record stores the recipe's name, the values used and the overrides (`describe_recipe`); the console
shows them as flags (`train_config.format_recipe`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Recipe:
    name: str
    measured: str  # what this recipe gave, where and when: the evidence it is the default for
    values: Mapping[str, Any]  # TrainConfig field -> value


# The default model (SmolLM2-135M-Instruct) on one H200, 2026-11-28 to 2026-12-03: 3 epochs over the teacher's 3,552
# won train games, 318 optimizer steps in ~100 s, eval loss 1.17 -> 0.026; grounded zero_shot 134/140
# eval_in_distribution (results/README.md). A 135M base in bf16 takes 0.3 GB: quantizing it saves nothing. The data
# is part of the recipe: on 1,800 of those games the same values won 119/140, 127 with the game's memory (one H200,
# 2026-12-05), so notebook 01's full mode collects the whole split.
LORA_BF16 = Recipe(
    name="lora-bf16",
    measured="SmolLM2-135M: 134/140 eval_in_distribution games won (grounded zero_shot), one H200, 2026-12-03",
    values=MappingProxyType(
        {
            "epochs": 3.0,
            "batch": 8,
            "grad_accum": 4,
            "lr": 2e-4,
            "max_seq_len": 2048,
            "lora_r": 64,
            "lora_alpha": 128,
            "lora_dropout": 0.0,
            "warmup_ratio": 0.05,
            "quantization": "none",
            "logging_steps": 10,
            "eval_steps": 50,
            "save_steps": 100,
            "eval_fraction": 0.05,
        }
    ),
)

# The seed guide's QLoRA for Llama-3.1-8B (nf4, double quantization, bf16 compute, packed), measured through every
# stage with the 8B shape on one H200 (tools/gpu_8b.sh: 150 steps in 189 s at 41 GB).
QLORA_NF4 = Recipe(
    name="qlora-nf4",
    measured="the seed guide's values for Llama-3.1-8B; the 8B shape trained, merged and exported on one H200, "
    "2026-11-28 (random weights: no games won to report)",
    values=MappingProxyType(
        {
            "epochs": 3.0,
            "batch": 4,
            "grad_accum": 4,
            "lr": 2e-4,
            "max_seq_len": 2048,
            "lora_r": 16,
            "lora_alpha": 16,
            "lora_dropout": 0.0,
            "warmup_ratio": 0.05,
            "quantization": "auto",  # nf4 on CUDA; plain LoRA where bitsandbytes has no GPU (CPU)
            "logging_steps": 10,
            "eval_steps": 100,
            "save_steps": 200,
            "eval_fraction": 0.05,
        }
    ),
)

RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (LORA_BF16, QLORA_NF4)}
RECIPE_CHOICES = ("auto", *RECIPES)  # what --recipe accepts
RECIPE_FIELDS = tuple(LORA_BF16.values)  # the TrainConfig fields a recipe sets
# Below this many parameters the base model trains in bf16 (LoRA); from it on, in 4 bits (QLoRA).
QLORA_FROM_PARAMS = 3_000_000_000


def count_parameters(base: str) -> int:
    """The base model's parameter count from its config alone (no weights are loaded)."""
    from transformers import AutoConfig

    from alfworld_sft import models

    shape = models.ModelShape.from_config(AutoConfig.from_pretrained(models.resolve_model(base, flag="--base")))
    return shape.linear_params() + shape.embedding_params()


def recipe_for(base: str, name: str = "auto") -> Recipe:
    """The recipe `name`, or with "auto" the one for `base`: bf16 LoRA for small models, QLoRA from 3B on."""
    if name != "auto":
        if name not in RECIPES:
            raise ValueError(f"--recipe must be one of {', '.join(RECIPE_CHOICES)}, got {name!r}")
        return RECIPES[name]
    from alfworld_sft import models

    if base == models.DEFAULT_MODEL:
        return LORA_BF16
    return QLORA_NF4 if count_parameters(base) >= QLORA_FROM_PARAMS else LORA_BF16


def resolve_recipe(config: Any) -> Any:
    """`config` (a TrainConfig) with every unset recipe field taken from its recipe; set fields are kept."""
    unset = {name: None for name in RECIPE_FIELDS if getattr(config, name) is None}
    if not unset:
        return config
    recipe = recipe_for(config.base, config.recipe)
    return replace(config, **{name: recipe.values[name] for name in unset})


def describe_recipe(config: Any) -> dict[str, Any]:
    """What a resolved TrainConfig trains against its recipe: name, evidence, values and the overrides (the values
    that differ from the recipe's: flags, a notebook's small mode), as the training record stores it."""
    recipe = recipe_for(config.base, config.recipe)
    values = {name: getattr(config, name) for name in RECIPE_FIELDS}
    overrides = {name: value for name, value in values.items() if value != recipe.values[name]}
    return {"name": recipe.name, "measured": recipe.measured, "values": values, "overrides": overrides}
