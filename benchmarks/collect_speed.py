"""Collection speed: fixed games played by the bare engine loop and by the collector at 1 and N workers.

    python benchmarks/collect_speed.py --games 12 --workers 2

The baseline, measured in the same run, is the bare engine: ALFWorld's expert playing each game in this process with
no records, files or progress bar. Then `collect_trajectories` plays the same games (same per-game seeds, so the
same steps) with TextWorld's double PDDL translation, with its text parsed again at every step (no
`engine.cache_text_parses`), with both paid once, and with N worker processes. Prints games/s, steps/s, CPU seconds
per game (workers included) and the speed-ups. The load average is printed too: on a shared machine other jobs take
cores, while CPU s/game shows the cost whatever the load. Uses $ALFWORLD_DATA, or the generated games (made first if
missing).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from alfworld_sft import collect, games, generate


def play_bare(gamefiles: list[Path], seed: int, max_steps: int) -> int:
    """The expert loop with no bookkeeping; returns the steps played."""
    from alfworld_sft.engine import DEFAULT_EXPERT, AlfworldGame, expert_seed

    steps = 0
    for gamefile in gamefiles:
        with AlfworldGame(gamefile, expert=DEFAULT_EXPERT, seed=expert_seed(seed, games.game_id(gamefile))) as game:
            state = game.reset()
            played = 0
            while played < max_steps and state.expert_action and not state.done:
                state = game.step(state.expert_action)
                played += 1
            steps += played
    return steps


def play_collect(gamefiles: list[Path], seed: int, max_steps: int, workers: int, translate_once: bool) -> int:
    with tempfile.TemporaryDirectory() as folder:
        config = collect.CollectConfig(
            output=Path(folder) / "trajectories.jsonl",
            games=tuple(gamefiles),
            seed=seed,
            max_steps=max_steps,
            workers=workers,
            translate_once=translate_once,
            progress=False,
        )
        summary = collect.collect_trajectories(config)
        if summary.failed:
            raise RuntimeError(f"games failed: {summary.failed}")
        ledger = [line for line in collect.files.read_jsonl(summary.ledger)]
        return sum(row["steps"] for row in ledger)


@contextlib.contextmanager
def text_parsed_each_step() -> Iterator[None]:
    """In this process, TextWorld's own parsers (no `engine.cache_text_parses`) for the block's duration."""
    from alfworld_sft import engine
    from textworld import logic
    from textworld.envs.pddl import textgen

    engine.cache_text_parses()
    cached = {module: module._parse_and_convert for module in (textgen, logic)}
    install = engine.cache_text_parses
    for module, parse in cached.items():
        module._parse_and_convert = parse.original
    engine.cache_text_parses = lambda: None
    try:
        yield
    finally:
        engine.cache_text_parses = install
        for module, parse in cached.items():
            module._parse_and_convert = parse


def play_uncached(gamefiles: list[Path], seed: int, max_steps: int) -> int:
    with text_parsed_each_step():
        return play_collect(gamefiles, seed, max_steps, 1, translate_once=True)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished workers: what a game costs whatever else the machine runs."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--games", type=int, default=12, help="games, balanced over the six task types")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--split", default="train", choices=list(games.SPLITS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=50)
    args = parser.parse_args()

    gamefiles = generate.ensure_games(args.split, args.games, args.seed)
    print(
        f"{len(gamefiles)} games of {args.split} from {games.data_root()}, seed {args.seed}, "
        f"max {args.max_steps} steps; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )

    runs = [
        ("bare engine loop (baseline)", lambda: play_bare(gamefiles, args.seed, args.max_steps)),
        (
            "collect, 1 worker, PDDL translated twice",
            lambda: play_collect(gamefiles, args.seed, args.max_steps, 1, translate_once=False),
        ),
        (
            "collect, 1 worker, text parsed every step",
            lambda: play_uncached(gamefiles, args.seed, args.max_steps),
        ),
        (
            "collect, 1 worker",
            lambda: play_collect(gamefiles, args.seed, args.max_steps, 1, translate_once=True),
        ),
        (
            f"collect, {args.workers} workers",
            lambda: play_collect(gamefiles, args.seed, args.max_steps, args.workers, translate_once=True),
        ),
    ]
    rows = []
    for label, run in runs:
        cpu_start = _cpu_seconds()
        start = time.perf_counter()
        steps = run()
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu_start
        rows.append((label, seconds, steps, cpu))
        print(
            f"  {label:<44} {seconds:7.1f} s  {len(gamefiles) / seconds:6.3f} games/s  "
            f"{steps / seconds:6.1f} steps/s  {cpu / len(gamefiles):5.2f} CPU s/game  "
            f"(load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    if len({steps for _, _, steps, _ in rows}) != 1:
        raise RuntimeError(f"the runs played different numbers of steps: {[row[2] for row in rows]}")

    bare, twice, parsed, once, parallel = (seconds for _, seconds, _, _ in rows)
    cpu_once, cpu_parallel = rows[3][3], rows[4][3]
    print(f"1 worker vs bare engine:       {bare / once:.2f}x  (translating twice: {bare / twice:.2f}x)")
    print(f"translating the PDDL once:     {twice / once:.2f}x faster than twice")
    print(f"text parses cached:            {parsed / once:.2f}x faster than parsed every step")
    print(
        f"{args.workers} workers vs 1 worker:        {once / parallel:.2f}x  "
        f"(goal >= {0.8 * args.workers:.1f}x; efficiency {once / parallel / args.workers:.0%})"
    )
    # Wall-clock speed-up needs N idle cores; the CPU cost per game tells what N workers add whatever the load
    # (their start-up: each spawned worker imports TextWorld and ALFWorld once).
    print(
        f"CPU per game, {args.workers} workers vs 1:   {cpu_parallel / cpu_once:.2f}x  "
        f"(with {args.workers} idle cores the speed-up is at most "
        f"{args.workers * cpu_once / cpu_parallel:.2f}x)"
    )


if __name__ == "__main__":
    main()
