"""Training speed: set-ups of QLoRA on a Llama-3.1-8B-shaped model (GPU), and the CPU default's time per epoch.

GPU mode builds a Llama-3.1-8B-shaped model from its configuration with random weights (no download),
quantizes its decoder's linear layers to nf4 with double quantization (bitsandbytes), and trains LoRA r=16 on the
seven projections for a few optimizer steps of 16 sequences each (the course's effective batch). Sequence lengths
are drawn from real expert trajectories (`trajectory_lengths.json`, made by the `lengths` mode from a
trajectories JSONL); every set-up sees the same steps, in one run, on the same quantized base:

* naive (field notes §7, the seed guide's recipe): random micro-batches of 4 padded to their longest sequence,
  `prepare_model_for_kbit_training` (it upcasts embeddings, norms and the 128k-vocabulary head to fp32), the
  model's own loss over full logits, gradient checkpointing, sdpa attention;
* course before packing: micro-batches of 4 grouped by length (each step's 16 sequences sorted before they are
  cut), bf16 throughout, Liger kernels (fused linear cross-entropy: no full-vocabulary logits; RMSNorm, SwiGLU,
  RoPE), gradient checkpointing;
* packed <= 16 GiB, by sequences (the course's plan until 2026-12-02): each micro-batch's sequences in
  one row with restarting position ids (no padding), the course's varlen attention (PyTorch's flash kernel, never
  across sequences), Liger, a micro-batch of as many sequences as fit in 16 GiB if each were 2048 tokens long;
* packed <= 16 GiB: what `alfworld-sft train --memory-budget-gib 16` runs: the same, each step's sequences cut
  into passes of at most the tokens that `train_setup.plan_memory` finds fit in 16 GiB (`packing.cut_by_tokens`),
  with the gradient checkpointing it picks;
* packed, fastest: the same with the plan for all the memory the card has (no recomputation if it fits);
* unsloth (only when Unsloth imports and `--model-dir` names a model folder, e.g. from tools/make_8b_model.py):
  Unsloth's QLoRA on that model, padded micro-batches of 4, in a process of its own (it patches transformers).

For each it prints useful tokens per second (tokens of the sequences, never padding: the trained context), the
speed-up over naive, seconds per optimizer step, peak GPU memory (torch.cuda.max_memory_allocated) and the share
of the arithmetic bound: LoRA with recomputation costs ~6 x 8e9 FLOPs a token, at ~790 TFLOP/s bf16 on an H200
~16,500 tokens/s. The goal line checks the packed <= 16 GiB set-up against 3x naive at <= 16 GiB.

    python benchmarks/train_speed.py gpu --output $OUT/train_speed.json      # on the GPU machine
    python benchmarks/train_speed.py gpu --setups naive packed unsloth --model-dir <8B folder>   # some rows only
    python benchmarks/train_speed.py cpu                 # the default model, small-mode data, time per epoch
    python benchmarks/train_speed.py lengths --data results/oracle/trajectories.jsonl   # refresh the lengths
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

LENGTHS_FILE = Path(__file__).with_name("trajectory_lengths.json")
GIB = 1024**3
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ARITHMETIC_BOUND = 790e12 / (6 * 8.03e9)  # tokens/s: ~6 x 8B FLOPs a token at the H200's dense bf16 rate
BUDGET_GIB = 16.0  # the memory goal of the packed set-up
SETUPS = ("naive", "before_packing", "packed_by_sequences", "packed", "fastest", "unsloth")  # --setups, in run order
EFFECTIVE_BATCH = 16  # sequences per optimizer step, as the course trains (batch 4 x grad-accum 4)
PAD_ID = 128004  # Llama-3.1's <|finetune_right_pad_id|>
LLAMA_31_8B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "rope_theta": 500000.0,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": 128009,
    "pad_token_id": PAD_ID,
}


# ------------------------------------------------------------------------------------------------ lengths


def measure_lengths(data: str, model: str, max_seq_len: int) -> dict:
    """Token lengths (after the select_window window) of real trajectory records."""
    from alfworld_sft import formatting, models

    tokenizer = models.load_tokenizer(model)
    records = formatting.load_records(data)
    lengths = [formatting.build_example(r, tokenizer, max_seq_len)["num_tokens"] for r in records]
    return {"source": str(data), "tokenizer": model, "max_seq_len": max_seq_len, "lengths": lengths}


def read_lengths(max_seq_len: int) -> list[int]:
    return [min(n, max_seq_len) for n in json.loads(LENGTHS_FILE.read_text())["lengths"]]


# -------------------------------------------------------------------------------------------------- GPU


def build_quantized_llama(device: str):
    """A Llama-3.1-8B-shaped model with random weights, its decoder linears in nf4 (double quantization)."""
    import bitsandbytes as bnb
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**LLAMA_31_8B, attn_implementation="sdpa", use_cache=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, linear in list(parent.named_children()):
                if not isinstance(linear, torch.nn.Linear):
                    continue
                quantized = bnb.nn.Linear4bit(
                    linear.in_features,
                    linear.out_features,
                    bias=False,
                    compute_dtype=torch.bfloat16,
                    compress_statistics=True,
                    quant_type="nf4",
                    device="meta",
                )
                quantized.weight = bnb.nn.Params4bit(
                    linear.weight.data, requires_grad=False, compress_statistics=True, quant_type="nf4"
                ).to(device)
                setattr(parent, name, quantized)
                del linear
    model.is_loaded_in_4bit = True  # what from_pretrained(quantization_config=...) sets; PEFT reads it
    torch.cuda.empty_cache()
    return model


def make_steps(lengths: list[int], n_steps: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.choice(lengths) for _ in range(EFFECTIVE_BATCH)] for _ in range(n_steps)]


def micro_batches(step: list[int], options: dict) -> list[list[int]]:
    """A step's sequence lengths as forward passes: by a token budget, or `micro` sequences at a time."""
    from alfworld_sft import packing

    if options.get("tokens"):
        return [[step[i] for i in run] for run in packing.cut_by_tokens(step, options["tokens"])]
    order = sorted(step) if options["grouped"] else step
    return [order[i : i + options["micro"]] for i in range(0, len(order), options["micro"])]


def padded_batch(lengths: list[int], generator):
    """Random tokens padded to the longest: (input ids, attention mask, labels with -100 on padding)."""
    import torch

    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(0, 128000, (n,), generator=generator)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}, width * len(lengths)


def packed_batch(lengths: list[int], generator):
    """Random tokens of every sequence in one row, positions restarting at each: what TRL's padding-free collator
    builds (the first token of each sequence has no label, so no loss crosses a boundary)."""
    import torch

    ids = torch.randint(0, 128000, (1, sum(lengths)), generator=generator)
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    labels = ids.masked_fill(positions == 0, -100)
    return {"input_ids": ids, "position_ids": positions, "labels": labels}, sum(lengths)


def run_setup(model, name: str, steps: list[list[int]], options: dict, warmup: int) -> tuple[dict, object]:
    """Train LoRA on `model` through `steps` as `options` say; returns (measurements, the bare quantized model)."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    torch.cuda.empty_cache()  # the previous set-up's optimizer and adapters are gone: start from the weights alone
    model.set_attn_implementation(options["attention"])
    if options["upcast"]:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    elif options["checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    else:
        model.gradient_checkpointing_disable()
    if options["liger"]:
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama(
            rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=True, model=model
        )
    lora = LoraConfig(
        r=16, lora_alpha=16, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", target_modules=list(LORA_TARGETS)
    )
    peft_model = get_peft_model(model, lora)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator(device="cpu").manual_seed(1)
    build = packed_batch if options["packed"] else padded_batch

    def optimizer_step(step: list[int]) -> tuple[int, int]:
        useful = computed = 0
        for lengths in micro_batches(step, options):
            batch, width = build(lengths, generator)
            batch = {key: value.to("cuda") for key, value in batch.items()}
            loss = peft_model(**batch).loss * sum(lengths) / sum(step)  # each pass's share of the step's tokens
            loss.backward()
            useful += sum(lengths)
            computed += width
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return useful, computed

    peft_model.train()
    for step in steps[:warmup]:
        optimizer_step(step)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    useful = computed = 0
    for step in steps[warmup:]:
        u, c = optimizer_step(step)
        useful += u
        computed += c
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    result = {
        "setup": name,
        "useful_tokens_per_s": round(useful / elapsed),
        "step_s": round(elapsed / (len(steps) - warmup), 3),
        "peak_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
        "padding_share": round(1 - useful / computed, 3),
        "bound_share": round(useful / elapsed / ARITHMETIC_BOUND, 3),
        "micro_batch": options["micro"],
        "tokens_per_pass": options.get("tokens"),
        "gradient_checkpointing": options["checkpointing"] or options["upcast"],
        "attention": options["attention"],
    }
    base = peft_model.unload()  # drop the LoRA layers, keep the quantized base for the next set-up
    if options["upcast"]:  # undo prepare_model_for_kbit_training's fp32 upcast so the next set-up starts alike
        for param in base.parameters():
            if param.dtype == torch.float32:
                param.data = param.data.to(torch.bfloat16)
    return result, base


def check_packed_attention() -> dict:
    """The course's varlen attention on this GPU (PyTorch's flash kernel) against sdpa one sequence at a time, in
    bf16 with Llama-3.1-8B's heads (32 query, 8 key-value, 128 wide): outputs and gradients."""
    import torch
    from alfworld_sft import packing

    torch.manual_seed(0)
    lengths = [700, 1300, 48, 2000]
    tokens = sum(lengths)
    query = torch.randn(1, 32, tokens, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    key = torch.randn(1, 8, tokens, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    value = torch.randn(1, 8, tokens, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0).cuda()
    out, _ = packing.attend_packed(None, query, key, value, None, scaling=128**-0.5, position_ids=positions)
    out.float().square().sum().backward()
    fast = [out.detach().float()] + [t.grad.float() for t in (query, key, value)]
    for t in (query, key, value):
        t.grad = None
    cu, _ = packing.sequence_bounds(positions)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    reference = packing.reference_packed_attention(q, k, v, cu, 128**-0.5).unsqueeze(0)
    reference.float().square().sum().backward()
    slow = [reference.detach().float()] + [t.grad.float() for t in (query, key, value)]
    result = {
        name: round(((a - b).abs().max() / b.abs().max()).item(), 4)
        for name, a, b in zip(("output", "grad_query", "grad_key", "grad_value"), fast, slow)
    }
    print(f"varlen attention vs sdpa per sequence (max |diff| / max |value|, bf16): {result}", flush=True)
    return result


def plan_packed(model, budget_bytes: float, max_seq_len: int, by_tokens: bool = True):
    """The course's memory plan for this model (train_setup.plan_memory): tokens a pass (or sequences a micro-batch)
    and checkpointing."""
    from alfworld_sft import models, train_setup

    shape = models.ModelShape.from_config(model.config)
    return train_setup.plan_memory(
        shape,
        effective_batch=EFFECTIVE_BATCH,
        max_seq_len=max_seq_len,
        budget_bytes=budget_bytes,
        quantization="nf4",
        liger=True,
        lora_r=16,
        targets=LORA_TARGETS,
        packing=by_tokens,
    )


def benchmark_unsloth(args: argparse.Namespace) -> dict:
    """Unsloth's QLoRA on the model folder `--model-dir`, padded micro-batches of 4 (run in a process of its own:
    Unsloth must be imported before transformers)."""
    import torch
    import unsloth  # noqa: F401  (before transformers, peft and trl: it patches them)
    from unsloth import FastLanguageModel

    model, _ = FastLanguageModel.from_pretrained(
        model_name=args.model_dir, max_seq_length=args.max_seq_len, dtype=None, load_in_4bit=True
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=16,
        lora_alpha=16,
        lora_dropout=0.0,
        bias="none",
        target_modules=list(LORA_TARGETS),
        use_gradient_checkpointing="unsloth",
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator(device="cpu").manual_seed(1)
    steps = make_steps(read_lengths(args.max_seq_len), args.warmup + args.steps, args.seed)
    model.train()
    useful = 0
    for index, step in enumerate(steps):
        if index == args.warmup:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            started, useful = time.perf_counter(), 0
        micro = micro_batches(step, {"micro": 4, "grouped": True})
        for lengths in micro:
            batch, _ = padded_batch(lengths, generator)
            loss = model(**{key: value.to("cuda") for key, value in batch.items()}).loss / len(micro)
            loss.backward()
            useful += sum(lengths)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return {
        "setup": "unsloth (padded, grouped, micro 4)",
        "useful_tokens_per_s": round(useful / elapsed),
        "step_s": round(elapsed / args.steps, 3),
        "peak_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
        "bound_share": round(useful / elapsed / ARITHMETIC_BOUND, 3),
    }


def run_unsloth_row(args: argparse.Namespace) -> dict | None:
    if importlib.util.find_spec("unsloth") is None:
        print("unsloth: skipped (not installed)", flush=True)
        return None
    if not args.model_dir:
        print("unsloth: skipped (it loads a model folder: pass --model-dir, e.g. from tools/make_8b_model.py)")
        return None
    command = [sys.executable, __file__, "gpu-unsloth", "--model-dir", args.model_dir, "--steps", str(args.steps)]
    command += ["--warmup", str(args.warmup), "--seed", str(args.seed), "--max-seq-len", str(args.max_seq_len)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        print(f"unsloth: failed (exit {done.returncode}): {(done.stderr or done.stdout)[-1500:]}", flush=True)
        return None
    return json.loads(lines[-1])


def benchmark_gpu(args: argparse.Namespace) -> list[dict]:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu mode needs CUDA: run it on the GPU machine, or use `cpu` mode here")
    from alfworld_sft import packing, train_setup

    varlen = train_setup.choose_attention("auto", "cuda", packing=True)
    attention_check = None
    if varlen == packing.VARLEN_ATTENTION:
        packing.register_packed_attention()
        attention_check = check_packed_attention()
    lengths = read_lengths(args.max_seq_len)
    steps = make_steps(lengths, args.warmup + args.steps, args.seed)
    print(
        f"{torch.cuda.get_device_name()} | torch {torch.__version__} | lengths: n={len(lengths)} "
        f"median={statistics.median(lengths)} max={max(lengths)} | {EFFECTIVE_BATCH} sequences a step | "
        f"bound {ARITHMETIC_BOUND:,.0f} tok/s",
        flush=True,
    )
    started = time.perf_counter()
    model = build_quantized_llama("cuda")
    weights = torch.cuda.memory_allocated()
    built = time.perf_counter() - started
    print(f"built and quantized the 8B-shaped model in {built:.0f} s; weights {weights / GIB:.2f} GiB", flush=True)
    free, _ = torch.cuda.mem_get_info()
    by_count = plan_packed(model, BUDGET_GIB * GIB, args.max_seq_len, by_tokens=False)
    small = plan_packed(model, BUDGET_GIB * GIB, args.max_seq_len)
    large = plan_packed(model, free + weights - GIB, args.max_seq_len)
    has_liger = importlib.util.find_spec("liger_kernel") is not None
    plain = {"upcast": False, "packed": False, "grouped": True, "checkpointing": True, "attention": "sdpa"}
    setups = [
        ("naive", "naive", {**plain, "upcast": True, "grouped": False, "liger": False, "micro": 4}),
        ("before_packing", "course before packing", {**plain, "liger": has_liger, "micro": 4}),
    ]
    packed_plans = (
        ("packed_by_sequences", f"packed <= {BUDGET_GIB:.0f} GiB by sequences", by_count),
        ("packed", f"packed <= {BUDGET_GIB:.0f} GiB", small),
        ("fastest", "packed, fastest", large),
    )
    for key, label, plan in packed_plans:
        options = {"upcast": False, "packed": True, "grouped": False, "liger": has_liger, "attention": varlen}
        options.update(micro=plan.micro_batch, tokens=plan.tokens_per_pass, checkpointing=plan.gradient_checkpointing)
        setups.append((key, f"{label} (plan ~{plan.estimate_gib} GiB)", options))
    setups = [(name, options) for key, name, options in setups if key in args.setups]
    if not has_liger:
        print("liger-kernel is not installed: the Liger set-ups run without it", flush=True)
    results = []
    for name, options in setups:
        if model is None:
            model = build_quantized_llama("cuda")
        try:
            result, model = run_setup(model, name, steps, options, args.warmup)
        except (ImportError, RuntimeError, TypeError, ValueError, AttributeError) as error:
            # One failing set-up (a kernel missing or incompatible, out of memory) must not hide the others; its
            # model may still carry the failed set-up's adapters, so the next one starts from a fresh model.
            print(f"{name}: failed: {type(error).__name__}: {error}", flush=True)
            model = None
            gc.collect()
            torch.cuda.empty_cache()
            continue
        results.append(result)
        print(json.dumps(result), flush=True)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    unsloth = run_unsloth_row(args) if "unsloth" in args.setups else None
    if unsloth:
        results.append(unsloth)
    report(results)
    if args.output:
        payload = {"results": results, "bound_tokens_per_s": ARITHMETIC_BOUND, "attention": varlen}
        payload["attention_check"] = attention_check
        Path(args.output).write_text(json.dumps(payload) + "\n")
    return results


def report(results: list[dict]) -> None:
    if not results:
        return
    naive = next((r["useful_tokens_per_s"] for r in results if r["setup"] == "naive"), None)
    for r in results:
        speedup = f"x{r['useful_tokens_per_s'] / naive:.2f}" if naive else ""
        print(
            f"{r['setup']:<42} {r['useful_tokens_per_s']:>7} useful tok/s {speedup:>6}  {r['step_s']:.2f} s/step  "
            f"peak {r['peak_gib']:5.1f} GiB  {r['bound_share']:.0%} of the bound  "
            f"padding {r.get('padding_share', 0):.0%}  micro {r.get('micro_batch', '-')}  "
            f"tokens a pass {r.get('tokens_per_pass') or '-'}  "
            f"checkpointing {r.get('gradient_checkpointing', '-')}"
        )
    packed = next((r for r in results if r["setup"].startswith(f"packed <= {BUDGET_GIB:.0f} GiB (")), None)
    if naive and packed:
        met = packed["useful_tokens_per_s"] >= 3 * naive and packed["peak_gib"] <= BUDGET_GIB
        print(
            f"goal (>= 3x naive = {3 * naive} useful tok/s at <= {BUDGET_GIB:.0f} GiB): "
            f"{'met' if met else 'NOT met'} ({packed['useful_tokens_per_s']} tok/s, x"
            f"{packed['useful_tokens_per_s'] / naive:.2f}, {packed['peak_gib']} GiB)"
        )


# -------------------------------------------------------------------------------------------------- CPU


def benchmark_cpu(args: argparse.Namespace) -> dict:
    """Time per epoch of the course's CPU default (plain LoRA, fp32, the default model) on small-mode data."""
    import tempfile

    from alfworld_sft import paths, train_config, training

    data = args.data or str(paths.run_dir(True) / "oracle" / "trajectories.jsonl")
    with tempfile.TemporaryDirectory() as out:
        config = train_config.TrainConfig(
            data=data,
            output=out,
            epochs=1,
            batch=args.batch,
            grad_accum=args.grad_accum,
            max_seq_len=args.max_seq_len,
            eval_steps=10_000,
            save_steps=10_000,
            logging_steps=1,
            eval_fraction=0.0,
            device="cpu",
            seed=args.seed,
        )
        started = time.perf_counter()
        result = training.train(config)
        elapsed = time.perf_counter() - started
    tokens = result.record.details["data_stats"]["tokens"]["total"]
    summary = {
        "data": data,
        "epoch_s": round(elapsed, 1),
        "steps": result.global_step,
        "tokens": tokens,
        "tokens_per_s": round(tokens / elapsed),
        "max_seq_len": args.max_seq_len,
    }
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("gpu", "gpu-unsloth", "cpu", "lengths"))
    parser.add_argument("--data", default=None, help="trajectories JSONL (cpu, lengths)")
    parser.add_argument("--model", default=None, help="tokenizer for lengths (default: the course's default model)")
    parser.add_argument("--model-dir", default=None, help="model folder for the Unsloth row (gpu)")
    parser.add_argument("--output", default=None, help="JSON file for the results (gpu)")
    parser.add_argument(
        "--setups", nargs="+", choices=SETUPS, default=list(SETUPS), help="which rows to run (gpu; default: all)"
    )
    parser.add_argument("--batch", type=int, default=4, help="cpu mode")
    parser.add_argument("--grad-accum", type=int, default=4, help="cpu mode")
    parser.add_argument("--max-seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=4, help="measured optimizer steps (gpu)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured optimizer steps first (gpu)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.mode == "lengths":
        from alfworld_sft import models

        payload = measure_lengths(args.data, args.model or models.DEFAULT_MODEL, args.max_seq_len)
        LENGTHS_FILE.write_text(json.dumps(payload) + "\n")
        print(f"{len(payload['lengths'])} lengths -> {LENGTHS_FILE}")
    elif args.mode == "gpu":
        benchmark_gpu(args)
    elif args.mode == "gpu-unsloth":
        print(json.dumps(benchmark_unsloth(args)), flush=True)
    else:
        benchmark_cpu(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
