"""Padding-free packing: a step's sequences as one row, cut into passes by tokens, attended one sequence at a time.

TRL's padding-free collator concatenates a micro-batch's sequences into one row whose `position_ids` restart at 0 at
each sequence. Here:

* `cut_by_tokens` / `split_packed_batch`: a packed step cut between sequences into forward passes of at most a
  number of tokens (`training.build_trainer` accumulates their gradients: a pass holds as many sequences as their
  lengths allow, not a count sized for the longest);
* `attend_packed`: a transformers attention function that keeps attention inside each packed sequence (bounds from
  the position ids, `sequence_bounds`): PyTorch's varlen flash kernel on CUDA (`torch.nn.attention.varlen`, whose
  signature changed between releases), sdpa one sequence at a time on CPU (`reference_packed_attention`, also the
  reference it is tested on). `register_packed_attention` makes it loadable as `VARLEN_ATTENTION`, and
  `packed_attention_works` checks once per process that the kernel runs here and agrees with the reference.

    from alfworld_sft import packing
    packing.register_packed_attention()
    model = AutoModelForCausalLM.from_pretrained(base, attn_implementation=packing.VARLEN_ATTENTION)
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from alfworld_sft.train_config import TrainingSetupError

VARLEN_ATTENTION = "alfworld_sft_varlen"  # the name `attend_packed` is registered under in transformers


# ------------------------------------------------------------------------------------------ passes by tokens


def cut_by_tokens(lengths: Sequence[int], budget: int) -> list[range]:
    """Consecutive runs of sequences (indices into `lengths`) whose lengths add up to at most `budget` tokens;
    a sequence longer than the budget is a run of its own (the plan keeps the budget >= --max-seq-len)."""
    runs: list[range] = []
    start = total = 0
    for index, length in enumerate(lengths):
        if index > start and total + length > budget:
            runs.append(range(start, index))
            start, total = index, 0
        total += length
    if lengths:
        runs.append(range(start, len(lengths)))
    return runs


def split_packed_batch(inputs: Mapping[str, Any], budget: int) -> list[dict[str, Any]]:
    """A padding-free batch (one row, `position_ids` restarting at 0 at each sequence, as TRL's collator builds
    it) as forward passes of at most `budget` tokens each, cut between sequences, in order."""
    positions = inputs["position_ids"]
    if positions.dim() != 2 or positions.shape[0] != 1:
        raise ValueError(f"a packed batch is one row; got position_ids of shape {tuple(positions.shape)}")
    width = positions.shape[1]
    starts = (positions[0] == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        raise ValueError("a packed batch's position_ids start at 0 for each sequence")
    bounds = starts + [width]
    runs = cut_by_tokens([bounds[i + 1] - bounds[i] for i in range(len(starts))], budget)
    if len(runs) == 1:
        return [dict(inputs)]
    passes = []
    for run in runs:
        first, last = bounds[run.start], bounds[run.stop]
        piece = {}
        for key, value in inputs.items():
            if not (hasattr(value, "dim") and value.dim() == 2 and value.shape[1] == width):
                raise ValueError(f"cannot cut the packed batch's {key!r} between sequences")
            piece[key] = value[:, first:last]
        passes.append(piece)
    return passes


# ------------------------------------------------------------------------------------------ packed attention


_bounds_cache: list[Any] = [None, None]  # [position_ids tensor, (cu_seqlens, max_len)]: one forward's layers share it


def sequence_bounds(position_ids: Any) -> tuple[Any, int]:
    """(cumulative sequence starts as int32 with the total at the end, longest sequence) of a packed row: a new
    sequence starts wherever the position does not follow the previous one (TRL restarts them at 0)."""
    import torch

    if _bounds_cache[0] is position_ids:
        return _bounds_cache[1]
    positions = position_ids[0]
    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[1:] = positions[1:] != positions[:-1] + 1
    cu = torch.nonzero(starts).flatten().to(torch.int32)
    cu = torch.cat([cu, torch.tensor([positions.numel()], dtype=torch.int32, device=cu.device)])
    bounds = (cu, int((cu[1:] - cu[:-1]).max()))
    _bounds_cache[:] = [position_ids, bounds]
    return bounds


@functools.cache
def _varlen_parameters() -> frozenset[str]:
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    return frozenset(inspect.signature(varlen_attn).parameters)


def _flash_varlen(query: Any, key: Any, value: Any, cu: Any, max_len: int, scale: float) -> Any:
    """PyTorch's varlen flash-attention kernel, causal within each sequence ((tokens, heads, dim) in and out)."""
    from torch.nn.attention.varlen import varlen_attn

    # After RoPE, q and k are (tokens, heads, dim) views with the heads outermost; the kernel wants rows in order.
    query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
    params = _varlen_parameters()
    kwargs: dict[str, Any] = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    if "scale" in params:
        kwargs["scale"] = scale
    elif not math.isclose(scale, query.shape[-1] ** -0.5):
        raise TrainingSetupError("this torch's varlen attention has no scale argument: use --attention sdpa")
    groups = query.shape[1] // key.shape[1]
    if groups > 1 and "enable_gqa" in params:
        kwargs["enable_gqa"] = True
    elif groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    return varlen_attn(query, key, value, cu, cu, max_len, max_len, **kwargs)


def reference_packed_attention(query: Any, key: Any, value: Any, cu: Any, scale: float) -> Any:
    """The same attention, one sequence at a time through sdpa: the CPU path and the reference it is tested on."""
    import torch

    groups = query.shape[1] // key.shape[1]
    pieces = []
    bounds = cu.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        q, k, v = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (query, key, value))
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        pieces.append(out[0].transpose(0, 1))
    return torch.cat(pieces)


@functools.cache
def packed_attention_works(dtype: str = "bfloat16") -> bool:
    """Whether PyTorch's varlen flash kernel (torch.nn.attention.varlen: Ampere or newer) runs on this GPU, forward
    and backward, and agrees with sdpa run one sequence at a time: checked once per process on small sequences with
    grouped heads, so that a torch without the kernel, or with one that computes otherwise, falls back to sdpa."""
    import torch

    if importlib.util.find_spec("torch.nn.attention.varlen") is None or torch.cuda.get_device_capability()[0] < 8:
        return False
    try:
        generator = torch.Generator(device="cuda").manual_seed(0)
        lengths = [5, 17, 9]
        tensors = [  # query, key, value: 4 query heads sharing 2 key-value heads
            torch.randn(
                1, heads, sum(lengths), 64, device="cuda", dtype=getattr(torch, dtype), generator=generator
            ).requires_grad_()
            for heads in (4, 2, 2)
        ]
        positions = torch.cat([torch.arange(n, device="cuda") for n in lengths]).unsqueeze(0)
        out, _ = attend_packed(None, *tensors, None, scaling=64**-0.5, position_ids=positions)
        out.float().sum().backward()
        cu, _ = sequence_bounds(positions)
        q, k, v = (t.detach()[0].transpose(0, 1) for t in tensors)
        reference = reference_packed_attention(q, k, v, cu, 64**-0.5).unsqueeze(0)
        agrees = torch.allclose(out.float(), reference.float(), atol=2e-2, rtol=2e-2)
        if not agrees or any(t.grad is None or not t.grad.isfinite().all() for t in tensors):
            print("PyTorch's varlen flash kernel disagrees with sdpa here: packing uses sdpa", flush=True)
            return False
    except (RuntimeError, TypeError, ValueError, ImportError) as error:
        print(f"PyTorch's varlen flash kernel does not run here ({error}): packing uses sdpa", flush=True)
        return False
    return True


def attend_packed(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """A transformers attention function for padding-free rows: causal attention inside each packed sequence
    (bounds from `position_ids`), never across. Query (1, heads, tokens, dim) in, (1, tokens, heads, dim) out."""
    position_ids = kwargs.get("position_ids")
    if attention_mask is not None or position_ids is None or query.shape[0] != 1:
        raise ValueError(
            f"{VARLEN_ATTENTION} attention takes one packed row with position ids and no attention mask (TRL's "
            "padding-free collator); this batch is padded: train with --packing, or use --attention sdpa"
        )
    if dropout:
        raise ValueError(f"{VARLEN_ATTENTION} attention has no attention dropout (the model's is {dropout})")
    cu, max_len = sequence_bounds(position_ids)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = _flash_varlen(q, k, v, cu, max_len, scale) if q.is_cuda else reference_packed_attention(q, k, v, cu, scale)
    return out.unsqueeze(0), None


def register_packed_attention() -> None:
    """Make `VARLEN_ATTENTION` an attention implementation transformers can load models with (no mask is built:
    the bounds come from the position ids, as for flash-attention)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(VARLEN_ATTENTION, attend_packed)
    AttentionMaskInterface.register(VARLEN_ATTENTION, flash_attention_mask)


class _PackedAttentionWarning(logging.Filter):
    """TRL warns that padding-free batches are only safe with flash-attention. transformers 5.17 keeps sdpa inside
    packed sequences too, and this module's varlen attention does by construction; tests/test_packing.py checks
    both, so the warning would only mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Padding-free training is enabled, but the attention implementation" not in record.getMessage()


def silence_padding_free_warning() -> None:
    """Keep TRL's warning about padding-free batches (`_PackedAttentionWarning`) out of the log, once per process."""
    trl_logger = logging.getLogger("trl.trainer.sft_trainer")
    if not any(isinstance(f, _PackedAttentionWarning) for f in trl_logger.filters):
        trl_logger.addFilter(_PackedAttentionWarning())
