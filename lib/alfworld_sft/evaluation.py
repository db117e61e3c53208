"""Evaluation runs: play agents on held-out games, checkpoint every finished game, summarize and compare.

    alfworld-sft evaluate --agents zero_shot few_shot react reflexion hierarchical --num-games 134 \\
        --max-steps 50 --model smollm2-135m-instruct --adapter results/sft_adapter \\
        --split eval_out_of_distribution --checkpoint results/eval/ckpt.jsonl --output results/eval/ft.json \\
        --batch-size 8 --seed 0
    alfworld-sft compare results/eval/base.json results/eval/ft.json   # table + plots

Games of a batch are played together: each step collects one request from every active game and answers
them with one batched generate call; a finished game frees its slot for the next. Every finished
(agent, game) is appended to the checkpoint JSONL at once, so a rerun after a crash skips those and plays
only the rest: nothing is lost or counted twice. The results JSON (one block per agent: success rate,
average steps, per-task-type success, invalid-reply rate, tokens generated, wall time, and every game's
actions) is rebuilt from the checkpoint, with a PNG of the success rates beside it.
"""

from __future__ import annotations

import argparse
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from alfworld_sft import files, games, paths, prompts
from alfworld_sft.agents import AGENTS, Demonstration, Episode, build_agent, render_demonstration
from alfworld_sft.backends import OLLAMA_URL, Backend, ExpertBackend, choose_backend, load_backend

DEFAULT_AGENTS = ("zero_shot", "few_shot", "react", "reflexion", "hierarchical")
DEMO_TASK_TYPES = (  # the shorter task types make compact demonstrations; pick_two often needs 50+ steps
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
)


class CheckpointMismatchError(ValueError):
    """A checkpoint written by a run with other settings (model, split, steps); the message names them."""


@dataclass(frozen=True)
class EvalConfig:
    agents: tuple[str, ...] = DEFAULT_AGENTS  # which agents to run, in this order
    num_games: int = 134  # games of the split (balanced over task types, seeded); 0 = all
    max_steps: int = 50  # commands per trial before the game counts as lost
    model: str = "smollm2-135m-instruct"  # default model name, hub id, folder, `ollama:NAME` or `expert`
    adapter: str | None = None  # LoRA adapter folder (its training_record.json sets the prompt format)
    split: str = "eval_out_of_distribution"  # a course split name (games.SPLITS)
    checkpoint: str | None = None  # JSONL of finished (agent, game); default: <output stem>.ckpt.jsonl
    output: str = "results/eval/results.json"  # the results JSON (a PNG lands beside it)
    batch_size: int = 8  # games played at the same time (one generate call per step for all of them)
    seed: int = 0  # game sample and engine seed
    trajectories: str | None = None  # expert trajectories.jsonl of TRAINING games for few-shot demonstrations
    backend: str = "auto"  # auto, transformers, ollama, vllm or expert
    ollama_url: str = OLLAMA_URL  # where the Ollama server listens
    dtype: str = "float32"  # torch dtype of a transformers model (bfloat16 halves memory)
    window_tokens: int | None = None  # prompt budget; default: training max_seq_len, else agents' base window
    threads: int | None = None  # torch CPU threads (None: torch's default)
    device: str = "auto"  # where a transformers model runs: auto (the GPU when there is one), cpu or cuda
    shard: str | None = None  # "I/N": play only every N-th game from the I-th (0-based), for N parallel processes


# --- games ---------------------------------------------------------------------------------------------------
def select_games(split: str, num_games: int, seed: int) -> list[Path]:
    """`num_games` game files of a split, balanced over task types and seeded (0: all of them)."""
    return games.list_games(split, limit=num_games or None, seed=seed)


def shard_games(gamefiles: Sequence[Path], shard: str | None) -> list[Path]:
    """The I-th of N interleaved shards ("I/N"); shards of one run share its checkpoint key, so their
    checkpoints concatenated and read by an unsharded run give the whole run's results."""
    if not shard:
        return list(gamefiles)
    match = re.fullmatch(r"(\d+)/(\d+)", shard)
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise ValueError(f"--shard takes I/N with 0 <= I < N, e.g. 0/4, not {shard!r}")
    index, count = int(match.group(1)), int(match.group(2))
    return list(gamefiles)[index::count]


def task_type_of(gamefile: Path) -> str:
    return games.read_task_type(gamefile)


def game_id_of(gamefile: Path) -> str:
    return games.game_id(gamefile)


# --- demonstrations ------------------------------------------------------------------------------------------
def load_demonstrations(
    trajectories: str | Path | None = None, *, seed: int = 0, count: int = 3, exclude: Sequence[str] = ()
) -> list[Demonstration]:
    """`count` expert demonstrations of distinct task types from TRAINING games, never from `exclude`.

    From a trajectories.jsonl (CONTRIBUTING.md records) when given: the shortest won game of each type.
    Otherwise the handcoded expert plays train games (seeded) until `count` are won.
    """
    excluded = set(exclude)
    rng = random.Random(seed)
    task_types = list(DEMO_TASK_TYPES)
    rng.shuffle(task_types)
    if trajectories is not None:
        records = [r for r in files.read_jsonl(trajectories) if r.get("won") and r["game_id"] not in excluded]
        bad = [r["game_id"] for r in records if r.get("split", "train") != "train"]
        if bad:
            raise ValueError(
                f"{trajectories} holds non-training games (e.g. {bad[0]}): demonstrations must come "
                "from the train split"
            )
        demos = []
        for task_type in task_types:
            of_type = sorted((r for r in records if r.get("task_type") == task_type), key=lambda r: r["steps"])
            if of_type:
                demos.append(render_demonstration(of_type[0]))
            if len(demos) == count:
                return demos
        raise ValueError(
            f"{trajectories} has won games of only {len(demos)} of the task types "
            f"{', '.join(DEMO_TASK_TYPES)}; {count} demonstrations need {count}"
        )
    train = select_games("train", 30, seed)
    demos = []
    for task_type in task_types:
        for gamefile in (g for g in train if task_type_of(g) == task_type and game_id_of(g) not in excluded):
            record = play_expert(gamefile, seed=seed, max_steps=30)
            if record["won"]:
                demos.append(render_demonstration(record))
                break
        if len(demos) == count:
            return demos
    raise RuntimeError(f"the expert won only {len(demos)} of the train games tried; cannot build {count} demos")


def play_expert(gamefile: Path, *, seed: int, max_steps: int) -> dict[str, Any]:
    """One game played by the handcoded expert, as a trajectory record (CONTRIBUTING.md keys used here)."""
    from alfworld_sft.engine import AlfworldGame

    random.seed(seed)
    with AlfworldGame(gamefile, expert=True) as game:
        state = game.reset()
        conversations = [{"role": "user", "content": prompts.render_first_turn(state.task, state.observation)}]
        steps = 0
        while not state.done and steps < max_steps and state.expert_action:
            action = state.expert_action
            state = game.step(action)
            steps += 1
            conversations.append({"role": "assistant", "content": action})
            if not state.done:
                conversations.append({"role": "user", "content": prompts.render_turn(state.observation)})
    return {
        "game_id": game_id_of(gamefile),
        "task_type": task_type_of(gamefile),
        "task": state.task,
        "conversations": conversations,
        "steps": steps,
        "won": state.won,
        "split": "train",
    }


# --- playing -------------------------------------------------------------------------------------------------
def play_games(
    agent_name: str,
    backend: Backend,
    gamefiles: Sequence[Path],
    *,
    max_steps: int,
    seed: int,
    batch_size: int,
    agent_kwargs: dict[str, Any] | None = None,
    on_finished: Callable[[Path, dict[str, Any]], None] | None = None,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Play `gamefiles` with one agent, `batch_size` at a time, one generate call per step for all of them.

    Returns one record per game (`Episode.record()` plus game keys), in the order they finished, and hands each
    to `on_finished` as soon as its game ends.
    """
    agent = build_agent(agent_name, backend, **(agent_kwargs or {}))
    expert = isinstance(backend, ExpertBackend)
    queue = list(gamefiles)
    active: list[tuple[Path, Episode]] = []
    finished: list[dict[str, Any]] = []
    while queue or active:
        while queue and len(active) < max(1, batch_size):
            gamefile = queue.pop(0)
            active.append((gamefile, Episode(agent, gamefile, max_steps=max_steps, seed=seed, expert=expert)))
        replies = backend.generate([episode.request() for _, episode in active])
        still = []
        for (gamefile, episode), reply in zip(active, replies):
            episode.advance(reply)
            if not episode.finished:
                still.append((gamefile, episode))
                continue
            record = {
                "agent": agent_name,
                "game_id": game_id_of(gamefile),
                "task_type": task_type_of(gamefile),
                "gamefile": str(gamefile),
                **episode.record(),
            }
            finished.append(record)
            if on_finished:
                on_finished(gamefile, record)
            if progress is not None:
                progress.update(1)
        active = still
    return finished


def run_key(config: EvalConfig, backend_name: str) -> dict[str, Any]:
    """The settings a checkpoint line must share with the run that reads it."""
    return {"model": backend_name, "split": config.split, "max_steps": config.max_steps, "seed": config.seed}


def read_checkpoint(path: Path, key: dict[str, Any]) -> list[dict[str, Any]]:
    """Finished games of this run's settings; a torn last line (killed writer) is cut first."""
    if not path.exists():
        return []
    files.repair_jsonl_tail(path)
    records, seen = [], set()
    for number, record in enumerate(files.read_jsonl(path), start=1):
        other = {k: record.get(k) for k in key}
        if other != key:
            raise CheckpointMismatchError(
                f"{path}:{number} was written with {other}, this run has {key}: pass another --checkpoint "
                "(or delete this one to start over)"
            )
        pair = (record["agent"], record["game_id"])
        if pair not in seen:  # a line written twice by hand-merged checkpoints counts once
            seen.add(pair)
            records.append(record)
    return records


def run_evaluation(
    config: EvalConfig,
    *,
    backend: Backend | None = None,
    demonstrations: Sequence[Demonstration] | None = None,
) -> dict[str, Any]:
    """Play every agent on the selected games, resuming from the checkpoint; write and return the results."""
    from tqdm.auto import tqdm

    unknown = [a for a in config.agents if a not in AGENTS]
    if unknown:
        raise ValueError(f"unknown agent(s) {', '.join(unknown)}: choose from {', '.join(AGENTS)}")
    output = paths.resolve_repo_path(config.output)
    checkpoint = paths.resolve_repo_path(config.checkpoint) if config.checkpoint else output.with_suffix(".ckpt.jsonl")
    gamefiles = shard_games(select_games(config.split, config.num_games, config.seed), config.shard)
    own_backend = backend is None
    name = (
        backend.name if backend else choose_backend(config.model, adapter=config.adapter, backend=config.backend).name
    )
    key = run_key(config, name)
    done = {(r["agent"], r["game_id"]) for r in read_checkpoint(checkpoint, key)}
    todo = {a: [g for g in gamefiles if (a, game_id_of(g)) not in done] for a in config.agents}
    if own_backend and any(todo.values()):  # a finished run (e.g. merged shards) needs no model
        backend = load_backend(
            config.model,
            adapter=config.adapter,
            backend=config.backend,
            ollama_url=config.ollama_url,
            dtype=config.dtype,
            threads=config.threads,
            device=config.device,
        )
    agent_kwargs: dict[str, Any] = {"window_tokens": config.window_tokens}
    try:
        for agent_name in config.agents:
            if not todo[agent_name]:
                continue
            kwargs = dict(agent_kwargs)
            if agent_name == "few_shot":
                if demonstrations is None:
                    demonstrations = load_demonstrations(
                        config.trajectories, seed=config.seed, exclude=[game_id_of(g) for g in gamefiles]
                    )
                kwargs["demonstrations"] = demonstrations
            with tqdm(
                total=len(gamefiles),
                initial=len(gamefiles) - len(todo[agent_name]),
                desc=agent_name,
                unit="game",
            ) as bar:
                play_games(
                    agent_name,
                    backend,
                    todo[agent_name],
                    max_steps=config.max_steps,
                    seed=config.seed,
                    batch_size=config.batch_size,
                    agent_kwargs=kwargs,
                    progress=bar,
                    on_finished=lambda _g, record: files.append_jsonl(checkpoint, [{**key, **record}]),
                )
    finally:
        if own_backend and backend is not None:
            backend.close()
    records = read_checkpoint(checkpoint, key)
    results = summarize_run(records, config, name, [game_id_of(g) for g in gamefiles])
    write_results(output, results, seed=config.seed)
    return results


# --- results -------------------------------------------------------------------------------------------------
def summarize_agent(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Success rate, average steps, per-task-type success, invalid-reply rate, tokens and wall time."""
    games_played = len(records)
    steps = sum(r["steps"] for r in records)
    per_type: dict[str, dict[str, Any]] = {}
    for record in records:
        entry = per_type.setdefault(record["task_type"], {"games": 0, "won": 0})
        entry["games"] += 1
        entry["won"] += int(record["won"])
    for entry in per_type.values():
        entry["success_rate"] = round(entry["won"] / entry["games"], 4)
    return {
        "games": games_played,
        "won": sum(int(r["won"]) for r in records),
        "success_rate": round(sum(int(r["won"]) for r in records) / games_played, 4) if games_played else 0.0,
        "avg_steps": round(steps / games_played, 2) if games_played else 0.0,
        "per_task_type": dict(sorted(per_type.items())),
        "invalid_replies": sum(r["invalid_replies"] for r in records),
        "invalid_reply_rate": round(sum(r["invalid_replies"] for r in records) / steps, 4) if steps else 0.0,
        "tokens_generated": sum(r["tokens_generated"] for r in records),
        "wall_time_s": round(sum(r["wall_s"] for r in records), 1),
        "games_per_hour": round(3600 * games_played / max(1e-9, sum(r["wall_s"] for r in records)), 1),
    }


def summarize_run(
    records: Sequence[dict[str, Any]], config: EvalConfig, model_name: str, game_ids: Sequence[str]
) -> dict[str, Any]:
    """The results document: settings, then per agent its summary and its games (only the selected games)."""
    wanted = set(game_ids)
    agents: dict[str, Any] = {}
    for agent_name in config.agents:
        mine = [r for r in records if r["agent"] == agent_name and r["game_id"] in wanted]
        keep = (
            "game_id",
            "task_type",
            "won",
            "steps",
            "trials",
            "invalid_replies",
            "mapped",
            "tokens_generated",
            "wall_s",
            "task",
            "actions",
            "reflections",
        )
        agents[agent_name] = {
            **summarize_agent(mine),
            "games_detail": [{k: r[k] for k in keep} for r in mine],
        }
    return {
        "model": model_name,
        "adapter": config.adapter,
        "split": config.split,
        "num_games": len(game_ids),
        "max_steps": config.max_steps,
        "batch_size": config.batch_size,
        "config": asdict(config),
        "agents": agents,
    }


def write_results(path: Path, results: dict[str, Any], *, seed: int) -> Path:
    """The results JSON (with run metadata) and a success-rate plot beside it."""
    from alfworld_sft.results import write_result

    write_result(path, results, seed=seed)
    plot_results({Path(path).stem: results}, Path(path).with_suffix(".png"))
    return path


def results_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per agent: the summary figures without the per-game detail."""
    return [
        {"agent": name, **{k: v for k, v in block.items() if k not in ("games_detail", "per_task_type")}}
        for name, block in results["agents"].items()
    ]


def plot_results(runs: dict[str, dict[str, Any]], path: Path) -> Path:
    """Success rate per agent (left) and per task type for every agent (right), one bar colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agent_names = sorted({a for r in runs.values() for a in r["agents"]}, key=_agent_order)
    task_types = sorted({t for r in runs.values() for b in r["agents"].values() for t in b["per_task_type"]})
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1, 2]})
    width = 0.8 / max(1, len(runs))
    for i, (label, run) in enumerate(runs.items()):
        blocks = [run["agents"].get(a, {}) for a in agent_names]
        bars = left.bar(
            [x + i * width for x in range(len(agent_names))],
            [b.get("success_rate", 0.0) for b in blocks],
            width,
            label=label,
        )
        # won/games on every bar: a 0% bar is otherwise indistinguishable from an agent that did not run
        left.bar_label(bars, [f"{b['won']}/{b['games']}" if b else "" for b in blocks], fontsize=7, padding=2)
    left.set_xticks([x + width * (len(runs) - 1) / 2 for x in range(len(agent_names))], agent_names, rotation=30)
    left.set_ylabel("success rate")
    left.set_ylim(0, 1)
    left.set_title("success per agent")
    left.legend(fontsize=8)
    labels, series = [], []
    for label, run in runs.items():
        for agent_name in agent_names:
            block = run["agents"].get(agent_name)
            if block is None:
                continue
            labels.append(f"{label}:{agent_name}" if len(runs) > 1 else agent_name)
            series.append([block["per_task_type"].get(t, {}).get("success_rate", 0.0) for t in task_types])
    width = 0.8 / max(1, len(series))
    for i, (label, rates) in enumerate(zip(labels, series)):
        right.bar([x + i * width for x in range(len(task_types))], rates, width, label=label)
    right.set_xticks(
        [x + width * (len(series) - 1) / 2 for x in range(len(task_types))],
        [t.replace("_then_place_in_recep", "").replace("_and_place", "") for t in task_types],
        rotation=20,
    )
    right.set_ylim(0, 1)
    right.set_title("success per task type")
    right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _agent_order(name: str) -> int:
    return list(AGENTS).index(name) if name in AGENTS else len(AGENTS)


def compare_results(
    a: str | Path | dict[str, Any],
    b: str | Path | dict[str, Any],
    *,
    plot: str | Path | None = None,
    agents: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Two result files side by side: a table per agent and one per (agent, task type), plus a PNG.

    Returns {"agents": rows, "task_types": rows, "markdown": text, "plot": path}; the plot lands at `plot`
    (default: beside `b`, named <a>_vs_<b>.png). `agents` keeps only those agents.
    """
    runs, labels = [], []
    for item in (a, b):
        if isinstance(item, dict):
            runs.append(item)
            labels.append(str(item.get("model", "run")))
        else:
            item = Path(item)
            if not item.exists():
                raise FileNotFoundError(f"result file {item} does not exist: run `alfworld-sft evaluate` first")
            runs.append(files.read_json(item))
            labels.append(item.stem)
    if labels[0] == labels[1]:
        labels = [f"A:{labels[0]}", f"B:{labels[1]}"]
    if agents is not None:
        runs = [{**run, "agents": {k: v for k, v in run["agents"].items() if k in agents}} for run in runs]
    agent_rows, type_rows = [], []
    for agent_name in sorted(set(runs[0]["agents"]) | set(runs[1]["agents"]), key=_agent_order):
        blocks = [r["agents"].get(agent_name, {}) for r in runs]
        agent_rows.append(
            {
                "agent": agent_name,
                **{f"success_{lab}": blk.get("success_rate") for lab, blk in zip(labels, blocks)},
                **{f"games_{lab}": blk.get("games") for lab, blk in zip(labels, blocks)},
                **{f"avg_steps_{lab}": blk.get("avg_steps") for lab, blk in zip(labels, blocks)},
                **{f"invalid_{lab}": blk.get("invalid_reply_rate") for lab, blk in zip(labels, blocks)},
            }
        )
        if not all(blocks):  # an agent only one run played has no side-by-side per task type
            continue
        for task_type in sorted(set().union(*(blk.get("per_task_type", {}) for blk in blocks))):
            cells = [blk.get("per_task_type", {}).get(task_type, {}) for blk in blocks]
            type_rows.append(
                {
                    "agent": agent_name,
                    "task_type": task_type,
                    **{f"won_{lab}": f"{c.get('won', 0)}/{c.get('games', 0)}" for lab, c in zip(labels, cells)},
                }
            )
    markdown = markdown_table(agent_rows) + "\n\n" + markdown_table(type_rows)
    if plot is None:
        base = Path(b) if not isinstance(b, dict) else paths.RESULTS_DIR / "eval" / "comparison.json"
        plot = base.with_name(f"{_slug(labels[0])}_vs_{_slug(labels[1])}.png")
    plot_path = plot_results(dict(zip(labels, runs)), Path(plot))
    return {
        "labels": labels,
        "agents": agent_rows,
        "task_types": type_rows,
        "markdown": markdown,
        "plot": str(plot_path),
    }


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if r.get(h) is None else str(r.get(h)) for h in header) + " |" for r in rows]
    return "\n".join(lines)


def example_transcripts(results_path: str | Path) -> dict[str, str]:
    """One transcript per agent from a run's checkpoint (a won game when there is one), as readable text."""
    results = files.read_json(results_path)
    checkpoint = results["config"]["checkpoint"]
    checkpoint = paths.resolve_repo_path(checkpoint) if checkpoint else Path(results_path).with_suffix(".ckpt.jsonl")
    chosen: dict[str, dict[str, Any]] = {}
    for record in files.read_jsonl(checkpoint):
        if record["agent"] not in chosen or (record["won"] and not chosen[record["agent"]]["won"]):
            chosen[record["agent"]] = record
    return {agent: transcript_text(chosen[agent]) for agent in results["agents"] if agent in chosen}


def run_finetuned_when_present(config: EvalConfig, adapter: str | Path) -> dict[str, Any] | None:
    """Evaluate `adapter` (its base model from its training record) with `config`, or None when it is absent."""
    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").exists():
        print(f"no fine-tuned adapter at {adapter}: run notebook 03 first; only the base model is evaluated")
        return None
    return run_evaluation(replace(config, model="", adapter=str(adapter)))


def transcript_text(record: dict[str, Any], *, max_turns: int = 12) -> str:
    """A finished game (a checkpoint line) as readable text: plan, replies, commands, observations."""
    out = [
        f"[{record['agent']}] {record['game_id']}  won={record['won']} steps={record['steps']}",
        f"Task: {record['task']}",
    ]
    for number, trial in enumerate(record["transcript"], start=1):
        if len(record["transcript"]) > 1:
            out.append(f"--- trial {number}")
        if trial["plan"]:
            out.append("Plan:\n" + trial["plan"])
        for turn in trial["turns"][:max_turns]:
            reply = turn["reply"].replace("\n", " | ")
            shown = (
                turn["command"]
                if turn["command"] == turn["reply"]
                else f"{reply!r} -> {turn['command']} ({turn['how']})"
            )
            out.append(f"> {shown}\n  {turn['observation'][:200]}")
        if len(trial["turns"]) > max_turns:
            out.append(f"  ... {len(trial['turns']) - max_turns} more steps")
        if number <= len(record.get("reflections", [])):
            out.append("Reflection: " + record["reflections"][number - 1])
    return "\n".join(out)


# --- command line --------------------------------------------------------------------------------------------
def configure_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="play agents on held-out games (resumable) and write results")
    defaults = EvalConfig()
    parser.add_argument("--agents", nargs="+", default=list(defaults.agents), choices=list(AGENTS))
    parser.add_argument("--num-games", type=int, default=defaults.num_games, help="0 = the whole split")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps)
    parser.add_argument(
        "--model",
        default=None,
        help=f"model name, hub id, folder, ollama:NAME or `expert` (default: the adapter's base "
        f"model, else {defaults.model})",
    )
    parser.add_argument("--adapter", default=None, help="LoRA adapter folder")
    parser.add_argument("--split", default=defaults.split, choices=list(games.SPLITS))
    parser.add_argument("--checkpoint", default=None, help="JSONL of finished games (default: beside --output)")
    parser.add_argument("--output", default=defaults.output)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--trajectories", default=None, help="train trajectories.jsonl for few-shot demos")
    parser.add_argument(
        "--backend", default=defaults.backend, choices=["auto", "transformers", "ollama", "vllm", "expert"]
    )
    parser.add_argument("--ollama-url", default=defaults.ollama_url)
    parser.add_argument("--dtype", default=defaults.dtype, choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--window-tokens", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default=defaults.device, help="auto (GPU when there is one), cpu or cuda")
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="play only shard I of N (parallel processes, one checkpoint each; concatenate them "
        "and rerun without --shard for the whole run's results)",
    )
    parser.set_defaults(func=_run_evaluate)
    compare = subparsers.add_parser("compare", help="compare two evaluation result files (table + plot)")
    compare.add_argument("a")
    compare.add_argument("b")
    compare.add_argument("--plot", default=None, help="PNG path (default: beside B)")
    compare.add_argument("--agents", nargs="+", default=None, choices=list(AGENTS), help="only these agents")
    compare.set_defaults(func=_run_compare)


def _run_evaluate(args: argparse.Namespace) -> int:
    config = EvalConfig(
        agents=tuple(args.agents),
        num_games=args.num_games,
        max_steps=args.max_steps,
        model=args.model if args.model is not None else ("" if args.adapter else EvalConfig.model),
        adapter=args.adapter,
        split=args.split,
        checkpoint=args.checkpoint,
        output=args.output,
        batch_size=args.batch_size,
        seed=args.seed,
        trajectories=args.trajectories,
        backend=args.backend,
        ollama_url=args.ollama_url,
        dtype=args.dtype,
        window_tokens=args.window_tokens,
        threads=args.threads,
        device=args.device,
        shard=args.shard,
    )
    started = time.perf_counter()
    results = run_evaluation(config)
    print(markdown_table(results_table(results)))
    print(f"wrote {paths.resolve_repo_path(config.output)} ({time.perf_counter() - started:.0f} s)")
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    comparison = compare_results(args.a, args.b, plot=args.plot, agents=args.agents)
    print(comparison["markdown"])
    print(f"plot: {comparison['plot']}")
    return 0
