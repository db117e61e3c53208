"""Continuous-batching decoding for a local transformers model: many games' requests in flight on one model.

`SlotDecoder` keeps a fixed number of rows (slots), each a left-aligned key/value cache of one conversation:

* **Per-game prefix reuse.** A game in flight owns a row between its requests. Its next prompt shares most tokens
  with what the row already holds (the previous prompt and reply); only the new tokens (the reply's end and the new
  observation) are computed. Rows of finished games are released; under pressure the least recently used parked
  row is taken over (that game then recomputes its prompt).
* **Continuous batching.** Every `step()` first prefills the rows that received a request (batched on a GPU, rows
  of like size together: `group_by_padded_size`; one row at a time on a CPU, where a padded batch costs as much),
  then runs one decode forward for every row that is mid-reply. A row whose reply ends is free for its game's next
  request at once; no row waits for the longest reply of a batch.
* **Grounded commands** (`Request.choices`): the reply is the admissible command the model gives the highest
  probability as a whole (the sum of its tokens' log-probabilities, the end-of-turn token included), from the first
  token or after the reply's "Action:" marker (the thought before it stays free; if it runs out of budget or ends
  first, "\nAction: " is forced before the command). Every command is scored at once by the trie of their tokens
  (`CommandTrie`): each trie token attends to the row's cache, the tokens before it and its own ancestors, at the
  position of its depth, so one forward gives every command's next-token distributions. A reply that is a command
  from its first token hangs the trie after its prompt's new tokens: the prefill forward settles the reply, no decode
  forward follows. Token-by-token constrained decoding (a grammar) commits to the first token: a model that wants
  "take creditcard 2 from countertop 1" where no credit card lies takes whatever lies there ("take mug 1 ..."); scored
  whole, "take mug 1 ..." is unlikely and a "go to" wins (`grounding` shows the mechanism the plain way).
* **Sampling** (`Request.temperature > 0`) draws each token (a grounded reply: each command, by its score) from a
  generator seeded by `Request.sample_seed` and the token's index, so a reply does not depend on which other rows
  share the batch.

Rows live in one preallocated cache per layer, `[rows, kv_heads, width, head_dim]`, grown by doubling. The model
runs its own attention over that cache through `SlotCache.update`, with a 4D mask built here: row `r` sees its
columns `[0, length_r + j]` for its `j`-th new token. On a GPU that is SDPA; on a CPU it is `grouped_attention`
(registered with transformers as `GROUPED_ATTENTION`), eager attention without its copies of the keys and values.
On a GPU the decode forwards (one new token a row) also run `grouped_attention`, and every row takes part, a
parked one with a throwaway token: measured on the H200 with 128 rows over 6,000 cached tokens
(`benchmarks/decode_speed.py`), SDPA took 74 ms a forward (it copies each key/value head per query head when given a
mask) against 31 ms, and decoding 7 of 8 rows cost twice all of them (the active rows' cache is gathered into a copy
every layer). Prefill stays on SDPA.

    decoder = SlotDecoder(model, tokenizer, stop_ids=[...], rows=8)
    decoder.submit("game-1", request, prompt_ids)
    while decoder.busy:
        for key, reply_ids in decoder.step(): ...
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from alfworld_sft.grounding import CommandTrie

ACTION_MARKER = "Action:"
FORCED_ACTION = "\nAction: "
GROUPED_ATTENTION = "alfworld_grouped"  # the name `register_grouped_attention` gives transformers


def grouped_attention(
    module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float, dropout: float = 0.0, **_: Any
) -> tuple[Any, None]:
    """Transformers' eager attention, computed per key/value head: the query heads that share a key/value head
    (grouped-query attention) are stacked and meet that head's keys in one matmul. Eager attention first copies
    every key and value once per query head that reads it (`repeat_kv`: 3 copies for SmolLM2, 4 for Llama-3.1-8B),
    which on a CPU costs a quarter of a decode step; here the cache is read in place. Same arithmetic, same result
    up to float rounding."""
    import torch

    rows, heads, length, dim = query.shape
    kv_heads, width = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    scores = torch.matmul(query.reshape(rows, kv_heads, groups * length, dim), key.transpose(2, 3)) * scaling
    scores = scores.view(rows, kv_heads, groups, length, width)
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, None, :, :width]
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    output = torch.matmul(weights.view(rows, kv_heads, groups * length, width), value)
    return output.view(rows, heads, length, dim).transpose(1, 2).contiguous(), None


def register_grouped_attention() -> str:
    """Make `grouped_attention` loadable as `attn_implementation=GROUPED_ATTENTION` (with eager's mask format)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(GROUPED_ATTENTION, grouped_attention)
    AttentionMaskInterface.register(GROUPED_ATTENTION, eager_mask)
    return GROUPED_ATTENTION


@dataclass(frozen=True)
class Constraint:
    """A row's grounding: the choices, and whether they start at once or after the reply's marker."""

    choices: tuple[str, ...]
    after_marker: bool  # free text until "Action:", then the choices


@dataclass
class Row:
    """One slot: the tokens whose keys/values it holds, and the reply in progress."""

    tokens: list[int] = field(default_factory=list)  # ids in columns [0, len(tokens))
    owner: Hashable | None = None  # the session (game) that parks its cache here
    key: Hashable | None = None  # the request being answered (None: idle)
    prompt: list[int] = field(default_factory=list)
    suffix_from: int = 0  # prompt[:suffix_from] is already in the cache
    generated: list[int] = field(default_factory=list)
    max_new_tokens: int = 0
    temperature: float = 0.0
    sample_seed: int = 0
    constraint: Constraint | None = None
    prefilled: bool = False
    last_used: float = 0.0


class SlotCache:
    """The key/value cache the model writes through (`update`), as rows of one preallocated tensor per layer.

    Before each forward the decoder sets which rows take part (`rows`), the column each new token goes to
    (`columns`, `[active rows, new tokens]`) and how many columns attention reads (`width`).
    """

    is_compileable = False
    is_sliding: list[bool] = []

    def __init__(self, layers: int, rows: int, width: int, kv_heads: int, head_dim: int, dtype: Any, device: Any):
        import torch

        shape = (rows, kv_heads, width, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.rows: Any = None  # LongTensor of the active rows, or None for all rows
        self.columns: Any = None
        self.width = 0

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def grow(self, width: int) -> None:
        """Make room for `width` columns (doubling), keeping every row's contents."""
        import torch

        new_width = self.capacity
        while new_width < width:
            new_width *= 2
        if new_width == self.capacity:
            return
        for store in (self.keys, self.values):
            for layer, old in enumerate(store):
                grown = torch.zeros((*old.shape[:2], new_width, old.shape[3]), dtype=old.dtype, device=old.device)
                grown[:, :, : old.shape[2]] = old
                store[layer] = grown

    def update(self, key_states: Any, value_states: Any, layer_idx: int, *args: Any, **kwargs: Any):
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        rows = self.rows
        index = rows[:, None] if rows is not None else self._all_rows(keys)[:, None]
        keys[index, :, self.columns] = key_states.transpose(1, 2).to(keys.dtype)
        values[index, :, self.columns] = value_states.transpose(1, 2).to(values.dtype)
        if rows is None:
            return keys[:, :, : self.width], values[:, :, : self.width]
        return keys[rows, :, : self.width], values[rows, :, : self.width]

    @staticmethod
    def _all_rows(tensor: Any) -> Any:
        import torch

        return torch.arange(tensor.shape[0], device=tensor.device)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.width


@dataclass
class DecoderStats:
    """Where the decoder's time went, and how much of the prompts it did not have to compute."""

    prefill_s: float = 0.0
    decode_s: float = 0.0
    prefill_forwards: int = 0
    decode_forwards: int = 0
    prompt_tokens: int = 0  # tokens of all prompts
    reused_tokens: int = 0  # of which taken from a row's cache instead of computed
    generated_tokens: int = 0
    decode_rows: int = 0  # rows answering a request, summed over decode forwards: how full the batch ran
    rank_s: float = 0.0  # scoring grounded commands whole (`SlotDecoder._rank`)
    rank_forwards: int = 0


class SlotDecoder:
    """Greedy, constrained or sampled decoding of many requests at once over `rows` slots (module docstring)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        stop_ids: Sequence[int],
        rows: int = 8,
        initial_width: int = 512,
        batch_prefill: bool | None = None,
        max_prefill_tokens: int = 16384,
        decode_attention: str | None = None,
        decode_all_rows: bool | None = None,
    ):
        """`batch_prefill`, `decode_attention` (the attention implementation of decode forwards; None: the model's
        own) and `decode_all_rows` default to what is fastest on the model's device (module docstring)."""
        import torch

        self.model = model
        causal = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.decoder_model, self.head = causal.get_decoder(), causal.get_output_embeddings()
        self.tokenizer = tokenizer
        self.stop_ids = set(int(i) for i in stop_ids)
        self.end_id = int(stop_ids[0])  # the end-of-turn token that closes a grounded reply
        self.device = next(model.parameters()).device
        config = self.config = causal.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self.dtype = next(model.parameters()).dtype
        self.cache = SlotCache(
            config.num_hidden_layers, rows, initial_width, kv_heads, head_dim, self.dtype, self.device
        )
        self.rows = [Row() for _ in range(rows)]
        self.queue: OrderedDict[Hashable, tuple[Any, list[int], Hashable | None]] = OrderedDict()
        on_gpu = self.device.type == "cuda"
        self.batch_prefill = on_gpu if batch_prefill is None else batch_prefill
        if decode_attention is None and on_gpu:
            decode_attention = register_grouped_attention()
        self.decode_attention = decode_attention
        self.decode_all_rows = on_gpu if decode_all_rows is None else decode_all_rows
        self.max_prefill_tokens = max_prefill_tokens
        self.stats = DecoderStats()
        self.prefix_reuse = True  # off: every prompt is computed from scratch (the benchmark's naive baseline)
        self._choice_tokens: dict[str, list[int]] = {}
        self._torch = torch

    # ------------------------------------------------------------------------------------------ interface

    def submit(self, key: Hashable, request: Any, prompt_ids: Sequence[int], session: Hashable | None) -> None:
        """Queue a request (`backends.Request`) under `key`; its reply comes back from a later `step()`."""
        if key in self.queue or any(row.key == key for row in self.rows):
            raise ValueError(f"request {key!r} is already in flight")
        self.queue[key] = (request, list(prompt_ids), session)

    @property
    def busy(self) -> bool:
        return bool(self.queue) or any(row.key is not None for row in self.rows)

    def release(self, session: Hashable) -> None:
        """Forget a finished game's cache (its row becomes free)."""
        for row in self.rows:
            if row.owner == session and row.key is None:
                row.owner, row.tokens = None, []

    def abort(self) -> None:
        """Drop every queued and half-decoded request; rows keep no cache of them."""
        self.queue.clear()
        for row in self.rows:
            if row.key is not None:
                row.key, row.constraint, row.owner, row.tokens = None, None, None, []

    def step(self) -> list[tuple[Hashable, list[int]]]:
        """Admit queued requests into rows, prefill them, run one decode forward; return the finished replies as
        (key, generated ids, the stop token included when the reply ended with one)."""
        self._admit()
        finished: list[tuple[Hashable, list[int]]] = []
        pending = [index for index, row in enumerate(self.rows) if row.key is not None and not row.prefilled]
        if pending:
            self._prefill(pending, finished)
        decoding = [index for index, row in enumerate(self.rows) if row.key is not None and row.prefilled]
        if decoding:
            self._decode(decoding, finished)
        return finished

    # ------------------------------------------------------------------------------------------ scheduling

    def _admit(self) -> None:
        for key in list(self.queue):
            request, prompt, session = self.queue[key]
            index = self._row_for(session)
            if index is None:
                return  # every row is answering a request: the rest waits, in order
            del self.queue[key]
            row = self.rows[index]
            own_row = self.prefix_reuse and session is not None and row.owner == session
            reused = _common_prefix(row.tokens, prompt) if own_row else 0
            reused = min(reused, len(prompt) - 1)  # at least one new token gives the first logits
            row.owner, row.key, row.prompt = session, key, prompt
            row.tokens = row.tokens[:reused] if reused else []
            row.suffix_from, row.generated, row.prefilled = reused, [], False
            row.max_new_tokens, row.temperature = request.max_new_tokens, request.temperature
            row.sample_seed = request.sample_seed or 0
            row.constraint = (
                Constraint(tuple(request.choices), after_marker=request.choice_after is not None)
                if request.choices
                else None
            )
            row.last_used = time.perf_counter()
            self.stats.prompt_tokens += len(prompt)
            self.stats.reused_tokens += reused

    def _row_for(self, session: Hashable | None) -> int | None:
        """The session's own row if it has one, else a free row, else the least recently used parked row."""
        idle = [i for i, row in enumerate(self.rows) if row.key is None]
        if session is not None:
            for i in idle:
                if self.rows[i].owner == session:
                    return i
        free = [i for i in idle if self.rows[i].owner is None]
        if free:
            return free[0]
        if idle:
            return min(idle, key=lambda i: self.rows[i].last_used)
        return None

    # ------------------------------------------------------------------------------------------ forwards

    def _forward(
        self,
        rows: list[int],
        tokens: list[list[int]],
        *,
        attention: str | None = None,
        kept: list[int] | None = None,
        tries: list[CommandTrie | None] | None = None,
    ) -> Any:
        """Run the model on each row's new tokens (written after the row's cached tokens); return the last hidden
        states `[len(rows), new tokens, width]`. `kept[a]` (default: all) of row a's new tokens count as cached:
        the rest were throwaway, written past its end. With `tries`, a row's new tokens are a sequence followed by
        its trie's tokens (`CommandTrie.nodes`, hung after the sequence's last token): each trie token sees the
        cache, the whole sequence and its own ancestors, at the position of its depth."""
        torch = self._torch
        device = self.device
        lengths = torch.tensor([len(self.rows[r].tokens) for r in rows])
        counts = torch.tensor([len(t) for t in tokens])
        new = int(counts.max())
        self.cache.grow(int(lengths.max()) + new)
        width = int((lengths + counts).max())
        ids = torch.zeros((len(rows), new), dtype=torch.long)
        for a, row_tokens in enumerate(tokens):
            ids[a, : len(row_tokens)] = torch.tensor(row_tokens)
        lengths, counts = lengths.to(device), counts.to(device)
        steps = torch.arange(new, device=device)
        # New token j of row a goes to column length_a + j; padding (j >= count_a) lands past the row's end, where
        # later tokens overwrite it before anything reads it, and its queries see what the last real token sees.
        columns = lengths[:, None] + steps[None, :]
        if tries is None or not any(tries):
            positions = lengths[:, None] + torch.minimum(steps[None, :], counts[:, None] - 1)
            visible = torch.arange(width, device=device)[None, None, :] <= positions[:, :, None]
        else:
            visible, positions = self._trie_visibility(lengths, tokens, tries, new, width)
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=device)
        mask.masked_fill_(~visible, torch.finfo(self.dtype).min)
        all_rows = rows == list(range(len(self.rows)))
        self.cache.rows = None if all_rows else torch.tensor(rows, device=device)
        self.cache.columns, self.cache.width = columns, width
        own_attention = self.config._attn_implementation
        if attention is not None:
            self.config._attn_implementation = attention  # the layers read it at every forward
        try:
            with torch.no_grad():
                hidden = self.decoder_model(
                    input_ids=ids.to(device),
                    position_ids=positions,
                    attention_mask=mask[:, None],
                    past_key_values=self.cache,
                    use_cache=True,
                ).last_hidden_state
        finally:
            self.config._attn_implementation = own_attention
        for a, (r, row_tokens) in enumerate(zip(rows, tokens)):
            self.rows[r].tokens.extend(row_tokens if kept is None else row_tokens[: kept[a]])
        return hidden

    def _trie_visibility(
        self, lengths: Any, tokens: list[list[int]], tries: list[CommandTrie | None], new: int, width: int
    ) -> tuple[Any, Any]:
        """The `[rows, new, width]` visibility and `[rows, new]` positions of sequences followed by trie tokens."""
        import numpy as np

        torch = self._torch
        rows = len(tokens)
        causal = np.tri(new, dtype=bool)
        sees = np.zeros((rows, new, new), dtype=bool)
        depth = np.zeros((rows, new), dtype=np.int64)
        for a, (row_tokens, trie) in enumerate(zip(tokens, tries)):
            nodes = len(trie.nodes) if trie else 0
            chain = len(row_tokens) - nodes
            sees[a, :chain, :chain] = causal[:chain, :chain]
            depth[a, :chain] = np.arange(chain)
            if nodes:
                end = chain + nodes
                sees[a, chain:end, :chain] = True
                sees[a, chain:end, chain:end] = trie.ancestry
                depth[a, chain:end] = chain + trie.levels
            last = len(row_tokens) - 1
            sees[a, last + 1 :], depth[a, last + 1 :] = sees[a, last], depth[a, last]
        sees, depth = torch.from_numpy(sees).to(self.device), torch.from_numpy(depth).to(self.device)
        span = int(lengths.max()) + new  # every row's new columns fit below it
        visible = torch.arange(span, device=self.device)[None, None, :] < lengths[:, None, None]
        visible = visible.expand(rows, new, span).clone()
        columns = (lengths[:, None] + torch.arange(new, device=self.device)[None, :])[:, None, :]
        visible.scatter_(2, columns.expand(rows, new, new), sees)
        return visible[:, :, :width], lengths[:, None] + depth

    def _logits(self, hidden: Any, at: list[int]) -> tuple[Any, list[int]]:
        """The float32 logits of each row's new token at index `at[a]` `[rows, vocab]` and their greedy choices."""
        torch = self._torch
        index = torch.tensor(at, device=self.device)
        logits = self.head(hidden[torch.arange(len(at), device=self.device), index]).float()
        return logits, logits.argmax(-1).tolist()

    def _following(self, hidden: Any, start: int, trie: CommandTrie) -> Any:
        """Log-probabilities of the token after each of a trie's tokens `[nodes, vocab]`, from one row's hidden
        states where the trie's tokens start at `start`."""
        return self._torch.log_softmax(self.head(hidden[start : start + len(trie.nodes)]).float(), dim=-1)

    def _prefill(self, pending: list[int], finished: list[tuple[Hashable, list[int]]]) -> None:
        """Each row's new prompt tokens; a row whose reply is a grounded command from its first token gets its
        commands' trie in the same forward, so its reply is settled without another."""
        started = time.perf_counter()
        first_tries = {index: self._first_trie(self.rows[index]) for index in pending}
        sizes = {
            index: len(self.rows[index].prompt) - self.rows[index].suffix_from + len(getattr(trie, "nodes", ()))
            for index, trie in first_tries.items()
        }
        groups = group_by_padded_size(sizes, self.max_prefill_tokens) if self.batch_prefill else [[i] for i in pending]
        ranking: list[tuple[int, Any, CommandTrie]] = []
        for group in groups:
            suffixes = [self.rows[i].prompt[self.rows[i].suffix_from :] for i in group]
            tries = [first_tries[i] for i in group]
            tokens = [s + [t for t, _ in trie.nodes] if trie else s for s, trie in zip(suffixes, tries)]
            kept = [len(s) for s in suffixes]
            hidden = self._forward(group, tokens, kept=kept, tries=tries)
            logits, greedy = self._logits(hidden, [n - 1 for n in kept])
            picked = self._pick(group, logits, greedy)
            self.stats.prefill_forwards += 1
            for a, index in enumerate(group):
                self.rows[index].prefilled = True
                if tries[a] is None:
                    self._choose(index, logits[a], picked[a], finished, ranking)
                else:
                    following = self._following(hidden[a], kept[a], tries[a]) if tries[a].nodes else None
                    self._settle(index, logits[a], tries[a], following, finished)
        self.stats.prefill_s += time.perf_counter() - started
        if ranking:
            self._rank(ranking, finished)

    def _decode(self, decoding: list[int], finished: list[tuple[Hashable, list[int]]]) -> None:
        started = time.perf_counter()
        rows = list(range(len(self.rows))) if self.decode_all_rows else decoding
        active = set(decoding)
        tokens = [[self.rows[i].generated[-1] if i in active else self.end_id] for i in rows]
        kept = [int(i in active) for i in rows]
        hidden = self._forward(rows, tokens, attention=self.decode_attention, kept=kept)
        logits, greedy = self._logits(hidden, [0] * len(rows))
        picked = self._pick(rows, logits, greedy)
        self.stats.decode_forwards += 1
        self.stats.decode_rows += len(active)
        ranking: list[tuple[int, Any, CommandTrie]] = []
        for a, index in enumerate(rows):
            if index in active:
                self._choose(index, logits[a], picked[a], finished, ranking)
        self.stats.decode_s += time.perf_counter() - started
        if ranking:
            self._rank(ranking, finished)

    # ------------------------------------------------------------------------------------------ choosing

    def _choose(
        self,
        index: int,
        logits: Any,
        token: int,
        finished: list[tuple[Hashable, list[int]]],
        ranking: list[tuple[int, Any, CommandTrie]],
    ) -> None:
        """Take the row's next free token (`_pick`'s) and finish the reply when it ends; a row whose command is due
        (after the marker, or forced) joins `ranking` with its next-token logits and its trie, scored by `_rank`."""
        row = self.rows[index]
        if row.constraint is not None and self._grounding_starts(row):
            ranking.append((index, logits, self._trie(row, forced=False)))
            return
        if row.constraint is not None and (token in self.stop_ids or len(row.generated) + 1 >= row.max_new_tokens):
            # The free thought may neither end nor run out before "Action:": force the marker, then a choice.
            ranking.append((index, logits, self._trie(row, forced=True)))
            return
        row.generated.append(token)
        self.stats.generated_tokens += 1
        if token in self.stop_ids or len(row.generated) >= row.max_new_tokens:
            self._finish(row, finished)

    def _rank(self, ranking: list[tuple[int, Any, CommandTrie]], finished: list[tuple[Hashable, list[int]]]) -> None:
        """Score the commands of rows whose command is due mid-reply: one forward over their tries (like prefill:
        all rows at once on a GPU, one at a time on a CPU, where padding costs). The trie's tokens are not kept in
        the cache: the row's next prompt computes the chosen command's few tokens again."""
        started = time.perf_counter()
        branching = [(index, trie) for index, _, trie in ranking if trie.nodes]
        groups = [branching] if self.batch_prefill and branching else [[each] for each in branching]
        following: dict[int, Any] = {}
        for group in groups:
            rows = [index for index, _ in group]
            tries: list[CommandTrie | None] = [trie for _, trie in group]
            tokens = [[token for token, _ in trie.nodes] for _, trie in group]
            hidden = self._forward(rows, tokens, kept=[0] * len(rows), tries=tries)
            self.stats.rank_forwards += 1
            for a, (index, trie) in enumerate(group):
                following[index] = self._following(hidden[a], 0, trie)
        for index, logits, trie in ranking:
            self._settle(index, logits, trie, following.get(index), finished)
        self.stats.rank_s += time.perf_counter() - started

    def _settle(
        self,
        index: int,
        logits: Any,
        trie: CommandTrie,
        following: Any,
        finished: list[tuple[Hashable, list[int]]],
    ) -> None:
        """End the row's reply with its best-scored command (drawn by score when sampling): a command's score is
        its first token's log-probability under `logits` plus its later tokens' under `following`."""
        torch = self._torch
        first = torch.log_softmax(logits.float(), dim=-1)
        # Each trie token's and each sequence's last token's log-probability, gathered on the device at once.
        steps = [*trie.nodes, *((token, leaf) for leaf, token in trie.leaves)]
        token_ids = torch.tensor([token for token, _ in steps], device=first.device)
        after = torch.tensor([parent for _, parent in steps], device=first.device)
        scored = first[token_ids]
        if following is not None:
            scored = torch.where(after >= 0, following[after.clamp(min=0), token_ids], scored)
        scored = scored.tolist()
        path: list[float] = []  # each trie token's log-probability with its ancestors'
        for j, (_, parent) in enumerate(trie.nodes):
            path.append(scored[j] + (path[parent] if parent >= 0 else 0.0))
        scores = torch.tensor(
            [
                scored[len(trie.nodes) + k] + (path[leaf] if leaf >= 0 else 0.0)
                for k, (leaf, _) in enumerate(trie.leaves)
            ]
        )
        row = self.rows[index]
        choice = self._draw([row], scores[None])[0] if row.temperature > 0 else int(scores.argmax())
        row.generated.extend(trie.sequences[choice])
        self.stats.generated_tokens += len(trie.sequences[choice])
        self._finish(row, finished)

    def _finish(self, row: Row, finished: list[tuple[Hashable, list[int]]]) -> None:
        finished.append((row.key, list(row.generated)))
        # The last token was never fed back: the row keeps the prompt and the reply without it.
        row.key, row.constraint, row.last_used = None, None, time.perf_counter()

    def _first_trie(self, row: Row) -> CommandTrie | None:
        """The trie of a row whose reply is a grounded command from its first token (else None)."""
        if row.constraint is None or row.constraint.after_marker:
            return None
        return self._trie(row, forced=False)

    def _grounding_starts(self, row: Row) -> bool:
        """Whether the reply's free part has just written the marker after which its command is grounded."""
        text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
        return text.rstrip(" ").endswith(ACTION_MARKER)

    def _trie(self, row: Row, *, forced: bool) -> CommandTrie:
        """The trie of the row's choices as they continue its text so far, each ending with the end-of-turn token."""
        grounding = row.constraint
        if forced:
            prefix = FORCED_ACTION if grounding.after_marker else ""
        elif grounding.after_marker:
            prefix = "" if self.tokenizer.decode(row.generated, skip_special_tokens=True).endswith(" ") else " "
        else:
            prefix = ""
        return CommandTrie([self._choice_ids(prefix + choice) for choice in dict.fromkeys(grounding.choices)])

    def _choice_ids(self, text: str) -> list[int]:
        if text not in self._choice_tokens:
            self._choice_tokens[text] = [*self.tokenizer(text, add_special_tokens=False)["input_ids"], self.end_id]
        return self._choice_tokens[text]

    def _pick(self, rows: list[int], logits: Any, greedy: list[int]) -> list[int]:
        """Each row's next free token: greedy, or drawn when sampling (every sampling row at once)."""
        picked = list(greedy)
        sampling = [a for a, index in enumerate(rows) if self.rows[index].temperature > 0]
        if sampling:
            drawn = self._draw([self.rows[rows[a]] for a in sampling], logits[sampling])
            for a, token in zip(sampling, drawn):
                picked[a] = token
        return picked

    def _draw(self, rows: list[Row], scores: Any) -> list[int]:
        """One index a row drawn from softmax(scores / temperature) `scores: [rows, n]`, by the inverse of its
        cumulative distribution at a uniform number seeded by the row's request and token index: a draw does not
        depend on the other rows, and all rows are drawn on the scores' device at once (one copy back, where a
        draw a row on the CPU waited for the GPU a row). A game's sample seed has 48 bits (agents._seed_of): the
        product stays within the generator's signed 64 bits."""
        torch = self._torch

        def uniform(row: Row) -> float:
            seed = (row.sample_seed * 1_000_003 + len(row.generated)) % (1 << 63)
            return float(torch.rand(1, generator=torch.Generator().manual_seed(seed)))

        uniforms = [uniform(row) for row in rows]
        temperature = torch.tensor([row.temperature for row in rows], device=scores.device)
        cumulative = torch.softmax(scores.float() / temperature[:, None], dim=-1).cumsum(-1)
        # The first index whose cumulative probability passes the uniform (right: never one of probability 0).
        target = torch.tensor(uniforms, device=scores.device)[:, None] * cumulative[:, -1:]
        drawn = torch.searchsorted(cumulative, target, right=True).clamp(max=scores.shape[-1] - 1)
        return drawn[:, 0].tolist()


def group_by_padded_size(sizes: dict[int, int], max_tokens: int) -> list[list[int]]:
    """Rows (row index -> new tokens) in prefill groups of like size: longest first, a row joins the group before it
    while it is at least half that group's longest and the padded forward (rows x the longest) stays within
    `max_tokens` (a longer row alone). Grouped in arrival order by their sum, a game's first prompt (~1,000 tokens
    and its commands' trie) padded every continuation beside it (~100) to its length, and the trie's attention mask,
    built on the CPU, grows with each row's padded length squared."""
    groups: list[list[int]] = []
    for index in sorted(sizes, key=lambda i: -sizes[i]):
        longest = sizes[groups[-1][0]] if groups else 0
        if groups and 2 * sizes[index] >= longest and (len(groups[-1]) + 1) * longest <= max_tokens:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
