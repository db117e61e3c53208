"""The continuous-batching decoder on the real default model (float32, CPU): replies equal transformers' own
`generate`, whatever else is in flight; grounded replies are always one of the choices; sampling is seeded per
request; a session reuses its cached prefix."""

from __future__ import annotations

import pytest
from alfworld_sft import models
from alfworld_sft.backends import Request
from alfworld_sft.decoding import SlotDecoder, register_grouped_attention
from alfworld_sft.grounding import choose_whole, score_commands

SYSTEM = {"role": "system", "content": "Reply with one command."}
PROMPTS = [
    (SYSTEM, {"role": "user", "content": text})
    for text in (
        "Task: put a mug in shelf.\nObservation: You see a shelf 1 and a countertop 1.",
        "Observation: Nothing happens.",
        "Task: examine the book with the desklamp.",
    )
]
CHOICES = ("go to shelf 1", "go to countertop 1", "take mug 1 from countertop 1", "look", "inventory")


@pytest.fixture(scope="module")
def model_and_tokenizer():
    """The model as the backend loads it on a CPU: with the decoder's grouped attention."""
    import torch

    torch.set_num_threads(2)
    tokenizer = models.load_tokenizer(models.DEFAULT_MODEL)
    attention = register_grouped_attention()
    model = models.load_model(models.DEFAULT_MODEL, dtype=torch.float32, attn_implementation=attention).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def eager_model():
    """The independent reference: transformers' own eager attention."""
    import torch

    return models.load_model(models.DEFAULT_MODEL, dtype=torch.float32, attn_implementation="eager").eval()


def encode(tokenizer, messages) -> list[int]:
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def run(decoder: SlotDecoder, items: list[tuple[str, Request, list[int], str | None]]) -> dict[str, str]:
    for key, request, ids, session in items:
        decoder.submit(key, request, ids, session)
    texts = {}
    while decoder.busy:
        for key, ids in decoder.step():
            texts[key] = decoder.tokenizer.decode(ids, skip_special_tokens=True).strip()
    return texts


def reference(model, tokenizer, messages, max_new_tokens: int) -> str:
    import torch

    ids = torch.tensor([encode(tokenizer, messages)])
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=models.stop_token_ids(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def make_decoder(model, tokenizer, rows: int, batch_prefill: bool) -> SlotDecoder:
    return SlotDecoder(
        model, tokenizer, stop_ids=models.stop_token_ids(tokenizer), rows=rows, batch_prefill=batch_prefill
    )


@pytest.mark.slow
@pytest.mark.parametrize(("rows", "batch_prefill"), [(1, False), (3, True), (2, True)])
def test_replies_equal_generate_whatever_shares_the_batch(model_and_tokenizer, eager_model, rows, batch_prefill):
    model, tokenizer = model_and_tokenizer
    decoder = make_decoder(model, tokenizer, rows, batch_prefill)
    items = [(str(i), Request(p, 12), encode(tokenizer, p), f"s{i}") for i, p in enumerate(PROMPTS)]
    texts = run(decoder, items)
    assert [texts[str(i)] for i in range(3)] == [reference(eager_model, tokenizer, p, 12) for p in PROMPTS]


@pytest.mark.slow
def test_grouped_attention_computes_what_eager_attention_computes(model_and_tokenizer, eager_model):
    """The same forwards on both attentions: a batched prefill of rows of different lengths, then a decode of some
    of the rows (the cache gathered by row)."""
    import torch

    model, tokenizer = model_and_tokenizer
    assert model.config.num_attention_heads > model.config.num_key_value_heads  # query heads do share keys
    logits = []
    for each in (model, eager_model):
        decoder = make_decoder(each, tokenizer, 3, True)
        prompts = [encode(tokenizer, p) for p in PROMPTS]
        prefill, _ = decoder._logits(decoder._forward([0, 1, 2], prompts), [len(p) - 1 for p in prompts])
        decode, _ = decoder._logits(decoder._forward([0, 2], [[5], [7]]), [0, 0])
        logits.append(torch.cat([prefill, decode]))
    torch.testing.assert_close(logits[0], logits[1], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_a_session_computes_only_its_new_tokens_and_replies_as_from_scratch(model_and_tokenizer, eager_model):
    model, tokenizer = model_and_tokenizer
    decoder = make_decoder(model, tokenizer, 2, False)
    first = list(PROMPTS[0])
    reply = run(decoder, [("a", Request(tuple(first), 12), encode(tokenizer, first), "game")])["a"]
    second = (
        *first,
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "Observation: You arrive at shelf 1. On the shelf 1, you see nothing."},
    )
    before = decoder.stats.reused_tokens
    texts = run(
        decoder,
        [
            ("b", Request(second, 12), encode(tokenizer, second), "game"),
            ("c", Request(PROMPTS[1], 12), encode(tokenizer, PROMPTS[1]), "other"),
        ],
    )
    assert decoder.stats.reused_tokens - before >= len(encode(tokenizer, first)) - 1
    assert texts == {
        "b": reference(eager_model, tokenizer, second, 12),
        "c": reference(eager_model, tokenizer, PROMPTS[1], 12),
    }
    decoder.release("game")
    assert all(row.owner != "game" for row in decoder.rows)


@pytest.mark.slow
def test_the_gpu_decode_setup_replies_as_generate_and_keeps_parked_rows_intact(eager_model):
    """As on a GPU: prefill on SDPA, decode on the grouped attention with every row in each forward (idle and parked
    rows with a throwaway token). Replies of different lengths leave rows idle mid-batch; a parked game then
    continues from its cache."""
    import torch

    tokenizer = models.load_tokenizer(models.DEFAULT_MODEL)
    model = models.load_model(models.DEFAULT_MODEL, dtype=torch.float32, attn_implementation="sdpa").eval()
    decoder = SlotDecoder(
        model,
        tokenizer,
        stop_ids=models.stop_token_ids(tokenizer),
        rows=4,
        batch_prefill=True,
        decode_attention=register_grouped_attention(),
        decode_all_rows=True,
    )
    budgets = (12, 3, 7)
    items = [(str(i), Request(p, n), encode(tokenizer, p), f"s{i}") for i, (p, n) in enumerate(zip(PROMPTS, budgets))]
    texts = run(decoder, items)
    assert [texts[str(i)] for i in range(3)] == [
        reference(eager_model, tokenizer, p, n) for p, n in zip(PROMPTS, budgets)
    ]
    assert model.config._attn_implementation == "sdpa"  # switched for the decode forwards only

    second = (
        *PROMPTS[1],
        {"role": "assistant", "content": texts["1"]},
        {"role": "user", "content": "Observation: OK."},
    )
    before = decoder.stats.reused_tokens
    texts = run(
        decoder,
        [
            ("b", Request(second, 10), encode(tokenizer, second), "s1"),
            ("c", Request(PROMPTS[0], 5), encode(tokenizer, PROMPTS[0]), "new"),
        ],
    )
    assert decoder.stats.reused_tokens - before >= len(encode(tokenizer, PROMPTS[1])) - 1
    assert texts == {
        "b": reference(eager_model, tokenizer, second, 10),
        "c": reference(eager_model, tokenizer, PROMPTS[0], 5),
    }


@pytest.mark.slow
def test_more_sessions_than_rows_take_over_parked_rows(model_and_tokenizer, eager_model):
    model, tokenizer = model_and_tokenizer
    decoder = make_decoder(model, tokenizer, 1, False)
    items = [(str(i), Request(p, 8), encode(tokenizer, p), f"s{i}") for i, p in enumerate(PROMPTS)]
    texts = run(decoder, items)
    assert [texts[str(i)] for i in range(3)] == [reference(eager_model, tokenizer, p, 8) for p in PROMPTS]


@pytest.mark.slow
@pytest.mark.parametrize("budget", [24, 2])
def test_a_grounded_reply_is_always_one_of_the_choices(model_and_tokenizer, budget):
    """From the first token; also when the budget is far too small for any command (the command completes)."""
    model, tokenizer = model_and_tokenizer
    decoder = make_decoder(model, tokenizer, 3, True)
    items = [(str(i), Request(p, budget, choices=CHOICES), encode(tokenizer, p), None) for i, p in enumerate(PROMPTS)]
    texts = run(decoder, items)
    assert all(text in CHOICES for text in texts.values()), texts


def test_a_grounded_reply_is_the_command_the_model_likes_best_as_a_whole(model_and_tokenizer, eager_model):
    """The commands' trie rides in the prefill forward (rows of different prompts and tries in one batch) and scores
    each command as plain forwards over prompt + command do (`grounding.score_commands`); the reply is the best. The
    trie is not kept: the game's next request reuses its prompt and replies as a fresh decoder does."""
    model, tokenizer = model_and_tokenizer
    decoder = make_decoder(model, tokenizer, 3, True)
    items = [
        (str(i), Request(p, 24, choices=CHOICES[i:]), encode(tokenizer, p), f"s{i}") for i, p in enumerate(PROMPTS)
    ]
    texts = run(decoder, items)
    assert (decoder.stats.prefill_forwards, decoder.stats.decode_forwards, decoder.stats.rank_forwards) == (1, 0, 0)
    end = models.stop_token_ids(tokenizer)[0]
    for i, prompt in enumerate(PROMPTS):
        scores = score_commands(eager_model, tokenizer, encode(tokenizer, prompt), CHOICES[i:], end)
        assert texts[str(i)] == choose_whole(scores), (texts[str(i)], scores)

    follow = (*PROMPTS[0], {"role": "assistant", "content": texts["0"]}, {"role": "user", "content": "Observation: ok"})
    again = Request(follow, 24, choices=CHOICES)
    before = decoder.stats.reused_tokens
    assert (
        run(decoder, [("next", again, encode(tokenizer, follow), "s0")])["next"]
        == run(make_decoder(model, tokenizer, 1, False), [("next", again, encode(tokenizer, follow), None)])["next"]
    )
    assert decoder.stats.reused_tokens - before >= len(encode(tokenizer, PROMPTS[0])) - 1


@pytest.mark.slow
@pytest.mark.parametrize("budget", [56, 6])
def test_a_thinking_reply_keeps_a_free_thought_and_a_grounded_action(model_and_tokenizer, budget):
    from alfworld_sft.prompts import parse_reply

    model, tokenizer = model_and_tokenizer
    decoder = make_decoder(model, tokenizer, 2, True)
    system = {"role": "system", "content": "Reply in two lines:\nThought: <why>\nAction: <command>"}
    prompt = (system, PROMPTS[0][1])
    request = Request(prompt, budget, choices=CHOICES, choice_after="Action:")
    text = run(decoder, [("r", request, encode(tokenizer, prompt), None)])["r"]
    assert "Action:" in text and parse_reply(text)[1] in CHOICES, text


@pytest.mark.slow
def test_sampling_is_seeded_per_request_not_per_batch(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    sampled = Request(PROMPTS[2], 12, temperature=1.0, sample_seed=7)
    alone = run(make_decoder(model, tokenizer, 1, False), [("x", sampled, encode(tokenizer, PROMPTS[2]), None)])
    crowd = [
        (str(i), Request(p, 12, temperature=1.0, sample_seed=i), encode(tokenizer, p), None)
        for i, p in enumerate(PROMPTS)
    ]
    together = run(
        make_decoder(model, tokenizer, 4, True), [*crowd, ("x", sampled, encode(tokenizer, PROMPTS[2]), None)]
    )
    assert together["x"] == alone["x"]
    others = [
        run(
            make_decoder(model, tokenizer, 1, False),
            [("x", Request(PROMPTS[2], 12, temperature=1.0, sample_seed=s), encode(tokenizer, PROMPTS[2]), None)],
        )["x"]
        for s in range(8, 12)
    ]
    assert any(text != alone["x"] for text in others)  # the seed matters


def test_a_draw_follows_the_distribution_and_never_takes_an_impossible_token():
    """`_draw`'s inverse-CDF draws: over many seeds the frequencies follow softmax(scores / temperature), a token of
    probability 0 is never drawn, and a row's draw is the same alone or among others."""
    import torch
    from alfworld_sft.decoding import Row

    decoder = SlotDecoder.__new__(SlotDecoder)
    decoder._torch = torch
    probs = torch.tensor([0.0, 0.7, 0.2, 0.1])
    scores = torch.log(probs).expand(2000, 4)  # log(0) = -inf: impossible
    rows = []
    for seed in range(2000):
        row = Row()
        row.sample_seed, row.temperature, row.generated = seed + 1, 1.0, []
        rows.append(row)
    drawn = decoder._draw(rows, scores)
    counts = torch.bincount(torch.tensor(drawn), minlength=4) / len(drawn)
    assert counts[0] == 0
    assert torch.allclose(counts, probs, atol=0.04), counts
    assert decoder._draw(rows[7:8], scores[:1]) == drawn[7:8]


def test_prefill_groups_hold_rows_of_like_size_within_the_padded_budget():
    """A game's first prompt is not batched with continuations a tenth its length (each would be padded to it)."""
    from alfworld_sft.decoding import group_by_padded_size

    sizes = {0: 100, 1: 1200, 2: 120, 3: 90, 4: 1000, 5: 30, 6: 5000}
    groups = group_by_padded_size(sizes, max_tokens=2400)
    assert groups == [[6], [1, 4], [2, 0, 3], [5]]
    assert all(len(g) * max(sizes[i] for i in g) <= 2400 for g in groups if len(g) > 1)
    assert sorted(i for g in groups for i in g) == sorted(sizes)
    assert group_by_padded_size({0: 50, 1: 60, 2: 55}, max_tokens=120) == [[1, 2], [0]]
