"""Decode speed of the rollout loop's model: milliseconds per decode forward of `decoding.SlotDecoder`, and what
they depend on.

On the H200 an evaluation's decode forward of the 135M default model took 85 ms with 36 rows and 108 ms with 109
rows (results/README.md): nearly independent of the rows, so mostly not arithmetic. This isolates the candidates,
each measured on the same model in one run:

* attention: `sdpa` (the GPU default: with a mask, transformers copies every key/value head once per query head
  that reads it) against `grouped` (`decoding.grouped_attention`: reads the cache in place);
* rows: every slot decoding (the cache is read as a view) against 7 of 8 (the cache's active rows are gathered
  into a copy, every layer);
* CPU load: idle against `--busy` processes spinning on the CPUs (an evaluation runs one engine worker a core beside
  the model's process, which must launch every kernel of every layer).

`--grounded` adds what grounded zero_shot spends instead of decode forwards: the prefill forward that settles every
row's reply, each row's new turn (`--new-tokens` after its kept prefix) followed by the trie of a real admissible list
(from `--records`, expert trajectories), and of it the milliseconds spent building the trie's attention mask on the
CPU (`SlotDecoder._trie_visibility`: 847 ms for 128 rows on the 2-core CPU before it was vectorized; on an H100,
once vectorized, 23 ms of a 340 ms turn of 128 rows, measured beside a collection: results/README.md).

Each row of the table: `--rows` slots, each prefilled with `--prompt-tokens` random tokens, then `--steps` decode
forwards timed (after 3 unmeasured); the median and the mean in ms, and tokens a second.

    python benchmarks/decode_speed.py --device cuda --rows 128 --prompt-tokens 1500      # on the GPU machine
    python benchmarks/decode_speed.py --rows 8 --prompt-tokens 300 --busy 0               # here, on the CPU
    python benchmarks/decode_speed.py --device cuda --grounded --busy 0                   # grounded prefill only

With `--grounded`, `--restart-every N` (default 8) also times turns where one row in N starts a new game (its whole
prompt new), grouped for prefill as the decoder does (`decoding.group_by_padded_size`: rows of like size together)
and, as the baseline in the same run, in arrival order by their sum of new tokens (padding not counted).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time

from alfworld_sft.paths import REPO_ROOT


def spin() -> None:
    while True:
        pass


def measure(model, tokenizer, *, rows: int, active: int, prompt_tokens: int, steps: int, seed: int) -> dict:
    import torch
    from alfworld_sft.backends import Request
    from alfworld_sft.decoding import SlotDecoder

    # The vocabulary's last token as the only stop: random prompts all but never end on it, so every row decodes for
    # the whole measurement. It must be a real token: idle rows are fed it (-1 was an out-of-range index on the GPU).
    stop = model.config.vocab_size - 1
    decoder = SlotDecoder(model, tokenizer, stop_ids=[stop], rows=rows, initial_width=prompt_tokens + steps + 8)
    generator = torch.Generator().manual_seed(seed)
    for row in range(active):
        prompt = torch.randint(100, stop, (prompt_tokens,), generator=generator).tolist()
        decoder.submit(row, Request(messages=(), max_new_tokens=steps + 8), prompt, row)
    decoder.step()  # prefill, and the first decode forward
    times = []
    for index in range(steps + 3):
        started = time.perf_counter()
        decoder.step()
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        if index >= 3:
            times.append(time.perf_counter() - started)
    median = statistics.median(times)
    return {
        "median_ms": round(1000 * median, 2),
        "mean_ms": round(1000 * statistics.fmean(times), 2),
        "tokens_per_s": round(active / median),
    }


def group_in_arrival_order(sizes: dict[int, int], max_tokens: int) -> list[list[int]]:
    """The baseline of `decoding.group_by_padded_size`: rows in arrival order, a group closed when the sum of its
    new tokens would pass `max_tokens`, padding not counted (the decoder's grouping until 2026-12-05, which left the
    tries' tokens out of the sum as well: its groups were larger still)."""
    groups, group, budget = [], [], 0
    for index, size in sizes.items():
        if group and budget + size > max_tokens:
            groups.append(group)
            group, budget = [], 0
        group.append(index)
        budget += size
    return [*groups, group]


def measure_grounded(
    model,
    tokenizer,
    lists: list[list[str]],
    *,
    rows: int,
    prompt_tokens: int,
    new_tokens: int,
    steps: int,
    seed: int,
    restart_every: int = 0,
) -> dict:
    """Grounded prefill forwards: every row a new turn and its commands' trie, settled in the forward. With
    `restart_every` N, one row in N starts a new game each turn (its whole prompt new), as games end and begin in an
    evaluation; prefills are batched on any device then, so that the grouping of rows shows on a CPU too."""
    import torch
    from alfworld_sft.backends import Request
    from alfworld_sft.decoding import SlotDecoder

    stop = model.config.vocab_size - 1
    decoder = SlotDecoder(
        model,
        tokenizer,
        stop_ids=[stop],
        rows=rows,
        initial_width=prompt_tokens + 64,
        batch_prefill=True if restart_every else None,
    )
    sessions = list(range(rows))
    generator = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(100, stop, (prompt_tokens,), generator=generator).tolist() for _ in range(rows)]
    mask_s = []
    building = decoder._trie_visibility

    def timed_visibility(*args, **kwargs):
        started = time.perf_counter()
        try:
            return building(*args, **kwargs)
        finally:
            mask_s[-1] += time.perf_counter() - started

    decoder._trie_visibility = timed_visibility
    times = []
    for step in range(steps + 2):
        for row in range(rows):
            choices = tuple(dict.fromkeys(lists[(step * rows + row) % len(lists)]))
            if restart_every and step and (step + row) % restart_every == 0:
                decoder.release(sessions[row])
                sessions[row] = (row, step)
                prompts[row] = torch.randint(100, stop, (prompt_tokens,), generator=generator).tolist()
            request = Request(messages=(), max_new_tokens=8, choices=choices)
            decoder.submit(row, request, prompts[row], sessions[row])
        mask_s.append(0.0)
        started = time.perf_counter()
        replies = []
        while decoder.busy:
            replies += decoder.step()
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        if step >= 2:  # after the first turn (the whole prompt) and one more
            times.append(time.perf_counter() - started)
        for key, reply in replies:  # the next turn: the reply kept, then a new observation
            tail = torch.randint(100, stop, (new_tokens,), generator=generator).tolist()
            prompts[key] = prompts[key] + reply + tail
    median = statistics.median(times)
    return {
        "median_ms": round(1000 * median, 2),
        "mask_ms": round(1000 * statistics.median(mask_s[2:]), 2),
        "forwards_per_turn": round(decoder.stats.prefill_forwards / (steps + 2), 2),
        "rows_per_s": round(rows / median, 1),
    }


def run(args: argparse.Namespace) -> list[dict]:
    import torch
    from alfworld_sft import models
    from alfworld_sft.decoding import register_grouped_attention

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, models.resolve_dtype(args.dtype, device))
    tokenizer = models.load_tokenizer(args.model)
    attentions = {"sdpa": "sdpa", "grouped": register_grouped_attention()}
    loaded = {
        name: models.load_model(args.model, dtype=dtype, attn_implementation=impl).to(device).eval()
        for name, impl in attentions.items()
    }
    subset = max(1, args.rows * 7 // 8)
    for model in loaded.values():  # unmeasured: kernel selection, and the GPU's clocks up from idle
        measure(model, tokenizer, rows=args.rows, active=args.rows, prompt_tokens=args.prompt_tokens, steps=20, seed=1)
    results = []
    for busy in sorted({0, args.busy}):
        spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(busy)]
        for process in spinners:
            process.start()
        try:
            for name, model in loaded.items():
                for active in (args.rows, subset):
                    figures = measure(
                        model,
                        tokenizer,
                        rows=args.rows,
                        active=active,
                        prompt_tokens=args.prompt_tokens,
                        steps=args.steps,
                        seed=args.seed,
                    )
                    result = {"attention": name, "rows": args.rows, "active": active, "busy": busy, **figures}
                    results.append(result)
                    print(json.dumps(result), flush=True)
        finally:
            for process in spinners:
                process.terminate()
    return results


def run_grounded(args: argparse.Namespace) -> list[dict]:
    import torch
    from alfworld_sft import decoding, models
    from alfworld_sft.formatting import load_records

    lists = [commands for record in load_records(args.records) for commands in record["admissible_commands"]]
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, models.resolve_dtype(args.dtype, device))
    tokenizer = models.load_tokenizer(args.model)
    model = models.load_model(args.model, dtype=dtype).to(device).eval()
    kwargs = {"rows": args.rows, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "seed": args.seed}
    measure_grounded(model, tokenizer, lists, steps=2, **kwargs)  # unmeasured: kernel selection, clocks
    results = [{"rows": args.rows, **measure_grounded(model, tokenizer, lists, steps=args.steps, **kwargs)}]
    if args.restart_every:  # games ending and starting: the decoder's grouping against the baseline, same run
        own = decoding.group_by_padded_size
        for name, grouping in (("arrival order", group_in_arrival_order), ("padded size", own)):
            decoding.group_by_padded_size = grouping
            try:
                figures = measure_grounded(
                    model, tokenizer, lists, steps=args.steps, restart_every=args.restart_every, **kwargs
                )
            finally:
                decoding.group_by_padded_size = own
            results.append({"rows": args.rows, "restart_every": args.restart_every, "grouping": name, **figures})
    for result in results:
        print(json.dumps(result), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    from alfworld_sft import models

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--dtype", default="auto", choices=models.DTYPES)
    parser.add_argument("--rows", type=int, default=128, help="slots of the decoder (an evaluation's --batch-size)")
    parser.add_argument("--prompt-tokens", type=int, default=1500, help="tokens already in each row's cache")
    parser.add_argument("--steps", type=int, default=30, help="decode forwards timed per row of the table")
    parser.add_argument("--busy", type=int, default=os.cpu_count(), help="CPU-spinning processes for the loaded rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grounded", action="store_true", help="also time grounded prefill forwards (docstring)")
    parser.add_argument("--new-tokens", type=int, default=60, help="--grounded: a turn's new prompt tokens")
    parser.add_argument(
        "--restart-every", type=int, default=8, help="--grounded: one row in N starts a new game a turn (0: none)"
    )
    parser.add_argument("--records", default=str(REPO_ROOT / "results" / "oracle" / "trajectories.jsonl"))
    parser.add_argument("--output", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    results = run(args)
    grounded = run_grounded(args) if args.grounded else []
    print(f"{'attention':<9} {'active/rows':>11} {'busy':>5} {'median ms':>10} {'mean ms':>8} {'tokens/s':>9}")
    for r in results:
        print(
            f"{r['attention']:<9} {r['active']:>5}/{r['rows']:<5} {r['busy']:>5} {r['median_ms']:>10} "
            f"{r['mean_ms']:>8} {r['tokens_per_s']:>9}"
        )
    for r in grounded:
        mixed = f", 1 row in {r['restart_every']} a new game, grouped by {r['grouping']}" if "grouping" in r else ""
        print(
            f"grounded prefill, {r['rows']} rows{mixed}: {r['median_ms']} ms a turn ({r['forwards_per_turn']} "
            f"forwards), of which {r['mask_ms']} ms building the trie mask; {r['rows_per_s']} replies/s"
        )
    if args.output:
        with open(args.output, "w") as handle:
            json.dump({"args": vars(args), "results": results, "grounded": grounded}, handle)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
