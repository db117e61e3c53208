"""Training: the default model really trains on real expert records, resumes after an interruption, and its
adapter reloads and changes the model's output; set-up problems give advice, not tracebacks."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace

import pytest
from alfworld_sft import cli, formatting, models, prompts, training

ALFWORLD_DATA = os.environ.get("ALFWORLD_DATA")


@pytest.fixture(scope="module")
def records_path(tmp_path_factory):
    if not ALFWORLD_DATA:
        pytest.skip("needs real ALFWorld games: set $ALFWORLD_DATA")
    from test_formatting import write_expert_records

    return write_expert_records(tmp_path_factory.mktemp("records") / "trajectories.jsonl", 4, seed=1)


def tiny_config(records_path, output, **changes) -> training.TrainConfig:
    config = training.TrainConfig(
        data=str(records_path),
        output=str(output),
        max_seq_len=768,
        batch=2,
        grad_accum=1,
        lr=1e-3,
        max_steps=4,
        eval_steps=2,
        save_steps=2,
        logging_steps=1,
        eval_fraction=0.25,
        seed=0,
        device="cpu",
    )
    return replace(config, **changes)


def interrupt_after_first_save():
    """A callback that stops the run like a Ctrl-C right after the first checkpoint is on disk."""
    from transformers import TrainerCallback

    class InterruptAfterFirstSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise KeyboardInterrupt

    return InterruptAfterFirstSave()


@pytest.mark.slow
def test_interrupted_training_resumes_eval_loss_falls_and_adapter_changes_output(records_path, tmp_path):
    import torch

    output = tmp_path / "adapter"
    config = tiny_config(records_path, output)
    with pytest.raises(KeyboardInterrupt):
        training.train(config, callbacks=[interrupt_after_first_save()])
    assert (output / "checkpoint-2").is_dir() and not (output / training.TRAINING_RECORD).exists()

    with pytest.raises(training.ResumeMismatchError, match="lr: 0.001 -> 0.002"):
        training.train(replace(config, lr=2e-3))

    result = training.train(config)
    assert result.resumed_from and result.resumed_from.endswith("checkpoint-2")
    assert result.global_step == 4
    assert result.eval_loss_initial is not None and result.eval_loss_best < result.eval_loss_initial

    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        training.TRAINING_LOG,
        training.LOSS_PLOT,
        training.TRAINING_RECORD,
    ):
        assert (output / name).exists(), name
    record = training.read_training_record(output)
    assert record["base_model"] == models.DEFAULT_MODEL
    assert record["base_model_resolved"] == models.resolve_model(models.DEFAULT_MODEL)
    assert record["prompt_format"] == {"show_admissible_commands": False}
    assert record["max_seq_len"] == 768 and record["seed"] == 0 and record["config"]["lr"] == 1e-3
    assert record["data_sha256"] == formatting.sha256_file(records_path)
    assert record["end_of_turn"] == "<|im_end|>" and record["setup"]["device"] == "cpu"
    assert record["meta"]["versions"]["trl"]
    log = json.loads((output / training.TRAINING_LOG).read_text())
    assert {e["step"] for e in log if "eval_loss" in e} >= {0, 2, 4}

    tokenizer = models.load_tokenizer(models.DEFAULT_MODEL)
    first = formatting.load_records(records_path)[0]
    messages = prompts.build_messages(first["system"], first["conversations"][:1])
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    base = models.load_model(models.DEFAULT_MODEL, dtype=torch.float32)
    tuned = training.load_adapter(output, dtype=torch.float32)
    with torch.no_grad():
        base_logits = base(**inputs).logits[0, -1]
        tuned_logits = tuned(**inputs).logits[0, -1]
    assert (base_logits - tuned_logits).abs().max() > 1e-3


@pytest.mark.slow
def test_a_formatted_folder_trains_only_with_its_own_settings(records_path, tmp_path):
    fmt = formatting.FormatConfig(max_seq_len=640, eval_fraction=0.25, seed=0)
    dataset = formatting.format_records(records_path, fmt)
    folder = formatting.save_formatted(dataset, tmp_path / "sft_data", source=records_path, config=fmt)
    with pytest.raises(ValueError, match="reformat it"):
        training.train(tiny_config(folder, tmp_path / "a", max_seq_len=768))
    result = training.train(
        tiny_config(folder, tmp_path / "b", max_seq_len=640, max_steps=1, eval_steps=1, save_steps=1)
    )
    assert result.global_step == 1
    assert result.record["data_sha256"] == formatting.sha256_file(records_path)


def test_cpu_defaults_and_clear_setup_errors(monkeypatch):
    import torch

    setup = training.resolve_setup(training.TrainConfig(device="cpu"))
    assert setup == {
        "device": "cpu",
        "quantization": "none",
        "backend": "peft",
        "gradient_checkpointing": False,
        "liger": False,
    }
    if not torch.cuda.is_available():
        with pytest.raises(training.TrainingSetupError, match="sees no GPU.*--device cpu"):
            training.resolve_setup(training.TrainConfig(device="cuda"))
    with pytest.raises(training.TrainingSetupError, match="--backend peft"):
        training.resolve_setup(training.TrainConfig(device="cpu", backend="unsloth"))
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what Python reports for a package that is absent
    with pytest.raises(training.TrainingSetupError, match="pip install bitsandbytes.*--quantization none"):
        training.resolve_setup(training.TrainConfig(device="cpu", quantization="nf4"))


def test_out_of_memory_advice_names_the_fixes():
    config = training.TrainConfig(batch=8, max_seq_len=4096)
    message = str(
        training._explain_oom(config, {"device": "cuda", "quantization": "none", "gradient_checkpointing": True})
    )
    assert "--batch (now 8" in message and "--max-seq-len (now 4096)" in message and "QLoRA instead of LoRA" in message


def test_cli_train_reports_a_missing_data_file(tmp_path, capsys):
    code = cli.main(
        [
            "train",
            "--data",
            str(tmp_path / "none.jsonl"),
            "--output",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ]
    )
    assert code == 2
    assert "none.jsonl does not exist" in capsys.readouterr().err


def test_course_configs_match_between_formatting_and_training():
    for small in (True, False):
        fmt, train = formatting.course_format_config(small, 0), training.course_config(small, 0)
        assert (fmt.max_seq_len, fmt.eval_fraction, fmt.seed) == (
            train.max_seq_len,
            train.eval_fraction,
            train.seed,
        )
    full = training.course_config(False, 0)
    assert (full.epochs, full.batch, full.lr, full.max_seq_len, full.grad_accum) == (3, 4, 2e-4, 2048, 4)
    assert (full.lora_r, full.lora_alpha, full.lora_dropout, full.warmup_ratio, full.save_total_limit) == (
        16,
        16,
        0,
        0.05,
        2,
    )
