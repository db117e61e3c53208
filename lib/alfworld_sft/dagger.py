"""Stage 06: learning to recover. DAgger rounds and self-imitation on top of the SFT adapter, resumable.

Behaviour cloning shows the model only the states the expert visits. Once the fine-tuned model strays (a place
that does not hold the object, a command that was not admissible) it is in a state it never saw in training, and
it loops. A round fixes some of that:

1. **roll out** the current model on a seeded sample of train games (`rollouts.play_rollouts`), with the expert
   (`engine.DEFAULT_EXPERT`) following every game: each turn records what the model played and what the expert
   would have played in the state the model saw. Every finished game is appended to `round_N/rollouts.jsonl`.
2. **label** (`labelling`, whose docstring states the rules) -> `round_N/labelled.jsonl`, trajectory records:
   DAgger keeps the model's game, trained where it agreed with the expert, and adds one record per state where it
   did not, ending with the expert's command; self-imitation keeps the won games; `both` does both.
3. **aggregate** the expert trajectories and every round's labelled records so far -> `round_N/train.jsonl`.
4. **train** the round's adapter (`training.train`) -> `round_N/adapter/`, which plays the next round; the
   round is done: `round_N/summary.json` (games, win rate, labels, data, times, adapter).
5. **evaluate** it, optionally (`evaluation.run_evaluation`) -> `round_N/eval.json`, added to the summary (the
   starting adapter: `round_0/eval.json`). Over all rounds: `rounds.json` and `rounds.png`.

    alfworld-sft dagger --adapter results/sft_adapter --expert-data results/oracle/trajectories.jsonl \\
        --method dagger --rounds 2 --games-per-round 500 --output results/dagger --workers 16 --batch-size 64
    alfworld-sft dagger-compare results/dagger results/self_imitation results/both   # `dagger_runs`: runs read back

    from alfworld_sft import dagger
    result = dagger.run_dagger(dagger.course_config(small=True, seed=0))   # result.rows: the per-round table

Safe to kill at any point and rerun with the same command: rollouts are appended game by game under a key of the
weights and settings that played them (a rerun plays only the missing games; nothing is counted twice), labels
are rebuilt from the rollouts (deterministically: the same bytes) and written atomically, training resumes from
its last checkpoint, evaluation from its game log, and a round whose summary matches the settings is skipped.
A round made with other settings is refused, not mixed.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from alfworld_sft import (
    dagger_runs,
    engine,
    evaluation,
    files,
    flags,
    games,
    generate,
    labelling,
    models,
    paths,
    prompts,
    records,
    reports,
    train_config,
    train_outputs,
    training,
)
from alfworld_sft.agents import ACTIONS, AGENTS
from alfworld_sft.backends import BACKENDS, SERVED_KINDS, Backend, choose_backend, load_backend, weights_fingerprint
from alfworld_sft.flags import add_options, config_from_args, option
from alfworld_sft.results import write_result
from alfworld_sft.rollouts import RolloutConfig, play_rollouts
from alfworld_sft.train_config import TrainConfig

INITS = ("base", "continue")  # each round trains a fresh adapter on the base model, or continues the last one
# Agents that play a game as one trial without a plan: the turns they see are the turns a trained model sees
# (a reflexion critique or a planner's plan is not part of the training format).
ROLLOUT_AGENTS = tuple(name for name, agent in AGENTS.items() if agent.trials == 1 and not agent.plans)
TRAIN_FIELDS = {field.name for field in dataclasses.fields(TrainConfig)}
# Local models that sample (a DAgger round retrains an adapter: a served model has none to retrain).
ROLLOUT_BACKENDS = tuple(name for name in BACKENDS if name not in ("ollama", "expert", *SERVED_KINDS))
EVAL_SPLITS = (*games.SPLITS, "none")  # --eval-split: a split, or none (eval_split None: no evaluation)


@dataclass(frozen=True)
class DaggerConfig:
    """One run of rounds; defaults are the full run's (`course_config` gives the notebook's). Each field with help is
    an `alfworld-sft dagger` flag (`flags`)."""

    adapter: str = option("results/sft_adapter", "the SFT adapter playing round 1; its training record sets the rest")
    expert_data: str = option("results/oracle/trajectories.jsonl", "the SFT trajectories JSONL, in every round's data")
    output: str = option("results/dagger", "the run's folder: round_N/, rounds.json, rounds.png (rerun to resume)")
    method: str = option(
        "dagger",
        "dagger: expert labels on the model's states; self_imitation: its won games; both",
        choices=labelling.METHODS,
    )
    rounds: int = option(2, "rounds of roll out, label, aggregate, retrain (default %(default)s)")
    games_per_round: int = option(500, "train games per round, seeded and task-balanced (default %(default)s; 0: all)")
    expert_ratio: float | None = option(None, "expert records per new record, a seeded sample (default: all of them)")
    temperature: float = option(0.7, "rollout sampling (greedy rollouts visit the same few states); 0: greedy")
    actions: str = option(
        "free",
        "free: replies mapped to commands afterwards; constrained: chosen among admissible ones",
        choices=ACTIONS,
    )
    agent: str = option("zero_shot", "who plays the rollouts (default %(default)s)", choices=ROLLOUT_AGENTS)
    max_steps: int = option(50, "commands per rollout and per evaluation game (default %(default)s)")
    workers: int = option(0, "engine worker processes; 0: in this process (default: the CPU count)")  # CLI: the CPUs
    batch_size: int = option(8, "decoding rows of a local model: games whose requests decode together")
    backend: str = option("auto", "how the playing model is run (default %(default)s)", choices=ROLLOUT_BACKENDS)
    dtype: str = option("auto", "torch dtype of the playing model (auto: bfloat16 where native)", choices=models.DTYPES)
    device: str = option("auto", "where the playing model runs: auto (GPU when there is one), cpu or cuda")
    data_format: str | None = option(
        None, "what assistant turns hold (default: the adapter's)", flag="--format", choices=prompts.DATA_FORMATS
    )
    init: str = option("base", "base: a fresh adapter each round; continue: the last one further", choices=INITS)
    train: TrainConfig | None = None  # each round's training; None: the starting adapter's recipe (training record)
    # Every round's adapter is measured here (None: not at all): in distribution, because the rounds and the method
    # are chosen by it; the out-of-distribution games stay for the final measurement only.
    eval_split: str | None = option(
        "eval_in_distribution", "where each round's adapter is evaluated; none: not at all", choices=EVAL_SPLITS
    )
    eval_games: int = option(0, "games of the eval split, balanced and seeded; 0: the whole eval split")
    # An evaluation game log of the starting adapter played the way round 0 is evaluated (notebook 05's free
    # zero_shot run): round 0 takes its finished games instead of playing them again. The evaluator's run key (weights,
    # split, steps, seed, actions, prompt) decides: a game log of another run is set aside and the games played.
    start_evaluation: str | None = None
    seed: int = option(0, "seeds each round's game sample and rollouts, and the expert sample of its data")
    progress: bool = True  # tqdm bars


@dataclass(frozen=True)
class RoundTraining:
    """The `alfworld-sft dagger` flags that change each round's training recipe (the starting adapter's, from its
    training record); None keeps the adapter's value. Each is the TrainConfig field of its name less `train_`."""

    epochs: float | None = option(None, "training epochs per round (default: the adapter's)")
    lr: float | None = option(None, "training learning rate (default: the adapter's)")
    train_max_steps: int | None = option(None, "optimizer steps per round (default: the adapter's)")


def check_config(config: DaggerConfig) -> None:
    """Refuse out-of-range settings with the flag to fix, before anything is loaded or played."""
    numbers = [
        ("--rounds", config.rounds, config.rounds >= 1, "at least 1"),
        ("--games-per-round", config.games_per_round, config.games_per_round >= 0, "0 (the whole split) or more"),
        ("--expert-ratio", config.expert_ratio, config.expert_ratio is None or config.expert_ratio >= 0, "0 or more"),
        ("--temperature", config.temperature, config.temperature >= 0, "0 (greedy) or more"),
        ("--max-steps", config.max_steps, config.max_steps >= 1, "at least 1"),
        ("--workers", config.workers, config.workers >= 0, "0 (in this process) or more"),
        ("--batch-size", config.batch_size, config.batch_size >= 1, "at least 1"),
        ("--eval-games", config.eval_games, config.eval_games >= 0, "0 (all games) or more"),
    ]
    for flag, value, ok, expected in numbers:
        if not ok:
            raise ValueError(f"{flag} must be {expected}, got {value}")
    flags.check_choices(config)
    if config.eval_split == "none":  # the command line's word for None
        raise ValueError("eval_split None turns the evaluation off, not 'none'")


# -------------------------------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class DaggerPlan:
    """What every round of a run shares, resolved once from the config and the starting adapter."""

    config: DaggerConfig
    output: Path  # the run's folder
    adapter: Path  # the starting (SFT) adapter
    expert_data: Path  # the expert trajectories' file
    record: records.TrainingRecord  # its training record
    data_format: str  # what assistant turns hold in every round's data
    train: TrainConfig  # each round's recipe (data, output, base and init set per round)
    expert_records: tuple[dict[str, Any], ...]  # the expert trajectories
    key: dict[str, Any]  # what a round's summary must match to count as this run's


def read_training_recipe(adapter: str | os.PathLike[str]) -> TrainConfig:
    """The training configuration an adapter was trained with (its training record), as a TrainConfig."""
    record = records.read_training_record(paths.resolve_repo_path(adapter))
    recipe = record.details.get("config")
    if not isinstance(recipe, dict):
        raise ValueError(
            f"the training record of {adapter} holds no training configuration ('config'): pass "
            "DaggerConfig.train, or retrain the adapter with `alfworld-sft train`"
        )
    values = {key: tuple(v) if isinstance(v, list) else v for key, v in recipe.items() if key in TRAIN_FIELDS}
    return TrainConfig(**values)


def read_expert_records(path: Path, prompt_format: prompts.PromptFormat) -> list[dict[str, Any]]:
    """The expert trajectories, each checked against the record contract and the adapter's prompt format."""
    found = list(files.read_jsonl(path))
    if not found:
        raise ValueError(f"{path} holds no records: collect expert trajectories first (notebook 01)")
    for record in found:
        records.check_record(record)
        if prompts.read_prompt_format(record["prompt_format"]) != prompt_format:
            raise ValueError(
                f"{path}: {record['game_id']} was rendered with prompt format {record['prompt_format']}, the adapter "
                f"plays with {prompt_format.as_dict()}: DAgger's records must match the expert data; pass the data it "
                "was trained on"
            )
    return found


def plan_run(config: DaggerConfig, backend: Backend | None = None) -> DaggerPlan:
    """Check the config and the inputs, and fix what every round shares."""
    check_config(config)
    adapter = paths.resolve_repo_path(config.adapter)
    choice = choose_backend("", adapter=adapter, backend=config.backend)
    record = records.read_training_record(adapter)
    data_format = config.data_format or record.data_format
    train = config.train or read_training_recipe(adapter)
    if train.base != record.base_model:
        raise ValueError(
            f"the round's training recipe trains {train.base!r}, the adapter {adapter} was trained on "
            f"{record.base_model!r}: DAgger retrains the adapter's own base model; set train.base to it"
        )
    expert_data = paths.resolve_repo_path(config.expert_data)
    expert_records = read_expert_records(expert_data, record.prompt_format)
    recipe = {k: v for k, v in json.loads(json.dumps(asdict(train))).items() if k not in ("data", "output")}
    key = {
        "model": backend.name if backend is not None else choice.name,
        "start_weights": weights_fingerprint(choice),
        "expert_data_sha256": files.sha256_file(expert_data),
        "expert": _expert(config),
        "data_format": data_format,
        "train": recipe,
        **{name: getattr(config, name) for name in ("method", "games_per_round", "expert_ratio", "agent", "actions")},
        **{name: getattr(config, name) for name in ("temperature", "max_steps", "backend", "dtype", "init", "seed")},
    }
    output = paths.resolve_repo_path(config.output)
    return DaggerPlan(config, output, adapter, expert_data, record, data_format, train, tuple(expert_records), key)


def _expert(config: DaggerConfig) -> str | None:
    """Who follows the rollouts: DAgger's labels need the expert; self-imitation alone needs none."""
    return engine.DEFAULT_EXPERT if config.method in ("dagger", "both") else None


def round_folder(plan: DaggerPlan, number: int) -> Path:
    return plan.output / f"round_{number}"


def round_seed(seed: int, number: int) -> int:
    """Each round samples its own games and sampling seeds."""
    return seed * 1000 + number


def select_round_games(config: DaggerConfig, number: int) -> list[Path]:
    """The round's games: a seeded, task-balanced sample of the train split (the whole split with 0)."""
    return generate.ensure_games("train", config.games_per_round or None, seed=round_seed(config.seed, number))


def play_round(
    plan: DaggerPlan, number: int, player: Path, gamefiles: Sequence[Path], backend: Backend | None = None
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """The rollouts of round `number` by the adapter `player` (or `backend`): those already in `rollouts.jsonl`,
    then the missing games played and appended one by one. Returns (rollouts in game order, games that failed)."""
    config = plan.config
    path = round_folder(plan, number) / dagger_runs.ROLLOUTS
    choice = None if backend is not None else choose_backend("", adapter=player, backend=config.backend)
    key = {
        "round": number,
        "model": backend.name if choice is None else choice.name,
        "weights": "" if choice is None else weights_fingerprint(choice),
        **{name: plan.key[name] for name in ("expert", "agent", "actions", "temperature", "max_steps", "dtype")},
        "seed": round_seed(config.seed, number),
    }
    done = {line["game_id"] for line in records.read_rollouts(path, key)}
    todo = [gamefile for gamefile in gamefiles if games.game_id(gamefile) not in done]
    failed: list[tuple[str, str, str]] = []
    if todo:
        demonstrations = ()
        if config.agent == "few_shot":
            exclude = [games.game_id(g) for g in gamefiles]
            demonstrations = tuple(evaluation.load_demonstrations(plan.expert_data, seed=config.seed, exclude=exclude))
        rollout_config = RolloutConfig(
            agent=config.agent,
            max_steps=config.max_steps,
            seed=key["seed"],
            workers=config.workers,
            expert=plan.key["expert"],
            actions=config.actions,
            temperature=config.temperature,
            demonstrations=demonstrations,
            progress=config.progress,
        )
        model = backend or load_backend(
            "",
            adapter=player,
            backend=config.backend,
            dtype=config.dtype,
            device=config.device,
            batch_size=config.batch_size,
        )
        try:
            result = play_rollouts(
                model, todo, rollout_config, on_finished=lambda line: files.append_game_log(path, key, line)
            )
            failed = result.failed
        finally:
            if backend is None:  # free the model's memory before training loads another copy
                model.close()
                del model
                free_memory()
    order = {games.game_id(gamefile): index for index, gamefile in enumerate(gamefiles)}
    played = [line for line in records.read_rollouts(path, key) if line["game_id"] in order]
    return sorted(played, key=lambda line: order[line["game_id"]]), failed


def free_memory() -> None:
    """Give back the memory of models no longer referenced (the GPU's too)."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def aggregate_data(plan: DaggerPlan, number: int) -> dict[str, int]:
    """Write `round_N/train.jsonl`: a seeded sample of the expert records (all of them without a ratio), then every
    labelled record of rounds 1..N. Returns the counts."""
    new: list[dict[str, Any]] = []
    for earlier in range(1, number + 1):
        new += files.read_jsonl(round_folder(plan, earlier) / dagger_runs.LABELLED)
    if not new:
        raise ValueError(
            f"rounds 1-{number} labelled no record: nothing new to train on. Play more games (--games-per-round), "
            "sample more varied rollouts (--temperature), or use --method dagger (self-imitation needs won games)"
        )
    expert = list(plan.expert_records)
    if plan.config.expert_ratio is not None:
        count = min(len(expert), round(plan.config.expert_ratio * len(new)))
        chosen = sorted(random.Random(f"{plan.config.seed}:{number}").sample(range(len(expert)), count))
        expert = [expert[index] for index in chosen]
    files.write_text(round_folder(plan, number) / dagger_runs.TRAIN_DATA, labelling.jsonl_text(expert + new))
    return {"expert_records": len(expert), "new_records": len(new), "records": len(expert) + len(new)}


def round_train_config(plan: DaggerPlan, number: int, player: Path) -> TrainConfig:
    """The round's training: the recipe on the round's data, into the round's adapter folder."""
    folder = round_folder(plan, number)
    values: dict[str, Any] = {
        "data": str(folder / dagger_runs.TRAIN_DATA),
        "output": str(folder / "adapter"),
        "data_format": plan.data_format,
    }
    if plan.config.init == "continue":
        values["init_adapter"] = str(player)
    return replace(plan.train, **values)


def evaluate_adapter(plan: DaggerPlan, folder: Path, adapter: Path, backend: Backend | None = None) -> dict | None:
    """Evaluate `adapter` on the eval split into `folder/eval.json` (resumes from its game log; a finished
    evaluation only summarizes); None when evaluation is off."""
    config = plan.config
    if config.eval_split is None:
        return None
    started = time.perf_counter()
    game_log = (folder / dagger_runs.EVAL).with_suffix(".ckpt.jsonl")  # the evaluator's default, beside its output
    start = paths.resolve_repo_path(config.start_evaluation) if config.start_evaluation else None
    if folder == round_folder(plan, 0) and start is not None and start.is_file() and not game_log.exists():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(start, game_log)
    eval_config = evaluation.EvalConfig(
        agents=(config.agent,),
        num_games=config.eval_games,
        max_steps=config.max_steps,
        model="",
        adapter=str(adapter),
        split=config.eval_split,
        output=str(folder / dagger_runs.EVAL),
        batch_size=config.batch_size,
        workers=config.workers,
        actions=config.actions,
        seed=config.seed,
        trajectories=str(plan.expert_data),
        backend=config.backend,
        dtype=config.dtype,
        device=config.device,
    )
    block = evaluation.run_evaluation(eval_config, backend=backend)["agents"][config.agent]
    return {
        "split": config.eval_split,
        **{name: block[name] for name in ("games", "won", "success_rate", "avg_steps", "invalid_reply_rate")},
        "results": str(folder / dagger_runs.EVAL),
        "seconds": round(time.perf_counter() - started, 1),
    }


def run_round(plan: DaggerPlan, number: int, player: Path, backend: Backend | None = None) -> dict[str, Any]:
    """Round `number`, played by `player`: made (`make_round`) unless its summary matches the run, then its
    adapter evaluated (brought up to date in the summary)."""
    folder = round_folder(plan, number)
    key = {**plan.key, "round": number}
    if (folder / dagger_runs.SUMMARY).exists():
        summary = files.read_json_object(
            folder / dagger_runs.SUMMARY, "delete it to redo the round", required_keys=("key", "adapter")
        )
        differs = sorted(k for k in set(key) | set(summary["key"]) if key.get(k) != summary["key"].get(k))
        if differs:
            raise ValueError(
                f"{folder} was made with other settings (they differ in {', '.join(differs)}): use another --output, "
                "or the same settings to resume"
            )
    else:
        summary = make_round(plan, number, player, backend)
    evaluated = evaluate_adapter(plan, folder, Path(summary["adapter"]), backend)
    if evaluated is not None and _outcome(evaluated) != _outcome(summary["eval"]):
        summary = {**summary, "eval": evaluated}
        summary["seconds"] = {**summary["seconds"], "evaluation": evaluated["seconds"]}
        write_result(
            folder / dagger_runs.SUMMARY, {k: v for k, v in summary.items() if k != "meta"}, seed=plan.config.seed
        )
    return summary


class IncompleteRoundError(RuntimeError):
    """A round's sample was not played to the end: it is neither labelled, trained nor sealed."""

    def __init__(self, folder: Path, sampled: int, played: int, failed: Sequence[tuple[str, str, str]]):
        reasons = "".join(
            f"\n  {gamefile}: {error.splitlines()[-1] if error else '?'}" for _, gamefile, error in failed
        )
        super().__init__(
            f"{folder}: {played} of the round's {sampled} games were played; the round is not labelled, trained or "
            f"sealed until every game is. Rerun the same command: the {played} recorded games are kept and only "
            f"the others are played.{reasons}"
        )


def make_round(plan: DaggerPlan, number: int, player: Path, backend: Backend | None = None) -> dict[str, Any]:
    """Rollouts, labels, data and the trained adapter of round `number`, then its summary (the round is done)."""
    folder = round_folder(plan, number)
    seconds = {}
    started = time.perf_counter()
    gamefiles = select_round_games(plan.config, number)
    rollouts, failed = play_round(plan, number, player, gamefiles, backend)
    if len(rollouts) < len(gamefiles):
        raise IncompleteRoundError(round_folder(plan, number), len(gamefiles), len(rollouts), failed)
    seconds["rollouts"] = time.perf_counter() - started
    started = time.perf_counter()
    settings = labelling.LabelSettings(
        method=plan.config.method,
        prompt_format=plan.record.prompt_format,
        data_format=plan.data_format,
        round_number=number,
        seed=round_seed(plan.config.seed, number),
        expert=plan.key["expert"],
    )
    labelled, counts = labelling.label_rollouts(rollouts, settings, progress=plan.config.progress)
    files.write_text(folder / dagger_runs.LABELLED, labelling.jsonl_text(labelled))
    tokenizer = models.load_tokenizer(plan.record.base_model)
    tokens = labelling.count_trained_tokens(labelled, tokenizer, plan.data_format)
    data = aggregate_data(plan, number)
    seconds["labelling"] = time.perf_counter() - started
    started = time.perf_counter()
    trained = training.train(round_train_config(plan, number, player))
    seconds["training"] = time.perf_counter() - started
    data_stats = records.read_training_record(trained.output).details.get("data_stats")  # formatting's counts
    summary = {
        "key": {**plan.key, "round": number},
        "round": number,
        "played_by": backend.name if backend is not None else str(player),
        "games": len(gamefiles),
        "played": len(rollouts),
        "rollouts_won": counts["won"],
        "rollouts_win_rate": round(counts["won"] / len(rollouts), 4) if rollouts else 0.0,
        "labels": {name: counts[name] for name in labelling.LABEL_COUNTS},
        "records_added": len(labelled),
        "trained_tokens_added": tokens,
        "data": {**data, "file": str(folder / dagger_runs.TRAIN_DATA), "stats": data_stats},
        "training": {
            k: getattr(trained, k) for k in ("global_step", "train_loss", "eval_loss_initial", "eval_loss_best")
        },
        "seconds": {phase: round(value, 1) for phase, value in seconds.items()},
        "adapter": str(trained.output),
        "eval": None,
    }
    write_result(folder / dagger_runs.SUMMARY, summary, seed=plan.config.seed)
    train_outputs.remove_checkpoints(trained.output)  # optimizer state: several times the adapter; the round is done
    return summary


def _outcome(evaluated: Mapping[str, Any] | None) -> tuple | None:
    """What makes two evaluations of a round the same (not the seconds a rerun took to summarize)."""
    return None if evaluated is None else (evaluated["split"], evaluated["games"], evaluated["won"])


@dataclass(frozen=True)
class DaggerResult:
    summaries: tuple[dict[str, Any], ...]  # every round's summary.json
    rows: tuple[dict[str, Any], ...]  # the per-round table (`dagger_runs.round_rows`)
    adapter: Path  # the last round's adapter
    plot: Path  # success and data per round


def run_dagger(config: DaggerConfig, *, backend: Backend | None = None) -> DaggerResult:
    """Every round of `config` (finished ones skipped), then `rounds.json` and `rounds.png` in the output folder.
    `backend` plays every rollout instead of the rounds' adapters (the expert backend checks the pipeline)."""
    with files.hold_output(paths.resolve_repo_path(config.output)):
        plan = plan_run(config, backend)
        start_eval = evaluate_adapter(plan, plan.output / "round_0", plan.adapter, backend)
        summaries, player = [], plan.adapter
        for number in range(1, config.rounds + 1):
            summaries.append(run_round(plan, number, player, backend))
            player = Path(summaries[-1]["adapter"])
        rows = dagger_runs.round_rows(summaries, start_eval)
        write_result(plan.output / "rounds.json", {"rounds": rows, "adapter": str(player)}, seed=config.seed)
        title = f"{config.method}, {config.rounds} round(s)"
        plot = reports.plot_rounds(rows, plan.output / "rounds.png", title=title)
        return DaggerResult(tuple(summaries), tuple(rows), player, plot)


# -------------------------------------------------------------------------------------------- the notebook

# Full mode's round: 100 rollouts take ~1 minute on one H200 and label ~1,000 states; a round of 300 (results/README:
# one round took zero_shot from 132 to 136 of 140) costs two more minutes of the course's one sitting.
FULL_ROUND_GAMES = 100


def course_config(
    small: bool,
    seed: int,
    method: str = "dagger",
    split: str = "",
    games_per_round: int = FULL_ROUND_GAMES,
    eval_games: int = 0,
) -> DaggerConfig:
    """Notebook 06's run: from notebook 03's adapter and notebook 01's trajectories into `run_dir(small)/dagger`.

    Small mode (CPU, a few minutes): one round on 3 games of 5 steps, 2 training steps of notebook 03's recipe, no
    evaluation. Full mode (one GPU, ~6 minutes): one round of `games_per_round` sampled train games on every CPU,
    retrained with the SFT adapter's recipe (its training record) and evaluated on `eval_games` games of `split` (0:
    every game; the split as `evaluation.course_split` picks it); round 0's evaluation is notebook 05's free
    zero_shot run on the same games, not played again.
    """
    folder = paths.run_dir(small)
    places = {
        "adapter": str(folder / "sft_adapter"),
        "expert_data": str(folder / "oracle" / "trajectories.jsonl"),
        "output": str(folder / "dagger"),
        "method": method,
    }
    if not small:
        return DaggerConfig(
            **places,
            rounds=1,
            games_per_round=games_per_round,
            eval_games=eval_games,
            workers=os.cpu_count() or 1,
            batch_size=evaluation.FULL_BATCH_SIZE,
            eval_split=evaluation.course_split(small, split),
            start_evaluation=str(folder / "eval" / "finetuned_free.ckpt.jsonl"),
            seed=seed,
        )
    return DaggerConfig(
        **places,
        rounds=1,
        games_per_round=3,
        max_steps=5,
        batch_size=3,
        train=replace(train_config.course_config(True, seed), max_steps=2),
        eval_split=None,
        seed=seed,
    )


def run_dagger_when_present(config: DaggerConfig) -> DaggerResult | None:
    """`run_dagger(config)`, or None (saying what is missing) without the SFT adapter or the expert data."""
    adapter, expert_data = paths.resolve_repo_path(config.adapter), paths.resolve_repo_path(config.expert_data)
    if not (adapter / "adapter_config.json").exists():
        print(f"no SFT adapter at {adapter}: run notebook 03 first; DAgger starts from it")
        return None
    if not expert_data.exists():
        print(f"no expert trajectories at {expert_data}: run notebook 01 first")
        return None
    return run_dagger(config)


# -------------------------------------------------------------------------------------------------------- CLI


def configure_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dagger", help="06: DAgger rounds and self-imitation from the SFT adapter (resumable)"
    )
    add_options(parser, DaggerConfig, defaults={"workers": os.cpu_count() or 1})  # engine workers: the CPUs
    add_options(parser, RoundTraining)
    parser.set_defaults(func=_run_dagger)


def _run_dagger(args: argparse.Namespace) -> int:
    eval_split = None if args.eval_split == "none" else args.eval_split
    config = config_from_args(DaggerConfig, args, eval_split=eval_split)
    check_config(config)
    overrides = asdict(config_from_args(RoundTraining, args))
    for name, value in overrides.items():
        if value is not None and value <= 0:
            raise ValueError(f"{flags.flag_of(RoundTraining, name)} must be above 0, got {value}")
    changes = {name.removeprefix("train_"): value for name, value in overrides.items() if value is not None}
    if changes:
        config = replace(config, train=replace(read_training_recipe(config.adapter), **changes))
    started = time.perf_counter()
    result = run_dagger(config)
    print(reports.format_table(result.rows))
    print(f"adapter: {result.adapter}\nplot: {result.plot} ({time.perf_counter() - started:.0f} s)")
    return 0
