"""Reports: the tables, plots, comparisons and transcripts every stage shows (collection, training, evaluation,
DAgger, the course summary). Nothing here plays or trains; it reads records and result files.

    from alfworld_sft import reports
    print(reports.format_table(rows))                         # a Markdown pipe table from dicts or tuples
    reports.compare_results("results/eval/base.json", "results/eval/finetuned.json")   # tables + a PNG
    alfworld-sft compare results/eval/base.json results/eval/finetuned.json [more.json ...]   # a column per file
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alfworld_sft import failures, files, paths, prompts, records
from alfworld_sft.task_types import TASK_TYPES, task_label

# ---------------------------------------------------------------------------------------------------- tables


def format_table(rows: Sequence[dict[str, Any]] | Sequence[Sequence[Any]], headers: Sequence[str] | None = None) -> str:
    """A Markdown pipe table, readable in a terminal, a log and a notebook alike. Rows are dicts (headers: the
    first row's keys unless given) or sequences (headers required)."""
    if not rows:
        return "(no rows)"
    if isinstance(rows[0], dict):
        headers = list(headers or rows[0])
        values = [[row.get(h) for h in headers] for row in rows]
    else:
        if headers is None:
            raise ValueError("format_table needs headers for rows that are not dicts")
        values = [list(row) for row in rows]
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in values]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def save_figure(figure: Any, path: str | os.PathLike[str]) -> Path:
    """Save a matplotlib figure atomically (a reader never sees half a PNG) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    os.replace(temporary, path)
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------------------------------------- collection


def plot_expert_summary(per_task_type: dict[str, dict[str, float]], path: Path, title: str, max_steps: int) -> Path:
    """Won rate and mean steps (won games) per task type of a collection, as a PNG."""
    plt = _pyplot()
    names = list(per_task_type)
    labels = [f"{number} {task_label(name)}" for number, name in enumerate(names, start=1)]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    rates = [per_task_type[name]["won_rate"] for name in names]
    left.bar(labels, rates, color="tab:green")
    for index, name in enumerate(names):
        row = per_task_type[name]
        left.text(index, rates[index] + 0.02, f"{row['won']}/{row['attempted']}", ha="center", fontsize=8)
    left.set_ylim(0, 1.12)
    left.set_ylabel("won rate")
    left.set_title("expert won rate per task type")
    right.bar(labels, [per_task_type[name]["mean_steps_won"] for name in names], color="tab:blue")
    right.axhline(max_steps, color="grey", linestyle="--", linewidth=1, label=f"step cap ({max_steps})")
    right.set_ylim(0, max_steps * 1.2)
    right.legend(loc="upper left", fontsize=8)
    right.set_ylabel("mean steps (won games)")
    right.set_title("expert steps per task type")
    for axis in (left, right):
        axis.tick_params(axis="x", labelsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return save_figure(figure, path)


# ------------------------------------------------------------------------------------------------ training


def plot_loss_curve(log_history: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Train and eval loss against the optimizer step (a trainer's `log_history`)."""
    plt = _pyplot()
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    figure, axis = plt.subplots(figsize=(7, 3.5))
    if train:
        axis.plot(*zip(*train), label="train loss", marker=".")
    if evals:
        axis.plot(*zip(*evals), label="eval loss", marker="o")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss (assistant tokens)")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def mean_train_loss(log_history: Sequence[Mapping[str, Any]]) -> float | None:
    """The mean training loss per optimizer step over every logged step of the whole run (all runs into the
    folder: a resumed run's log starts with the checkpoint's). Each logged loss is the mean since the previous
    log line, so it counts for the steps it covers."""
    total = covered = 0.0
    previous = 0
    for entry in log_history:
        if "loss" in entry and isinstance(entry.get("step"), int) and entry["step"] > previous:
            total += entry["loss"] * (entry["step"] - previous)
            covered += entry["step"] - previous
            previous = entry["step"]
    return total / covered if covered else None


# ---------------------------------------------------------------------------------------------- evaluation


def summarize_agent(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Success rate, average steps, per-task-type success, lost games by cause, invalid-reply rate, tokens and wall
    time of one agent, from its games' details (`summarize_run`: each with its `failure`, classified once)."""
    played = len(records)
    steps = sum(r["steps"] for r in records)
    won = sum(int(r["won"]) for r in records)
    per_type: dict[str, dict[str, Any]] = {}
    for record in records:
        entry = per_type.setdefault(record["task_type"], {"games": 0, "won": 0})
        entry["games"] += 1
        entry["won"] += int(record["won"])
    for task_type, entry in per_type.items():
        entry["success_rate"] = round(entry["won"] / entry["games"], 4)
        entry["failures"] = failures.tally_causes(r["failure"] for r in records if r["task_type"] == task_type)
    wall = sum(r["wall_s"] for r in records)
    return {
        "games": played,
        "won": won,
        "success_rate": round(won / played, 4) if played else 0.0,
        "avg_steps": round(steps / played, 2) if played else 0.0,
        "per_task_type": dict(sorted(per_type.items())),
        "failures": failures.tally_causes(r["failure"] for r in records),
        "invalid_replies": sum(r["invalid_replies"] for r in records),
        "invalid_reply_rate": round(sum(r["invalid_replies"] for r in records) / steps, 4) if steps else 0.0,
        "tokens_generated": sum(r["tokens_generated"] for r in records),
        "wall_time_s": round(wall, 1),
        "games_per_hour": round(3600 * played / max(1e-9, wall), 1),
    }


DETAIL_KEYS = (
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


def summarize_run(
    records: Sequence[dict[str, Any]], agents: Sequence[str], game_ids: Sequence[str], **settings: Any
) -> dict[str, Any]:
    """The results document: the run's settings, then per agent its summary and its games (selected games only)."""
    wanted = set(game_ids)
    blocks: dict[str, Any] = {}
    for agent in agents:
        mine = [r for r in records if r["agent"] == agent and r["game_id"] in wanted]
        detail = [{**{k: r.get(k) for k in DETAIL_KEYS}, "failure": _failure(r)} for r in mine]
        blocks[agent] = {**summarize_agent(detail), "games_detail": detail}
    return {**settings, "num_games": len(game_ids), "agents": blocks}


def _failure(record: Mapping[str, Any]) -> str | None:
    return None if record["won"] else failures.classify_failure(record)


def failure_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Lost games by cause: per agent, a row for each task type that lost any, then the agent's total."""
    rows = []
    for agent, block in results["agents"].items():
        for task_type, entry in block["per_task_type"].items():
            if entry["games"] > entry["won"]:
                rows.append({"agent": agent, "task_type": task_type, "lost": entry["games"] - entry["won"],
                             **entry["failures"]})  # fmt: skip
        rows.append({"agent": agent, "task_type": "all", "lost": block["games"] - block["won"], **block["failures"]})
    return rows


def loop_example(results: Mapping[str, Any], agent: str = "zero_shot") -> dict[str, Any] | None:
    """The game of a run that shows a search loop best (`failures.pick_loop_example`, among `agent`'s games): its
    trial with the longest loop traced turn by turn beside the memory line the model read (`failures.trace_search`,
    in the prompt format the run played, as its run key stores it). None when the agent played no game."""
    record = failures.pick_loop_example(r for r in played_games(results["config"]["output"]) if r["agent"] == agent)
    if record is None:
        return None
    # A fine-tuned run's key holds its adapter's prompt format beside other keys; a base run's holds none.
    prompt = results["run"]["prompt"]
    fields = {name: prompt[name] for name in prompts.PromptFormat.__dataclass_fields__ if name in prompt}
    fmt = prompts.read_prompt_format(fields) if fields else None
    search = failures.describe_search(record)
    outcome = "won" if record["won"] else f"lost ({failures.classify_failure(record)})"
    read = "the memory line it read" if fmt and fmt.show_memory else "no memory line: this model was not shown one"
    return {
        "heading": (
            f"{agent}, {record['game_id']}: {record['task']}; {outcome} in {search['turns']} turns, {search['moves']} "
            f"moves; its longest search (trial {search['loop_trial'] + 1}): {search['loop_revisits']} of "
            f"{search['loop_moves']} moves back to a place already visited; {read}"
        ),
        "rows": failures.trace_search(record, fmt, trial=search["loop_trial"]),
    }


def write_results(path: str | os.PathLike[str], results: dict[str, Any], *, seed: int) -> Path:
    """The results JSON (with run metadata) and a success-rate plot beside it."""
    from alfworld_sft.results import write_result

    write_result(path, results, seed=seed)
    plot_results({Path(path).stem: results}, Path(path).with_suffix(".png"))
    return Path(path)


def results_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per agent: the summary figures without the per-game detail."""
    hidden = ("games_detail", "per_task_type", "failures")
    return [
        {
            "agent": name,
            **{k: v for k, v in block.items() if k not in hidden},
            "lost_by_cause": failures.format_failures(block["failures"]) if "failures" in block else "n/a",
        }
        for name, block in results["agents"].items()
    ]


def summarize_evaluations(
    base: dict[str, Any], finetuned: Mapping[str, dict[str, Any] | None], served: dict[str, Any] | None
) -> dict[str, Any]:
    """Notebook 05's summary (`05_evaluation.json`, which `course.render_results` reads): each run's table, the
    split, and each run's step cap and games (the base model's sample plays fewer of both in full mode)."""
    played = {"base": base, **{actions: run for actions, run in finetuned.items() if run}}
    return {
        "base": results_table(base),
        "finetuned": results_table(finetuned["free"]) if finetuned.get("free") else None,
        "finetuned_constrained": results_table(finetuned["constrained"]) if finetuned.get("constrained") else None,
        "served_gguf": results_table(served) if served else None,
        "served": served["served"] if served else None,
        "split": base["split"],
        "max_steps": {name: run["max_steps"] for name, run in {**played, "served": served}.items() if run},
        "num_games": {name: run["num_games"] for name, run in played.items()},
    }


def _agent_order(name: str) -> int:
    from alfworld_sft.agents import AGENTS

    return list(AGENTS).index(name) if name in AGENTS else len(AGENTS)


def plot_results(runs: dict[str, dict[str, Any]], path: Path) -> Path:
    """Success rate per agent (left) and per task type for every agent (right), one bar colour per run."""
    plt = _pyplot()
    agent_names = sorted({a for r in runs.values() for a in r["agents"]}, key=_agent_order)
    task_types = [
        t for t in TASK_TYPES if any(t in b["per_task_type"] for r in runs.values() for b in r["agents"].values())
    ]
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1, 2]})
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
    left.set_ylim(0, 1.05)
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
        [task_label(t) for t in task_types],
        rotation=20,
    )
    right.set_ylim(0, 1.05)
    right.set_title("success per task type")
    right.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    return save_figure(figure, path)


def compare_results(
    *results: str | Path | dict[str, Any],
    plot: str | Path | None = None,
    agents: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Two or more result files side by side (e.g. base, fine-tuned, fine-tuned with grounded commands): a table per
    agent and one per (agent, task type), a column per run, plus a PNG.

    Returns {"labels", "agents": rows, "task_types": rows, "markdown": text, "plot": path}; the plot lands at `plot`
    (default: beside the last file, named <first>_vs_<second>[_vs_...].png). `agents` keeps only those agents.
    """
    if len(results) < 2:
        raise ValueError(f"compare needs two or more result files, got {len(results)}")
    runs, labels = [], []
    for item in results:
        if isinstance(item, dict):
            runs.append(item)
            labels.append(str(item.get("model", "run")))
        else:
            item = Path(item)
            if not item.exists():
                raise FileNotFoundError(f"result file {item} does not exist: run `alfworld-sft evaluate` first")
            run = files.read_json_object(item, "give a results JSON that `alfworld-sft evaluate` wrote", ("agents",))
            if not isinstance(run["agents"], dict):
                raise files.CorruptFileError(f"{item} is not an evaluation results file: its 'agents' is no object")
            runs.append(run)
            labels.append(item.stem)
    if len(set(labels)) < len(labels):
        labels = [f"{chr(ord('A') + i)}:{label}" for i, label in enumerate(labels)]
    if agents is not None:
        runs = [{**run, "agents": {k: v for k, v in run["agents"].items() if k in agents}} for run in runs]
    agent_rows, type_rows = [], []
    for agent_name in sorted(set().union(*(run["agents"] for run in runs)), key=_agent_order):
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
        if sum(1 for blk in blocks if blk) < 2:  # an agent only one run played has no side-by-side per task type
            continue
        for task_type in sorted(set().union(*(blk.get("per_task_type", {}) for blk in blocks))):
            cells = [blk.get("per_task_type", {}).get(task_type, {}) for blk in blocks]
            type_rows.append(
                {
                    "agent": agent_name,
                    "task_type": task_type,
                    **{
                        f"won_{lab}": f"{c.get('won', 0)}/{c.get('games', 0)}" if blk else None
                        for lab, c, blk in zip(labels, cells, blocks)
                    },
                }
            )
    markdown = format_table(agent_rows) + "\n\n" + format_table(type_rows)
    if plot is None:
        last = results[-1]
        base = Path(last) if not isinstance(last, dict) else paths.RESULTS_DIR / "eval" / "comparison.json"
        plot = base.with_name("_vs_".join(_slug(label) for label in labels) + ".png")
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


# ---------------------------------------------------------------------------------------------------- DAgger


def plot_rounds(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str = "") -> Path:
    """DAgger / self-imitation per round (`dagger_runs.round_rows`): success on the left (the rollouts' win rate on the
    round's train games, played by the previous round's adapter; the round's adapter on held-out games, round 0
    being the starting adapter), training data on the right (expert and new records)."""
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    played = [row for row in rows if row.get("rollouts_won") is not None]
    evaluated = [row for row in rows if row.get("eval_success") is not None]
    if played:
        left.plot([r["round"] for r in played], [r["rollouts_won"] for r in played], marker="o",
                  label="rollouts won (train games, previous adapter)")  # fmt: skip
    if evaluated:
        left.plot([r["round"] for r in evaluated], [r["eval_success"] for r in evaluated], marker="s",
                  label="evaluation success (held-out games)")  # fmt: skip
    left.set_ylim(0, 1.05)
    left.set_xlabel("round")
    left.set_ylabel("success rate")
    left.set_title("success per round")
    left.legend(fontsize=8)
    rounds = [row for row in rows if row.get("new_records") is not None]
    numbers = [row["round"] for row in rounds]
    expert = [row["expert_records"] for row in rounds]
    right.bar(numbers, expert, label="expert records", color="tab:blue")
    right.bar(numbers, [row["new_records"] for row in rounds], bottom=expert, label="new records", color="tab:orange")
    right.set_xlabel("round")
    right.set_ylabel("training records")
    right.set_title("training data per round")
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.set_xticks(sorted({row["round"] for row in rows}))
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return save_figure(figure, path)


def plot_methods(runs: Mapping[str, Sequence[dict[str, Any]]], path: str | os.PathLike[str]) -> Path:
    """Several DAgger / self-imitation runs (`dagger_runs.read_run_rows`) on one axis: the held-out success of each
    round's adapter, one line per run, round 0 being the adapter they start from."""
    evaluated = {name: [row for row in rows if row.get("eval_success") is not None] for name, rows in runs.items()}
    if not any(evaluated.values()):
        raise ValueError("no round of these runs was evaluated: run `alfworld-sft dagger` with --eval-split")
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    for name, rows in evaluated.items():
        axis.plot([r["round"] for r in rows], [r["eval_success"] for r in rows], marker="o", label=name)
    axis.set_xticks(sorted({row["round"] for rows in evaluated.values() for row in rows}))
    # At least 10 points of height: runs a game or two apart should not look far apart.
    lowest = min(row["eval_success"] for rows in evaluated.values() for row in rows)
    axis.set_ylim(max(0.0, min(lowest - 0.02, 0.9)), 1.0)
    axis.set_xlabel("round")
    axis.set_ylabel("success rate (held-out games)")
    axis.set_title("success per round")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)


# ------------------------------------------------------------------------------------------------ transcripts


def transcript_text(record: dict[str, Any], *, max_turns: int = 12) -> str:
    """A finished game (a game log line) as readable text: plan, replies, commands, observations."""
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


def played_games(results_path: str | Path) -> list[dict[str, Any]]:
    """The finished games (game log lines, with every reply) behind a results file."""
    results = files.read_json(results_path)
    game_log = results["config"]["checkpoint"]  # `evaluate --checkpoint`: the seed guide's name for the game log
    game_log = paths.resolve_repo_path(game_log) if game_log else Path(results_path).with_suffix(".ckpt.jsonl")
    return records.read_rollouts(game_log, results["run"])


def example_transcripts(results_path: str | Path) -> dict[str, str]:
    """One transcript per agent from a run's game log (a won game when there is one), as readable text."""
    chosen: dict[str, dict[str, Any]] = {}
    for record in played_games(results_path):
        if record["agent"] not in chosen or (record["won"] and not chosen[record["agent"]]["won"]):
            chosen[record["agent"]] = record
    agents = files.read_json(results_path)["agents"]
    return {agent: transcript_text(chosen[agent]) for agent in agents if agent in chosen}


def side_by_side(left: dict[str, Any], right: dict[str, Any], labels: Sequence[str], *, max_turns: int = 20) -> str:
    """The same game played twice (e.g. free and constrained decoding), step by step: each reply, the command it
    became and how."""
    if left["game_id"] != right["game_id"]:
        raise ValueError(f"two different games: {left['game_id']} and {right['game_id']}")

    def cells(record: dict[str, Any]) -> list[str]:
        turns = [turn for trial in record["transcript"] for turn in trial["turns"]]
        return [f"{t['command']} ({t['how']})" if t["command"] else f"{t['reply']!r} (invalid)" for t in turns]

    sides = [cells(left), cells(right)]
    rows = [
        (step + 1, *(side[step] if step < len(side) else "" for side in sides))
        for step in range(min(max_turns, max(map(len, sides))))
    ]
    rows.append(("won", left["won"], right["won"]))
    header = f"{left['game_id']}\nTask: {left['task']}\n"
    return header + format_table(rows, ("step", *labels))


# -------------------------------------------------------------------------------------------------------- CLI


def configure_parser(subparsers: argparse._SubParsersAction) -> None:
    from alfworld_sft.agents import AGENTS

    compare = subparsers.add_parser("compare", help="compare two or more evaluation result files (table + plot)")
    # by hand: no config dataclass, the arguments of `compare_results`
    compare.add_argument("results", nargs="+", help="result files of `alfworld-sft evaluate`, two or more")
    compare.add_argument("--plot", default=None, help="PNG path (default: beside the last file)")
    compare.add_argument("--agents", nargs="+", default=None, choices=list(AGENTS), help="only these agents")
    compare.set_defaults(func=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    if args.plot:
        files.check_output(paths.resolve_repo_path(args.plot), "--plot")
    comparison = compare_results(*args.results, plot=args.plot, agents=args.agents)
    print(comparison["markdown"])
    print(f"plot: {comparison['plot']}")
    return 0
