"""Evaluation speed: games per hour per agent, batched (one generate call per step for all games) vs one game
at a time, same model, same games, same process.

    python benchmarks/eval_speed.py                                  # default model, batch 8, all agents
    python benchmarks/eval_speed.py --agents zero_shot --games 8 --max-steps 5 --dtype bfloat16

Greedy replies do not depend on the batch (tests/test_backends.py checks it), so both modes play exactly the
same moves; the ratio is the batching speed-up. Prints one line per agent and writes a JSON with --output.
"""

from __future__ import annotations

import argparse
import os
import time

from alfworld_sft import models
from alfworld_sft.agents import AGENTS
from alfworld_sft.backends import load_backend
from alfworld_sft.evaluation import load_demonstrations, play_games, select_games


def measure(agent: str, backend, gamefiles, *, batch_size: int, max_steps: int, kwargs) -> dict:
    started = time.perf_counter()
    records = play_games(agent, backend, gamefiles, max_steps=max_steps, seed=0, batch_size=batch_size,
                         agent_kwargs=kwargs)
    seconds = time.perf_counter() - started
    return {"batch_size": batch_size, "seconds": round(seconds, 1), "games_per_hour": round(3600 * len(records) / seconds, 1),
            "steps": sum(r["steps"] for r in records), "tokens": sum(r["tokens_generated"] for r in records),
            "actions": [r["actions"] for r in records]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=list(AGENTS))
    parser.add_argument("--games", type=int, default=8, help="games per mode (balanced eval_in_distribution sample)")
    parser.add_argument("--max-steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    if not os.environ.get("ALFWORLD_DATA"):
        raise SystemExit("set ALFWORLD_DATA to the unpacked ALFWorld data")

    backend = load_backend(args.model, dtype=args.dtype, threads=args.threads)
    gamefiles = select_games("eval_in_distribution", args.games, seed=0)
    figures = {}
    for agent in args.agents:
        kwargs = {}
        if agent == "few_shot":
            kwargs["demonstrations"] = load_demonstrations(seed=0)
        batched = measure(agent, backend, gamefiles, batch_size=args.batch_size, max_steps=args.max_steps,
                          kwargs=kwargs)
        single = measure(agent, backend, gamefiles, batch_size=1, max_steps=args.max_steps, kwargs=kwargs)
        same = sorted(map(tuple, batched.pop("actions"))) == sorted(map(tuple, single.pop("actions")))
        speedup = batched["games_per_hour"] / single["games_per_hour"]
        figures[agent] = {"batched": batched, "one_at_a_time": single, "speedup": round(speedup, 2),
                          "same_moves": same}
        print(f"{agent:13s} batch {args.batch_size}: {batched['games_per_hour']:7.1f} games/h "
              f"({batched['seconds']} s) | one at a time: {single['games_per_hour']:7.1f} games/h "
              f"({single['seconds']} s) | x{speedup:.2f} | same moves: {same}", flush=True)
    if args.output:
        from alfworld_sft.results import write_result

        write_result(args.output, {"settings": vars(args), "agents": figures}, seed=0)


if __name__ == "__main__":
    main()
