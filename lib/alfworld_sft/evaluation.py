"""Evaluation runs: agents play held-out games (`alfworld_sft.rollouts`); every finished game goes to a game log.

    alfworld-sft evaluate --agents zero_shot few_shot react reflexion hierarchical --num-games 0 \\
        --max-steps 50 --adapter results/sft_adapter --split eval_out_of_distribution \\
        --output results/eval/ft.json --workers 16 --batch-size 64 --actions constrained
    alfworld-sft compare results/eval/base.json results/eval/ft.json   # tables + plots (alfworld_sft.reports)

One command uses the machine: `--workers` engine processes step the games while one model answers all their
requests with continuous batching (`alfworld_sft.rollouts`), every agent's games in the same batch (a fast agent's
free rows go to the next games of any agent); `--shard I/N` is for spreading a run over machines.
Every finished (agent, game) is appended at once to the game log (`--checkpoint`, the JSONL the run resumes from;
default: `<output stem>.ckpt.jsonl`), so a rerun after a crash plays only the rest: nothing is lost or counted
twice. A game log line carries the run's key: the model and a fingerprint of its weights (an adapter retrained in
place is another run), the split, step cap, seed and prompt settings. A game log of another run is moved aside (and
the run says so) rather than reused (`records.read_rollouts`, the rollout record's one reader).
The results JSON (one block per agent: success rate, average steps, per-task-type success, invalid-reply rate,
tokens, wall time, every game's actions) is rebuilt from the game log, with a PNG of the success rates beside
it. `--actions auto` (the default) plays a fine-tuned model with grounded commands and a base model free; the
results say which (`actions`).

A model behind a server (`alfworld_sft.served`) plays the same way:

    alfworld-sft evaluate --model gguf:results/gguf --agents zero_shot --num-games 10    # starts llama.cpp's server
    alfworld-sft evaluate --model openai:http://127.0.0.1:8080/v1/alfworld-sft --record results/gguf

and the results say how (`served`: URL, model, prompt rendering, grammar, the GGUF's quant type and sha256). A
server that takes no grammar plays free replies mapped to the closest admissible command, and says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from alfworld_sft import engine, files, games, grounding, llama_server, models, paths, records, reports, served
from alfworld_sft.agents import ACTIONS, AGENTS, Demonstration, render_demonstration
from alfworld_sft.backends import (
    BACKENDS,
    OLLAMA_URL,
    SERVED_KINDS,
    Backend,
    ExpertBackend,
    choose_backend,
    load_backend,
    weights_fingerprint,
)
from alfworld_sft.flags import add_options, config_from_args, option
from alfworld_sft.rollouts import RolloutConfig, open_worker_pool, play_rollout_groups
from alfworld_sft.task_types import TASK_TYPES

DEFAULT_AGENTS = ("zero_shot", "few_shot", "react", "reflexion", "hierarchical")
EVAL_ACTIONS = ("auto", *ACTIONS)  # --actions of evaluate: auto resolves to one of ACTIONS per model


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run. Each field with help is an `alfworld-sft evaluate` flag (`flags`)."""

    agents: tuple[str, ...] = option(DEFAULT_AGENTS, "the agents to run, in this order", choices=AGENTS)
    num_games: int = option(
        134, "games of the split, balanced over task types and seeded (default %(default)s; 0: all)"
    )
    max_steps: int = option(50, "commands per trial before the game counts as lost (default %(default)s)")
    model: str = option(  # "" with an adapter: the adapter's base model (its training record)
        models.DEFAULT_MODEL,
        "model name, hub id, folder, ollama:NAME, `expert`; openai:URL/v1/NAME for a model a running OpenAI-compatible "
        "server serves (the URL through its /v1 segment, then the model's name as the server lists it, slashes and "
        "all; no name: the server's only model); gguf:PATH for a GGUF file or export folder played through "
        f"llama-cpp-python's server, started and stopped here (default: the adapter's base model, else "
        f"{models.DEFAULT_MODEL})",
    )
    adapter: str | None = option(None, "LoRA adapter folder (its training_record.json sets the prompt format)")
    record: str | None = option(
        None,
        "ollama, openai: the folder holding the model's training record (export's GGUF folder); gguf: default the "
        "GGUF's own folder",
    )
    split: str = option("eval_out_of_distribution", "the split played (default %(default)s)", choices=games.SPLITS)
    checkpoint: str | None = option(
        None, "the game log: the JSONL of finished games the run resumes from (default: beside --output)"
    )
    output: str = option("results/eval/results.json", "the results JSON, a PNG beside it (default %(default)s)")
    batch_size: int = option(
        8, "decoding rows of a local model: games whose requests decode together; a server's requests in flight"
    )
    workers: int = option(  # the CLI defaults to the CPUs
        0, "engine worker processes stepping games; 0: in this process (default: the CPU count)"
    )
    actions: str = option(  # auto: constrained where it won more (a fine-tuned model) and the backend can ground
        "auto",
        "free or constrained commands; auto (default): constrained for a fine-tuned model where it can be",
        choices=EVAL_ACTIONS,
    )
    temperature: float = option(0.0, "0: greedy; above: sampled, seeded per game and step")
    seed: int = option(0, "seeds the game sample and the engine (default %(default)s)")
    trajectories: str | None = option(
        None, "expert trajectories.jsonl of TRAINING games for few-shot demonstrations (default: the expert plays)"
    )
    backend: str = option("auto", "how the model is run (default %(default)s)", choices=BACKENDS)
    ollama_url: str = option(OLLAMA_URL, "where the Ollama server listens (default %(default)s)")
    served_prompt: str = option(
        "auto",
        "openai, gguf: text renders each prompt here with the training tokenizer's chat template (the tokens the "
        "model was trained on, /v1/completions); chat sends the messages for the server's template; auto: text "
        "where a training record's tokenizer is at hand and the server is not Ollama",
        choices=served.PROMPT_MODES,
    )
    server_port: int = option(0, "gguf: the port llama-cpp-python's server listens on (default: a free port)")
    dtype: str = option(
        "auto", "torch dtype of a transformers model; auto: bfloat16 where native, else float32", choices=models.DTYPES
    )
    window_tokens: int | None = option(
        None, "prompt budget in tokens (default: the training max_seq_len, else the agents' base window)"
    )
    threads: int | None = option(None, "torch CPU threads (default: torch's)")
    device: str = option("auto", "auto (GPU when there is one), cpu or cuda")
    shard: str | None = option(
        None,
        "play only shard I of N (one machine each; concatenate their game logs and rerun without --shard "
        "for the whole run's results)",
        metavar="I/N",
    )


def check_config(config: EvalConfig) -> None:
    """Refuse out-of-range settings with the flag to fix, before anything is loaded or played."""
    unknown = [a for a in config.agents if a not in AGENTS]
    if unknown or not config.agents:
        raise ValueError(f"unknown agent(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(AGENTS)}")
    checks = [
        ("--num-games", config.num_games, config.num_games >= 0, "0 (all games) or more"),
        ("--max-steps", config.max_steps, config.max_steps >= 1, "at least 1"),
        ("--batch-size", config.batch_size, config.batch_size >= 1, "at least 1"),
        ("--workers", config.workers, config.workers >= 0, "0 (in this process) or more"),
        ("--temperature", config.temperature, config.temperature >= 0, "0 (greedy) or more"),
        (
            "--window-tokens",
            config.window_tokens,
            config.window_tokens is None or config.window_tokens >= 64,
            "at least 64",
        ),
        ("--threads", config.threads, config.threads is None or config.threads >= 1, "at least 1"),
        ("--server-port", config.server_port, 0 <= config.server_port <= 65535, "a port (1-65535), or 0 (free)"),
    ]
    for flag, value, ok, expected in checks:
        if not ok:
            raise ValueError(f"{flag} must be {expected}, got {value}")
    if config.actions not in EVAL_ACTIONS:
        raise ValueError(f"--actions must be one of {', '.join(EVAL_ACTIONS)}, not {config.actions!r}")
    if config.backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, not {config.backend!r}")
    if config.served_prompt not in served.PROMPT_MODES:
        modes = ", ".join(served.PROMPT_MODES)
        raise ValueError(f"--served-prompt must be one of {modes}, not {config.served_prompt!r}")


# --- games ---------------------------------------------------------------------------------------------------
def select_games(split: str, num_games: int, seed: int) -> list[Path]:
    """`num_games` game files of a split, balanced over task types and seeded (0: all of them); asking for more
    games than the split holds plays all of them, and says so."""
    chosen = games.list_games(split, limit=num_games or None, seed=seed)
    if num_games > len(chosen):
        print(f"--num-games {num_games} is more than the {len(chosen)} games of {split}: playing all {len(chosen)}")
    return chosen


def shard_games(gamefiles: Sequence[Path], shard: str | None) -> list[Path]:
    """The I-th of N interleaved shards ("I/N"); shards of one run share its run key, so their game logs
    concatenated and read by an unsharded run give the whole run's results."""
    if not shard:
        return list(gamefiles)
    match = re.fullmatch(r"(\d+)/(\d+)", shard)
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise ValueError(f"--shard takes I/N with 0 <= I < N, e.g. 0/4, not {shard!r}")
    index, count = int(match.group(1)), int(match.group(2))
    return list(gamefiles)[index::count]


# --- demonstrations ------------------------------------------------------------------------------------------
def load_demonstrations(
    trajectories: str | Path | None = None, *, seed: int = 0, count: int = 3, exclude: Sequence[str] = ()
) -> list[Demonstration]:
    """`count` expert demonstrations of distinct task types from TRAINING games, never from `exclude`.

    From a trajectories.jsonl (records.py) when given: the shortest won game of each type. Otherwise the expert
    plays train games (`engine.play_expert`) until `count` are won.
    """
    from alfworld_sft import collect

    excluded = set(exclude)
    rng = random.Random(seed)
    demo_types = [kind.name for kind in TASK_TYPES.values() if kind.demo]
    task_types = list(demo_types)
    rng.shuffle(task_types)
    if trajectories is not None:
        won = [r for r in files.read_jsonl(trajectories) if r.get("won") and r["game_id"] not in excluded]
        bad = [r["game_id"] for r in won if r.get("split", "train") != "train"]
        if bad:
            raise ValueError(
                f"{trajectories} holds non-training games (e.g. {bad[0]}): demonstrations must come from the "
                "train split"
            )
        demos = []
        for task_type in task_types:
            of_type = sorted((r for r in won if r.get("task_type") == task_type), key=lambda r: r["steps"])
            if of_type:
                demos.append(render_demonstration(of_type[0]))
            if len(demos) == count:
                return demos
        raise ValueError(
            f"{trajectories} has won games of only {len(demos)} of the task types "
            f"{', '.join(demo_types)}; {count} demonstrations need {count}"
        )
    train = games.list_games("train", task_types=task_types, limit=30, seed=seed)
    demos = []
    for task_type in task_types:
        for gamefile in (g for g in train if games.read_task_type(g) == task_type):
            if games.game_id(gamefile) in excluded:
                continue
            outcome = collect.play_game(gamefile, split="train", seed=seed, max_steps=30)
            if outcome.won:
                demos.append(render_demonstration(outcome.record))
                break
        if len(demos) == count:
            return demos
    raise RuntimeError(f"the expert won only {len(demos)} of the train games tried; cannot build {count} demos")


def resolve_actions(actions: str, finetuned: bool, grounds: bool) -> str:
    """`auto` made concrete: a fine-tuned model (one with a training record) plays grounded commands where its
    backend can ground them. On the 140 eval_in_distribution games the course's fine-tuned default won 134 that way
    against 132 free (zero_shot, results/README.md); a base model plays free, as the seed measures it."""
    if actions != "auto":
        return actions
    return "constrained" if finetuned and grounds else "free"


# --- game log ------------------------------------------------------------------------------------------------
def run_key(config: EvalConfig, backend_name: str, fingerprint: str, prompt: dict[str, Any]) -> dict[str, Any]:
    """What a game log line must share with the run that reads it: the weights and everything that decides how
    a game is played."""
    return {
        "model": backend_name,
        "weights": fingerprint,
        "split": config.split,
        "max_steps": config.max_steps,
        "seed": config.seed,
        "window_tokens": config.window_tokens,
        "actions": config.actions,
        "temperature": config.temperature,
        "prompt": prompt,
    }


# --- running -------------------------------------------------------------------------------------------------
def run_evaluation(
    config: EvalConfig, *, backend: Backend | None = None, demonstrations: Sequence[Demonstration] | None = None
) -> dict[str, Any]:
    """Play every agent on the selected games, resuming from the game log; write and return the results."""
    check_config(config)
    output = paths.resolve_repo_path(config.output)
    game_log = paths.resolve_repo_path(config.checkpoint) if config.checkpoint else output.with_suffix(".ckpt.jsonl")
    with files.hold_output(output):
        gamefiles = shard_games(select_games(config.split, config.num_games, config.seed), config.shard)
        own_backend = backend is None
        probe = None
        if own_backend:
            choice = choose_backend(
                config.model, adapter=config.adapter, backend=config.backend, record_folder=config.record
            )
            name, fingerprint, record = choice.name, weights_fingerprint(choice), choice.training_record()
            if choice.kind == "openai":  # whether it grounds decides the run's key: ask the server now
                probe = served.probe_choice(choice, config.served_prompt)
        else:
            name, fingerprint, record = backend.name, "", backend.codec.training_record
        grounds = probe.grammar if probe else choice.grounds_choices if own_backend else backend.grounds_choices
        actions = resolve_actions(config.actions, record is not None, grounds)
        if actions == "constrained" and not grounds and (probe or isinstance(backend, served.ServedBackend)):
            note = (probe or backend.probe).grammar_note
            print(
                f"{name}: {note}, so commands cannot be grounded there (a llama.cpp server can: gguf:PATH or "
                "llama-server); playing free replies mapped to the closest admissible command instead (actions: free)"
            )
            actions = "free"
        config = dataclasses.replace(config, actions=actions)
        prompt = {"data_format": "commands", "base": True}
        if record is not None:
            prompt = {
                "data_format": record.data_format,
                "max_seq_len": record.max_seq_len,
                "system_sha256": record.system_sha256(),  # a prompt edited since is another run
                **record.prompt_format.as_dict(),
            }
        if own_backend and choice.kind in SERVED_KINDS:
            prompt["served"] = config.served_prompt  # text and chat render a conversation differently
        key = run_key(config, name, fingerprint, prompt)
        done = {(r["agent"], r["game_id"]) for r in records.read_rollouts(game_log, key)}
        todo = {a: [g for g in gamefiles if (a, games.game_id(g)) not in done] for a in config.agents}
        left = sum(len(t) for t in todo.values())
        if left < len(gamefiles) * len(config.agents):
            played = len(gamefiles) * len(config.agents) - left
            print(f"resuming from {game_log}: {played} games already played, {left} to play")
        profile: dict[str, Any] = {}
        if own_backend and any(todo.values()) and choice.kind in SERVED_KINDS:
            backend = served.load_served_backend(
                choice,
                probe=probe,
                prompt=config.served_prompt,
                batch_size=config.batch_size,
                threads=config.threads,
                port=config.server_port,
            )
        elif own_backend and any(todo.values()):  # a finished run (e.g. merged shards) needs no model
            backend = load_backend(
                config.model,
                adapter=config.adapter,
                backend=config.backend,
                ollama_url=config.ollama_url,
                dtype=config.dtype,
                threads=config.threads,
                device=config.device,
                batch_size=config.batch_size,
                record_folder=config.record,
            )
        startup_s = 0.0
        served_info = None
        if isinstance(backend, served.ServedBackend):
            served_info = backend.describe()
        elif own_backend and choice.kind in SERVED_KINDS:
            served_info = served.describe_choice(choice)
        try:
            if any(todo.values()):
                started = time.perf_counter()
                with open_worker_pool(backend, config.workers) as worker_pool:  # one start-up for every agent
                    startup_s = time.perf_counter() - started
                    profile = play_agents(config, backend, gamefiles, todo, game_log, key, demonstrations, worker_pool)
        finally:
            if own_backend and backend is not None:
                backend.close()
        rollouts = records.read_rollouts(game_log, key)
        results = reports.summarize_run(
            rollouts,
            config.agents,
            [games.game_id(g) for g in gamefiles],
            model=name,
            adapter=config.adapter,
            split=config.split,
            max_steps=config.max_steps,
            actions=config.actions,
            run=key,
            config={**asdict(config), "checkpoint": str(game_log)},
            profile=profile,
            engine_startup_s=round(startup_s, 2),
            **({"served": served_info} if served_info else {}),
        )
        reports.write_results(output, results, seed=config.seed)
        return results


def play_agents(
    config: EvalConfig,
    backend: Backend,
    gamefiles: Sequence[Path],
    todo: dict[str, list[Path]],
    game_log: Path,
    key: dict[str, Any],
    demonstrations: Sequence[Demonstration] | None,
    worker_pool: Any,
) -> dict[str, Any]:
    """Every agent's missing games on the open worker pool in one continuous batch, every finished game appended to
    the game log at once; returns the run's profile (where the time went, games that could not be played)."""
    if todo.get("few_shot") and demonstrations is None:
        demonstrations = load_demonstrations(
            config.trajectories, seed=config.seed, exclude=[games.game_id(g) for g in gamefiles]
        )
    groups = [
        (
            RolloutConfig(
                agent=agent_name,
                max_steps=config.max_steps,
                seed=config.seed,
                workers=config.workers,
                expert=engine.DEFAULT_EXPERT if isinstance(backend, ExpertBackend) else None,
                window_tokens=config.window_tokens,
                actions=config.actions,
                temperature=config.temperature,
                demonstrations=tuple(demonstrations or ()) if agent_name == "few_shot" else (),
            ),
            todo[agent_name],
        )
        for agent_name in config.agents
        if todo[agent_name]
    ]
    result = play_rollout_groups(
        backend,
        groups,
        on_finished=lambda record: files.append_game_log(game_log, key, record),
        worker_pool=worker_pool,
    )
    failed = [{"agent": agent, "gamefile": gamefile, "error": error} for agent, gamefile, error in result.failed]
    return {"agents": [config.agent for config, _ in groups], **result.profile.as_dict(), "failed": failed}


def run_finetuned_when_present(config: EvalConfig, adapter: str | Path) -> dict[str, Any] | None:
    """Evaluate `adapter` (its base model from its training record) with `config`, or None when it is absent."""
    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").exists():
        print(f"no fine-tuned adapter at {adapter}: run notebook 03 first; only the base model is evaluated")
        return None
    return run_evaluation(replace(config, model="", adapter=str(adapter)))


def run_served_when_present(base: EvalConfig, gguf: str | Path) -> dict[str, Any] | None:
    """The fine-tuned model as notebook 04 exported it (`gguf`: the GGUF file, or the export folder and the file it
    served) played by llama-cpp-python's server (`served`): zero_shot on `base`'s games and settings, its results
    beside `base`'s as `served_gguf.json`. None, saying why, where there is no GGUF or no server to play it."""
    missing = llama_server.server_missing()
    if missing is not None:
        print(f"the GGUF is not played through a server: {missing}")
        return None
    try:
        llama_server.locate_gguf(paths.resolve_repo_path(gguf))
    except FileNotFoundError as error:
        print(f"the GGUF is not played through a server: {error}")
        return None
    output = Path(base.output).with_name("served_gguf.json")
    model = f"gguf:{gguf}"
    return run_evaluation(
        replace(base, model=model, adapter=None, agents=("zero_shot",), output=str(output), checkpoint=None)
    )


# --- the course (notebook 05) --------------------------------------------------------------------------------
# Full mode's sizes, for one sitting on one GPU: the fine-tuned model plays every game of the split with every agent
# and grounded commands (the course's default for it), and zero_shot free (the seed's setting); the base model, which
# wins none (0 of 140 per agent, 2026-12-02: it answers in prose), plays a balanced sample with the single-trial
# agents (reflexion and hierarchical only retry a lost first trial, twice), for 20 steps: 50 steps of prose took
# 224 s of the course's 25 minutes (36 games, one H100, 2026-12-05), a game's steps being played one after another.
FULL_STEPS = 50  # the seed guide's step cap
FULL_BASE_STEPS = 20
FULL_BASE_GAMES = 12
FULL_BASE_AGENTS = ("zero_shot", "few_shot", "react")
FULL_FREE_AGENTS = ("zero_shot",)
FULL_BATCH_SIZE = 128  # decoding rows: every game of a single-trial agent in one batch


def course_split(small: bool, split: str = "") -> str:
    """The split notebooks 05 and 06 play: `split` when given, else eval_in_distribution in small mode and the seed's
    134 out-of-distribution games in full mode (a split that is not there is an error, never replaced)."""
    if split and split not in games.SPLITS:
        raise ValueError(f"split must be one of {', '.join(games.SPLITS)} (or empty for the mode's), got {split!r}")
    return split or ("eval_in_distribution" if small else "eval_out_of_distribution")


def course_config(small: bool, seed: int, model: str = EvalConfig.model, split: str = "", games: int = 0) -> EvalConfig:
    """Notebook 05's base-model run. Small (CPU, minutes): every agent on 2 games of 3 steps, in this process, all ten
    games in one batch (the multi-trial agents' chains of 3 trials and 2 reflections set the wall time). Full: the
    single-trial agents on `FULL_BASE_GAMES` games (fewer when `games`, the fine-tuned runs' count, is smaller) of
    `FULL_BASE_STEPS` steps, every CPU an engine worker."""
    from alfworld_sft.paths import run_dir

    out = run_dir(small) / "eval"
    demos = run_dir(small) / "oracle" / "trajectories.jsonl"
    common = {
        "model": model,
        "seed": seed,
        "split": course_split(small, split),
        "output": str(out / "base.json"),
        "trajectories": str(demos) if demos.exists() else None,
    }
    if small:
        return EvalConfig(**common, num_games=2, max_steps=3, batch_size=10, workers=0)
    return EvalConfig(
        **common,
        agents=FULL_BASE_AGENTS,
        num_games=min(games, FULL_BASE_GAMES) if games else FULL_BASE_GAMES,
        max_steps=FULL_BASE_STEPS,
        batch_size=FULL_BATCH_SIZE,
        workers=os.cpu_count() or 1,
    )


def finetuned_config(base: EvalConfig, adapter: str | Path, *, actions: str, agents: Sequence[str]) -> EvalConfig:
    """The same split and settings for a fine-tuned adapter (its base from its training record)."""
    output = Path(base.output).with_name(f"finetuned_{actions}.json")
    return replace(
        base, model="", adapter=str(adapter), actions=actions, agents=tuple(agents), output=str(output), checkpoint=None
    )


def course_finetuned_config(
    base: EvalConfig, adapter: str | Path, actions: str, small: bool, games: int = 0
) -> EvalConfig:
    """Notebook 05's run of the fine-tuned adapter with `actions`: small mode zero_shot on the base run's games;
    full mode `games` games of the split (0: every game) of the seed's 50 steps, all agents grounded and zero_shot
    free."""
    if small:
        return finetuned_config(base, adapter, actions=actions, agents=("zero_shot",))
    agents = FULL_FREE_AGENTS if actions == "free" else DEFAULT_AGENTS
    return replace(
        finetuned_config(base, adapter, actions=actions, agents=agents), num_games=games, max_steps=FULL_STEPS
    )


def course_served_config(base: EvalConfig, small: bool) -> EvalConfig:
    """Notebook 05's run of the exported model (`run_served_when_present`): the base run's games, with the
    fine-tuned runs' step cap (full mode: the seed's 50, where the base model plays `FULL_BASE_STEPS`)."""
    return base if small else replace(base, max_steps=FULL_STEPS)


def prepare_games(config: EvalConfig) -> list[Path]:
    """The games `config` plays, generating them first when the course plays its own (no $ALFWORLD_DATA)."""
    from alfworld_sft import generate

    generate.ensure_games(config.split, config.num_games or None, config.seed)
    return shard_games(select_games(config.split, config.num_games, config.seed), config.shard)


def preview_prompt(
    agent: str,
    model: str,
    adapter: str | Path | None,
    gamefile: str | Path,
    demonstrations: Sequence[Demonstration] = (),
    *,
    system_only: bool = False,
) -> str:
    """The text a model reads at the first step of `gamefile` under `agent`, rendered with its chat template (the
    system prompt, the task turn and, for a fine-tuned model, exactly its training format); with `system_only`,
    the system message alone; for a model without a tokenizer here (the expert), each message under its role.
    Loads no weights."""
    from alfworld_sft.backends import PromptCodec, codec_spec
    from alfworld_sft.rollouts import RolloutConfig

    codec = PromptCodec(codec_spec(model, adapter))
    config = RolloutConfig(agent=agent, expert=None, demonstrations=tuple(demonstrations))
    request = first_request(codec, gamefile, config)
    if system_only:
        return request.messages[0]["content"]
    if codec.tokenizer is None:  # the expert, or a served model whose tokenizer is not here: the messages as sent
        return "\n\n".join(f"[{message['role']}]\n{message['content']}" for message in request.messages)
    return codec.tokenizer.apply_chat_template(list(request.messages), tokenize=False, add_generation_prompt=True)


def first_request(codec: Any, gamefile: str | Path, config: Any) -> Any:
    """The request a game's first step sends the model under a `rollouts.RolloutConfig` (the game is then closed)."""
    from alfworld_sft.rollouts import GameRunner

    runner = GameRunner(codec)
    kind, _, request = runner.start(0, str(gamefile), games.game_id(gamefile), config)
    if kind != "request":
        raise RuntimeError(f"the game {gamefile} could not start: {request}")
    runner.episodes[0][0].close()
    return request


def rank_first_step(model: str, adapter: str | Path | None, gamefile: str | Path) -> list[dict[str, Any]]:
    """The admissible commands of a real game's first step, scored by the model as its grounded reply (best first):
    each command's summed log-probability, its tokens' log-probabilities, and which command each way chooses
    (`grounding`: the mechanism the decoder runs in one forward, shown the plain way)."""
    from alfworld_sft.rollouts import RolloutConfig

    backend = load_backend(model, adapter=adapter, backend="transformers")
    try:
        request = first_request(backend.codec, gamefile, RolloutConfig(expert=None, actions="constrained"))
        prompt = backend.codec.encode(request.messages)
        end_id = models.stop_token_ids(backend.tokenizer)[0]
        scores = grounding.score_commands(backend.model, backend.tokenizer, prompt, request.choices, end_id)
    finally:
        backend.close()
    whole, stepwise = grounding.choose_whole(scores), grounding.choose_token_by_token(scores)
    return [
        {
            "command": score.command,
            "log_probability": round(score.total, 2),
            "tokens": " ".join(f"{token!r} {value:.1f}" for token, value in zip(score.tokens, score.log_probs)),
            "chosen_whole": score.command == whole,
            "chosen_token_by_token": score.command == stepwise,
        }
        for score in sorted(scores, key=lambda score: -score.total)
    ]


# --- command line --------------------------------------------------------------------------------------------
def configure_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="play agents on held-out games (resumable) and write results")
    # --model left out: the adapter's base model (see _run_evaluate); engine workers default to the CPUs.
    add_options(parser, EvalConfig, defaults={"model": None, "workers": os.cpu_count() or 1})
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    model = args.model if args.model is not None else ("" if args.adapter else EvalConfig.model)
    config = config_from_args(EvalConfig, args, model=model)
    started = time.perf_counter()
    results = run_evaluation(config)
    print(reports.format_table(reports.results_table(results)))
    print(f"wrote {paths.resolve_repo_path(config.output)} ({time.perf_counter() - started:.0f} s)")
    return 0
