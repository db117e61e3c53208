"""Evaluation speed: games per hour per agent, the same model on the same games in one run, four ways.

* `naive`: one game at a time, every prompt computed from scratch (a plain generate loop);
* `step_sync`: the loop the course had before its rollout loop, kept here as the baseline: `--batch-size` games
  at a time in this process, one batched generate call per step that waits for the longest reply, then every game
  stepped in turn (prefixes kept);
* `engine_1`: the rollout loop (`alfworld_sft.rollouts`) with one engine worker process;
* `engine_N`: the rollout loop with `--workers` engine processes (default: the CPU count).

With two or more agents and `engine_N` among the modes, the run ends with every agent's games in ONE continuous
batch (`rollouts.play_rollout_groups`, what `alfworld-sft evaluate` does) against the agents' `engine_N` runs one
after another: the wall time of the whole evaluation, both ways.

    python benchmarks/eval_speed.py --agents zero_shot react --games 8 --max-steps 20
    python benchmarks/eval_speed.py --device cuda --games 140 --max-steps 50 --batch-size 64 --modes step_sync engine_N
    python benchmarks/eval_speed.py --model /path/to/llama-8b-shaped --device cuda --modes engine_N --games 16

Greedy replies do not depend on the batch, the workers or the kept prefix (tests compare float32), so every mode
should play the same moves (`same_moves`; bfloat16 rounding can flip a near-tie). For the engine modes the
profile says where the time went: engine starts and steps (summed over workers), prompt building, prefill,
decode, waiting and the rest. Prints a table and writes a JSON with --output.
"""

from __future__ import annotations

import argparse
import os
import time

from alfworld_sft import generate, models
from alfworld_sft.agents import AGENTS, Episode, build_agent, session_of
from alfworld_sft.backends import load_backend
from alfworld_sft.evaluation import load_demonstrations
from alfworld_sft.reports import format_table
from alfworld_sft.rollouts import RolloutConfig, play_rollout_groups, play_rollouts

MODES = ("naive", "step_sync", "engine_1", "engine_N")


def play_step_sync(backend, agent: str, gamefiles, *, batch_size: int, max_steps: int, demos) -> list[dict]:
    """The baseline: games in lock-step, one generate call per step for all of them, engine calls in turn."""
    from alfworld_sft import games

    kwargs = {"demonstrations": demos} if agent == "few_shot" else {}
    player = build_agent(agent, backend.codec, **kwargs)
    queue, active, records = list(gamefiles), [], []
    while queue or active:
        while queue and len(active) < batch_size:
            gamefile = queue.pop(0)
            active.append(Episode(player, gamefile, game_id=games.game_id(gamefile), max_steps=max_steps, seed=0))
        replies = backend.generate([episode.request() for episode in active])
        for episode, reply in zip(active, replies):
            episode.advance(reply)
            if episode.finished:
                records.append({"game_id": episode.game_id, **episode.record()})
                backend.release(session_of(agent, episode.game_id))
        active = [episode for episode in active if not episode.finished]
    return records


def rollout_config(agent: str, args, demos, *, workers: int) -> RolloutConfig:
    return RolloutConfig(
        agent=agent,
        max_steps=args.max_steps,
        workers=workers,
        expert=None,
        progress=False,
        demonstrations=tuple(demos) if agent == "few_shot" else (),
    )


def measure_together(backend, gamefiles, args, demos) -> dict:
    """Every agent's games in one continuous batch on `--workers` engine processes."""
    groups = [(rollout_config(agent, args, demos, workers=args.workers), gamefiles) for agent in args.agents]
    started = time.perf_counter()
    result = play_rollout_groups(backend, groups)
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 1), "games": len(result.records)}


def measure(mode: str, backend, agent: str, gamefiles, args, demos) -> dict:
    decoder = getattr(backend, "decoder", None)
    if decoder is not None:
        decoder.prefix_reuse = mode != "naive"
    started = time.perf_counter()
    profile = None
    if mode in ("naive", "step_sync"):
        size = 1 if mode == "naive" else args.batch_size
        records = play_step_sync(backend, agent, gamefiles, batch_size=size, max_steps=args.max_steps, demos=demos)
    else:
        config = rollout_config(agent, args, demos, workers=1 if mode == "engine_1" else args.workers)
        result = play_rollouts(backend, gamefiles, config)
        records, profile = result.records, result.profile.as_dict()
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 1),
        "games_per_hour": round(3600 * len(records) / seconds, 1),
        "won": sum(r["won"] for r in records),
        "steps": sum(r["steps"] for r in records),
        "moves": sorted((r["game_id"], tuple(r["actions"])) for r in records),
        "profile": profile,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--agents", nargs="+", default=["zero_shot", "react"], choices=list(AGENTS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--games", type=int, default=8, help="games (balanced eval_in_distribution sample)")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8, help="rows decoded together (and step_sync's games)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="engine processes of engine_N")
    parser.add_argument("--dtype", default="auto", choices=models.DTYPES)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--output", default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    gamefiles = generate.ensure_games("eval_in_distribution", args.games, seed=0)
    backend = load_backend(
        args.model,
        adapter=args.adapter,
        dtype=args.dtype,
        threads=args.threads,
        device=args.device,
        batch_size=args.batch_size,
    )
    demos = load_demonstrations(seed=0) if "few_shot" in args.agents else []
    print(
        f"{len(gamefiles)} games x {args.max_steps} steps, {backend.name}, {backend.dtype} on {args.device}, "
        f"{os.cpu_count()} CPUs (load {os.getloadavg()[0]:.1f}), batch {args.batch_size}, workers {args.workers}"
    )
    figures: dict[str, dict] = {}
    rows = []
    for agent in args.agents:
        modes = {mode: measure(mode, backend, agent, gamefiles, args, demos) for mode in args.modes}
        moves = [mode.pop("moves") for mode in modes.values()]
        baseline = modes[args.modes[0]]["games_per_hour"]
        figures[agent] = {**modes, "same_moves": all(m == moves[0] for m in moves)}
        for name, mode in modes.items():
            profile = mode["profile"] or {}
            rows.append(
                (
                    agent,
                    name,
                    mode["seconds"],
                    mode["games_per_hour"],
                    f"x{mode['games_per_hour'] / baseline:.2f}",
                    mode["won"],
                    *(
                        round(profile.get(k, 0), 1)
                        for k in (
                            "engine_start_s",
                            "engine_step_s",
                            "prompt_s",
                            "prefill_s",
                            "decode_s",
                            "rank_s",
                            "wait_s",
                            "overhead_s",
                        )
                    ),
                    # How full the decoding batch ran: rows a decode forward (a grounded reply's command is
                    # scored whole, by the rank forwards: its tokens are no decode forward's).
                    round(profile.get("decode_rows", 0) / max(profile.get("decode_forwards", 0), 1), 1),
                    profile.get("rank_forwards", 0),
                )
            )
        print(
            format_table(rows[-len(modes) :], HEADERS),
            f"\nsame moves in every mode: {figures[agent]['same_moves']}",
            flush=True,
        )
    print(format_table(rows, HEADERS))
    if len(args.agents) > 1 and "engine_N" in args.modes:
        together = measure_together(backend, gamefiles, args, demos)
        in_turn = sum(figures[agent]["engine_N"]["seconds"] for agent in args.agents)
        figures["all_agents"] = {
            "in_turn_s": round(in_turn, 1),
            "together_s": together["seconds"],
            "speedup": round(in_turn / together["seconds"], 2),
            "games": together["games"],
        }
        print(
            f"all {len(args.agents)} agents, engine_N: one after another {in_turn:.1f} s, in one batch "
            f"{together['seconds']:.1f} s (x{in_turn / together['seconds']:.2f})",
            flush=True,
        )
    if args.output:
        from alfworld_sft.results import write_result

        write_result(args.output, {"settings": vars(args), "agents": figures}, seed=0)


HEADERS = (
    "agent",
    "mode",
    "s",
    "games/h",
    "vs first mode",
    "won",
    "engine start s",
    "engine step s",
    "prompt s",
    "prefill s",
    "decode s",
    "rank s",
    "wait s",
    "other s",
    "rows a decode",
    "rank forwards",
)


if __name__ == "__main__":
    main()
