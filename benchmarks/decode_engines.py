"""The course's decoder beside transformers' own continuous batching, on the same real game prompts.

Issue 29 asks for a maintained library's engine wherever it is at least as fast as the hand-written one. This puts
the two side by side in one run, on the same model, the same prompts and the same greedy free replies:

* `slot_decoder`: `decoding.SlotDecoder` (what `evaluate`, DAgger and notebooks 05/06 play with), every prompt
  submitted at once to `--rows` slots;
* `generate_batch`: transformers' continuous batching (`model.generate_batch`: paged attention, its own scheduler),
  the model loaded with `attn_implementation="paged|sdpa"`;
* `generate` (the reference, on a sample of `--reference` prompts): plain `model.generate`, one prompt at a time.

The prompts are every user turn of the expert records in `--records` (system, the turns so far, the next user turn:
what a model is asked in a game), the first `--prompts` of them. Each engine runs once unmeasured on a few prompts
(kernel selection, the GPU's clocks), then once timed. Replies are compared token for token; float32 (the CPU) must
agree everywhere, bfloat16 may flip a near-tie. Grounded replies (one admissible command, scored whole) have no
counterpart in `generate_batch`: they are `decoding`'s alone, so only free replies are compared here.

    python benchmarks/decode_engines.py --device cuda --prompts 128 --rows 128     # on the GPU machine
    python benchmarks/decode_engines.py --prompts 8 --rows 8 --max-new-tokens 8    # here, on the CPU (minutes)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from alfworld_sft import models
from alfworld_sft.paths import REPO_ROOT


def read_prompts(records_path: Path, limit: int) -> list[list[dict[str, str]]]:
    """Every user turn of the records as the conversation a model answers there, in file order, at most `limit`."""
    from alfworld_sft.formatting import load_records

    prompts = []
    for record in load_records(records_path):
        turns = [{"role": "system", "content": record["system"]}]
        for message in record["conversations"]:
            turns.append({"role": message["role"], "content": message["content"]})
            if message["role"] == "user":
                prompts.append(list(turns))
                if len(prompts) == limit:
                    return prompts
    if not prompts:
        raise ValueError(f"{records_path} holds no user turns: pass expert trajectories with --records")
    return prompts


def run_slot_decoder(model, tokenizer, prompts: list[list[int]], *, rows: int, max_new_tokens: int) -> list[list[int]]:
    from alfworld_sft.backends import Request
    from alfworld_sft.decoding import SlotDecoder

    stop_ids = models.stop_token_ids(tokenizer)
    decoder = SlotDecoder(model, tokenizer, stop_ids=stop_ids, rows=rows)
    for index, prompt in enumerate(prompts):
        decoder.submit(index, Request(messages=(), max_new_tokens=max_new_tokens), prompt, None)
    replies: dict[int, list[int]] = {}
    while decoder.busy:
        for key, ids in decoder.step():
            replies[key] = [i for i in ids if i not in stop_ids]
    return [replies[index] for index in range(len(prompts))]


def run_generate_batch(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int) -> list[list[int]]:
    from transformers import GenerationConfig

    stop_ids = models.stop_token_ids(tokenizer)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id
    )
    outputs = model.generate_batch(inputs=prompts, generation_config=config, progress_bar=False)
    # Keys are request ids in submission order ("req_0", "req_1", ...).
    ordered = sorted(outputs.values(), key=lambda output: int(str(output.request_id).rsplit("_", 1)[-1]))
    return [[i for i in output.generated_tokens if i not in stop_ids] for output in ordered]


def run_generate(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int) -> list[list[int]]:
    import torch

    stop_ids = models.stop_token_ids(tokenizer)
    replies = []
    for prompt in prompts:
        ids = torch.tensor([prompt], device=model.device)
        out = model.generate(
            ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop_ids,
            pad_token_id=tokenizer.pad_token_id,
        )
        replies.append([i for i in out[0, len(prompt) :].tolist() if i not in stop_ids])
    return replies


def timed(engine, *args, device: str, **kwargs) -> tuple[float, list[list[int]]]:
    import torch

    started = time.perf_counter()
    replies = engine(*args, **kwargs)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, replies


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--dtype", default="auto", choices=models.DTYPES)
    parser.add_argument("--records", default=str(REPO_ROOT / "results" / "oracle" / "trajectories.jsonl"))
    parser.add_argument("--prompts", type=int, default=128, help="user turns answered (the first of the records)")
    parser.add_argument("--rows", type=int, default=128, help="slots of the course's decoder")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--reference", type=int, default=8, help="prompts also answered by plain generate")
    parser.add_argument("--output", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, models.resolve_dtype(args.dtype, device))
    tokenizer = models.load_tokenizer(args.model)
    conversations = read_prompts(Path(args.records), args.prompts)
    encoded = (tokenizer.apply_chat_template(c, add_generation_prompt=True, return_dict=True) for c in conversations)
    prompts = [list(e["input_ids"]) for e in encoded]
    slot_model = models.load_model(args.model, dtype=dtype).to(device).eval()
    paged_model = models.load_model(args.model, dtype=dtype, attn_implementation="paged|sdpa").to(device).eval()
    warm = prompts[: min(4, len(prompts))]
    run_slot_decoder(slot_model, tokenizer, warm, rows=args.rows, max_new_tokens=4)
    run_generate_batch(paged_model, tokenizer, warm, max_new_tokens=4)

    results, replies = {}, {}
    for name, engine, kwargs in (
        ("slot_decoder", run_slot_decoder, {"model": slot_model, "rows": args.rows}),
        ("generate_batch", run_generate_batch, {"model": paged_model}),
    ):
        model = kwargs.pop("model")
        seconds, replies[name] = timed(
            engine, model, tokenizer, prompts, device=device, max_new_tokens=args.max_new_tokens, **kwargs
        )
        generated = sum(len(r) for r in replies[name])
        results[name] = {
            "seconds": round(seconds, 3),
            "generated_tokens": generated,
            "tokens_per_s": round(generated / seconds, 1),
        }
    sample = prompts[: args.reference]
    seconds, reference = timed(
        run_generate, slot_model, tokenizer, sample, device=device, max_new_tokens=args.max_new_tokens
    )
    results["generate"] = {"seconds": round(seconds, 3), "prompts": len(sample)}
    for name in ("slot_decoder", "generate_batch"):
        results[name]["same_as_generate"] = f"{sum(a == b for a, b in zip(replies[name], reference))}/{len(sample)}"
    agree = sum(a == b for a, b in zip(replies["slot_decoder"], replies["generate_batch"]))
    summary = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "prompts": len(prompts),
        "prompt_tokens": sum(len(p) for p in prompts),
        "max_new_tokens": args.max_new_tokens,
        "engines": results,
        "slot_decoder_equals_generate_batch": f"{agree}/{len(prompts)}",
    }
    print(f"{len(prompts)} prompts ({summary['prompt_tokens']} tokens), {summary['dtype']} on {summary['device']}")
    print(f"{'engine':<15} {'seconds':>8} {'tokens':>7} {'tokens/s':>9} {'same as generate':>17}")
    for name in ("slot_decoder", "generate_batch"):
        r = results[name]
        same = r["same_as_generate"]
        print(f"{name:<15} {r['seconds']:>8} {r['generated_tokens']:>7} {r['tokens_per_s']:>9} {same:>17}")
    print(
        f"plain generate: {results['generate']['seconds']} s for {len(sample)} prompts; "
        f"slot_decoder equals generate_batch on {summary['slot_decoder_equals_generate_batch']}"
    )
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
