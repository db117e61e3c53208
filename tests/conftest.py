"""Shared fixtures: the games tests play. Real ALFWorld games when $ALFWORLD_DATA is set (CI unpacks them),
else games the course generates itself (`generate.ensure_games`, made once into data/generated/), so that a fresh
machine runs every test that needs games, as a newcomer's `make test` does."""

from __future__ import annotations

from pathlib import Path

import pytest
from alfworld_sft import games, generate

# Games per split the suite uses: two of every task type.
SUITE_GAMES = 12


@pytest.fixture(scope="session")
def train_games() -> list[Path]:
    """A seeded, task-balanced sample of train games (real or generated)."""
    return generate.ensure_games("train", SUITE_GAMES, seed=0)


@pytest.fixture(scope="session")
def eval_games() -> list[Path]:
    """A seeded, task-balanced sample of eval_in_distribution games (real or generated), none of them a train game."""
    return generate.ensure_games("eval_in_distribution", SUITE_GAMES, seed=0)


def games_of_type(gamefiles: list[Path], *task_types: str) -> list[Path]:
    return [path for path in gamefiles if games.read_task_type(path) in task_types]
