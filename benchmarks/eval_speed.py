"""Evaluation speed: games per hour per agent in three modes, same model, same games, same process.

* `naive`: one game at a time, every prompt computed from scratch (what a plain generate loop does);
* `one_at_a_time`: one game at a time, each game's prompt prefix kept between its steps;
* `batched`: `--batch-size` games at a time, prefixes kept, all replies of a step decoded together.

    python benchmarks/eval_speed.py                                  # default model, batch 8, all agents
    python benchmarks/eval_speed.py --agents zero_shot react --games 8 --max-steps 10 --dtype bfloat16 --threads 2

Greedy replies do not depend on the batch or on the kept prefix (tests/test_backends.py checks it in float32),
so all modes should play the same moves (`same_moves`; bfloat16 rounding can flip a near-tie). The goal is
batched >= 3x naive at batch 8 on a CPU. Prints one line per agent and writes a JSON with --output.
"""

from __future__ import annotations

import argparse
import os
import time

from alfworld_sft import models
from alfworld_sft.agents import AGENTS
from alfworld_sft.backends import load_backend
from alfworld_sft.evaluation import load_demonstrations, play_games, select_games


def measure(agent: str, backend, gamefiles, *, batch_size: int, prefix_cache: bool, max_steps: int, kwargs) -> dict:
    backend.prefix_cache = prefix_cache
    computed_before = backend.prompt_tokens - backend.reused_tokens
    started = time.perf_counter()
    records = play_games(
        agent, backend, gamefiles, max_steps=max_steps, seed=0, batch_size=batch_size, agent_kwargs=kwargs
    )
    seconds = time.perf_counter() - started
    return {
        "batch_size": batch_size,
        "prefix_cache": prefix_cache,
        "seconds": round(seconds, 1),
        "games_per_hour": round(3600 * len(records) / seconds, 1),
        "steps": sum(r["steps"] for r in records),
        "tokens_generated": sum(r["tokens_generated"] for r in records),
        "prompt_tokens_computed": backend.prompt_tokens - backend.reused_tokens - computed_before,
        "actions": [r["actions"] for r in records],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=list(AGENTS))
    parser.add_argument("--games", type=int, default=8, help="games per mode (balanced eval_in_distribution sample)")
    parser.add_argument("--max-steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu (the goal's setting), cuda or auto")
    parser.add_argument("--output", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    if not os.environ.get("ALFWORLD_DATA"):
        raise SystemExit("set ALFWORLD_DATA to the unpacked ALFWorld data")

    backend = load_backend(args.model, dtype=args.dtype, threads=args.threads, device=args.device)
    gamefiles = select_games("eval_in_distribution", args.games, seed=0)
    figures = {}
    for agent in args.agents:
        kwargs = {}
        if agent == "few_shot":
            kwargs["demonstrations"] = load_demonstrations(seed=0)
        common = {"max_steps": args.max_steps, "kwargs": kwargs}
        modes = {
            "naive": measure(agent, backend, gamefiles, batch_size=1, prefix_cache=False, **common),
            "one_at_a_time": measure(agent, backend, gamefiles, batch_size=1, prefix_cache=True, **common),
            "batched": measure(agent, backend, gamefiles, batch_size=args.batch_size, prefix_cache=True, **common),
        }
        moves = [sorted(map(tuple, mode.pop("actions"))) for mode in modes.values()]
        rate = {name: mode["games_per_hour"] for name, mode in modes.items()}
        figures[agent] = {
            **modes,
            "same_moves": all(m == moves[0] for m in moves),
            "speedup_vs_naive": round(rate["batched"] / rate["naive"], 2),
            "speedup_of_batching": round(rate["batched"] / rate["one_at_a_time"], 2),
        }
        print(
            f"{agent:13s} games/h: naive {rate['naive']:7.1f} | one at a time {rate['one_at_a_time']:7.1f} | "
            f"batch {args.batch_size} {rate['batched']:7.1f} | batched/naive x{figures[agent]['speedup_vs_naive']:.2f}"
            f" | batched/one-at-a-time x{figures[agent]['speedup_of_batching']:.2f} | prompt tokens computed "
            f"{modes['naive']['prompt_tokens_computed']} -> {modes['batched']['prompt_tokens_computed']} | "
            f"same moves: {figures[agent]['same_moves']}",
            flush=True,
        )
    if args.output:
        from alfworld_sft.results import write_result

        write_result(args.output, {"settings": vars(args), "agents": figures}, seed=0)


if __name__ == "__main__":
    main()
