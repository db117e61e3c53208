"""Merge (04): a real LoRA adapter of the default model merged into its unquantized base (fixtures in conftest.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from alfworld_sft import cli, merge, models, prompts, records
from partials import leave_killed_partial, start_partial_writer


def test_the_merge_runs_in_float32_wherever_the_model_fits_in_it():
    """In bfloat16 the 135M default's merge differed from base + adapter by 2.3 logits (an H100, 2026-12-05)."""
    gib = 1024**3
    assert merge.choose_merge_dtype(135_000_000, None) == "float32"  # the CPU
    assert merge.choose_merge_dtype(135_000_000, 79 * gib) == "float32"
    assert merge.choose_merge_dtype(8_000_000_000, 139 * gib) == "float32"  # an 8B on an H200
    assert merge.choose_merge_dtype(8_000_000_000, 15 * gib) == "bfloat16"  # an 8B on a T4


def test_a_base_of_another_shape_is_counted_from_its_weight_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))  # no intermediate_size
    (tmp_path / "model.safetensors").write_bytes(bytes(1000))
    assert merge.count_base_parameters(str(tmp_path), tmp_path) == 500
    assert merge.count_base_parameters(models.DEFAULT_MODEL, tmp_path) > 100_000_000  # from its config


@pytest.mark.slow
def test_merge_matches_base_plus_adapter(adapter: Path, merged: tuple[Path, dict]) -> None:
    output, record = merged
    assert record["dtype"] == "float32" and record["base_model"] == models.DEFAULT_MODEL
    # The adapter really changes the model, so logit equality is not trivially true...
    assert record["adapter_effect_max_abs_logit_diff"] > 100 * record["tolerance"]
    # ...and the saved merged folder reproduces base+adapter.
    assert record["max_abs_logit_diff"] <= record["tolerance"] <= 0.01
    names = {p.name for p in output.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "chat_template.jinja",
        "generation_config.json",
        records.TRAINING_RECORD_FILE,
        merge.MERGE_RECORD,
    } <= names
    assert not any(name.startswith("adapter_") for name in names)
    assert records.read_training_record(output) == records.read_training_record(adapter)
    # Generation stops where training put the end of turn (models.stop_token_ids), nowhere else.
    generation = json.loads((output / "generation_config.json").read_text())
    tokenizer = models.load_tokenizer(str(output))
    assert (
        generation["eos_token_id"]
        == models.stop_token_ids(tokenizer)
        == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    )
    # The partial folder a killed merge had left beside the output is gone, and this merge left none.
    assert not list(output.parent.glob(".*partial*"))


def test_merge_removes_partials_of_killed_merges_only(adapter: Path, tmp_path: Path) -> None:
    output = tmp_path / "sft_merged"
    killed = leave_killed_partial(output)
    writer, running = start_partial_writer(output)  # a merge at work in another process
    try:
        # Any merge starts by clearing what killed ones left, even one that then stops at a wrong --base.
        with pytest.raises(merge.BaseModelMismatchError):
            merge.merge_adapter(merge.MergeConfig(adapter=adapter, output=output, base=str(tmp_path)))
        assert not killed.exists() and running.is_dir()
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()


def test_wrong_base_model_is_refused(adapter: Path, tmp_path: Path) -> None:
    with pytest.raises(merge.BaseModelMismatchError, match="trained on 'smollm2-135m-instruct'.*--base"):
        merge.merge_adapter(merge.MergeConfig(adapter=adapter, output=tmp_path / "m", base="meta-llama/Llama-3.1-8B"))
    assert not (tmp_path / "m").exists()
    # The same model under another name (its converted folder) is accepted.
    own = merge.read_adapter(adapter)
    assert merge.check_base_model(own, str(models.default_model_dir())) == models.DEFAULT_MODEL


def test_missing_adapter_says_train_first(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a LoRA adapter folder.*notebook 03"):
        merge.merge_adapter(merge.MergeConfig(adapter=tmp_path, output=tmp_path / "m"))


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        (merge.ADAPTER_CONFIG, '{"peft_type": "LORA", "base_model_n\name', "not valid JSON.*train it again"),
        (merge.ADAPTER_CONFIG, "{}", "lacks 'peft_type'.*train it again"),
        (records.TRAINING_RECORD_FILE, '{"base_model": "smollm2-135\n', "not valid JSON.*retrain"),
        (records.TRAINING_RECORD_FILE, "{}", "lacks base_model.*retrain"),
    ],
    ids=["torn adapter_config", "empty adapter_config", "torn training_record", "empty training_record"],
)
def test_corrupt_adapter_file_is_named_with_what_to_do(
    adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture, name: str, text: str, says: str
) -> None:
    damaged = shutil.copytree(adapter, tmp_path / "sft_adapter")
    (damaged / name).write_text(text)
    with pytest.raises(ValueError, match=f"{damaged / name}.*{says}"):
        merge.merge_adapter(merge.MergeConfig(adapter=damaged, output=tmp_path / "m"))
    # The command line says the same in one line, without a traceback.
    assert cli.main(["merge", "--adapter", str(damaged), "--output", str(tmp_path / "m")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("alfworld-sft merge: error: ") and str(damaged / name) in error
    assert "Traceback" not in error and not (tmp_path / "m").exists()


def test_cli_reports_wrong_base_without_traceback(adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = cli.main(
        ["merge", "--adapter", str(adapter), "--output", str(tmp_path / "m"), "--base", "HuggingFaceTB/SmolLM2-360M"]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "error: the adapter" in error and "Traceback" not in error


def test_sample_conversations_are_rendered_as_trained() -> None:
    record = records.TrainingRecord(
        base_model=models.DEFAULT_MODEL,
        prompt_format=prompts.PromptFormat(show_admissible_commands=True),
        max_seq_len=1024,
        data_format="thoughts",
    )
    first, second = merge.sample_conversations(2, record)
    assert first[0] == {"role": "system", "content": prompts.THOUGHTS_SYSTEM_PROMPT}
    assert [m["role"] for m in first] == ["system", "user"] and [m["role"] for m in second][-2:] == [
        "assistant",
        "user",
    ]
    assert prompts.ADMISSIBLE_PREFIX in first[1]["content"] and prompts.ADMISSIBLE_PREFIX in second[-1]["content"]
    assert second[2]["content"].startswith("Thought: ") and "\nAction: go to desk 1" in second[2]["content"]
    # Without a record: the defaults (bare commands, no admissible list).
    plain = merge.sample_conversations(2)[1]
    assert plain[0]["content"] == prompts.SYSTEM_PROMPT and plain[2]["content"] == "go to desk 1"
    assert prompts.ADMISSIBLE_PREFIX not in plain[1]["content"]


@pytest.mark.parametrize("count", ["0", "-1"])
def test_no_verification_prompt_is_refused_before_anything_loads(count: str, tmp_path: Path, capsys) -> None:
    """`--verify-prompts 0` used to fail after loading everything ("max() arg is an empty sequence")."""
    code = cli.main(
        ["merge", "--adapter", str(tmp_path / "none"), "--output", str(tmp_path / "m"), "--verify-prompts", count]
    )
    assert code == 2 and "--verify-prompts must be a whole number of at least 1" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
