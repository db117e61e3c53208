"""Padding-free packing: TRL's packed batches keep every sequence's labels, loss and attention with sdpa and with the
course's varlen attention, whose kernel call follows PyTorch's signature; padded batches are refused by it."""

from __future__ import annotations

import pytest
from alfworld_sft import formatting, models, packing


@pytest.fixture(scope="module")
def records_path(train_games, tmp_path_factory):
    from test_formatting import write_expert_records

    return write_expert_records(tmp_path_factory.mktemp("records") / "trajectories.jsonl", 4, seed=1)


def build_tiny_llama(tokenizer, attention: str = "sdpa"):
    """A 2-layer Llama-shaped model with random weights on the default model's tokenizer: trains in milliseconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if attention == packing.VARLEN_ATTENTION:
        packing.register_packed_attention()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        use_cache=False,  # as training loads it: with a cache transformers does not look for packed sequences
        attn_implementation=attention,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def test_packed_batches_keep_each_sequences_labels_loss_and_attention(records_path):
    """TRL's padding-free collator, as training uses it, on real formatted examples and a tiny Llama: the labels
    are the formatted ones, the loss is the padded batch's, and no sequence sees another, with sdpa (transformers
    masks packed sequences from the position ids) and with this course's varlen attention."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tokenizer = models.load_tokenizer(models.DEFAULT_MODEL)
    dataset = formatting.format_records(records_path, formatting.FormatConfig(max_seq_len=768, eval_fraction=0))
    examples = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in dataset["train"].select(range(3))]
    packed = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(examples)
    padded = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(examples)
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] == 1
    assert packed["labels"][0].tolist() == [label for e in examples for label in e["labels"]]
    lengths = [len(e["input_ids"]) for e in examples]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    assert all(packed["labels"][0, s] == formatting.IGNORE_INDEX for s in starts), "no label crosses a boundary"

    reference = build_tiny_llama(tokenizer)
    with torch.no_grad():
        padded_loss = reference(**padded).loss
        alone = [reference(input_ids=torch.tensor([e["input_ids"]])).logits[0] for e in examples]
    changed = dict(packed, input_ids=packed["input_ids"].clone())  # the first sequence's words replaced
    changed["input_ids"][0, 1 : lengths[0]] = torch.randint(0, 1000, (lengths[0] - 1,))
    for attention in ("sdpa", packing.VARLEN_ATTENTION):
        model = build_tiny_llama(tokenizer, attention)
        model.load_state_dict(reference.state_dict())
        with torch.no_grad():
            output = model(**packed)
            logits_changed = model(**changed).logits[0]
        torch.testing.assert_close(output.loss, padded_loss, rtol=1e-5, atol=1e-6)
        for start, length, own in zip(starts, lengths, alone):
            torch.testing.assert_close(output.logits[0, start : start + length], own, rtol=1e-4, atol=1e-4)
        later = output.logits[0, starts[1] :]
        torch.testing.assert_close(logits_changed[starts[1] :], later, msg=f"{attention}: sequence 1 leaked forward")


@pytest.mark.parametrize("torch_api", ["2.10", "2.11+"])
def test_varlen_kernel_call_adapts_to_the_torch_version(monkeypatch, torch_api):
    """The GPU kernel's call (PyTorch's varlen_attn changed its signature between releases), on the CPU with a
    stand-in kernel that checks its arguments and computes the reference: causal, per sequence, grouped heads."""
    import torch
    import torch.nn.attention.varlen as varlen

    calls = []

    def old_kernel(query, key, value, cu_q, cu_k, max_q, max_k, *, is_causal=False):
        assert is_causal and query.shape[1] == key.shape[1] and query.is_contiguous()
        calls.append(max_q)
        return packing.reference_packed_attention(query, key, value, cu_q, query.shape[-1] ** -0.5)

    def new_kernel(query, key, value, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        assert window_size == (-1, 0) and enable_gqa and key.shape[1] * 2 == query.shape[1]
        calls.append(max_q)
        return packing.reference_packed_attention(query, key, value, cu_q, scale)

    monkeypatch.setattr(varlen, "varlen_attn", old_kernel if torch_api == "2.10" else new_kernel)
    packing._varlen_parameters.cache_clear()  # it remembers the kernel's signature
    try:
        lengths = [3, 6, 2]
        query, key, value = (torch.randn(1, heads, 11, 8) for heads in (4, 2, 2))
        positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
        cu, max_len = packing.sequence_bounds(positions)
        assert cu.tolist() == [0, 3, 9, 11] and max_len == 6
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
        out = packing._flash_varlen(q, k, v, cu, max_len, 8**-0.5)
        torch.testing.assert_close(out, packing.reference_packed_attention(q, k, v, cu, 8**-0.5))
        assert calls == [6]
    finally:
        packing._varlen_parameters.cache_clear()


def test_varlen_attention_refuses_padded_batches():
    import torch

    query = torch.zeros(2, 4, 3, 8)
    with pytest.raises(ValueError, match="--packing"):
        packing.attend_packed(None, query, query, query, torch.ones(2, 1, 3, 3), position_ids=torch.zeros(2, 3))
