"""Grounded commands the plain way (`alfworld_sft.grounding`): the commands' trie, the two ways of choosing a command
from their tokens' log-probabilities, and notebook 05's table on a real game with the real default model."""

from alfworld_sft import models
from alfworld_sft.evaluation import rank_first_step
from alfworld_sft.grounding import CommandScore, CommandTrie, choose_token_by_token, choose_whole


def test_the_trie_shares_prefixes_and_ends_every_command_at_a_leaf():
    trie = CommandTrie([[1, 2, 9], [1, 3, 9], [4, 9]])
    assert trie.nodes == [(1, -1), (2, 0), (3, 0), (4, -1)]  # parents before children, "1" fed once
    assert trie.leaves == [(1, 9), (2, 9), (3, 9)]


def test_token_by_token_commits_to_the_first_token_and_whole_does_not():
    take = CommandScore("take mug 1 from desk 1", ("take", " mug", "<end>"), (-0.1, -6.0, -0.1))
    take_other = CommandScore("take pen 1 from desk 1", ("take", " pen", "<end>"), (-0.1, -7.0, -0.1))
    go = CommandScore("go to shelf 1", ("go", " shelf", "<end>"), (-2.5, -0.2, -0.1))
    assert choose_token_by_token([take, take_other, go]) == "take mug 1 from desk 1"
    assert choose_whole([take, take_other, go]) == "go to shelf 1"


def test_the_first_steps_table_ranks_every_admissible_command(train_games):
    """The decoder's choice on the same scores: tests/test_decoding.py."""
    gamefile = train_games[0]
    rows = rank_first_step(models.DEFAULT_MODEL, None, gamefile)
    assert [row["log_probability"] for row in rows] == sorted((row["log_probability"] for row in rows), reverse=True)
    assert sum(row["chosen_whole"] for row in rows) == 1 and rows[0]["chosen_whole"]
    assert sum(row["chosen_token_by_token"] for row in rows) == 1
    assert all(" '<|im_end|>' -" in row["tokens"] and row["tokens"].startswith("'") for row in rows)
    assert len({row["command"] for row in rows}) == len(rows) > 1
