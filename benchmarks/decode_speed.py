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

Each row of the table: `--rows` slots, each prefilled with `--prompt-tokens` random tokens, then `--steps` decode
forwards timed (after 3 unmeasured); the median and the mean in ms, and tokens a second.

    python benchmarks/decode_speed.py --device cuda --rows 128 --prompt-tokens 1500      # on the GPU machine
    python benchmarks/decode_speed.py --rows 8 --prompt-tokens 300 --busy 0               # here, on the CPU
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time


def spin() -> None:
    while True:
        pass


def measure(model, tokenizer, *, rows: int, active: int, prompt_tokens: int, steps: int, seed: int) -> dict:
    import torch
    from alfworld_sft.backends import Request
    from alfworld_sft.decoding import SlotDecoder

    # A stop id no token has: every row decodes for the whole measurement.
    decoder = SlotDecoder(model, tokenizer, stop_ids=[-1], rows=rows, initial_width=prompt_tokens + steps + 8)
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    for row in range(active):
        prompt = torch.randint(100, vocab, (prompt_tokens,), generator=generator).tolist()
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
    parser.add_argument("--output", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    results = run(args)
    print(f"{'attention':<9} {'active/rows':>11} {'busy':>5} {'median ms':>10} {'mean ms':>8} {'tokens/s':>9}")
    for r in results:
        print(
            f"{r['attention']:<9} {r['active']:>5}/{r['rows']:<5} {r['busy']:>5} {r['median_ms']:>10} "
            f"{r['mean_ms']:>8} {r['tokens_per_s']:>9}"
        )
    if args.output:
        with open(args.output, "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
