"""A Llama-3.1-8B-shaped model with random weights, saved as a local model folder the course's commands accept
(`--base /path`, `--model /path`): the whole path (train, merge, export, evaluate) at the real target's size,
with no download and no licence gate.

* Tokenizer: Llama 3's own BPE. Meta's `llama-models` package on PyPI (0.3.0) ships it as `llama3/tokenizer.model`
  (tiktoken's format: one base64 token and its rank a line, 128,000 tokens); this script turns it into a
  Hugging Face `tokenizer.json` (byte-level BPE, Llama 3's pre-tokenizer pattern, the merges recovered from the
  ranks as transformers' `TikTokenConverter` does), adds Llama-3.1's 256 special tokens at ids 128000-128255 and
  Llama-3.1-Instruct's chat template (tests/data/llama31_chat_template.jinja), and checks it against the encodings
  in llama-models' own tests. The tokenizer is made once where PyPI is reachable (`tokenizer` mode) and carried.
* Model: `LlamaConfig` of Llama-3.1-8B (32 layers, width 4096, MLP 14336, 32 heads / 8 key-value heads, vocabulary
  128,256, llama3 RoPE scaling, untied head), random weights (normal, std 0.02), bf16 safetensors in 5 GB shards
  (~16 GB), with Llama-3.1-Instruct's generation config (stops at <|eot_id|>, <|eom_id|>, <|end_of_text|>). Built
  on the GPU when there is one (seconds), else on the CPU (minutes, 16 GB of memory).

Written under a temporary name and renamed when complete; a rerun finds the complete folder and does nothing.

    python tools/make_8b_model.py tokenizer --llama-models llama_models-0.3.0-py3-none-any.whl \
        --output .carry/8b/tokenizer
    python tools/make_8b_model.py model --tokenizer .carry/8b/tokenizer --output /root/8b/llama31-8b-random

(`pip download --no-deps llama-models==0.3.0` fetches the wheel; tools/gpu_8b_kit.sh does both here.)
`--layers` and the other shape options make a smaller model of the same family for a quick check.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import sys
import time
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CHAT_TEMPLATE = REPO_ROOT / "tests" / "data" / "llama31_chat_template.jinja"  # Llama-3.1-Instruct's, verbatim
TOKENIZER_MEMBER = "llama_models/llama3/tokenizer.model"  # inside the llama-models wheel
COMPLETE_MARKER = "make_8b_model.json"
# Llama 3's pre-tokenizer (llama-models' Tokenizer.pat_str).
PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Llama-3.1's special tokens, in id order from 128000; the rest of the 256 are reserved.
NAMED_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
)
SPECIAL_TOKENS = NAMED_SPECIAL_TOKENS + tuple(
    f"<|reserved_special_token_{i}|>" for i in range(3, 3 + 256 - len(NAMED_SPECIAL_TOKENS))
)
# From llama-models' llama3/tests/api/test_tokenizer.py: the text, and the ids Llama 3's tokenizer gives it.
CHECKS = (
    ("This is a test sentence.", [2028, 374, 264, 1296, 11914, 13]),
    ("This is a response.", [2028, 374, 264, 2077, 13]),
)
LLAMA_31_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "hidden_act": "silu",
    "initializer_range": 0.02,
}


def read_bpe_ranks(data: bytes) -> dict[bytes, int]:
    """tiktoken's BPE file: `base64(token) rank` a line."""
    ranks = {}
    for line in data.decode("utf-8").splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def read_llama3_ranks(llama_models: Path) -> tuple[dict[bytes, int], str]:
    """The ranks from a llama-models wheel (or an unpacked tokenizer.model), and the file's sha256."""
    if llama_models.suffix == ".whl":
        with zipfile.ZipFile(llama_models) as wheel:
            data = wheel.read(TOKENIZER_MEMBER)
    else:
        data = llama_models.read_bytes()
    return read_bpe_ranks(data), hashlib.sha256(data).hexdigest()


def build_tokenizer(ranks: dict[bytes, int]):
    """A PreTrainedTokenizerFast equal to Llama-3.1-Instruct's: byte-level BPE over `ranks`, its special tokens,
    <|begin_of_text|> added in front when special tokens are asked for, its chat template."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError("the BPE ranks are not 0..N-1: is this Llama 3's tokenizer.model?")
    byte_encoder = bytes_to_unicode()

    def as_text(token: bytes) -> str:
        return "".join(byte_encoder[byte] for byte in token)

    # A token of rank r is the merge of two shorter tokens of lower rank: every split whose halves are tokens
    # (TikTokenConverter.extract_vocab_merges_from_model), ordered by the merged token's rank.
    merges = []
    for token, rank in ranks.items():
        pieces = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        merges += [(rank, ranks[left], ranks[right], left, right) for left, right in pieces]
    merges.sort()
    vocab = {as_text(token): rank for token, rank in ranks.items()}
    model = BPE(vocab, [(as_text(m[3]), as_text(m[4])) for m in merges], fuse_unk=False, ignore_merges=True)
    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    bos = SPECIAL_TOKENS[0]
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, len(ranks))]
            ),
        ]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token="<|eot_id|>",
        model_max_length=131072,
        clean_up_tokenization_spaces=True,
        model_input_names=["input_ids", "attention_mask"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE.read_text(encoding="utf-8")
    check_tokenizer(tokenizer)
    return tokenizer


def check_tokenizer(tokenizer) -> None:
    """Llama 3's ids for llama-models' test sentences, its special ids, and a chat that renders with them."""
    for text, ids in CHECKS:
        got = tokenizer(text, add_special_tokens=False)["input_ids"]
        if got != ids:
            raise ValueError(f"the converted tokenizer gives {got} for {text!r}, Llama 3 gives {ids}")
    expected = {"<|begin_of_text|>": 128000, "<|eot_id|>": 128009, "<|finetune_right_pad_id|>": 128004}
    expected["<|reserved_special_token_247|>"] = 128255
    got = {token: tokenizer.convert_tokens_to_ids(token) for token in expected}
    if got != expected or len(tokenizer) != 128256:
        raise ValueError(f"special tokens {got} (vocabulary {len(tokenizer)}), expected {expected} and 128256")
    chat = [{"role": "user", "content": "This is a test sentence."}]
    ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    if ids[:2] != [128000, 128006] or ids[-4:] != [128006, 78191, 128007, 271]:
        raise ValueError(f"the chat template renders {ids[:4]} ... {ids[-4:]}, not Llama-3.1-Instruct's framing")


def make_tokenizer(args: argparse.Namespace) -> Path:
    output = Path(args.output)
    if (output / "tokenizer.json").exists():
        print(f"{output}: already made")
        return output
    started = time.perf_counter()
    ranks, sha256 = read_llama3_ranks(Path(args.llama_models))
    tokenizer = build_tokenizer(ranks)
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer.save_pretrained(partial)
    source = {"llama_models": Path(args.llama_models).name, "tokenizer_model_sha256": sha256}
    (partial / "tokenizer_source.json").write_text(json.dumps(source, indent=2) + "\n")
    shutil.rmtree(output, ignore_errors=True)
    os.replace(partial, output)
    print(f"{output}: Llama-3.1 tokenizer, {len(tokenizer)} tokens, checked ({time.perf_counter() - started:.0f} s)")
    return output


def make_model(args: argparse.Namespace) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig

    output = Path(args.output)
    if (output / COMPLETE_MARKER).exists():
        print(f"{output}: already made")
        return output
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    check_tokenizer(tokenizer)
    shape = {**LLAMA_31_8B}
    for name in ("layers", "hidden", "intermediate", "heads", "kv_heads"):
        if getattr(args, name):
            key = {
                "layers": "num_hidden_layers",
                "hidden": "hidden_size",
                "intermediate": "intermediate_size",
                "heads": "num_attention_heads",
                "kv_heads": "num_key_value_heads",
            }[name]
            shape[key] = getattr(args, name)
    config = LlamaConfig(**shape)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    with torch.device(device):  # initialized where it is built, in bf16 from the start (16 GB, not 32)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=128000, eos_token_id=[128001, 128008, 128009], do_sample=False
    )
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, max_shard_size="5GB")
    tokenizer.save_pretrained(partial)
    parameters = sum(p.numel() for p in model.parameters())
    facts = {
        "parameters": parameters,
        "shape": shape,
        "seed": args.seed,
        "device": device,
        "seconds": round(time.perf_counter() - started, 1),
        "bytes": sum(f.stat().st_size for f in partial.iterdir()),
        "note": "random weights: for speed, memory and the whole path, never for quality",
    }
    (partial / COMPLETE_MARKER).write_text(json.dumps(facts, indent=2) + "\n")
    shutil.rmtree(output, ignore_errors=True)
    os.replace(partial, output)
    print(f"{output}: {parameters / 1e9:.2f}B parameters, {facts['bytes'] / 1e9:.1f} GB, {facts['seconds']} s")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("tokenizer", "model"))
    parser.add_argument("--output", required=True, help="the folder to write")
    parser.add_argument("--llama-models", help="tokenizer: the llama-models wheel (or its llama3/tokenizer.model)")
    parser.add_argument("--tokenizer", help="model: the folder the tokenizer mode wrote")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"), help="where to build the model")
    parser.add_argument("--seed", type=int, default=0, help="of the random weights")
    for name in ("layers", "hidden", "intermediate", "heads", "kv_heads"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, help="smaller shape (checks)")
    args = parser.parse_args(argv)
    if args.mode == "tokenizer" and not args.llama_models:
        parser.error("tokenizer mode needs --llama-models (`pip download --no-deps llama-models==0.3.0`)")
    if args.mode == "model" and not args.tokenizer:
        parser.error("model mode needs --tokenizer (a folder written by the tokenizer mode)")
    (make_tokenizer if args.mode == "tokenizer" else make_model)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
