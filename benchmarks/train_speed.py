"""Training speed: the naive QLoRA set-up against the course's, on an 8B Llama-shaped model (GPU), and the CPU
default's time per epoch.

GPU mode builds a Llama-3.1-8B-shaped model from its configuration with random weights (no download),
quantizes its linear layers to nf4 with double quantization (bitsandbytes), and trains LoRA r=16 on the
seven projections for a few optimizer steps of the default effective batch (4 sequences x 4 accumulation
steps). Sequence lengths are drawn from real expert trajectories (`trajectory_lengths.json`, made by the
`lengths` mode from a trajectories JSONL). Set-ups, all in one run on the same quantized base:

* naive (field notes §7, the seed guide's recipe): random micro-batches padded to their longest sequence,
  `prepare_model_for_kbit_training` (it upcasts embeddings, norms and the 128k-vocabulary head to fp32),
  the model's own loss over full logits, gradient checkpointing, sdpa attention;
* bf16: the same without the fp32 upcast (the head and norms stay bf16);
* bf16 + length-grouped: each optimizer step's 16 sequences sorted by length before they are cut into
  micro-batches of 4, so a micro-batch pads to a near neighbour, not to the longest of a random four;
* course: bf16 + length-grouped + Liger kernels (fused linear cross-entropy: no full-vocabulary logits;
  RMSNorm, SwiGLU, RoPE).

For each it prints useful (non-padding) tokens per second, time per optimizer step and peak GPU memory.

    python benchmarks/train_speed.py gpu                 # on the GPU machine (bitsandbytes, peft; liger optional)
    python benchmarks/train_speed.py cpu                 # the default model, small-mode data, time per epoch
    python benchmarks/train_speed.py lengths --data results/oracle/trajectories.jsonl   # refresh the lengths
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

LENGTHS_FILE = Path(__file__).with_name("trajectory_lengths.json")
GIB = 1024**3


# ------------------------------------------------------------------------------------------------ lengths


def measure_lengths(data: str, model: str, max_seq_len: int) -> dict:
    """Token lengths (after the select_window window) of real trajectory records."""
    from alfworld_sft import formatting, models

    tokenizer = models.load_tokenizer(model)
    records = formatting.load_records(data)
    lengths = [formatting.build_example(r, tokenizer, max_seq_len)["num_tokens"] for r in records]
    return {
        "source": str(data),
        "tokenizer": model,
        "note": "SmolLM2's 49k BPE; Llama-3.1's 128k BPE gives similar counts on this English text",
        "max_seq_len": max_seq_len,
        "lengths": lengths,
    }


# -------------------------------------------------------------------------------------------------- GPU


def build_quantized_llama(device: str):
    """A Llama-3.1-8B-shaped model with random weights, its decoder linears in nf4 (double quantization)."""
    import bitsandbytes as bnb
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=128000,
        eos_token_id=128009,
        pad_token_id=128004,
        attn_implementation="sdpa",
    )
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
    model.config.use_cache = False
    torch.cuda.empty_cache()
    return model


def make_steps(lengths: list[int], n_steps: int, effective: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.choice(lengths) for _ in range(effective)] for _ in range(n_steps)]


def micro_batches(step: list[int], batch: int, grouped: bool) -> list[list[int]]:
    order = sorted(step) if grouped else step
    return [order[i : i + batch] for i in range(0, len(order), batch)]


def run_setup(
    model,
    name: str,
    steps: list[list[int]],
    batch: int,
    *,
    grouped: bool,
    upcast: bool,
    liger: bool,
    warmup: int,
    device: str,
) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    torch.cuda.empty_cache()  # the previous set-up's optimizer and adapters are gone: start from the weights alone
    if upcast:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if liger:
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama(
            rope=True,
            rms_norm=True,
            swiglu=True,
            cross_entropy=False,
            fused_linear_cross_entropy=True,
            model=model,
        )
    lora = LoraConfig(
        r=16,
        lora_alpha=16,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    peft_model = get_peft_model(model, lora)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    pad_id = 128004
    generator = torch.Generator(device="cpu").manual_seed(1)

    def optimizer_step(step: list[int]) -> tuple[int, int]:
        useful = padded = 0
        micro = micro_batches(step, batch, grouped)
        for lengths in micro:
            width = max(lengths)
            ids = torch.full((len(lengths), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(lengths), width), dtype=torch.long)
            for row, n in enumerate(lengths):
                ids[row, :n] = torch.randint(0, 128000, (n,), generator=generator)
                mask[row, :n] = 1
            labels = ids.masked_fill(mask == 0, -100)
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            loss = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss / len(micro)
            loss.backward()
            useful += sum(lengths)
            padded += width * len(lengths)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return useful, padded

    peft_model.train()
    for step in steps[:warmup]:
        optimizer_step(step)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    useful = padded = 0
    for step in steps[warmup:]:
        u, p = optimizer_step(step)
        useful += u
        padded += p
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    measured = len(steps) - warmup
    result = {
        "setup": name,
        "useful_tokens_per_s": round(useful / elapsed),
        "step_s": round(elapsed / measured, 3),
        "peak_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
        "padding_share": round(1 - useful / padded, 3),
    }
    base = peft_model.unload()  # drop the LoRA layers, keep the quantized base for the next set-up
    if upcast:  # undo prepare_model_for_kbit_training's fp32 upcast so the next set-up starts alike
        for param in base.parameters():
            if param.dtype == torch.float32:
                param.data = param.data.to(torch.bfloat16)
    return result, base


def benchmark_gpu(args: argparse.Namespace) -> list[dict]:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu mode needs CUDA: run it on the GPU machine, or use `cpu` mode here")
    lengths = [min(n, args.max_seq_len) for n in json.loads(LENGTHS_FILE.read_text())["lengths"]]
    effective = args.batch * args.grad_accum
    steps = make_steps(lengths, args.warmup + args.steps, effective, args.seed)
    print(
        f"{torch.cuda.get_device_name()} | torch {torch.__version__} | lengths: n={len(lengths)} "
        f"median={statistics.median(lengths)} max={max(lengths)} | effective batch {args.batch}x{args.grad_accum}",
        flush=True,
    )
    started = time.perf_counter()
    model = build_quantized_llama("cuda")
    print(
        f"built and quantized the 8B-shaped model in {time.perf_counter() - started:.0f} s; "
        f"weights {torch.cuda.memory_allocated() / GIB:.2f} GiB",
        flush=True,
    )
    setups = [
        ("naive", {"grouped": False, "upcast": True, "liger": False}),
        ("bf16", {"grouped": False, "upcast": False, "liger": False}),
        ("bf16+grouped", {"grouped": True, "upcast": False, "liger": False}),
        ("course: bf16+grouped+liger", {"grouped": True, "upcast": False, "liger": True}),
    ]
    results = []
    for name, options in setups:
        try:
            result, model = run_setup(model, name, steps, args.batch, warmup=args.warmup, device="cuda", **options)
        except (ImportError, RuntimeError, TypeError, ValueError, AttributeError) as error:
            # one failing set-up (liger missing or incompatible, out of memory) must not hide the others
            print(f"{name}: failed: {type(error).__name__}: {error}", flush=True)
            continue
        results.append(result)
        print(json.dumps(result), flush=True)
    if results:
        naive = results[0]["useful_tokens_per_s"]
        for result in results:
            print(
                f"{result['setup']:<30} {result['useful_tokens_per_s']:>7} useful tok/s  "
                f"x{result['useful_tokens_per_s'] / naive:.2f}  {result['step_s']:.2f} s/step  "
                f"peak {result['peak_gib']:.1f} GiB  padding {result['padding_share']:.0%}"
            )
    return results


# -------------------------------------------------------------------------------------------------- CPU


def benchmark_cpu(args: argparse.Namespace) -> dict:
    """Time per epoch of the course's CPU default (plain LoRA, fp32, the default model) on small-mode data."""
    import tempfile

    from alfworld_sft import paths, training

    data = args.data or str(paths.run_dir(True) / "oracle" / "trajectories.jsonl")
    with tempfile.TemporaryDirectory() as out:
        config = training.TrainConfig(
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
    parser.add_argument("mode", choices=("gpu", "cpu", "lengths"))
    parser.add_argument("--data", default=None, help="trajectories JSONL (cpu, lengths)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--max-seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=3, help="measured optimizer steps (gpu)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured optimizer steps first (gpu)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.mode == "lengths":
        from alfworld_sft import models

        payload = measure_lengths(args.data, models.DEFAULT_MODEL, args.max_seq_len)
        LENGTHS_FILE.write_text(json.dumps(payload) + "\n")
        print(f"{len(payload['lengths'])} lengths -> {LENGTHS_FILE}")
    elif args.mode == "gpu":
        benchmark_gpu(args)
    else:
        benchmark_cpu(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
