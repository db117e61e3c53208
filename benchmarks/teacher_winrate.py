"""Win rate of the observation-driven teacher against ALFWorld's handcoded expert on the same real games.

    python benchmarks/teacher_winrate.py --per-type 50 --workers 2          # a seeded sample, balanced over types
    python benchmarks/teacher_winrate.py --all --workers 2                  # the whole split
    python benchmarks/teacher_winrate.py --per-type 20 --no-expert --lost   # teacher only, lost games' transcripts
    python benchmarks/teacher_winrate.py --per-type 20 --random-steps 10    # take-over after 10 random commands

Each game is played twice in one worker, by `engine.play_expert`: with the teacher and, as the baseline of the same
run, with ALFWorld's handcoded expert (its random fallbacks seeded per game as the collection seeds them). Prints,
per task type, won/attempted and mean steps of the won games for both, and the teacher's guesses (decisions without
a grounded plan: steps, and games with any); writes the figures, one row per game and, with --lost, the transcripts
of the teacher's lost games to a JSON file. With --random-steps K a seeded random policy plays K commands first and
the teacher takes over (what DAgger asks of it: labels for states it did not choose); the teacher then has
--max-steps commands of its own, and no baseline is played. Uses $ALFWORLD_DATA (the real games), else the course's
generated games.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from alfworld_sft import games, paths
from alfworld_sft.task_types import TASK_TYPES


def play_both(
    gamefile: str, split: str, seed: int, max_steps: int, random_steps: int, expert: bool, transcript: bool
) -> dict[str, Any]:
    """One game played by the teacher and, when asked, by the handcoded expert: one result row."""
    from alfworld_sft.engine import play_expert

    game_id = games.game_id(gamefile)
    started = time.perf_counter()
    game = play_expert(
        gamefile, seed=seed, game_id=game_id, expert="teacher", max_steps=max_steps, random_opening=random_steps
    )
    row: dict[str, Any] = {
        "game_id": game_id,
        "task_type": games.read_task_type(gamefile),
        "teacher_won": game.won,
        "teacher_steps": game.steps - game.opening,
        "teacher_guesses": sum(game.guesses[game.opening :]),
        "teacher_seconds": round(time.perf_counter() - started, 2),
    }
    if transcript and not game.won:
        row["transcript"] = {
            "task": game.task,
            "first_observation": game.first_observation,
            "turns": [
                {"thought": t, "label": label, "command": c, "guess": g, "observation": o}
                for t, label, c, g, o in zip(game.thoughts, game.labels, game.commands, game.guesses, game.observations)
            ],
        }
    if expert:
        started = time.perf_counter()
        try:
            baseline = play_expert(gamefile, seed=seed, game_id=game_id, expert="handcoded", max_steps=max_steps)
            row.update(expert_won=baseline.won, expert_steps=baseline.steps, expert_error=None)
        except Exception as error:  # noqa: BLE001 - a game the engine cannot play is a row, not the end
            row.update(expert_won=False, expert_steps=0, expert_error=f"{type(error).__name__}: {error}")
        row["expert_seconds"] = round(time.perf_counter() - started, 2)
    return row


def play_all(gamefiles: list[Path], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows in the order of `gamefiles`, whatever order the workers finish in."""
    from tqdm import tqdm

    expert = not args.no_expert and not args.random_steps
    jobs = [(str(g), args.split, args.seed, args.max_steps, args.random_steps, expert, args.lost) for g in gamefiles]
    if args.workers <= 1:
        return [play_both(*job) for job in tqdm(jobs, desc="games", unit="game")]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    rows: dict[int, dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=context) as executor:
        futures = {executor.submit(play_both, *job): index for index, job in enumerate(jobs)}
        for future in tqdm(as_completed(futures), total=len(futures), desc="games", unit="game"):
            rows[futures[future]] = future.result()
    return [rows[index] for index in range(len(jobs))]


def summarize(rows: Iterable[dict[str, Any]], expert: bool) -> dict[str, dict[str, Any]]:
    """Figures per task type and over all games."""
    by_type: dict[str, list[dict[str, Any]]] = {name: [] for name in TASK_TYPES}
    rows = list(rows)
    for row in rows:
        by_type[row["task_type"]].append(row)
    by_type["all"] = rows
    table = {}
    for name, group in by_type.items():
        if not group:
            continue
        figures: dict[str, Any] = {"attempted": len(group)}
        for who in ("teacher", "expert") if expert else ("teacher",):
            won = [row[f"{who}_steps"] for row in group if row[f"{who}_won"]]
            figures[f"{who}_won"] = len(won)
            figures[f"{who}_win_rate"] = round(len(won) / len(group), 4)
            figures[f"{who}_mean_steps_won"] = round(sum(won) / len(won), 2) if won else None
        figures["teacher_guess_steps"] = sum(row["teacher_guesses"] for row in group)
        figures["teacher_games_with_guesses"] = sum(1 for row in group if row["teacher_guesses"])
        table[name] = figures
    return table


def print_table(table: dict[str, dict[str, Any]], expert: bool) -> None:
    def cell(figures: dict[str, Any], who: str) -> str:
        steps = figures[f"{who}_mean_steps_won"]
        won = f"{figures[f'{who}_won']}/{figures['attempted']} ({100 * figures[f'{who}_win_rate']:.0f}%)"
        return f"{won:>15} {steps if steps is not None else '-':>6}"

    header = f"{'task type':<32} {'teacher won':>15} {'steps':>6} {'guesses':>9}"
    if expert:
        header += f" {'expert won':>15} {'steps':>6}"
    print(header)
    for name, figures in table.items():
        guesses = f"{figures['teacher_guess_steps']}/{figures['teacher_games_with_guesses']}g"
        line = f"{name:<32} {cell(figures, 'teacher')} {guesses:>9}"
        if expert:
            line += f" {cell(figures, 'expert')}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sample = parser.add_mutually_exclusive_group()
    sample.add_argument("--per-type", type=int, default=20, help="games of each task type (a seeded sample)")
    sample.add_argument("--all", action="store_true", help="every game of the split")
    parser.add_argument("--split", default="train", choices=list(games.SPLITS))
    parser.add_argument("--seed", type=int, default=0, help="seeds the sample and the expert's random fallbacks")
    parser.add_argument("--max-steps", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1, help="processes that play whole games")
    parser.add_argument("--no-expert", action="store_true", help="play the teacher only (no baseline)")
    parser.add_argument(
        "--random-steps",
        type=int,
        default=0,
        help="a take-over: a seeded random policy plays this many commands first, then the teacher (no baseline); "
        "steps and guesses count the teacher's own",
    )
    parser.add_argument("--lost", action="store_true", help="keep the transcripts of the teacher's lost games")
    parser.add_argument("--output", type=Path, default=paths.RESULTS_DIR / "benchmarks" / "teacher_winrate.json")
    args = parser.parse_args()

    if not games.user_alfworld_data():
        raise SystemExit("set ALFWORLD_DATA to the unpacked ALFWorld data: the benchmark plays the real games")
    if args.all:
        gamefiles = games.list_games(args.split)
    else:
        gamefiles = games.list_games(args.split, limit=args.per_type * len(TASK_TYPES), seed=args.seed)
    print(
        f"{len(gamefiles)} games of {args.split}, seed {args.seed}, max {args.max_steps} steps, {args.workers} "
        f"workers; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    start = time.perf_counter()
    rows = play_all(gamefiles, args)
    wall = time.perf_counter() - start
    expert = not args.no_expert and not args.random_steps
    table = summarize(rows, expert)
    print_table(table, expert)
    teacher_seconds = sum(row["teacher_seconds"] for row in rows) / len(rows)
    print(f"{wall:.0f} s wall; teacher {teacher_seconds:.2f} s a game (load, reset, play)", end="")
    if expert:
        print(f", expert {sum(row['expert_seconds'] for row in rows) / len(rows):.2f} s a game")
    else:
        print()
    lost = [row["game_id"] for row in rows if not row["teacher_won"]]
    if lost:
        print("teacher lost:\n  " + "\n  ".join(lost))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": "python benchmarks/teacher_winrate.py " + " ".join(sys.argv[1:]),
        "split": args.split,
        "seed": args.seed,
        "max_steps": args.max_steps,
        "random_steps": args.random_steps,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "wall_s": round(wall, 1),
        "table": table,
        "games": rows,
    }
    args.output.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
