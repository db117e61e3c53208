"""The training set-up: the GPU memory plan fits the budget it is given and covers the peaks measured on a GPU; the
CPU defaults, the dtype on a GPU without bfloat16 and the set-up errors say what to do; out-of-memory advice names
the fixes; notebook 00's plans of both recipes for a card."""

from __future__ import annotations

import sys

import pytest
from alfworld_sft import models, train_config, train_setup


def llama_8b_shape() -> models.ModelShape:
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=False,
    )
    return models.ModelShape.from_config(config)


def test_memory_plan_for_llama_8b_fits_the_budget_and_prefers_no_recomputation():
    shape = llama_8b_shape()
    assert shape.lora_params(16, train_config.LORA_TARGET_MODULES) == 41_943_040  # Llama-3-8B, r 16 on 7 modules
    common = {"effective_batch": 16, "max_seq_len": 2048, "quantization": "nf4", "lora_r": 16}
    common["targets"] = train_config.LORA_TARGET_MODULES
    gib = train_setup.GIB

    small = train_setup.plan_memory(shape, budget_bytes=16 * gib, liger=True, **common)
    assert small.gradient_checkpointing and small.micro_batch * small.grad_accum == 16
    assert small.estimate_gib <= 16 and small.micro_batch >= 2
    large = train_setup.plan_memory(shape, budget_bytes=130 * gib, liger=True, **common)
    assert not large.gradient_checkpointing and large.micro_batch >= small.micro_batch
    without_liger = train_setup.plan_memory(shape, budget_bytes=16 * gib, liger=False, **common)
    assert without_liger.micro_batch < small.micro_batch  # full-vocabulary logits take their share
    pinned = train_setup.plan_memory(shape, budget_bytes=130 * gib, liger=True, micro_batch=16, **common)
    assert pinned.micro_batch == 16 and pinned.gradient_checkpointing
    with pytest.raises(train_setup.TrainingOutOfMemoryError, match="shorter --max-seq-len"):
        train_setup.plan_memory(shape, budget_bytes=4 * gib, liger=True, **common)

    # Packed, a pass is sized in tokens, not in sequences of the longest length: more tokens in the same budget.
    packed = train_setup.plan_memory(shape, budget_bytes=16 * gib, liger=True, packing=True, **common)
    assert packed.gradient_checkpointing and (packed.micro_batch, packed.grad_accum) == (16, 1)
    assert packed.tokens_per_pass >= 1.5 * small.micro_batch * 2048 and packed.estimate_gib <= 16
    roomy = train_setup.plan_memory(shape, budget_bytes=130 * gib, liger=True, packing=True, **common)
    assert not roomy.gradient_checkpointing and roomy.tokens_per_pass >= 4 * 2048
    pinned = train_setup.plan_memory(
        shape, budget_bytes=16 * gib, liger=True, packing=True, tokens_per_pass=4096, **common
    )
    assert pinned.tokens_per_pass == 4096 and pinned.estimate_gib < packed.estimate_gib
    with pytest.raises(train_setup.TrainingOutOfMemoryError, match="pass of 2048 tokens"):
        train_setup.plan_memory(shape, budget_bytes=4 * gib, liger=True, packing=True, **common)


@pytest.mark.parametrize(
    "tokens, checkpointing, measured_gib",
    [(10_385, False, 87.91), (6_243, True, 9.53)],  # one H200, 2026-12-02: benchmarks/train_speed.py gpu
)
def test_memory_estimate_covers_the_peaks_measured_on_the_gpu(tokens, checkpointing, measured_gib):
    """The plan must never be below what a pass really took (the card runs out of memory on the longest batch),
    nor so far above it that the budget goes unused."""
    estimate = train_setup.estimate_training_memory(
        llama_8b_shape(),
        tokens=tokens,
        quantization="nf4",
        checkpointing=checkpointing,
        liger=True,
        lora_r=16,
        targets=train_config.LORA_TARGET_MODULES,
    )
    assert measured_gib <= estimate / train_setup.GIB <= 1.3 * measured_gib


def test_packed_sdpa_plans_for_the_square_of_a_pass():
    """A T4 has no varlen kernel: sdpa attends through one mask over the pass. Forced on an H100 (2026-12-05), the
    135M default's pass of 13,236 tokens, planned at 15.0 GiB without that term, peaked at 19.6 GiB."""
    common = {"quantization": "none", "liger": True, "lora_r": 64, "targets": train_config.LORA_TARGET_MODULES}
    shape = train_setup.SMOLLM2_135M
    linear = train_setup.estimate_training_memory(shape, tokens=13_236, checkpointing=False, **common)
    quadratic = train_setup.estimate_training_memory(
        shape, tokens=13_236, checkpointing=False, packed_sdpa=True, **common
    )
    assert linear / train_setup.GIB < 19.6 <= quadratic / train_setup.GIB <= 1.3 * 19.6
    plan = {"effective_batch": 32, "max_seq_len": 2048, "budget_bytes": 15 * train_setup.GIB, "packing": True}
    varlen = train_setup.plan_memory(shape, **plan, **common)
    sdpa = train_setup.plan_memory(shape, **plan, packed_sdpa=True, **common)
    assert 2048 <= sdpa.tokens_per_pass < varlen.tokens_per_pass and sdpa.estimate_gib <= 15
    plans = train_setup.plan_gpu_setups(15 * train_setup.GIB, liger=True, attention="sdpa")
    assert all("does not fit" not in line for line in plans.values()), plans  # a T4 trains both recipes


def test_cpu_defaults_and_clear_setup_errors(monkeypatch):
    import torch

    setup = train_setup.resolve_setup(train_config.TrainConfig(device="cpu"))
    assert setup == train_setup.TrainSetup(
        device="cpu",
        quantization="none",
        backend="peft",
        liger=False,
        packing=False,
        attention="sdpa",
        micro_batch=train_setup.CPU_MICRO_BATCH,  # the recipe's 8 x 4, in CPU passes of 4 sequences
        grad_accum=8,
        gradient_checkpointing=False,
    )
    line = train_setup.describe_setup(setup)
    assert "padded batches" in line and "micro-batch 4 x 8 accumulation" in line
    packed = train_setup.resolve_setup(train_config.TrainConfig(device="cpu", packing=True, micro_batch=8))
    assert (packed.packing, packed.micro_batch, packed.grad_accum) == (True, 8, 4)
    budgeted = train_setup.resolve_setup(train_config.TrainConfig(device="cpu", packing=True, tokens_per_pass=4096))
    assert (budgeted.micro_batch, budgeted.grad_accum, budgeted.tokens_per_pass) == (32, 1, 4096)
    assert "32 sequences a step in passes of at most 4,096 tokens" in train_setup.describe_setup(budgeted)
    with pytest.raises(ValueError, match="--tokens-per-pass must be a whole number of at least --max-seq-len"):
        train_setup.resolve_setup(train_config.TrainConfig(device="cpu", packing=True, tokens_per_pass=1024))
    with pytest.raises(ValueError, match="give one of them"):
        train_setup.resolve_setup(train_config.TrainConfig(device="cpu", tokens_per_pass=4096, micro_batch=4))
    with pytest.raises(train_config.TrainingSetupError, match="add --packing"):
        train_setup.resolve_setup(train_config.TrainConfig(device="cpu", tokens_per_pass=4096))
    if not torch.cuda.is_available():
        with pytest.raises(train_config.TrainingSetupError, match="sees no GPU.*--device cpu"):
            train_setup.resolve_setup(train_config.TrainConfig(device="cuda"))
    with pytest.raises(train_config.TrainingSetupError, match="--backend peft"):
        train_setup.resolve_setup(train_config.TrainConfig(device="cpu", backend="unsloth"))
    with pytest.raises(ValueError, match="--attention varlen"):
        train_setup.resolve_setup(train_config.TrainConfig(device="cpu", attention="varlen", packing=False))
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what Python reports for a package that is absent
    with pytest.raises(train_config.TrainingSetupError, match="pip install bitsandbytes.*--quantization none"):
        train_setup.resolve_setup(train_config.TrainConfig(device="cpu", quantization="nf4"))


def test_out_of_memory_advice_names_the_fixes():
    config = train_config.TrainConfig(batch=8, max_seq_len=4096)
    setup = train_setup.TrainSetup("cuda", "none", "peft", False, True, "sdpa", 8, 1, True)
    message = str(train_setup.explain_oom(config, setup))
    assert "--micro-batch (now 8" in message and "--max-seq-len (now 4096)" in message
    assert "QLoRA instead of LoRA" in message and "--memory-budget-gib" in message


def test_a_gpu_without_bfloat16_trains_in_float16(monkeypatch):
    """A T4 (Colab's GPU) has no bfloat16: `auto` takes float16 there, bfloat16 asked for is refused with the fix,
    and the CPU always trains in float32."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args, **kwargs: "Tesla T4")
    assert (
        train_setup.choose_dtype("auto", "cuda") == "float16"
        and train_setup.choose_dtype("float16", "cuda") == "float16"
    )
    with pytest.raises(train_config.TrainingSetupError, match="Tesla T4 has no bfloat16: pass --dtype float16"):
        train_setup.choose_dtype("bfloat16", "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert train_setup.choose_dtype("auto", "cuda") == "bfloat16"
    assert train_setup.choose_dtype("auto", "cpu") == "float32"
    with pytest.raises(train_config.TrainingSetupError, match="the CPU trains in float32"):
        train_setup.choose_dtype("float16", "cpu")
    setup = train_setup.resolve_setup(train_config.TrainConfig(device="cpu"))
    assert setup.dtype == "float32" and " in float32" in train_setup.describe_setup(setup)


def test_a_15_gib_card_plans_both_recipes_and_a_small_one_says_what_does_not_fit():
    """Notebook 00's report on a T4: the default model's recipe and an 8B QLoRA, each as `train` would plan it."""
    t4 = train_setup.plan_gpu_setups(14 * train_setup.GIB, liger=True, attention="sdpa")  # no varlen kernel there
    assert t4[models.DEFAULT_MODEL].startswith("lora-bf16, passes of")
    assert t4["Llama-3.1-8B"].startswith("qlora-nf4, passes of") and "with recomputation" in t4["Llama-3.1-8B"]
    small = train_setup.plan_gpu_setups(6 * train_setup.GIB, liger=True, attention="sdpa")
    assert small["Llama-3.1-8B"].startswith("qlora-nf4 does not fit: a pass of 2048 tokens")
    assert "does not fit" not in small[models.DEFAULT_MODEL]
