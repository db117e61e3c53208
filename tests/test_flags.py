"""Flags are declared once, on the config dataclass's fields (`flags`): the generator turns each field with help into
its flag (name, type, choices, bools, tuples, `X | None`), and each converted command parses real command lines into
the config it ran before the conversion, with every flag field shown in its `--help`."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from alfworld_sft import (
    cli,
    collect,
    course,
    dagger,
    evaluation,
    flags,
    formatting,
    gguf,
    merge,
    prompts,
    train_config,
    training,
)
from alfworld_sft.collect import CollectConfig
from alfworld_sft.course import CourseConfig
from alfworld_sft.dagger import DaggerConfig, RoundTraining
from alfworld_sft.evaluation import EvalConfig
from alfworld_sft.flags import option
from alfworld_sft.formatting import FormatConfig
from alfworld_sft.gguf import ExportConfig
from alfworld_sft.merge import MergeConfig
from alfworld_sft.train_config import TrainConfig

CPUS = os.cpu_count() or 1  # evaluate, dagger and collect default --workers to the CPUs (their configs do not)

# ------------------------------------------------------------------------------------------------ the generator


@dataclass(frozen=True)
class Toy:
    path: Path = option(help="a required path")
    max_seq_len: int | None = option(None, "tokens per example")
    data_format: str = option("commands", "what a turn holds", flag="--format", choices=("commands", "thoughts"))
    packing: bool | None = option(None, "pack the batches")
    keep: bool = option(True, "drop it", flag="--no-keep", action="store_false")
    modules: tuple[str, ...] = option(("q_proj",), "module names")
    sizes: tuple[int, ...] = option(default_factory=tuple, help="sizes", nargs="*")
    ratio: float = option(0.5, "a share (default: %(default)s)")
    hidden: str = "set from Python only"  # no help: not a flag


def toy_parser(**kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toy", exit_on_error=False)
    flags.add_options(parser, Toy, **kwargs)
    return parser


def test_a_field_becomes_its_flag_with_its_type():
    args = toy_parser().parse_args(["--path", "p", "--max-seq-len", "64", "--format", "thoughts", "--ratio", "0.25"])
    assert flags.config_from_args(Toy, args) == Toy(path=Path("p"), max_seq_len=64, data_format="thoughts", ratio=0.25)
    assert isinstance(args.path, Path) and type(args.max_seq_len) is int and type(args.ratio) is float
    assert flags.flag_of(Toy, "max_seq_len") == "--max-seq-len" and flags.flag_of(Toy, "data_format") == "--format"


def test_bools_tuples_and_the_defaults():
    parse = toy_parser().parse_args
    plain = flags.config_from_args(Toy, parse(["--path", "p"]))
    assert plain == Toy(path=Path("p")) and plain.packing is None and plain.keep is True and plain.sizes == ()
    assert flags.config_from_args(Toy, parse(["--path", "p", "--packing"])).packing is True
    assert flags.config_from_args(Toy, parse(["--path", "p", "--no-packing"])).packing is False
    assert flags.config_from_args(Toy, parse(["--path", "p", "--no-keep"])).keep is False
    many = flags.config_from_args(Toy, parse(["--path", "p", "--modules", "a", "b", "--sizes", "1", "2"]))
    assert many.modules == ("a", "b") and many.sizes == (1, 2)  # tuples, as the dataclass holds them
    assert flags.config_from_args(Toy, parse(["--path", "p", "--sizes"])).sizes == ()  # nargs="*" given wins
    assert flags.config_from_args(Toy, parse(["--path", "p"]), ratio=0.75).ratio == 0.75  # an override wins


def test_a_field_without_help_is_no_flag_and_a_field_without_default_is_required():
    parser = toy_parser()
    assert "--hidden" not in parser.format_help() and "(default: 0.5)" in parser.format_help()
    with pytest.raises(argparse.ArgumentError):
        parser.parse_args(["--format", "prose", "--path", "p"])  # not one of the choices
    with pytest.raises(SystemExit):  # argparse exits on a missing required flag even with exit_on_error=False
        parser.parse_args([])


def test_skip_and_command_line_defaults():
    parser = toy_parser(skip=("ratio",), defaults={"path": "results/x"})
    args = parser.parse_args([])
    assert "--ratio" not in parser.format_help() and not hasattr(args, "ratio")
    assert flags.config_from_args(Toy, args) == Toy(path=Path("results/x"))  # the string default, converted
    with pytest.raises(ValueError, match="no field nonsense"):
        toy_parser(skip=("nonsense",))


def test_a_type_given_converts_the_whole_value():
    @dataclass(frozen=True)
    class Listed:
        kinds: tuple[int | str, ...] | None = option(None, "comma-separated", type=lambda text: tuple(text.split(",")))

    parser = argparse.ArgumentParser()
    flags.add_options(parser, Listed)
    assert flags.config_from_args(Listed, parser.parse_args(["--kinds", "1,pick"])) == Listed(kinds=("1", "pick"))
    assert flags.config_from_args(Listed, parser.parse_args([])) == Listed()


def test_a_config_built_in_python_is_held_to_its_flags_choices():
    @dataclass(frozen=True)
    class Chosen:
        data_format: str = option("commands", "what a turn holds", flag="--format", choices=prompts.DATA_FORMATS)
        maybe: str | None = option(None, "or nothing", choices=("a", "b"))
        many: tuple[str, ...] = option(("a",), "some of them", choices=("a", "b"))

    flags.check_choices(Chosen(maybe="b", many=("a", "b")))
    with pytest.raises(ValueError, match="--format must be one of commands, thoughts, not 'prose'"):
        flags.check_choices(Chosen(data_format="prose"))
    with pytest.raises(ValueError, match="--maybe must be one of None, a, b, not 'c'"):
        flags.check_choices(Chosen(maybe="c"))
    with pytest.raises(ValueError, match="--many must be one of a, b, not 'c'"):
        flags.check_choices(Chosen(many=("a", "c")))


def test_a_type_the_generator_cannot_read_is_refused():
    @dataclass
    class Odd:
        value: int | str = option(0, "one of two types")

    with pytest.raises(TypeError, match="value"):
        flags.add_options(argparse.ArgumentParser(), Odd)
    with pytest.raises(ValueError, match="starts with '--'"):
        option(0, "help", flag="-x")


# ------------------------------------------------------------------------------------ the converted commands


class Captured(Exception):
    """Raised by the patched stage function with the config the command built."""

    def __init__(self, config) -> None:
        super().__init__("captured")
        self.config = config


def capture(*_args, **kwargs):
    config = next(value for value in (*_args, *kwargs.values()) if dataclasses.is_dataclass(value))
    raise Captured(config)


def command_parser(module) -> argparse.ArgumentParser:
    """The subcommand's parser, registered as `cli.build_parser` registers it."""
    parser = argparse.ArgumentParser(prog="alfworld-sft")
    subparsers = parser.add_subparsers(dest="command", required=True)
    module.configure_parser(subparsers)
    return parser


def run_command(module, argv: list[str]):
    """The config the command's own run function builds from `argv` (its stage function patched to hand it over)."""
    args = command_parser(module).parse_args(argv)
    with pytest.raises(Captured) as captured:
        args.func(args)
    return captured.value.config


def typed(config) -> dict:
    """Every field with its value's type: 1 and 1.0, or "x" and Path("x"), compare as different."""
    return {
        field.name: (type(getattr(config, field.name)), getattr(config, field.name))
        for field in dataclasses.fields(config)
    }


def test_train_command_lines_give_the_config_they_gave_before(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "train", capture)
    out = str(tmp_path / "adapter")

    def train(*words: str) -> TrainConfig:
        return run_command(training, ["train", "--output", out, *words])

    assert typed(train()) == typed(TrainConfig(output=out))
    assert typed(train("--epochs", "1", "--no-load-best")) == typed(
        TrainConfig(output=out, epochs=1.0, load_best=False)
    )
    recipe_values = train(
        *("--format", "thoughts", "--recipe", "qlora-nf4", "--batch", "4", "--lr", "1e-4", "--max-seq-len", "1024"),
        *("--grad-accum", "2", "--lora-r", "8", "--lora-alpha", "16", "--lora-dropout", "0.1", "--warmup-ratio", "0.1"),
        *("--logging-steps", "5", "--eval-steps", "10", "--save-steps", "20", "--save-total-limit", "3"),
        *("--eval-fraction", "0.2", "--seed", "7", "--max-steps", "30", "--quantization", "nf4"),
    )
    assert typed(recipe_values) == typed(
        TrainConfig(
            output=out,
            data_format="thoughts",
            recipe="qlora-nf4",
            batch=4,
            lr=1e-4,
            max_seq_len=1024,
            grad_accum=2,
            lora_r=8,
            lora_alpha=16,
            lora_dropout=0.1,
            warmup_ratio=0.1,
            logging_steps=5,
            eval_steps=10,
            save_steps=20,
            save_total_limit=3,
            eval_fraction=0.2,
            seed=7,
            max_steps=30,
            quantization="nf4",
        )
    )
    machine = train(
        *("--base", "meta-llama/Llama-3.1-8B-Instruct", "--data", "d.jsonl", "--device", "cpu", "--backend", "peft"),
        *("--gradient-checkpointing", "--no-group-by-length", "--no-liger", "--packing", "--tokens-per-pass", "4096"),
        *("--attention", "varlen", "--dtype", "float16", "--memory-budget-gib", "14.5", "--init-adapter", "a"),
    )
    assert typed(machine) == typed(
        TrainConfig(
            output=out,
            base="meta-llama/Llama-3.1-8B-Instruct",
            data="d.jsonl",
            device="cpu",
            backend="peft",
            gradient_checkpointing=True,
            group_by_length=False,
            liger=False,
            packing=True,
            tokens_per_pass=4096,
            attention="varlen",
            dtype="float16",
            memory_budget_gib=14.5,
            init_adapter="a",
        )
    )
    assert typed(train("--micro-batch", "2", "--no-packing")) == typed(
        TrainConfig(output=out, micro_batch=2, packing=False)
    )


def test_format_command_lines_give_the_config_they_gave_before(tmp_path, monkeypatch):
    monkeypatch.setattr(formatting, "load_records", lambda *args, **kwargs: [])
    monkeypatch.setattr(formatting, "format_records", capture)
    out = str(tmp_path / "sft_data")

    def fmt(*words: str) -> FormatConfig:
        return run_command(formatting, ["format", "--data", "t.jsonl", "--output", out, *words])

    assert typed(fmt()) == typed(FormatConfig())
    assert typed(fmt("--max-seq-len", "1024", "--format", "thoughts")) == typed(
        FormatConfig(max_seq_len=1024, data_format="thoughts")
    )
    assert typed(fmt("--model", "m", "--eval-fraction", "0.2", "--seed", "3")) == typed(
        FormatConfig(model="m", eval_fraction=0.2, seed=3)
    )


def test_merge_command_lines_give_the_config_they_gave_before(tmp_path, monkeypatch):
    monkeypatch.setattr(merge, "merge_adapter", capture)
    out = tmp_path / "merged"
    got = run_command(merge, ["merge", "--output", str(out)])
    assert typed(got) == typed(MergeConfig(adapter=Path("results/sft_adapter"), output=out))
    got = run_command(merge, ["merge", "--adapter", "a", "--output", str(out), "--base", "b", "--verify-prompts", "0"])
    assert typed(got) == typed(MergeConfig(adapter=Path("a"), output=out, base="b", verify_prompts=0))


def test_export_command_lines_give_the_config_they_gave_before(tmp_path, monkeypatch):
    monkeypatch.setattr(gguf, "export_gguf", capture)
    out = tmp_path / "gguf"
    got = run_command(gguf, ["export-gguf", "--output", str(out)])
    assert typed(got) == typed(ExportConfig(merged=Path("results/sft_merged"), output=out))
    words = ["--merged", "m", "--outtype", "BF16", "--quantize", "none", "--name", "mine", "--verify-prompts", "0"]
    got = run_command(gguf, ["export-gguf", "--output", str(out), *words, "--no-ollama"])
    assert typed(got) == typed(
        ExportConfig(merged=Path("m"), output=out, outtype="bf16", quantize=None, name="mine", verify_prompts=0)
    )
    assert run_command(gguf, ["export-gguf", "--output", str(out), "--quantize", "Q5_K_M"]).quantize == "q5_k_m"


def test_course_command_lines_give_the_config_they_gave_before(monkeypatch):
    monkeypatch.setattr(course, "run_course", capture)
    assert typed(run_command(course, ["course"])) == typed(CourseConfig())
    got = run_command(course, ["course", "--mode", "full", "--seed", "3", "--only", "00", "03", "--split", "train"])
    assert typed(got) == typed(CourseConfig(mode="full", seed=3, only=("00", "03"), split="train"))
    assert typed(run_command(course, ["course", "--only"])) == typed(CourseConfig())


def test_evaluate_command_lines_give_the_config_they_gave_before(monkeypatch):
    monkeypatch.setattr(evaluation, "run_evaluation", capture)

    def evaluate(*words: str) -> EvalConfig:
        return run_command(evaluation, ["evaluate", *words])

    assert typed(evaluate()) == typed(EvalConfig(workers=CPUS))  # the default model, every CPU an engine worker
    assert typed(evaluate("--adapter", "a")) == typed(EvalConfig(adapter="a", model="", workers=CPUS))  # its base
    assert evaluate("--adapter", "a", "--model", "m").model == "m"
    got = evaluate(
        *("--agents", "react", "zero_shot", "--num-games", "0", "--max-steps", "30", "--model", "expert"),
        *("--record", "r", "--split", "eval_in_distribution", "--checkpoint", "c.jsonl", "--output", "o.json"),
        *("--batch-size", "64", "--workers", "0", "--actions", "constrained", "--temperature", "0.5", "--seed", "3"),
        *("--trajectories", "t.jsonl", "--backend", "vllm", "--ollama-url", "http://h:1", "--dtype", "bfloat16"),
        *("--window-tokens", "2048", "--threads", "4", "--device", "cpu", "--shard", "1/4"),
    )
    assert typed(got) == typed(
        EvalConfig(
            agents=("react", "zero_shot"),
            num_games=0,
            max_steps=30,
            model="expert",
            record="r",
            split="eval_in_distribution",
            checkpoint="c.jsonl",
            output="o.json",
            batch_size=64,
            workers=0,
            actions="constrained",
            temperature=0.5,
            seed=3,
            trajectories="t.jsonl",
            backend="vllm",
            ollama_url="http://h:1",
            dtype="bfloat16",
            window_tokens=2048,
            threads=4,
            device="cpu",
            shard="1/4",
        )
    )


def test_dagger_command_lines_give_the_config_they_gave_before(monkeypatch):
    monkeypatch.setattr(dagger, "run_dagger", capture)
    recipe = TrainConfig(base="b", epochs=3.0, lr=2e-4)
    monkeypatch.setattr(dagger, "read_training_recipe", lambda adapter: recipe)

    def run(*words: str) -> DaggerConfig:
        return run_command(dagger, ["dagger", *words])

    assert typed(run()) == typed(DaggerConfig(workers=CPUS))
    got = run(
        *("--adapter", "a", "--expert-data", "e.jsonl", "--output", "o", "--method", "both", "--rounds", "3"),
        *("--games-per-round", "0", "--expert-ratio", "0.5", "--temperature", "0", "--actions", "constrained"),
        *("--agent", "react", "--max-steps", "20", "--workers", "2", "--batch-size", "16", "--backend", "vllm"),
        *("--dtype", "float16", "--device", "cpu", "--format", "thoughts", "--init", "continue"),
        *("--eval-split", "eval_out_of_distribution", "--eval-games", "10", "--seed", "7"),
    )
    assert typed(got) == typed(
        DaggerConfig(
            adapter="a",
            expert_data="e.jsonl",
            output="o",
            method="both",
            rounds=3,
            games_per_round=0,
            expert_ratio=0.5,
            temperature=0.0,
            actions="constrained",
            agent="react",
            max_steps=20,
            workers=2,
            batch_size=16,
            backend="vllm",
            dtype="float16",
            device="cpu",
            data_format="thoughts",
            init="continue",
            eval_split="eval_out_of_distribution",
            eval_games=10,
            seed=7,
        )
    )
    assert run("--eval-split", "none").eval_split is None  # the command line's word for no evaluation
    # The training flags change the starting adapter's recipe, and only the fields given.
    trained = run("--epochs", "1", "--lr", "1e-4", "--train-max-steps", "5").train
    assert typed(trained) == typed(dataclasses.replace(recipe, epochs=1.0, lr=1e-4, max_steps=5))
    assert run("--lr", "1e-3").train == dataclasses.replace(recipe, lr=1e-3)
    with pytest.raises(ValueError, match="--train-max-steps must be above 0, got 0"):
        run("--train-max-steps", "0")


def test_dagger_refuses_values_outside_its_flags_choices_from_python():
    with pytest.raises(ValueError, match="--backend must be one of auto, transformers, vllm, not 'ollama'"):
        dagger.check_config(DaggerConfig(backend="ollama"))
    with pytest.raises(ValueError, match="--format must be one of None, commands, thoughts, not 'prose'"):
        dagger.check_config(DaggerConfig(data_format="prose"))
    with pytest.raises(ValueError, match="eval_split None turns the evaluation off"):
        dagger.check_config(DaggerConfig(eval_split="none"))
    dagger.check_config(DaggerConfig(eval_split=None, data_format=None))


def test_collect_command_lines_give_the_config_they_gave_before(monkeypatch):
    monkeypatch.setattr(collect, "collect_trajectories", capture)

    def run(*words: str) -> CollectConfig:
        return run_command(collect, ["collect", *words])

    assert typed(run()) == typed(CollectConfig(workers=CPUS))
    got = run(
        *("--split", "valid_train", "--output", "t.jsonl", "--max-steps", "30", "--workers", "2", "--limit", "12"),
        *("--task-types", "1,pick_two_obj_and_place", "--seed", "4", "--show-admissible-commands"),
        "--translate-twice",
    )
    assert typed(got) == typed(
        CollectConfig(
            split="valid_train",
            output=Path("t.jsonl"),
            max_steps=30,
            workers=2,
            limit=12,
            task_types=("1", "pick_two_obj_and_place"),
            seed=4,
            prompt_format=prompts.PromptFormat(show_admissible_commands=True, show_memory=True),
            translate_once=False,
        )
    )
    assert run("--task-types", "").task_types is None
    assert run("--no-show-memory").prompt_format == prompts.PromptFormat(show_memory=False)
    assert run("--show-holding").prompt_format == prompts.PromptFormat(show_memory=True, show_holding=True)
    assert run("--search-order").prompt_format == prompts.PromptFormat(show_memory=True, search_order=True)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--format", "prose"],
        ["train", "--epochs", "many"],
        ["train", "--device", "tpu"],
        ["train", "--load-best"],  # the switch is --no-load-best only
        ["format", "--format", "prose"],
        ["merge", "--verify-prompts", "some"],
        ["course", "--mode", "medium"],
        ["course", "--split", "nowhere"],
        ["evaluate", "--agents", "nobody"],
        ["evaluate", "--actions", "grounded"],
        ["evaluate", "--dtype", "float8"],
        ["evaluate", "--split", "nowhere"],
        ["dagger", "--backend", "ollama"],  # rollouts sample from a local model
        ["dagger", "--agent", "reflexion"],
        ["dagger", "--eval-split", "nowhere"],
        ["dagger", "--epochs", "many"],
        ["collect", "--split", "nowhere"],
        ["collect", "--workers", "all"],
    ],
    ids=" ".join,
)
def test_a_bad_value_is_refused_by_the_parser(argv):
    with pytest.raises(SystemExit) as exited:
        command_parser(COMMANDS[argv[0]][0]).parse_args(argv)
    assert exited.value.code == 2


# The commands with a config: their module, their config dataclasses and the flags written by hand beside them (not
# config fields).
COMMANDS = {
    "train": (training, (TrainConfig,), set()),
    "format": (formatting, (FormatConfig,), {"--data", "--output"}),
    "merge": (merge, (MergeConfig,), set()),
    "export-gguf": (gguf, (ExportConfig,), {"--no-ollama"}),
    "course": (course, (CourseConfig,), {"--publish"}),
    "evaluate": (evaluation, (EvalConfig,), set()),
    "dagger": (dagger, (DaggerConfig, RoundTraining), set()),
    "collect": (
        collect,
        (CollectConfig,),
        {"--show-admissible-commands", "--show-memory", "--show-holding", "--search-order", "--from-trajectories"},
    ),
}
# The commands without a config dataclass (one call's arguments): their few flags, written by hand.
WITHOUT_CONFIG = {
    "doctor": {"--output"},
    "model": set(),
    "compare": {"--plot", "--agents"},
    "dagger-compare": {"--output"},
    "data status": set(),
    "data download": {"--data-dir", "--force"},
    "data generate": {"--split", "--count", "--seed"},
}


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every `alfworld-sft` command's parser by its words (`data generate`), as `cli.build_parser` builds them."""
    found = {}

    def walk(words: str, parser: argparse.ArgumentParser) -> None:
        nested = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
        for name, child in nested[0].choices.items() if nested else ():
            walk(f"{words} {name}".strip(), child)
        if not nested:
            found[words] = parser

    walk("", cli.build_parser())
    return found


def shown_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings} - {"-h", "--help"}


def test_every_command_is_listed_with_its_config_or_its_flags_written_by_hand():
    assert set(subcommand_parsers()) == set(COMMANDS) | set(WITHOUT_CONFIG)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_field_is_in_the_help_and_every_flag_is_a_field_or_written_by_hand(command):
    _module, config_classes, by_hand = COMMANDS[command]
    subparser = subcommand_parsers()[command]
    text = subparser.format_help()
    declared = {flags.flag_of(cls, field.name) for cls in config_classes for field in flags.flag_fields(cls)}
    for flag in declared:
        assert flag in text, f"{flag} missing from `alfworld-sft {command} --help`"
    negated = {"--no-" + flag[2:] for flag in declared | by_hand}  # BooleanOptionalAction's second spelling
    assert shown_flags(subparser) - negated == declared | by_hand


@pytest.mark.parametrize("command", WITHOUT_CONFIG)
def test_a_command_without_a_config_has_only_its_few_flags_written_by_hand(command):
    assert shown_flags(subcommand_parsers()[command]) == WITHOUT_CONFIG[command]


def test_train_errors_name_the_flag_declared_on_the_field():
    assert train_config.flag_of("data_format") == "--format"
    assert train_config.flag_of("load_best") == "--no-load-best"
    assert train_config.flag_of("max_seq_len") == "--max-seq-len"
    with pytest.raises(ValueError, match="--format must be one of commands, thoughts"):
        train_config.check_config(TrainConfig(data_format="prose"))
