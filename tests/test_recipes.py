"""The training recipe has one home (`recipes`): `train` with no recipe flags, notebook 03's full mode, notebook 02's
window and DAgger's retraining all take it; a flag wins over it and is recorded as an override."""

import dataclasses
import json

import pytest
from alfworld_sft import cli, dagger, formatting, models, recipes, train_config, train_setup, training


def parsed_train_config(*flags: str) -> train_config.TrainConfig:
    """The TrainConfig that `alfworld-sft train` builds from these flags (as `_run_train` does)."""
    args = cli.build_parser().parse_args(["train", "--data", "x.jsonl", *flags])
    names = set(train_config.TrainConfig.__dataclass_fields__)
    return train_config.TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def test_train_without_recipe_flags_trains_the_recipe_and_a_flag_is_an_override():
    plain = recipes.resolve_recipe(parsed_train_config())
    assert recipes.describe_recipe(plain) == {
        "name": "lora-bf16",
        "measured": recipes.LORA_BF16.measured,
        "values": dict(recipes.LORA_BF16.values),
        "overrides": {},
    }
    assert (plain.lora_r, plain.lora_alpha, plain.batch, plain.grad_accum, plain.quantization) == (
        64,
        128,
        8,
        4,
        "none",
    )
    changed = recipes.resolve_recipe(parsed_train_config("--epochs", "1", "--lora-r", "64"))
    assert recipes.describe_recipe(changed)["overrides"] == {"epochs": 1.0}  # 64 is the recipe's own value
    other = recipes.resolve_recipe(parsed_train_config("--recipe", "qlora-nf4"))
    assert (other.lora_r, other.batch, other.quantization) == (16, 4, "auto")
    text = train_config.format_recipe(recipes.describe_recipe(changed))
    assert text.startswith("recipe lora-bf16 (") and "overridden: --epochs 1.0" in text


def test_notebooks_take_the_recipe_in_full_mode_and_name_their_small_mode_overrides():
    full = train_config.course_config(False, 0)
    assert recipes.describe_recipe(full)["overrides"] == {}
    assert formatting.course_format_config(False, 0).max_seq_len == full.max_seq_len == 2048
    small = train_config.course_config(True, 0)
    overrides = recipes.describe_recipe(small)["overrides"]
    assert overrides["epochs"] == 1 and overrides["max_seq_len"] == formatting.SMALL_MAX_SEQ_LEN
    assert "lora_r" not in overrides and small.lora_r == recipes.LORA_BF16.values["lora_r"]


def test_a_t4s_choices_change_how_the_gpu_computes_not_the_recipe():
    """Notebook 03's T4 parameters (float16, sdpa, 15 GiB) reach the trainer and are no recipe override."""
    t4 = train_config.course_config(False, 0, dtype="float16", memory_budget_gib=15, attention="sdpa")
    assert (t4.dtype, t4.memory_budget_gib, t4.attention) == ("float16", 15, "sdpa")
    assert recipes.describe_recipe(t4)["overrides"] == {}


def test_the_recipe_follows_the_size_of_the_base_model(tmp_path):
    assert recipes.recipe_for(models.DEFAULT_MODEL) is recipes.LORA_BF16
    eight_b = {  # Llama-3.1-8B's shape: the config alone decides, no weights are read
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(eight_b))
    assert recipes.count_parameters(str(tmp_path)) > 7e9
    assert recipes.recipe_for(str(tmp_path)) is recipes.QLORA_NF4
    with pytest.raises(ValueError, match="--recipe must be one of auto, lora-bf16, qlora-nf4"):
        recipes.recipe_for(models.DEFAULT_MODEL, "huge")


def test_out_of_range_values_are_checked_after_the_recipe_fills_the_rest():
    with pytest.raises(ValueError, match="--lora-r must be a whole number of at least 1"):
        train_config.check_config(train_config.TrainConfig(lora_r=0))
    train_config.check_config(train_config.TrainConfig())  # every recipe field unset: the recipe's values pass


def test_dagger_retrains_with_the_recipe_its_adapter_recorded(tmp_path):
    from alfworld_sft import records

    trained = recipes.resolve_recipe(train_config.TrainConfig(epochs=2.0, seed=3))
    record = records.TrainingRecord(
        base_model=models.DEFAULT_MODEL,
        prompt_format=formatting.prompts.PromptFormat(),
        max_seq_len=trained.max_seq_len,
        end_of_turn="<|im_end|>",
        data_format="commands",
        details={
            "config": json.loads(json.dumps(dataclasses.asdict(trained))),
            "recipe": recipes.describe_recipe(trained),
        },
    )
    records.write_training_record(tmp_path, record, seed=3)
    again = dagger.read_training_recipe(tmp_path)
    assert recipes.describe_recipe(again) == recipes.describe_recipe(trained)
    assert again.epochs == 2.0 and again.lora_r == 64


def test_notebook_03_shows_the_configs_trl_and_peft_receive():
    config = train_config.course_config(True, 0)
    resolved, setup = recipes.resolve_recipe(config), train_setup.resolve_setup(config)
    shown = training.describe_trainer_configs(config)
    assert shown["LoraConfig"]["r"] == resolved.lora_r and shown["LoraConfig"]["lora_alpha"] == resolved.lora_alpha
    assert sorted(shown["LoraConfig"]["target_modules"]) == sorted(resolved.target_modules)
    sft = shown["SFTConfig"]
    assert sft["learning_rate"] == resolved.lr and sft["per_device_train_batch_size"] == setup.micro_batch
    assert sft["output_dir"].endswith("sft_adapter") and "padding_free" not in sft  # default False: no packing on CPU
