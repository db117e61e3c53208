"""Grounded commands: how a reply is held to the commands the game admits, shown plainly.

A grounded reply is one of the admissible commands. There are two ways to choose it from a model:

* **token by token** (what a grammar does, e.g. llama.cpp's GBNF, `served.choice_grammar`): at each token keep only
  the tokens that continue some admissible command and take the likeliest. The first token decides the verb, so a
  model that wants "take creditcard 2 from countertop 1" where no credit card lies keeps "take" and takes whatever
  lies there;
* **whole** (what the course's local decoder does, `decoding.SlotDecoder`): score every admissible command by the
  sum of its tokens' log-probabilities (its end of turn included) and take the best. "take mug 1 ..." is unlikely
  as a whole, and a "go to" wins (results/README.md: 131 of 140 games against 126 for the same adapter).

`score_commands` computes both the plain way, one forward a command, so that a notebook can show the mechanism
before the decoder hides it; `decoding.SlotDecoder` gets the same scores from one forward over `CommandTrie`, the
trie of the commands' tokens, in the prefill forward itself (tests/test_decoding.py checks the two agree).

    scores = score_commands(model, tokenizer, prompt_ids, ["go to desk 1", "take mug 1 from desk 1"], end_id)
    choose_whole(scores), choose_token_by_token(scores)
    evaluation.rank_first_step(model, adapter, gamefile)   # notebook 05's table: one real game's first step
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np


class CommandTrie:
    """Token sequences of the allowed continuations; each path ends with a stop token.

    `nodes` lists the trie's tokens that have children, parents before children, as (token, parent index or -1);
    `leaves` each sequence as the index of its last fed node (-1: a sequence of one token) and its last token."""

    def __init__(self, sequences: Sequence[Sequence[int]]):
        self.sequences = [list(sequence) for sequence in sequences]
        self.nodes: list[tuple[int, int]] = []
        index: dict[tuple[int, ...], int] = {}
        self.leaves: list[tuple[int, int]] = []
        for sequence in self.sequences:
            parent = -1
            for depth, token in enumerate(sequence[:-1]):
                prefix = tuple(sequence[: depth + 1])
                if prefix not in index:
                    index[prefix] = len(self.nodes)
                    self.nodes.append((token, parent))
                parent = index[prefix]
            self.leaves.append((parent, sequence[-1]))

    # The arrays the decoder builds its attention mask from, a few numpy operations a trie (a Python
    # loop over every node of 128 rows' tries took 847 ms a forward on the 2-core CPU: results/README.md).

    @cached_property
    def levels(self) -> np.ndarray:
        """Each node's depth below the trie's root (0: a first token) `[nodes]`."""
        levels = np.zeros(len(self.nodes), dtype=np.int64)
        for j, (_, parent) in enumerate(self.nodes):
            if parent >= 0:
                levels[j] = levels[parent] + 1
        return levels

    @cached_property
    def ancestry(self) -> np.ndarray:
        """`ancestry[n, j]`: node j is node n or one of its ancestors `[nodes, nodes]`: what node n's token sees of
        the trie in the decoder's forward."""
        ancestry = np.eye(len(self.nodes), dtype=bool)
        parents = np.array([parent for _, parent in self.nodes], dtype=np.int64)
        for level in range(1, int(self.levels.max(initial=0)) + 1):  # parents first: a level reads the one above
            at = np.nonzero(self.levels == level)[0]
            ancestry[at] |= ancestry[parents[at]]
        return ancestry


@dataclass(frozen=True)
class CommandScore:
    command: str
    tokens: tuple[str, ...]  # the command's tokens as text, its end of turn last
    log_probs: tuple[float, ...]  # each token's log-probability after the prompt and the tokens before it

    @property
    def total(self) -> float:
        return sum(self.log_probs)


def score_commands(
    model: Any, tokenizer: Any, prompt_ids: Sequence[int], commands: Sequence[str], end_id: int
) -> list[CommandScore]:
    """Each command's tokens' log-probabilities as the model's reply to the prompt: one forward over prompt and
    command a command (the plain way; the decoder scores them all in one)."""
    import torch

    scores = []
    for command in commands:
        ids = [*tokenizer(command, add_special_tokens=False)["input_ids"], end_id]
        with torch.no_grad():
            logits = model(torch.tensor([[*prompt_ids, *ids]], device=model.device)).logits[0].float()
        log_probs = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)[torch.arange(len(ids)), ids]
        tokens = tuple(tokenizer.decode([token]) for token in ids)
        scores.append(CommandScore(command, tokens, tuple(log_probs.tolist())))
    return scores


def choose_whole(scores: Sequence[CommandScore]) -> str:
    """The command with the best summed log-probability."""
    return max(scores, key=lambda score: score.total).command


def choose_token_by_token(scores: Sequence[CommandScore]) -> str:
    """The command a token-by-token walk picks: at each depth, among the commands that share the tokens taken so far
    (so their next token's log-probability has the same context), the likeliest next token."""
    alive = list(scores)
    for depth in range(max(len(score.tokens) for score in scores)):
        longer = [score for score in alive if len(score.tokens) > depth]
        best = max(longer, key=lambda score: score.log_probs[depth])
        alive = [score for score in longer if score.tokens[depth] == best.tokens[depth]]
        if len(alive) == 1:
            break
    return alive[0].command
