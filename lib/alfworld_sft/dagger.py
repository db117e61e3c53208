"""Stage 06: learning to recover. DAgger rounds and self-imitation on top of the SFT adapter, resumable.

Behaviour cloning shows the model only the states the expert visits. Once the fine-tuned model strays (a place
that does not hold the object, a command that was not admissible) it is in a state it never saw in training, and
it loops. A round fixes some of that:

1. **roll out** the current model on a seeded sample of train games (`rollouts.play_rollouts`), with the expert
   (`engine.DEFAULT_EXPERT`) following every game: each turn records what the model played and what the expert
   would have played in the state the model saw. Every finished game is appended to `round_N/rollouts.jsonl`.
2. **label** (`label_rollout`) -> `round_N/labelled.jsonl`, trajectory records (format version 2):
   DAgger (Ross, Gordon and Bagnell 2011; ALFWorld's TextDAgger) keeps the model's game with the turns where it
   agreed with the expert trained in place, plus one record per state where it did not: the model's own history
   as untrained context, ending with the expert's command, the only trained turn. Self-imitation (LM-butlers,
   Micheli and Fleuret 2021) keeps the won games with their turns trained; no expert needed.
3. **aggregate** the expert trajectories and every round's labelled records so far -> `round_N/train.jsonl`.
4. **train** the round's adapter (`training.train`) -> `round_N/adapter/`, which plays the next round; the
   round is done: `round_N/summary.json` (games, win rate, labels, data, times, adapter).
5. **evaluate** it, optionally (`evaluation.run_evaluation`) -> `round_N/eval.json`, added to the summary (the
   starting adapter: `round_0/eval.json`). Over all rounds: `rounds.json` and `rounds.png`.

    alfworld-sft dagger --adapter results/sft_adapter --expert-data results/oracle/trajectories.jsonl \\
        --method dagger --rounds 2 --games-per-round 500 --output results/dagger --workers 16 --batch-size 64
    alfworld-sft dagger-compare results/dagger results/self_imitation results/both   # a table each, one plot

    from alfworld_sft import dagger
    result = dagger.run_dagger(dagger.course_config(small=True, seed=0))   # result.rows: the per-round table

Safe to kill at any point and rerun with the same command: rollouts are appended game by game under a key of the
weights and settings that played them (a rerun plays only the missing games; nothing is counted twice), labels
are rebuilt from the rollouts (deterministically: the same bytes) and written atomically, training resumes from
its last checkpoint, evaluation from its checkpoint, and a round whose summary matches the settings is skipped.
A round made with other settings is refused, not mixed.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import random
import re
import shutil
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from alfworld_sft import (
    engine,
    evaluation,
    files,
    formatting,
    games,
    generate,
    models,
    paths,
    prompts,
    records,
    reports,
    train_config,
    train_outputs,
    training,
)
from alfworld_sft.agents import ACTIONS, AGENTS, extract_command
from alfworld_sft.backends import BACKENDS, Backend, choose_backend, load_backend, weights_fingerprint
from alfworld_sft.results import write_result
from alfworld_sft.rollouts import RolloutConfig, play_rollouts
from alfworld_sft.train_config import TrainConfig

METHODS = ("dagger", "self_imitation", "both")
INITS = ("base", "continue")  # each round trains a fresh adapter on the base model, or continues the last one
# Agents that play a game as one trial without a plan: the turns they see are the turns a trained model sees
# (a reflexion critique or a planner's plan is not part of the training format).
ROLLOUT_AGENTS = tuple(name for name, agent in AGENTS.items() if agent.trials == 1 and not agent.plans)
ROLLOUTS = "rollouts.jsonl"  # a round's finished games, one line each, appended as they finish
LABELLED = "labelled.jsonl"  # the round's new trajectory records
TRAIN_DATA = "train.jsonl"  # the round's training data: expert records and every round's labelled records so far
SUMMARY = "summary.json"  # written when the round's adapter is trained: the round is done
EVAL = "eval.json"  # the evaluation of the round's adapter
# What labelling counts (`label_rollout`), in the order summaries list them.
LABEL_COUNTS = ("states", "labelled", "agreed", "disagreed", "guesses", "unlabelled", "cut", "invalid_replies",
                "rollout_records", "label_records", "trained_turns")  # fmt: skip
TRAIN_FIELDS = {field.name for field in dataclasses.fields(TrainConfig)}
_THOUGHT = re.compile(r"thought\s*:\s*(.*?)\s*(?:action\s*:|$)", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class DaggerConfig:
    """One run of rounds; defaults are the full run's (`course_config` gives the notebook's)."""

    adapter: str = "results/sft_adapter"  # round 0: the SFT adapter (its training record: base, prompt and data format)
    expert_data: str = "results/oracle/trajectories.jsonl"  # the SFT trajectories: part of every round's data
    output: str = "results/dagger"  # round_N/ folders, rounds.json and rounds.png
    method: str = "dagger"  # dagger: expert labels on the model's states; self_imitation: its won games; both
    rounds: int = 2  # rounds of roll out, label, aggregate, retrain
    games_per_round: int = 500  # a seeded, task-balanced sample of the train split per round; 0: the whole split
    expert_ratio: float | None = None  # expert records per new record in a round's data (seeded sample); None: all
    temperature: float = 0.7  # rollout sampling: greedy rollouts of a model visit the same few states
    actions: str = "free"  # free: replies mapped to commands afterwards; constrained: chosen among admissible ones
    agent: str = "zero_shot"  # who plays the rollouts: one of ROLLOUT_AGENTS
    max_steps: int = 50  # commands per rollout (and per evaluation game)
    workers: int = 0  # engine worker processes stepping games (0: in this process); the CLI defaults to the CPUs
    batch_size: int = 8  # a local model's decoding rows: games whose requests decode together
    backend: str = "auto"  # auto, transformers or vllm (backends.BACKENDS)
    dtype: str = "auto"  # torch dtype of the playing model; auto: bfloat16 where native, else float32
    device: str = "auto"  # where the playing model runs: auto (the GPU when there is one), cpu or cuda
    data_format: str | None = None  # commands or thoughts; None: the starting adapter's (its training record)
    init: str = "base"  # base: retrain from the base model every round; continue: train the last adapter further
    train: TrainConfig | None = None  # each round's training; None: the starting adapter's recipe (training record)
    # Every round's adapter is measured here (None: not at all): in distribution, because the rounds and the method
    # are chosen by it; the out-of-distribution games stay for the final measurement only.
    eval_split: str | None = "eval_in_distribution"
    eval_games: int = 0  # games of the eval split (balanced, seeded); 0: all of them
    # An evaluation checkpoint of the starting adapter played the way round 0 is evaluated (notebook 05's free
    # zero_shot run): round 0 takes its finished games instead of playing them again. The evaluator's run key (weights,
    # split, steps, seed, actions, prompt) decides: a checkpoint of another run is set aside and the games played.
    start_evaluation: str | None = None
    seed: int = 0  # seeds each round's game sample and rollouts, and the expert sample of the aggregation
    progress: bool = True  # tqdm bars


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
    choices = [
        ("--method", config.method, METHODS),
        ("--init", config.init, INITS),
        ("--agent", config.agent, ROLLOUT_AGENTS),
        ("--actions", config.actions, ACTIONS),
        ("--backend", config.backend, tuple(b for b in BACKENDS if b not in ("ollama", "expert"))),
        ("--format", config.data_format, (None, *prompts.DATA_FORMATS)),
        ("--eval-split", config.eval_split, (None, *games.SPLITS)),
    ]
    for flag, value, allowed in choices:
        if value not in allowed:
            raise ValueError(f"{flag} must be one of {', '.join(str(a) for a in allowed)}, not {value!r}")


# ------------------------------------------------------------------------------------------------ labelling


@dataclass(frozen=True)
class LabelSettings:
    """How one round's rollouts become trajectory records."""

    method: str  # METHODS
    prompt_format: prompts.PromptFormat  # how user turns are rendered: the playing adapter's (its training record)
    data_format: str = "commands"  # thoughts: a record needs a thought for every command
    round_number: int = 1  # written into every record (`dagger_round`)
    seed: int = 0  # the seed the games were played with (every record's `seed`)
    expert: str | None = engine.DEFAULT_EXPERT  # who labelled (every label record's `expert`)


def read_thought(reply: str) -> str | None:
    """The thought of a "Thought: ...\\nAction: ..." reply, on one line; None when the reply has none."""
    match = _THOUGHT.search(reply)
    return " ".join(match.group(1).split()) or None if match else None


def _shown_command(turn: Mapping[str, Any], data_format: str) -> str:
    """The turn as the model's history shows it: the command played, or for an invalid reply what the model wrote
    (the whole reply; in the thoughts format its Action part, the thought being kept apart)."""
    if turn["command"] is not None:
        return turn["command"]
    return extract_command(turn["reply"]) if data_format == "thoughts" else turn["reply"].strip()


def label_rollout(rollout: Mapping[str, Any], settings: LabelSettings) -> tuple[list[dict[str, Any]], Counter]:
    """One finished rollout (a `rollouts.play_rollouts` record) as trajectory records, and what labelling counted.

    * the **rollout record**: the model's game, each turn `trained` where the model's command equals the expert's
      label (DAgger) or, for a won game, every valid turn (self-imitation); left out when nothing is trained;
    * one **label record** per state where the model's command differs from the expert's (DAgger): the model's
      history up to that state, its turns `trained: false`, ending with the expert's command, trained.

    User turns are rendered as the model saw them (`prompts.render_first_turn` / `render_turn` in
    `settings.prompt_format`); an invalid reply stays in the history as written, answered "Nothing happens.".
    States where the expert only guesses are not labelled (`guesses`), nor those without an expert command
    (`unlabelled`). `thoughts` holds the model's own thought for its turns and the expert's for a label, when all
    are known; in the thoughts format a reply without a thought (or a blank one, in any format) cannot be written
    as the model saw it, so the game is cut there (`cut` states).
    """
    trials = rollout["transcript"]
    if len(trials) != 1:
        raise ValueError(f"rollout of {rollout['game_id']} has {len(trials)} trials: label one-trial agents' games")
    turns = trials[0]["turns"]
    fmt, data_format = settings.prompt_format, settings.data_format
    users = [prompts.render_first_turn(rollout["task"], rollout["first_observation"], rollout["first_admissible"], fmt)]
    users += [prompts.render_turn(turn["observation"], turn["admissible"], fmt) for turn in turns[:-1]]
    admissible = [list(rollout["first_admissible"])] + [list(turn["admissible"]) for turn in turns[:-1]]
    commands = [_shown_command(turn, data_format) for turn in turns]
    thoughts = [read_thought(turn["reply"]) for turn in turns]
    shown = len(turns)  # turns the records can show as the model saw them
    for step, (command, thought) in enumerate(zip(commands, thoughts)):
        if not command or (data_format == "thoughts" and thought is None):
            shown = step
            break
    dagger = settings.method in ("dagger", "both")
    imitate = settings.method in ("self_imitation", "both") and bool(rollout["won"]) and shown == len(turns)
    counts = Counter(games=1, won=int(bool(rollout["won"])), states=len(turns), cut=max(0, len(turns) - shown - 1))
    counts["invalid_replies"] = sum(turn["command"] is None for turn in turns)

    def build(trained: list[bool], last: str, last_thought: str | None, won: bool) -> dict[str, Any]:
        """A record of the first len(trained) states; its last assistant turn is `last`."""
        steps = len(trained)
        shown_commands, shown_thoughts = [*commands[: steps - 1], last], [*thoughts[: steps - 1], last_thought]
        conversation = []
        for user, command in zip(users, shown_commands):
            conversation += [{"role": "user", "content": user}, {"role": "assistant", "content": command}]
        record = {
            "system": prompts.SYSTEM_PROMPT,
            "conversations": conversation,
            "admissible_commands": admissible[:steps],
            "prompt_format": asdict(fmt),
            **{key: rollout[key] for key in ("game_id", "gamefile", "task_type", "task")},
            "split": "train",
            "seed": settings.seed,
            "steps": steps,
            "won": won,
            "format_version": records.FORMAT_VERSION,
            "trained": trained,
        }
        if all(shown_thoughts):
            record["thoughts"] = shown_thoughts
        return {**record, "dagger_round": settings.round_number}

    trained: list[bool] = []  # the rollout record's flags
    labels: list[dict[str, Any]] = []
    for step, turn in enumerate(turns[: shown + 1]):
        label = turn.get("expert") if dagger else None
        agrees = False
        if dagger and label is None:
            counts["unlabelled"] += 1
        elif label is not None and label["guess"]:
            counts["guesses"] += 1
        elif label is not None:
            counts["labelled"] += 1
            agrees = label["command"] == turn["command"]
            counts["agreed" if agrees else "disagreed"] += 1
            if not agrees:
                if data_format == "thoughts" and not label["thought"]:
                    raise ValueError(
                        f"the thoughts format needs the expert's thought for every label, and expert "
                        f"{settings.expert!r} gave none ({rollout['game_id']}, step {step}): use the commands format, "
                        "or label with an expert that explains its commands (the course's teacher)"
                    )
                record = build([*[False] * step, True], label["command"], label["thought"], won=False)
                labels.append({**record, "dagger_kind": "label", "label_step": step, "expert": settings.expert})
        if step < shown:
            trained.append(turn["command"] is not None and (agrees or imitate))
    found = []
    if any(trained):
        won = bool(rollout["won"]) and shown == len(turns)
        found.append({**build(trained, commands[shown - 1], thoughts[shown - 1], won), "dagger_kind": "rollout"})
    found += labels
    counts["rollout_records"] = len(found) - len(labels)
    counts["label_records"] = len(labels)
    counts["trained_turns"] = sum(sum(record["trained"]) for record in found)
    for record in found:
        records.check_record(record)
    return found, counts


def label_rollouts(
    rollouts: Sequence[Mapping[str, Any]], settings: LabelSettings, *, progress: bool = False
) -> tuple[list[dict[str, Any]], Counter]:
    """Every rollout's records (in the rollouts' order) and the summed counts."""
    from tqdm.auto import tqdm

    found: list[dict[str, Any]] = []
    counts: Counter = Counter()
    for rollout in tqdm(rollouts, desc=f"label round {settings.round_number}", unit="game", disable=not progress):
        labelled, counted = label_rollout(rollout, settings)
        found += labelled
        counts.update(counted)
    return found, counts


def jsonl_text(found: Sequence[Mapping[str, Any]]) -> str:
    """Records as JSONL text, serialized as `files.append_jsonl` writes them (a rerun gives the same bytes)."""
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in found)


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
    wanted = asdict(prompt_format)
    for record in found:
        records.check_record(record)
        if record["prompt_format"] != wanted:
            raise ValueError(
                f"{path}: {record['game_id']} was rendered with prompt format {record['prompt_format']}, the adapter "
                f"plays with {wanted}: DAgger's records must match the expert data; pass the data it was trained on"
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
    path = round_folder(plan, number) / ROLLOUTS
    choice = None if backend is not None else choose_backend("", adapter=player, backend=config.backend)
    key = {
        "round": number,
        "model": backend.name if choice is None else choice.name,
        "weights": "" if choice is None else weights_fingerprint(choice),
        **{name: plan.key[name] for name in ("expert", "agent", "actions", "temperature", "max_steps", "dtype")},
        "seed": round_seed(config.seed, number),
    }
    done = {line["game_id"] for line in files.read_game_checkpoint(path, key)}
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
                model, todo, rollout_config, on_finished=lambda line: files.append_game_checkpoint(path, key, line)
            )
            failed = result.failed
        finally:
            if backend is None:  # free the model's memory before training loads another copy
                model.close()
                del model
                free_memory()
    order = {games.game_id(gamefile): index for index, gamefile in enumerate(gamefiles)}
    played = [line for line in files.read_game_checkpoint(path, key) if line["game_id"] in order]
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
        new += files.read_jsonl(round_folder(plan, earlier) / LABELLED)
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
    files.write_text(round_folder(plan, number) / TRAIN_DATA, jsonl_text(expert + new))
    return {"expert_records": len(expert), "new_records": len(new), "records": len(expert) + len(new)}


def round_train_config(plan: DaggerPlan, number: int, player: Path) -> TrainConfig:
    """The round's training: the recipe on the round's data, into the round's adapter folder."""
    folder = round_folder(plan, number)
    values: dict[str, Any] = {
        "data": str(folder / TRAIN_DATA),
        "output": str(folder / "adapter"),
        "data_format": plan.data_format,
    }
    if plan.config.init == "continue":
        values["init_adapter"] = str(player)
    return replace(plan.train, **values)


def count_trained_tokens(found: Sequence[Mapping[str, Any]], tokenizer: Any, data_format: str) -> int:
    """Tokens of the trained assistant turns (without the chat template around them)."""
    total = 0
    for record in found:
        for text, trained in zip(records.assistant_texts(record, data_format), records.trained_turns(record)):
            total += len(tokenizer(text, add_special_tokens=False)["input_ids"]) if trained else 0
    return total


def evaluate_adapter(plan: DaggerPlan, folder: Path, adapter: Path, backend: Backend | None = None) -> dict | None:
    """Evaluate `adapter` on the eval split into `folder/eval.json` (resumes from its checkpoint; a finished
    evaluation only summarizes); None when evaluation is off."""
    config = plan.config
    if config.eval_split is None:
        return None
    started = time.perf_counter()
    checkpoint = (folder / EVAL).with_suffix(".ckpt.jsonl")  # the evaluator's default checkpoint beside its output
    start = paths.resolve_repo_path(config.start_evaluation) if config.start_evaluation else None
    if folder == round_folder(plan, 0) and start is not None and start.is_file() and not checkpoint.exists():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(start, checkpoint)
    eval_config = evaluation.EvalConfig(
        agents=(config.agent,),
        num_games=config.eval_games,
        max_steps=config.max_steps,
        model="",
        adapter=str(adapter),
        split=config.eval_split,
        output=str(folder / EVAL),
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
        "games": block["games"],
        "won": block["won"],
        "success_rate": block["success_rate"],
        "avg_steps": block["avg_steps"],
        "invalid_reply_rate": block["invalid_reply_rate"],
        "results": str(folder / EVAL),
        "seconds": round(time.perf_counter() - started, 1),
    }


def run_round(plan: DaggerPlan, number: int, player: Path, backend: Backend | None = None) -> dict[str, Any]:
    """Round `number`, played by `player`: made (`make_round`) unless its summary matches the run, then its
    adapter evaluated (brought up to date in the summary)."""
    folder = round_folder(plan, number)
    key = {**plan.key, "round": number}
    if (folder / SUMMARY).exists():
        summary = files.read_json_object(
            folder / SUMMARY, "delete it to redo the round", required_keys=("key", "adapter")
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
        write_result(folder / SUMMARY, {k: v for k, v in summary.items() if k != "meta"}, seed=plan.config.seed)
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
    settings = LabelSettings(
        method=plan.config.method,
        prompt_format=plan.record.prompt_format,
        data_format=plan.data_format,
        round_number=number,
        seed=round_seed(plan.config.seed, number),
        expert=plan.key["expert"],
    )
    labelled, counts = label_rollouts(rollouts, settings, progress=plan.config.progress)
    files.write_text(folder / LABELLED, jsonl_text(labelled))
    tokens = count_trained_tokens(labelled, models.load_tokenizer(plan.record.base_model), plan.data_format)
    data = aggregate_data(plan, number)
    seconds["labelling"] = time.perf_counter() - started
    started = time.perf_counter()
    trained = training.train(round_train_config(plan, number, player))
    seconds["training"] = time.perf_counter() - started
    summary = {
        "key": {**plan.key, "round": number},
        "round": number,
        "played_by": backend.name if backend is not None else str(player),
        "games": len(gamefiles),
        "played": len(rollouts),
        "rollouts_won": counts["won"],
        "rollouts_win_rate": round(counts["won"] / len(rollouts), 4) if rollouts else 0.0,
        "labels": {name: counts[name] for name in LABEL_COUNTS},
        "records_added": len(labelled),
        "trained_tokens_added": tokens,
        "data": {**data, "file": str(folder / TRAIN_DATA), "stats": _data_stats(trained.output)},
        "training": {
            "global_step": trained.global_step,
            "train_loss": trained.train_loss,
            "eval_loss_initial": trained.eval_loss_initial,
            "eval_loss_best": trained.eval_loss_best,
        },
        "seconds": {phase: round(value, 1) for phase, value in seconds.items()},
        "adapter": str(trained.output),
        "eval": None,
    }
    write_result(folder / SUMMARY, summary, seed=plan.config.seed)
    train_outputs.remove_checkpoints(trained.output)  # optimizer state: several times the adapter; the round is done
    return summary


def _data_stats(adapter: Path) -> Any:
    """What formatting counted in the data an adapter was trained on (its training record)."""
    return records.read_training_record(adapter).details.get("data_stats")


def _outcome(evaluated: Mapping[str, Any] | None) -> tuple | None:
    """What makes two evaluations of a round the same (not the seconds a rerun took to summarize)."""
    return None if evaluated is None else (evaluated["split"], evaluated["games"], evaluated["won"])


@dataclass(frozen=True)
class DaggerResult:
    summaries: tuple[dict[str, Any], ...]  # every round's summary.json
    rows: tuple[dict[str, Any], ...]  # the per-round table (round_rows)
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
        rows = round_rows(summaries, start_eval)
        write_result(plan.output / "rounds.json", {"rounds": rows, "adapter": str(player)}, seed=config.seed)
        title = f"{config.method}, {config.rounds} round(s)"
        plot = reports.plot_rounds(rows, plan.output / "rounds.png", title=title)
        return DaggerResult(tuple(summaries), tuple(rows), player, plot)


def round_rows(summaries: Sequence[Mapping[str, Any]], start_eval: Mapping[str, Any] | None = None) -> list[dict]:
    """One row per round (round 0: the starting adapter, when it was evaluated): the rollouts (played by the
    previous round's adapter), the labels, the data and the round's adapter's evaluation."""
    rows = []
    for summary in summaries:
        labels, data = summary["labels"], summary["data"]
        rows.append(
            {
                "round": summary["round"],
                "games": summary["played"],
                "rollouts_won": summary["rollouts_win_rate"],
                **{name: labels[name] for name in ("states", "labelled", "disagreed", "guesses")},
                "records_added": summary["records_added"],
                "expert_records": data["expert_records"],
                "new_records": data["new_records"],
                "eval_success": summary["eval"]["success_rate"] if summary["eval"] else None,
            }
        )
    if start_eval is not None:
        columns = rows[0] if rows else {"round": 0}
        rows.insert(0, {**dict.fromkeys(columns), "round": 0, "eval_success": start_eval["success_rate"]})
    return rows


# What `round_rows` reads of a round's summary, and of its key.
ROW_KEYS = ("key", "round", "played", "rollouts_win_rate", "labels", "records_added", "data", "eval")
ROW_KEY_FIELDS = ("method", "agent", "start_weights")


def read_run_rows(folder: str | os.PathLike[str]) -> tuple[str, list[dict[str, Any]]]:
    """The method and the per-round rows (`round_rows`) of the run in `folder`, a run cut short included: every
    round whose summary was written, and round 0 when the starting adapter's evaluation finished. Rounds of
    another run (their settings differ) are refused, not mixed."""
    folder = paths.resolve_repo_path(folder)
    numbered = {}
    for path in folder.glob(f"round_*/{SUMMARY}"):
        match = re.fullmatch(r"round_(\d+)", path.parent.name)
        if match and int(match.group(1)) > 0:
            numbered[int(match.group(1))] = path
    if not numbered:
        raise FileNotFoundError(
            f"{folder} holds no finished round (round_N/{SUMMARY}): name the --output folder of an "
            "`alfworld-sft dagger` run whose first round finished"
        )
    remedy = "delete the round's folder and rerun the dagger command to redo it"
    summaries = []
    for number in sorted(numbered):
        summary = files.read_json_object(numbered[number], remedy, required_keys=ROW_KEYS)
        missing = [name for name in ROW_KEY_FIELDS if name not in summary["key"]]
        if missing or summary["round"] != number:
            raise files.CorruptFileError(
                f"{numbered[number]} is not round {number}'s summary (its key lacks {', '.join(missing) or 'nothing'}, "
                f"its round is {summary['round']}): {remedy}"
            )
        first = summaries[0]["key"] if summaries else summary["key"]
        differs = sorted(
            k for k in set(first) | set(summary["key"]) if k != "round" and first.get(k) != summary["key"].get(k)
        )
        if differs:
            raise ValueError(
                f"{numbered[number]} belongs to another run than round {summaries[0]['round']} of {folder} (they "
                f"differ in {', '.join(differs)}): keep each run in its own --output folder"
            )
        summaries.append(summary)
    key = summaries[0]["key"]
    start = folder / "round_0" / EVAL
    start_eval = None
    if start.exists():
        evaluated = files.read_json_object(
            start, "delete it and rerun the dagger command", required_keys=("agents", "run")
        )
        if evaluated["run"].get("weights") != key["start_weights"]:
            raise ValueError(
                f"{start} evaluated other weights ({evaluated['run'].get('weights')}) than the run started from "
                f"({key['start_weights']}): delete it and rerun the dagger command to evaluate the starting adapter"
            )
        start_eval = evaluated["agents"].get(key["agent"]) if isinstance(evaluated["agents"], dict) else None
        if start_eval is None:
            raise files.CorruptFileError(
                f"{start} holds no results of {key['agent']}: delete it and rerun the dagger command"
            )
    return key["method"], round_rows(summaries, start_eval)


def compare_runs(folders: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str]) -> tuple[dict, Path]:
    """Rounds of several runs (DAgger, self-imitation, both; or one method with other settings) side by side: the
    rows of each, named by its folder (with the folder above it where two names collide), and one plot of success
    per round (`reports.plot_methods`)."""
    resolved = [paths.resolve_repo_path(folder) for folder in folders]
    names = [folder.name for folder in resolved]
    names = [f"{f.parent.name}/{f.name}" if names.count(f.name) > 1 else f.name for f in resolved]
    if len(set(names)) < len(names):
        raise ValueError(f"the runs {names} cannot be told apart by their folders: name each one once")
    runs = {}
    for name, folder in zip(names, resolved):
        method, rows = read_run_rows(folder)
        runs[name] = {"method": method, "rows": rows}
    plot = reports.plot_methods({name: run["rows"] for name, run in runs.items()}, paths.resolve_repo_path(output))
    return runs, plot


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


def pick_example(config: DaggerConfig, number: int = 1) -> dict[str, Any]:
    """A round's label record with the longest history (the model's own turns before the expert's label), and the
    rollout it comes from: {"rollout": ..., "record": ...}."""
    folder = paths.resolve_repo_path(config.output) / f"round_{number}"
    labelled = list(files.read_jsonl(folder / LABELLED))
    if not labelled:
        raise ValueError(f"{folder / LABELLED} holds no records: run the round first")
    labels = [record for record in labelled if record["dagger_kind"] == "label"] or labelled
    record = max(labels, key=lambda r: (len(r["conversations"]), r["game_id"]))
    rollout = next(line for line in files.read_jsonl(folder / ROLLOUTS) if line["game_id"] == record["game_id"])
    return {"rollout": rollout, "record": record}


def describe_turns(rollout: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A rollout turn by turn: what the model wrote and played, what the expert would have played, and whether
    DAgger labels that state."""
    rows = []
    for step, turn in enumerate(rollout["transcript"][0]["turns"]):
        label = turn.get("expert")
        if label is None:
            verdict = "no expert command: not labelled"
        elif label["guess"]:
            verdict = "the expert guesses: not labelled"
        elif label["command"] == turn["command"]:
            verdict = "agrees: trained in place"
        else:
            verdict = "differs: the expert's command is the label"
        rows.append(
            {
                "step": step,
                "model wrote": turn["reply"],
                "played": turn["command"] or "(invalid)",
                "expert": label["command"] if label else None,
                "DAgger": verdict,
                "observation": turn["observation"][:80],
            }
        )
    return rows


def render_trained_tokens(record: Mapping[str, Any], config: DaggerConfig) -> str:
    """HTML of the record as the model trains on it (`formatting.build_example`): loss on the trained turns only."""
    adapter = records.read_training_record(paths.resolve_repo_path(config.adapter))
    tokenizer = models.load_tokenizer(adapter.base_model)
    data_format = config.data_format or adapter.data_format
    example = formatting.build_example(dict(record), tokenizer, adapter.max_seq_len, data_format=data_format)
    if example is None:
        raise ValueError(f"no trained turn of {record['game_id']} fits in {adapter.max_seq_len} tokens")
    return formatting.render_trained_html(example, tokenizer)


# -------------------------------------------------------------------------------------------------------- CLI

TRAIN_FLAGS = {"epochs": "--epochs", "lr": "--lr", "max_steps": "--train-max-steps"}  # TrainConfig field: its flag


def configure_parser(subparsers: argparse._SubParsersAction) -> None:
    defaults = DaggerConfig()
    parser = subparsers.add_parser(
        "dagger", help="06: DAgger rounds and self-imitation from the SFT adapter (resumable)"
    )
    parser.add_argument("--adapter", default=defaults.adapter, help="the SFT adapter that plays round 1")
    parser.add_argument("--expert-data", default=defaults.expert_data, help="the SFT trajectories JSONL")
    parser.add_argument("--output", default=defaults.output, help="the run's folder (rerun to resume)")
    parser.add_argument("--method", choices=METHODS, default=defaults.method)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument(
        "--games-per-round", type=int, default=defaults.games_per_round, help="train games per round (0: all)"
    )
    parser.add_argument(
        "--expert-ratio", type=float, default=None, help="expert records per new record (default: all of them)"
    )
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="rollout sampling; 0: greedy")
    parser.add_argument("--actions", choices=ACTIONS, default=defaults.actions)
    parser.add_argument("--agent", choices=ROLLOUT_AGENTS, default=defaults.agent)
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps)
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="engine worker processes (default: the CPU count)"
    )
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="decoding rows of a local model")
    parser.add_argument("--backend", choices=("auto", "transformers", "vllm"), default=defaults.backend)
    parser.add_argument("--dtype", choices=models.DTYPES, default=defaults.dtype)
    parser.add_argument("--device", default=defaults.device, help="auto (GPU when there is one), cpu or cuda")
    parser.add_argument(
        "--format", dest="data_format", choices=prompts.DATA_FORMATS, default=None, help="default: the adapter's"
    )
    parser.add_argument("--init", choices=INITS, default=defaults.init)
    parser.add_argument(
        "--eval-split", choices=[*games.SPLITS, "none"], default=defaults.eval_split, help="none: no evaluation"
    )
    parser.add_argument("--eval-games", type=int, default=defaults.eval_games, help="0: the whole eval split")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--epochs", type=float, default=None, help="training epochs per round (default: the adapter's)")
    parser.add_argument("--lr", type=float, default=None, help="training learning rate (default: the adapter's)")
    parser.add_argument(
        "--train-max-steps", type=int, default=None, help="optimizer steps per round (default: the adapter's)"
    )
    parser.set_defaults(func=_run_dagger)
    compare = subparsers.add_parser(
        "dagger-compare", help="06: rounds of several dagger runs side by side (a table each, one plot)"
    )
    compare.add_argument("folders", nargs="+", help="the --output folders of `alfworld-sft dagger` runs")
    compare.add_argument("--output", default="results/dagger_compare.png", help="the plot of success per round")
    compare.set_defaults(func=_compare_runs)


def _run_dagger(args: argparse.Namespace) -> int:
    names = {field.name for field in dataclasses.fields(DaggerConfig)}
    values = {key: value for key, value in vars(args).items() if key in names}
    values["eval_split"] = None if args.eval_split == "none" else args.eval_split
    config = DaggerConfig(**values)
    check_config(config)
    changes = {}
    for name, flag in TRAIN_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None and value <= 0:
            raise ValueError(f"{flag} must be above 0, got {value}")
        if value is not None:
            changes[name] = value
    if changes:
        config = replace(config, train=replace(read_training_recipe(config.adapter), **changes))
    started = time.perf_counter()
    result = run_dagger(config)
    print(reports.format_table(result.rows))
    print(f"adapter: {result.adapter}\nplot: {result.plot} ({time.perf_counter() - started:.0f} s)")
    return 0


def _compare_runs(args: argparse.Namespace) -> int:
    files.check_output(paths.resolve_repo_path(args.output), "--output")
    runs, plot = compare_runs(args.folders, args.output)
    for name, run in runs.items():
        print(f"{name} ({run['method']})\n{reports.format_table(run['rows'])}\n")
    print(f"plot: {plot}")
    return 0
