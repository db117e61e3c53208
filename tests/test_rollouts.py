"""Rollouts on real engine games: outcomes that do not depend on workers or batch size (float32, the real
default model), grounded commands that are always admissible, a game that raises and a worker that dies reported
while the run goes on, and the expert's label on every state."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal

import pytest
from alfworld_sft import files
from alfworld_sft.backends import ExpertBackend, load_backend
from alfworld_sft.rollouts import RolloutConfig, open_worker_pool, play_rollout_groups, play_rollouts
from conftest import games_of_type

SHORT_TYPES = ("pick_and_place_simple", "look_at_obj_in_light", "pick_heat_then_place_in_recep")


def outcome(record: dict) -> tuple:
    return record["game_id"], record["won"], record["steps"], tuple(record["actions"])


@pytest.fixture(scope="module")
def float32_backend():
    return load_backend("smollm2-135m-instruct", dtype="float32", device="cpu", threads=2, batch_size=3)


@pytest.mark.slow
def test_outcomes_do_not_depend_on_workers_batch_size_or_finish_order(eval_games, float32_backend):
    chosen = games_of_type(eval_games, *SHORT_TYPES)[:3]
    config = RolloutConfig(agent="zero_shot", max_steps=2, seed=0, expert=None, progress=False)
    one_at_a_time = play_rollouts(float32_backend, chosen, RolloutConfig(**{**config.__dict__, "games_in_flight": 1}))
    together = play_rollouts(float32_backend, chosen, RolloutConfig(**{**config.__dict__, "workers": 2}))
    assert sorted(map(outcome, one_at_a_time.records)) == sorted(map(outcome, together.records))
    assert not together.failed and together.profile.games == 3 and together.profile.workers == 2
    profile = together.profile
    assert profile.requests == sum(r["steps"] for r in together.records)
    assert profile.model_s > 0 and profile.prefill_s > 0 and profile.engine_start_s > 0
    # Each reply's first token comes from its prefill; every decode forward adds at least one more.
    assert profile.decode_forwards > 0 and profile.generated_tokens - profile.requests >= profile.decode_forwards
    assert profile.reused_tokens > 0  # later steps of a game reuse its cached prompt


@pytest.mark.slow
def test_agents_batched_together_play_as_each_agent_alone(eval_games, float32_backend):
    chosen = games_of_type(eval_games, *SHORT_TYPES)[:1]
    configs = [RolloutConfig(agent=a, max_steps=2, expert=None, progress=False) for a in ("zero_shot", "react")]
    alone = [r for config in configs for r in play_rollouts(float32_backend, chosen, config).records]
    together = play_rollout_groups(float32_backend, [(config, chosen) for config in configs])
    # The same game played by two agents at once: each keeps its own cached conversation.
    assert sorted((r["agent"], *outcome(r)) for r in together.records) == sorted(
        (r["agent"], *outcome(r)) for r in alone
    )
    assert together.profile.games == 2


@pytest.mark.slow
@pytest.mark.parametrize("agent", ["zero_shot", "react"])
def test_grounded_commands_are_always_admissible(eval_games, float32_backend, agent):
    chosen = games_of_type(eval_games, *SHORT_TYPES)[:2]
    config = RolloutConfig(agent=agent, max_steps=2, actions="constrained", expert=None, progress=False)
    result = play_rollouts(float32_backend, chosen, config)
    turns = [turn for record in result.records for trial in record["transcript"] for turn in trial["turns"]]
    assert len(turns) == sum(r["steps"] for r in result.records) > 0
    # Every reply mapped exactly: its command was one of the admissible commands of that state, and the engine took
    # it (a command it did not admit would have been answered "Nothing happens.").
    assert all(turn["how"] == "exact" for turn in turns), [t for t in turns if t["how"] != "exact"]
    assert all(turn["observation"] != "Nothing happens." for turn in turns)
    if agent == "react":
        assert all("Action:" in turn["reply"] for turn in turns)


@pytest.mark.slow
def test_free_decoding_sends_no_choices(eval_games):
    seen = []

    class Recording(ExpertBackend):
        def submit(self, key, request):
            seen.append(request)
            super().submit(key, request)

    play_rollouts(Recording(), eval_games[:1], RolloutConfig(max_steps=2, progress=False))
    assert seen and all(request.choices is None and request.temperature == 0 for request in seen)


def broken_copy(gamefile, tmp_path):
    """A copy of a game whose PDDL the engine cannot load."""
    target = tmp_path / "json_2.1.1" / "valid_seen" / gamefile.parent.parent.name / gamefile.parent.name
    shutil.copytree(gamefile.parent, target)
    (target / "game.tw-pddl").write_text(json.dumps({"pddl_domain": "(define"}))
    return target / "game.tw-pddl"


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_a_game_that_raises_is_reported_and_the_run_goes_on(eval_games, tmp_path, workers):
    good = games_of_type(eval_games, *SHORT_TYPES)[:2]
    broken = broken_copy(good[0], tmp_path)
    failures = []
    result = play_rollouts(
        ExpertBackend(),
        [good[0], broken, good[1]],
        RolloutConfig(max_steps=30, workers=workers, progress=False),
        on_failed=lambda agent, gamefile, error: failures.append((agent, gamefile, error)),
    )
    assert [(a, g) for a, g, _ in result.failed] == [("zero_shot", str(broken))] and failures == result.failed
    assert "KeyError" in result.failed[0][2]
    assert sorted(r["gamefile"] for r in result.records) == sorted(map(str, good))
    assert all(r["won"] for r in result.records)  # the expert backend wins these short games


@pytest.mark.slow
def test_a_worker_that_dies_is_reported_with_its_game_and_replaced(eval_games):
    chosen = games_of_type(eval_games, *SHORT_TYPES)[:4]
    killed = []

    def kill_a_worker(record):
        if not killed:
            worker = next(p for p in multiprocessing.active_children() if p.name.startswith("alfworld-engine-"))
            os.kill(worker.pid, signal.SIGKILL)
            killed.append(worker.pid)

    result = play_rollouts(
        ExpertBackend(),
        chosen,
        RolloutConfig(max_steps=30, workers=2, games_in_flight=4, progress=False),
        on_finished=kill_a_worker,
    )
    assert killed
    assert len(result.records) + len(result.failed) == 4
    assert all("died" in error for _, _, error in result.failed)
    # Games started after the death run on the replacement worker.
    assert len(result.records) >= 1


@pytest.mark.slow
def test_every_turn_carries_the_expert_label_of_the_state_the_model_saw(eval_games):
    [gamefile] = games_of_type(eval_games, "pick_and_place_simple")[:1]
    result = play_rollouts(ExpertBackend(), [gamefile], RolloutConfig(max_steps=30, progress=False))
    [record] = result.records
    turns = record["transcript"][0]["turns"]
    assert record["won"] and all(turn["expert"]["command"] == turn["command"] for turn in turns)


def engine_workers() -> list[int]:
    """The engine worker processes of this process's worker pools."""
    return sorted(p.pid for p in multiprocessing.active_children() if p.name.startswith("alfworld-engine-"))


@pytest.mark.slow
def test_one_worker_pool_plays_several_rollouts(eval_games):
    """An evaluation starts its worker pool once for all its agents: the same workers play every rollout, none
    pays the start-up again, and the games play as with a pool of their own."""
    chosen = games_of_type(eval_games, *SHORT_TYPES)[:2]
    backend = ExpertBackend()
    configs = [RolloutConfig(agent=agent, max_steps=30, workers=2, progress=False) for agent in ("zero_shot", "react")]
    with open_worker_pool(backend, 2) as pool:
        workers = engine_workers()
        shared = [play_rollouts(backend, chosen, config, worker_pool=pool) for config in configs]
        assert len(workers) == 2 and engine_workers() == workers
    assert not any(files.is_process_alive(pid) for pid in workers)  # closing the pool stops its workers
    alone = play_rollouts(backend, chosen, configs[0])  # a pool of its own, started and stopped by the call
    assert alone.profile.startup_s > 0 and alone.profile.workers == 2 and not engine_workers()
    for result in shared:
        assert result.profile.startup_s == 0.0 and result.profile.workers == 2 and not result.failed
        assert sorted(map(outcome, result.records)) == sorted(map(outcome, alone.records))
    with open_worker_pool(backend, 0) as inline:  # no worker process: the games play in this process
        assert play_rollouts(backend, chosen, configs[0], worker_pool=inline).profile.workers == 0
        assert not engine_workers()
    with pytest.raises(ValueError, match="workers must be >= 0, got -1"):
        with open_worker_pool(backend, -1):
            pass
