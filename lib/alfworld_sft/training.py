"""Stage 03: supervised fine-tuning of a LoRA adapter on the formatted trajectories, resumable.

On CUDA the base model is loaded in 4 bits (QLoRA: nf4, double quantization, bf16 compute) through PEFT +
bitsandbytes, or through Unsloth with `--backend unsloth` (measured on an H200 with the 8B shape,
`benchmarks/train_speed.py`: the packed PEFT set-up 6,362 useful tokens/s within 16 GiB, Unsloth 5,541 at
8.1 GiB, so `auto` takes PEFT); on CPU it is plain LoRA in fp32, so the course runs anywhere on the embedded
default model. The trainer is TRL's `SFTTrainer`, given the dataset of stage 02
already tokenized with its `labels` (loss on the assistant's commands and their end-of-turn token only): TRL
keeps a ready `labels` column as it is (no re-tokenizing, no re-masking).

What is trained is a `train_config.TrainConfig`, its unset fields filled from the base model's recipe (`recipes`).
How the batches reach the GPU (packing, the tokens of a pass and gradient checkpointing planned from free memory,
Liger's kernels, the attention) is chosen from the machine by `train_setup.resolve_setup` and printed when training
starts; a packed step is cut into passes of at most `--tokens-per-pass` tokens by `build_trainer`'s trainer
(`packing.split_packed_batch`).

    alfworld-sft train --data results/oracle/trajectories.jsonl --output results/sft_adapter \\
        --base meta-llama/Llama-3.1-8B-Instruct --epochs 3 --batch 4 --lr 2e-4 --max-seq-len 2048
    alfworld-sft train --data results/small/oracle/trajectories.jsonl --output results/small/sft_adapter \\
        --epochs 1 --max-seq-len 1024 --eval-steps 5 --save-steps 5        # CPU, the default model

Several GPUs of one machine (data parallel, one process per GPU; the effective batch is
batch x grad-accum x GPUs):

    accelerate launch --num_processes 2 --multi_gpu -m alfworld_sft.cli train --data ... --output ... --base ...

(checked on 2 H100s with a tiny Llama-shaped model: QLoRA nf4 + Liger, world size 2, half the steps per epoch).

Interrupted? Rerun the same command: it resumes from the last complete checkpoint in `--output` (a checkpoint
cut short by a kill is skipped and removed, with a message); a checkpoint made with a different configuration or
data is refused with a message (`train_outputs`). Rerunning a finished run changes nothing ("already trained").
The output folder ends with the adapter, the tokenizer, `training_log.json`, `loss_curve.png` and
`training_record.json` (`records.TrainingRecord`: base model, prompt format, data format, max_seq_len,
end-of-turn marker; in its details the data sha256, the full configuration, the set-up, the losses and package
versions), which the export and evaluation stages read through `records.read_training_record`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from alfworld_sft import files, flags, formatting, models, packing, prompts, recipes, records, reports, train_outputs
from alfworld_sft.paths import resolve_repo_path
from alfworld_sft.train_config import (
    DEFAULT_BASE_NOTE,
    TrainConfig,
    TrainingSetupError,
    check_config,
    format_recipe,
)
from alfworld_sft.train_setup import (
    GIB,
    TrainSetup,
    describe_setup,
    explain_oom,
    resolve_setup,
)


@dataclass(frozen=True)
class TrainResult:
    output: Path  # the adapter folder
    global_step: int  # optimizer steps done, over all runs into this folder
    train_loss: float | None  # mean training loss per optimizer step over the whole run (all runs into the folder)
    eval_loss_initial: float | None  # eval loss of the untrained adapter (None without an eval split)
    eval_loss_best: float | None  # lowest eval loss seen
    resumed_from: str | None  # the checkpoint this call continued from
    runtime_s: float  # wall time of this call
    messages: tuple[str, ...] = ()  # what this call said about the run (resumed, skipped checkpoints, already done)
    already_trained: bool = False  # the folder held this run, finished: nothing was trained or written
    record: records.TrainingRecord | None = None  # the training record (None on non-main processes)


# -------------------------------------------------------------------------------------------------- the model


def load_lora_model(config: TrainConfig, setup: TrainSetup) -> Any:
    """The base model with fresh LoRA adapters, as `setup` says (Unsloth, PEFT + bitsandbytes, or plain)."""
    config = recipes.resolve_recipe(config)
    import torch

    resolved = models.resolve_model(config.base, flag="--base")
    if setup.backend == "unsloth" and config.init_adapter is not None:
        raise ValueError("--init-adapter continues a PEFT adapter: pass --backend peft")
    if setup.backend == "unsloth":
        from unsloth import FastLanguageModel

        model, _ = FastLanguageModel.from_pretrained(
            model_name=resolved, max_seq_length=config.max_seq_len, dtype=None, load_in_4bit=True
        )
        model.config.use_cache = False  # with a cache, transformers never looks for packed sequences
        return FastLanguageModel.get_peft_model(
            model,
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            bias="none",
            target_modules=list(config.target_modules),
            random_state=config.seed,
            use_gradient_checkpointing="unsloth" if setup.gradient_checkpointing else False,
        )
    from peft import get_peft_model

    if setup.attention == packing.VARLEN_ATTENTION:
        packing.register_packed_attention()
    kwargs: dict[str, Any] = {"attn_implementation": setup.attention}
    if setup.device == "cuda":
        from accelerate import PartialState

        # One full copy per process under `accelerate launch`: data parallel, each on its own GPU.
        kwargs["device_map"] = {"": PartialState().local_process_index}
    kwargs["dtype"] = getattr(torch, setup.dtype)
    if setup.quantization == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, setup.dtype),
        )
    model = models.load_model(config.base, flag="--base", **kwargs)
    # No KV cache in training; it also matters for packing: with a cache transformers never derives the packed
    # sequences' mask from the position ids, and sdpa would attend across them.
    model.config.use_cache = False
    if setup.gradient_checkpointing:
        # Not prepare_model_for_kbit_training: it upcasts the embeddings, norms and the 128k-vocabulary head to
        # fp32, which cost 1.5x in speed and 4 GiB in the benchmark (benchmarks/train_speed.py); bf16 trains fine.
        model.enable_input_require_grads()
    if config.init_adapter is not None:
        from peft import PeftModel

        # The adapter's own rank and modules: training continues its weights.
        return PeftModel.from_pretrained(model, str(resolve_repo_path(config.init_adapter)), is_trainable=True)
    return get_peft_model(model, build_lora_config(config))


def build_lora_config(config: TrainConfig) -> Any:
    """PEFT's `LoraConfig` of a run: rank, alpha and dropout of the recipe on its target modules."""
    from peft import LoraConfig

    config = recipes.resolve_recipe(config)
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=list(config.target_modules),
    )


def describe_trainer_configs(config: TrainConfig) -> dict[str, dict[str, Any]]:
    """The `SFTConfig` and `LoraConfig` objects a run hands TRL and PEFT on this machine, each as the fields whose
    value is not the class's default: what the course chose, read back from the objects themselves."""
    setup = resolve_setup(config)
    shown = {}
    for built in (build_sft_config(config, setup, has_eval=config.eval_fraction > 0), build_lora_config(config)):
        chosen = {}
        for item in dataclasses.fields(built):
            default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
            value = getattr(built, item.name)
            if value != default:
                chosen[item.name] = sorted(value) if isinstance(value, set) else value
        shown[type(built).__name__] = chosen
    return shown


# ---------------------------------------------------------------------------------------------------- the data


@dataclass(frozen=True)
class DataSource:
    """The training data as given, identified before anything is loaded."""

    path: Path  # the trajectories JSONL, or a folder from `alfworld-sft format`
    sha256: str  # of the trajectories JSONL (for a folder: of the JSONL it was formatted from)
    format_info: Mapping[str, Any] | None  # a formatted folder's format_info.json (None for a JSONL)


def identify_data(config: TrainConfig) -> DataSource:
    """Where the data is and its sha256; a formatted folder is checked against `config` (model, window, data
    format) here, before any model is loaded."""
    config = recipes.resolve_recipe(config)
    path = resolve_repo_path(config.data)
    if not path.is_dir():
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: pass the trajectories JSONL or a formatted folder")
        return DataSource(path, files.sha256_file(path), None)
    info_path = path / formatting.FORMAT_INFO
    if not info_path.exists():
        raise FileNotFoundError(
            f"{path} is not a formatted dataset (no {formatting.FORMAT_INFO}): run `alfworld-sft format` first"
        )
    remedy = f"format the data again (`alfworld-sft format --output {path}`), or pass the trajectories JSONL"
    info = files.read_json_object(
        info_path, remedy, ("source", "source_sha256", "config", "prompt_format", "max_seq_len")
    )
    made_with = info["config"] if isinstance(info["config"], dict) else {}
    data_format = made_with.get("data_format", "commands")
    if (made_with.get("model"), info["max_seq_len"], data_format) != (
        config.base,
        config.max_seq_len,
        config.data_format,
    ):
        raise ValueError(
            f"{path} was formatted for model {made_with.get('model')!r} with max_seq_len {info['max_seq_len']} in the "
            f"{data_format!r} format, not {config.base!r} with {config.max_seq_len} in {config.data_format!r}: "
            f"reformat it (`alfworld-sft format --model {config.base} --max-seq-len {config.max_seq_len}`) or pass "
            "the trajectories JSONL"
        )
    return DataSource(path, str(info["source_sha256"]), info)


def build_format_config(config: TrainConfig) -> formatting.FormatConfig:
    """How a JSONL given to `train` is formatted: as `alfworld-sft format` would with the same settings."""
    config = recipes.resolve_recipe(config)
    return formatting.FormatConfig(
        model=config.base,
        max_seq_len=config.max_seq_len,
        eval_fraction=config.eval_fraction,
        seed=config.seed,
        data_format=config.data_format,
    )


def load_training_data(config: TrainConfig, tokenizer: Any, source: DataSource) -> tuple[Any, dict[str, Any]]:
    """(DatasetDict, facts about it: prompt_format, data format, data file and sha256, stats)."""
    if source.format_info is not None:
        dataset, info = formatting.load_formatted(source.path)
        return dataset, {
            "data_file": info["source"],
            "data_sha256": source.sha256,
            "prompt_format": info["prompt_format"],
            "data_format": config.data_format,
            # Formatted before datasets recorded it: the text formatting used then is today's, as far as is known.
            "system_prompt": info.get("system_prompt") or prompts.system_prompt(config.data_format),
            "stats": info.get("stats") or formatting.summarize_lengths(dataset, config.max_seq_len),
        }
    records_ = formatting.load_records(source.path)
    dataset = formatting.format_records(source.path, build_format_config(config), tokenizer=tokenizer)
    return dataset, {
        "data_file": str(source.path),
        "data_sha256": source.sha256,
        "prompt_format": asdict(formatting.prompt_format_of(records_)),
        "data_format": config.data_format,
        "system_prompt": prompts.system_prompt(config.data_format),
        "stats": formatting.summarize_lengths(dataset, config.max_seq_len),
    }


# -------------------------------------------------------------------------------------------------- training


def build_sft_config(config: TrainConfig, setup: TrainSetup, has_eval: bool) -> Any:
    config = recipes.resolve_recipe(config)
    from trl import SFTConfig

    cuda = setup.device == "cuda"
    return SFTConfig(
        output_dir=str(resolve_repo_path(config.output)),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=setup.micro_batch,
        # Evaluation passes are not cut: as many sequences as the longest fit in one pass.
        per_device_eval_batch_size=max(1, setup.tokens_per_pass // config.max_seq_len)
        if setup.tokens_per_pass
        else setup.micro_batch,
        gradient_accumulation_steps=setup.grad_accum,
        learning_rate=config.lr,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # transformers 5: a float below 1 is a ratio of all steps
        logging_steps=config.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=config.load_best and has_eval,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        bf16=setup.dtype == "bfloat16",
        fp16=setup.dtype == "float16",
        use_cpu=not cuda,
        gradient_checkpointing=setup.gradient_checkpointing and setup.backend != "unsloth",
        gradient_checkpointing_kwargs={"use_reentrant": False},
        # Examples arrive cut by the window, so TRL's own truncation never bites; padding-free batches need None.
        max_length=None if setup.packing else config.max_seq_len,
        padding_free=setup.packing,
        use_liger_kernel=setup.liger,
        # Length grouping only saves padding, and packed batches have none.
        train_sampling_strategy="group_by_length" if config.group_by_length and not setup.packing else "random",
        packing=False,  # never TRL's dataset packing: a sequence is never cut or mixed into another's example
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # LoRA under `accelerate launch`: every trainable weight gets a gradient
        disable_tqdm=False,
    )


def build_trainer(setup: TrainSetup, **kwargs: Any) -> Any:
    """TRL's `SFTTrainer` with `kwargs`; with `setup.tokens_per_pass`, one whose optimizer step runs its packed
    sequences as passes of at most that many tokens (`packing.split_packed_batch`), their gradients accumulated and each
    pass's loss a share of the whole step's (every pass divides by the step's count of trained tokens)."""
    from trl import SFTTrainer

    if not setup.tokens_per_pass:
        return keep_adapters_float32_under_float16(SFTTrainer(**kwargs), setup)
    budget = setup.tokens_per_pass

    class TokenBudgetTrainer(SFTTrainer):
        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            passes = packing.split_packed_batch(inputs, budget)
            if len(passes) == 1:
                return super().training_step(model, inputs, num_items_in_batch)
            if not self.model_accepts_loss_kwargs and self.compute_loss_func is None:
                # Its loss would be each pass's own mean, and their sum not the step's: refuse, never mis-weight.
                raise TrainingSetupError(
                    "this model's loss does not take the step's token count (num_items_in_batch), so passes cut by "
                    "--tokens-per-pass cannot add up to the step's loss: pass --micro-batch instead"
                )
            if num_items_in_batch is None:
                num_items_in_batch = sum(int((p["labels"] != formatting.IGNORE_INDEX).sum()) for p in passes)
            # One process only (resolve_setup): no gradients to exchange between the passes.
            return sum(super(TokenBudgetTrainer, self).training_step(model, p, num_items_in_batch) for p in passes)

    return keep_adapters_float32_under_float16(TokenBudgetTrainer(**kwargs), setup)


def keep_adapters_float32_under_float16(trainer: Any, setup: TrainSetup) -> Any:
    """TRL casts a quantized model's adapter weights to bfloat16 (the QLoRA paper's choice). Under float16 (a T4)
    the gradient scaler cannot unscale bfloat16 gradients, so there they go back to float32, the usual master
    weights of mixed precision (QLoRA failed so on an H100 forced to a T4's set-up, 2026-12-05)."""
    import torch

    if setup.dtype == "float16":
        for parameter in trainer.model.parameters():
            if parameter.requires_grad and parameter.dtype == torch.bfloat16:
                parameter.data = parameter.data.float()
    return trainer


def keep_initial_eval_callback(entry: dict[str, Any]) -> Any:
    """A callback that puts the untrained eval loss first in the log (train() starts a fresh log, and the
    entry then travels in every checkpoint, so a resumed run still plots it)."""
    from transformers import TrainerCallback

    class KeepInitialEval(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not any(e.get("step") == 0 and "eval_loss" in e for e in state.log_history):
                state.log_history.insert(0, dict(entry))

    return KeepInitialEval()


def is_main_process() -> bool:
    """Rank 0 under `accelerate launch` (which sets RANK), or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


def finished_result(output: Path, record: records.TrainingRecord) -> TrainResult:
    """The result of the finished run whose training record `train_outputs.find_finished_run` found in `output`."""
    details = record.details
    message = (
        f"already trained: {output} holds the adapter of this configuration and data "
        f"({details.get('global_step')} steps); nothing changed. To train again, pass a new --output or delete it"
    )
    return TrainResult(
        output=output,
        global_step=details.get("global_step", 0),
        train_loss=details.get("train_loss"),
        eval_loss_initial=details.get("eval_loss_initial"),
        eval_loss_best=details.get("eval_loss_best"),
        resumed_from=None,
        runtime_s=0.0,
        messages=(message,),
        already_trained=True,
        record=record,
    )


def train(config: TrainConfig, *, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train (or resume, or find finished) a LoRA adapter as `config` says and save everything into
    `config.output`. What it decides on the way (resuming, skipping a torn checkpoint, nothing to do, the
    set-up) is printed and returned in `TrainResult.messages`."""
    started = time.perf_counter()
    messages: list[str] = []

    def say(message: str) -> None:
        messages.append(message)
        if is_main_process():
            print(message, flush=True)

    config = recipes.resolve_recipe(config)
    check_config(config)
    recipe = recipes.describe_recipe(config)
    say(format_recipe(recipe))
    output = resolve_repo_path(config.output)
    source = identify_data(config)
    finished = train_outputs.find_finished_run(output, config, source.sha256)
    if finished is not None:
        result = finished_result(output, finished)
        say(result.messages[0])
        return result
    resume, notes = train_outputs.find_resume_checkpoint(output, config, source.sha256)
    for note in notes:
        say(note)
    setup = resolve_setup(config)
    say(describe_setup(setup))
    import torch
    from transformers import TrainerState

    tokenizer = models.load_tokenizer(config.base, flag="--base")
    dataset, data_facts = load_training_data(config, tokenizer, source)
    if len(dataset["train"]) == 0:
        raise ValueError(f"{config.data}: no training examples after the train/eval split: collect more games")
    has_eval = "eval" in dataset and len(dataset["eval"]) > 0
    columns = ["input_ids", "labels"]
    train_set = dataset["train"].select_columns(columns)
    eval_set = dataset["eval"].select_columns(columns) if has_eval else None

    final_state = None
    if resume is not None:
        state = train_outputs.read_checkpoint_state(Path(resume)) or {}
        if state.get("max_steps") and state["global_step"] >= state["max_steps"]:
            # Killed after its last checkpoint but before the adapter was saved: resuming would train one step
            # past the end (transformers restarts the epoch loop), so the adapter is taken from the checkpoints.
            final_state = Path(resume)
            say(f"{Path(resume).name} is the run's last step: saving the adapter from it without training further")
        else:
            say(f"resuming from {Path(resume).name}")

    if setup.packing:
        packing.silence_padding_free_warning()
    model = load_lora_model(config, setup)
    trainer = build_trainer(
        setup,
        model=model,
        args=build_sft_config(config, setup, has_eval),
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        callbacks=[train_outputs.manifest_callback(), *callbacks],
    )
    if trainer.is_world_process_zero():
        output.mkdir(parents=True, exist_ok=True)
        train_outputs.write_run_config(output, config, source.sha256)
    try:
        if final_state is not None:
            trainer.state = TrainerState.load_from_json(str(final_state / "trainer_state.json"))
            best = trainer.state.best_model_checkpoint
            best_path = output / Path(best).name if best else None
            use_best = config.load_best and has_eval and best_path is not None and best_path.is_dir()
            train_outputs.load_checkpoint_weights(trainer.model, best_path if use_best else final_state)
        else:
            if has_eval and resume is None:
                eval_loss_initial = trainer.evaluate()["eval_loss"]
                trainer.add_callback(keep_initial_eval_callback({"step": 0, "eval_loss": eval_loss_initial}))
            trainer.train(resume_from_checkpoint=resume)
    except torch.OutOfMemoryError as error:
        raise explain_oom(config, setup) from error

    history = trainer.state.log_history
    eval_loss_initial = next((e["eval_loss"] for e in history if e.get("step") == 0 and "eval_loss" in e), None)
    eval_losses = [e["eval_loss"] for e in history if "eval_loss" in e and e.get("step", 0) > 0]
    train_loss = reports.mean_train_loss(history)
    record = None
    if trainer.is_world_process_zero():
        trainer.save_model(str(output))
        tokenizer.save_pretrained(str(output))
        files.write_json(output / train_outputs.TRAINING_LOG, history)
        reports.plot_loss_curve(history, output / train_outputs.LOSS_PLOT)
        record = records.TrainingRecord(
            base_model=config.base,
            prompt_format=prompts.read_prompt_format(data_facts["prompt_format"]),
            max_seq_len=config.max_seq_len,
            end_of_turn=models.end_of_turn_marker(tokenizer),
            data_format=data_facts["data_format"],
            system_prompt=data_facts["system_prompt"],
            details={
                "base_model_identity": models.identify_model(config.base),
                "seed": config.seed,
                "data_file": data_facts["data_file"],
                "data_sha256": data_facts["data_sha256"],
                "config": json.loads(json.dumps(asdict(config))),
                "recipe": recipe,
                "setup": asdict(setup),
                "data_stats": data_facts["stats"],
                "global_step": trainer.state.global_step,
                "train_loss": train_loss,
                "eval_loss_initial": eval_loss_initial,
                "eval_loss_best": min(eval_losses) if eval_losses else None,
                "best_checkpoint": trainer.state.best_model_checkpoint,
                "resumed_from": resume,
                "world_size": trainer.args.world_size,
                "runtime_s": round(time.perf_counter() - started, 1),
                # What this call's process allocated at most on its GPU (torch's count, without the CUDA context).
                "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / GIB, 2)
                if setup.device == "cuda"
                else None,
            },
        )
        records.write_training_record(output, record, seed=config.seed)
        record = records.read_training_record(output)  # as the later stages will see it (with its run metadata)
    return TrainResult(
        output=output,
        global_step=trainer.state.global_step,
        train_loss=train_loss,
        eval_loss_initial=eval_loss_initial,
        eval_loss_best=min(eval_losses) if eval_losses else None,
        resumed_from=resume,
        runtime_s=round(time.perf_counter() - started, 1),
        messages=tuple(messages),
        record=record,
    )


def load_adapter(adapter: str | os.PathLike[str], **kwargs: Any) -> Any:
    """The trained adapter on its (unquantized) base model, for checks and generation."""
    from peft import PeftModel

    record = records.read_training_record(resolve_repo_path(adapter))
    base = models.load_model(record.base_model, **kwargs)
    return PeftModel.from_pretrained(base, str(resolve_repo_path(adapter)))


def compare_with_base(
    adapter: str | os.PathLike[str], messages: list[dict[str, str]], max_new_tokens: int = 16
) -> dict[str, str]:
    """Greedy replies of the base model and of base + adapter to the same messages (a quick check, any device)."""
    import torch

    record = records.read_training_record(resolve_repo_path(adapter))
    tokenizer = models.load_tokenizer(record.base_model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, models.resolve_dtype("auto", device)) if device == "cuda" else torch.float32
    # On the GPU even for two short replies: training with Liger kernels replaced the model classes' forwards in
    # this process by Triton kernels, which cannot take CPU tensors (notebook 03 failed so on the H100, 2026-12-05).
    tuned = load_adapter(adapter, dtype=dtype).to(device)
    replies = {"tuned": models.generate_reply(tuned, tokenizer, messages, max_new_tokens)}
    with tuned.disable_adapter():
        replies["base"] = models.generate_reply(tuned, tokenizer, messages, max_new_tokens)
    return replies


# ------------------------------------------------------------------------------------------------------- CLI


def configure_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="03: train a LoRA/QLoRA adapter on trajectories (resumes when rerun)",
        description=__doc__.split("\n\n")[0] + " " + DEFAULT_BASE_NOTE,
    )
    flags.add_options(parser, TrainConfig)  # every flag is declared on its TrainConfig field
    parser.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    config = flags.config_from_args(TrainConfig, args)
    files.check_output(resolve_repo_path(config.output), "--output", folder=True)
    result = train(config)
    if result.record is None or result.already_trained:  # only the main process reports; train() said it
        return 0
    loss = "n/a" if result.train_loss is None else f"{result.train_loss:.4f}"
    print(
        f"trained {result.global_step} steps (mean train loss {loss} over the run; eval loss "
        f"{result.eval_loss_initial} -> {result.eval_loss_best}) in {result.runtime_s:.0f} s -> {result.output}",
        file=sys.stdout,
    )
    return 0
