"""Oracle trajectories: ALFWorld's handcoded expert plays each game of a split in the real TextWorld engine.

One expert command per step, the expert re-asked after every step (field notes §4). Each won game becomes
one record of `trajectories.jsonl` in the format CONTRIBUTING.md fixes (system prompt, user/assistant turns
rendered with `alfworld_sft.prompts`, the admissible commands of every user turn, and game metadata). Every
attempted game, won or not, also gets one line in the sidecar ledger `<output stem>.attempts.jsonl`, so a
rerun skips it.

    alfworld-sft collect --split train --output results/oracle/trajectories.jsonl --max-steps 50 --workers 4

    from alfworld_sft.collect import CollectConfig, collect_trajectories
    summary = collect_trajectories(CollectConfig(split="train", limit=12, workers=2))

Safe to kill: records are appended and flushed one by one by a single writer, a torn last line is cut on the
next run, and the rerun plays only the games that are in neither the output nor the ledger. Python's `random`
(which the expert falls back on) is seeded per game from (seed, game id), so a record does not depend on the
worker count or the order games finish in. Beside the output: `<stem>.summary.json` and `<stem>.summary.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from alfworld_sft import engine, files, games, paths, prompts, records, reports
from alfworld_sft.flags import add_options, config_from_args, option
from alfworld_sft.results import write_result
from alfworld_sft.task_types import TASK_TYPES


def split_task_types(text: str) -> tuple[str, ...] | None:
    """`--task-types 1,pick_and_place_simple` -> ("1", "pick_and_place_simple"); empty: None (every type)."""
    return tuple(text.split(",")) if text else None


@dataclass(frozen=True)
class CollectConfig:
    """One collection. Each field with help is an `alfworld-sft collect` flag (`flags`)."""

    split: str = option("train", "the course split played (default %(default)s)", choices=games.SPLITS)
    output: Path = option(  # won games, one record a line
        paths.RESULTS_DIR / "oracle" / "trajectories.jsonl",
        "JSONL of won games (relative paths are read from the repository root; "
        "default: results/oracle/trajectories.jsonl)",
    )
    max_steps: int = option(50, "expert commands per game before it counts as lost (the seed guide's cap: %(default)s)")
    workers: int = option(  # 1 plays in this process; 0: one per CPU
        1, "processes playing whole games; 0: one per CPU (default: the CPU count)"
    )
    limit: int | None = option(  # games.list_games
        None, "a seeded sample of this many games, balanced over task types (default: the whole split)"
    )
    task_types: tuple[int | str, ...] | None = option(
        None, "only these task types: comma-separated numbers 1-6 or names", type=split_task_types
    )
    seed: int = option(0, "sample seed and, with the game id, seed of Python's random for each game's expert")
    prompt_format: prompts.PromptFormat = prompts.DEFAULT_PROMPT_FORMAT  # how user turns are rendered
    translate_once: bool = option(  # the same result, ~0.4 s less a game
        True,
        "let TextWorld translate each game's PDDL again at reset (slower; for comparison)",
        flag="--translate-twice",
        action="store_false",
    )
    games: tuple[Path, ...] | None = None  # play exactly these game files instead of listing the split
    expert: str = engine.DEFAULT_EXPERT  # who plays: the course's teacher or ALFWorld's handcoded expert
    progress: bool = True  # show a tqdm bar


@dataclass(frozen=True)
class GameOutcome:
    """What playing one game gave: the record when won, and the ledger line in any case."""

    game_id: str
    gamefile: str
    task_type: str
    won: bool
    steps: int
    error: str | None  # why the engine could not play it (then won is False and steps 0)
    record: dict[str, Any] | None  # the trajectory record (also for a lost game; only won ones are kept)
    seconds: float


@dataclass(frozen=True)
class CollectSummary:
    output: Path  # the trajectories file
    ledger: Path  # one line per attempted game
    summary_json: Path
    plot: Path
    attempted: int  # games in the ledger, over all runs into this output
    won: int  # records in the output
    played_now: int  # games played by this call
    skipped: int  # games this call found done already
    failed: tuple[str, ...]  # "game file: error" for games the engine could not play
    per_task_type: dict[str, dict[str, float]]  # attempted, won, won_rate, mean_steps_won, failed
    wall_time_s: float  # this call
    workers: int  # worker processes of this call


def ledger_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.attempts.jsonl")


def summary_paths(output: Path) -> tuple[Path, Path]:
    return output.with_name(f"{output.stem}.summary.json"), output.with_name(f"{output.stem}.summary.png")


def play_game(
    gamefile: str | os.PathLike[str],
    *,
    split: str,
    seed: int = 0,
    max_steps: int = 50,
    prompt_format: prompts.PromptFormat = prompts.DEFAULT_PROMPT_FORMAT,
    translate: bool = True,
    game_id: str | None = None,
    expert: str = engine.DEFAULT_EXPERT,
) -> GameOutcome:
    """The expert plays one game (`engine.play_expert`), turned into a trajectory record; a game the engine cannot
    play gives `error`."""
    gamefile = Path(gamefile).resolve()
    game_id = game_id or games.game_id(gamefile)
    start = time.perf_counter()
    try:
        task_type = games.read_task_type(gamefile)
    except (OSError, ValueError) as error:
        return GameOutcome(game_id, str(gamefile), "unknown", False, 0, str(error), None, 0.0)
    try:
        played = engine.play_expert(
            gamefile, seed=seed, game_id=game_id, expert=expert, max_steps=max_steps, translate_once=translate
        )
    except Exception as error:  # noqa: BLE001 - any engine failure is reported with the game, not fatal
        message = f"{type(error).__name__}: {error}".strip()
        return GameOutcome(
            game_id, str(gamefile), task_type, False, 0, message[:500], None, time.perf_counter() - start
        )
    record = build_record(
        played,
        game_id=game_id,
        gamefile=gamefile,
        task_type=task_type,
        split=split,
        seed=seed,
        prompt_format=prompt_format,
        expert=expert,
    )
    return GameOutcome(
        game_id, str(gamefile), task_type, played.won, played.steps, None, record, time.perf_counter() - start
    )


def build_record(
    played: engine.ExpertGame,
    *,
    game_id: str,
    gamefile: Path,
    task_type: str,
    split: str,
    seed: int,
    prompt_format: prompts.PromptFormat,
    expert: str,
) -> dict[str, Any]:
    """The trajectory record (records.py, CONTRIBUTING.md) of an expert's game: one user turn per state it saw,
    one assistant turn per command; the final state (won or out of steps) gets no user turn."""
    later = list(zip(played.observations, played.admissible))[: played.steps - 1]
    users = prompts.render_user_turns(
        played.task, played.first_observation, played.first_admissible, later, prompt_format
    )
    turns = [{"role": "user", "content": users[0]}]
    for command, user in zip(played.commands, [*users[1:], None]):
        turns.append({"role": "assistant", "content": command})
        if user is not None:
            turns.append({"role": "user", "content": user})
    admissible = [list(played.first_admissible)] + [list(commands) for _, commands in later]
    record = {
        "system": prompts.SYSTEM_PROMPT,
        "conversations": turns,
        "admissible_commands": admissible,
        "prompt_format": prompt_format.as_dict(),
        "game_id": game_id,
        "gamefile": str(gamefile),
        "task_type": task_type,
        "task": played.task,
        "split": split,
        "seed": seed,
        "steps": played.steps,
        "won": played.won,
        "format_version": records.FORMAT_VERSION,
        "expert": expert,
    }
    if played.thoughts and all(played.thoughts):
        record["thoughts"] = list(played.thoughts)
    return record


def _check_compatible(done: list[dict[str, Any]], config: CollectConfig, path: Path) -> None:
    """A rerun must continue the same collection: same split, seed, step cap and prompt format."""
    expected = {
        "split": config.split,
        "seed": config.seed,
        "expert": config.expert,
        "prompt_format": config.prompt_format.as_dict(),
    }
    if path.name.endswith(".attempts.jsonl"):
        expected = {"split": config.split, "seed": config.seed, "max_steps": config.max_steps, "expert": config.expert}
    for record in done:
        for key, value in expected.items():
            found = record.get(key)
            if key == "prompt_format" and isinstance(found, dict):
                found = prompts.read_prompt_format(found).as_dict()  # an older record, fields defaulted
            if key in record and found != value:
                raise ValueError(
                    f"{path} holds games collected with {key}={record[key]!r}, this run asks for {value!r}: "
                    "use another --output, or the same settings to resume"
                )


def _ledger_line(outcome: GameOutcome, config: CollectConfig) -> dict[str, Any]:
    return {
        "game_id": outcome.game_id,
        "gamefile": outcome.gamefile,
        "task_type": outcome.task_type,
        "won": outcome.won,
        "steps": outcome.steps,
        "error": outcome.error,
        "seconds": round(outcome.seconds, 3),
        "split": config.split,
        "seed": config.seed,
        "max_steps": config.max_steps,
        "expert": config.expert,
    }


def _play_task(task: tuple[str, str, CollectConfig]) -> GameOutcome:
    gamefile, game_id, config = task
    return play_game(
        gamefile,
        split=config.split,
        seed=config.seed,
        max_steps=config.max_steps,
        prompt_format=config.prompt_format,
        translate=config.translate_once,
        game_id=game_id,
        expert=config.expert,
    )


def _outcomes(tasks: list[tuple[str, str, CollectConfig]], workers: int) -> Iterator[GameOutcome]:
    """Outcomes in the order games finish; whole games per worker process."""
    if workers <= 1:
        yield from map(_play_task, tasks)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    # spawn: a clean interpreter per worker, no inherited engine state or locks (also works under Jupyter).
    # An executor, not a Pool: a worker that dies raises BrokenProcessPool instead of being respawned forever.
    executor = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=engine.exit_with_parent,
        initargs=(os.getpid(),),
    )
    try:
        futures = [executor.submit(_play_task, task) for task in tasks]
        for future in as_completed(futures):
            yield future.result()
    except BrokenProcessPool as error:
        raise RuntimeError(
            f"a collection worker process died ({error}); the records so far are kept: rerun to resume, "
            "or use --workers 1 (a script read from stdin cannot start spawn workers: save it to a file)"
        ) from None
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def summarize_attempts(attempts: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per task type (ALFWorld order): attempted, won, won_rate, mean steps of won games, failed to load."""
    table: dict[str, dict[str, float]] = {}
    for name in TASK_TYPES:
        rows = [row for row in attempts if row.get("task_type") == name]
        won_steps = [row["steps"] for row in rows if row.get("won")]
        table[name] = {
            "attempted": len(rows),
            "won": len(won_steps),
            "won_rate": round(len(won_steps) / len(rows), 4) if rows else 0.0,
            "mean_steps_won": round(sum(won_steps) / len(won_steps), 2) if won_steps else 0.0,
            "failed": sum(1 for row in rows if row.get("error")),
        }
    return table


def select_games(config: CollectConfig) -> list[Path]:
    if config.games is not None:
        if not config.games:
            raise ValueError("CollectConfig.games is empty: give game files or leave it None to list the split")
        return [Path(path) for path in config.games]
    task_types = list(config.task_types) if config.task_types else None
    return games.list_games(config.split, task_types=task_types, limit=config.limit, seed=config.seed)


def collect_trajectories(config: CollectConfig) -> CollectSummary:
    """Play every selected game not yet done with the expert, appending won games to `config.output`."""
    from tqdm.auto import tqdm

    if config.max_steps < 1 or config.workers < 0:
        raise ValueError(
            f"--max-steps must be at least 1 and --workers at least 0 (0: one per CPU), got {config.max_steps}, "
            f"{config.workers}"
        )
    if config.workers == 0:
        config = replace(config, workers=os.cpu_count() or 1)
    output = paths.resolve_repo_path(config.output)
    with files.hold_output(output):
        ledger = ledger_path(output)
        summary_json, plot = summary_paths(output)
        start = time.perf_counter()

        kept = files.load_jsonl_log(output, required={"game_id": str}, label="trajectory")
        attempts = files.load_jsonl_log(ledger, required={"game_id": str}, label="ledger")
        _check_compatible(kept, config, output)
        _check_compatible(attempts, config, ledger)
        record_ids = {record["game_id"] for record in kept}
        # The latest ledger line of a game counts; a won game whose record is gone (a malformed line moved aside)
        # is played again.
        latest = {row["game_id"]: row for row in attempts}
        attempts = [row for row in latest.values() if not row.get("won") or row["game_id"] in record_ids]
        attempted_ids = {row["game_id"] for row in attempts}
        # A run killed between writing a record and its ledger line: the record is the truth.
        orphans = [record for record in kept if record["game_id"] not in attempted_ids]
        if orphans:
            repaired = [
                _ledger_line(
                    GameOutcome(r["game_id"], r["gamefile"], r["task_type"], r["won"], r["steps"], None, None, 0.0),
                    config,
                )
                for r in orphans
            ]
            files.append_jsonl(ledger, repaired)
            attempts.extend(repaired)
            attempted_ids.update(record["game_id"] for record in orphans)

        selected = select_games(config)
        tasks, seen = [], set()
        for gamefile in selected:
            identifier = games.game_id(gamefile)
            if identifier not in attempted_ids and identifier not in seen:
                seen.add(identifier)
                tasks.append((str(gamefile), identifier, config))
        skipped = len(selected) - len(tasks)

        failed_now: list[str] = []
        bar = tqdm(
            total=len(tasks),
            unit="game",
            desc=f"collect {config.split}",
            disable=not config.progress,
            dynamic_ncols=True,
        )
        won_now = 0
        try:
            for outcome in _outcomes(tasks, min(config.workers, max(1, len(tasks)))):
                if outcome.won and outcome.record is not None:
                    files.append_jsonl(output, [outcome.record])
                    won_now += 1
                line = _ledger_line(outcome, config)
                files.append_jsonl(ledger, [line])
                attempts.append(line)
                if outcome.error:
                    failed_now.append(f"{outcome.gamefile}: {outcome.error}")
                    bar.write(f"skipped {outcome.gamefile}: the engine could not play it ({outcome.error})")
                bar.update(1)
                bar.set_postfix(won=won_now)
        finally:
            bar.close()
        wall = time.perf_counter() - start

        per_type = summarize_attempts(attempts)
        failed = tuple(f"{row['gamefile']}: {row['error']}" for row in attempts if row.get("error"))
        won_total = sum(1 for row in attempts if row.get("won"))
        payload = {
            "output": str(output),
            "split": config.split,
            "max_steps": config.max_steps,
            "prompt_format": config.prompt_format.as_dict(),
            "attempted": len(attempts),
            "won": won_total,
            "won_rate": round(won_total / len(attempts), 4) if attempts else 0.0,
            "per_task_type": per_type,
            "failed": list(failed),
            "this_run": {
                "played": len(tasks),
                "won": won_now,
                "skipped_done": skipped,
                "failed": len(failed_now),
                "wall_time_s": round(wall, 2),
                "workers": config.workers,
                "games_per_s": round(len(tasks) / wall, 3) if wall > 0 else 0.0,
                "translate_once": config.translate_once,
            },
        }
        write_result(summary_json, payload, seed=config.seed)
        reports.plot_expert_summary(
            per_type,
            plot,
            f"oracle collection: {won_total}/{len(attempts)} games won, max {config.max_steps} steps ({config.split})",
            config.max_steps,
        )
        return CollectSummary(
            output=output,
            ledger=ledger,
            summary_json=summary_json,
            plot=plot,
            attempted=len(attempts),
            won=won_total,
            played_now=len(tasks),
            skipped=skipped,
            failed=failed,
            per_task_type=per_type,
            wall_time_s=wall,
            workers=config.workers,
        )


def verify_trajectories(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The seed guide's verification (record count, average turns, keys) plus the record contract check."""
    path = paths.resolve_repo_path(path)
    found = list(files.read_jsonl(path))
    if not found:
        raise ValueError(f"{path} holds no records: run the collection first (alfworld-sft collect)")
    for record in found:
        records.check_record(record)
    turns = [len(record["conversations"]) for record in found]
    ids = [record["game_id"] for record in found]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: {len(ids) - len(set(ids))} duplicate game ids")
    return {
        "records": len(found),
        "avg_turns": round(sum(turns) / len(turns), 1),
        "avg_steps": round(sum(record["steps"] for record in found) / len(found), 1),
        "keys": list(found[0].keys()),
        "task_types": {name: sum(r["task_type"] == name for r in found) for name in TASK_TYPES},
    }


def rerender_trajectories(
    source: str | os.PathLike[str], output: str | os.PathLike[str], fmt: prompts.PromptFormat
) -> int:
    """The expert games of `source` with their user turns rendered again in `fmt` (commands, thoughts and the
    rest unchanged), written whole to `output`: another prompt format without playing the games again. Every user
    turn is read back (`prompts.parse_turn`) and rendered by `prompts.render_user_turns`, as a new collection
    would render it. Returns the number of records."""
    source, output = paths.resolve_repo_path(source), paths.resolve_repo_path(output)
    if source == output:
        raise ValueError(f"--from-trajectories and --output are the same file ({source}): write to another")
    rendered = []
    for line, record in enumerate(files.read_jsonl(source), start=1):
        problem = records.validate_record(record)
        if problem:
            raise ValueError(f"{source}, line {line}: {problem}")
        users = [turn for turn in record["conversations"] if turn["role"] == "user"]
        task, first_observation, _ = prompts.parse_turn(users[0]["content"])
        admissible = record["admissible_commands"]
        later = [(prompts.parse_turn(turn["content"])[1], admissible[i + 1]) for i, turn in enumerate(users[1:])]
        texts = prompts.render_user_turns(task or "", first_observation, admissible[0], later, fmt)
        for turn, text in zip(users, texts):
            turn["content"] = text
        rendered.append({**record, "prompt_format": fmt.as_dict()})
    if not rendered:
        raise ValueError(f"{source} holds no records: collect trajectories first")
    files.write_text(output, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in rendered))
    return len(rendered)


def describe_summary(summary: CollectSummary) -> str:
    """The collection in a few lines: totals, won rate and mean steps per task type, games that failed."""
    lines = [
        (
            f"{summary.won}/{summary.attempted} games won, records in {summary.output} "
            f"(this run: {summary.played_now} played, {summary.skipped} already done, "
            f"{summary.wall_time_s:.0f} s, {summary.workers} workers)"
        )
    ]
    for kind in TASK_TYPES.values():
        row = summary.per_task_type[kind.name]
        steps = f"{row['mean_steps_won']:.1f}" if row["won"] else "-"
        lines.append(
            f"  {kind.id} {kind.name:<32} won {row['won']:>4}/{row['attempted']:<4} ({row['won_rate']:>4.0%})"
            f"  mean steps {steps}"
        )
    lines.extend(f"  could not play: {line}" for line in summary.failed)
    lines.append(f"summary: {summary.summary_json}\nplot: {summary.plot}")
    return "\n".join(lines)


def _run_collect(args) -> int:
    prompt_format = prompts.PromptFormat(
        show_admissible_commands=args.show_admissible_commands,
        show_memory=args.show_memory,
        show_holding=args.show_holding,
        search_order=args.search_order,
    )
    if args.from_trajectories:
        files.check_output(args.output, "--output")
        count = rerender_trajectories(args.from_trajectories, args.output, prompt_format)
        print(f"{count} games of {args.from_trajectories} rendered in {prompt_format} to {args.output}")
        return 0
    print(describe_summary(collect_trajectories(config_from_args(CollectConfig, args, prompt_format=prompt_format))))
    return 0


def configure_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "collect", help="play a split with the handcoded expert and write oracle trajectories (resumable)"
    )
    add_options(parser, CollectConfig, defaults={"workers": os.cpu_count() or 1})
    # By hand: fields of the prompt format, not of CollectConfig.
    parser.add_argument(
        "--show-admissible-commands",
        action="store_true",
        help="list the admissible commands in every user turn (prompts.PromptFormat)",
    )
    parser.add_argument(
        "--from-trajectories",
        metavar="JSONL",
        help="play nothing: render the expert games of this file again in the prompt format the other flags give",
    )
    parser.add_argument(
        "--show-memory",
        action=argparse.BooleanOptionalAction,
        default=prompts.DEFAULT_PROMPT_FORMAT.show_memory,
        help="add the game's memory (places not searched yet, the task's objects seen) to every later user turn "
        "(default: on, the measured recipe's)",
    )
    parser.add_argument(
        "--show-holding",
        action=argparse.BooleanOptionalAction,
        default=prompts.DEFAULT_PROMPT_FORMAT.show_holding,
        help="the memory also says what the robot holds and where it put the task's objects (needs --show-memory)",
    )
    parser.add_argument(
        "--search-order",
        action=argparse.BooleanOptionalAction,
        default=prompts.DEFAULT_PROMPT_FORMAT.search_order,
        help="the memory, from the first turn on, lists the places not searched in the order a search takes: where "
        "ALFRED's priors put the object sought first, then places that need no opening (needs --show-memory)",
    )
    parser.set_defaults(func=_run_collect)
