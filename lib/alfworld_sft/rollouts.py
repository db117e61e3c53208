"""Rollouts: the one implementation of "play games with a model", for evaluation, DAgger and the notebooks.

Games are stepped by **engine workers** (`workers` processes, each owning some games: loading, resetting and
stepping them in the real engine, building each game's prompt with the model's tokenizer), while **one model** in
this process answers every pending request of every game (`backends.Backend.submit` / `step`: for a local model,
continuous batching with per-game prefix reuse, `decoding.SlotDecoder`). A game whose reply is ready is stepped at
once; meanwhile the model goes on with the others. `workers=0` plays the games in this process with the same code
(one engine call after another: for tests, small runs and machines without spare cores).

    from alfworld_sft.rollouts import RolloutConfig, play_rollout_groups, play_rollouts
    result = play_rollouts(backend, gamefiles, RolloutConfig(agent="zero_shot", max_steps=50, workers=8))
    result.records      # one record per finished game (agents.Episode.record() plus game keys), in finish order
    result.failed       # games that raised or whose worker died: (agent, game file, error); the run went on
    result.profile      # where the time went: engine start and steps, prompts, prefill, decode, waiting
    # Several agents (or settings) in one continuous batch: an evaluation of five agents is one run, not five.
    groups = [(RolloutConfig(agent=agent, workers=8), gamefiles) for agent in ("zero_shot", "react")]
    result = play_rollout_groups(backend, groups)

A game's outcome does not depend on the worker count, the batch size or the order games finish: each game owns its
random state and seeds (`agents.Episode`), and a reply does not depend on the requests it was batched with (up to
float rounding; tests compare float32).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing import connection
from pathlib import Path
from typing import Any

from alfworld_sft import engine, games, records
from alfworld_sft.agents import Demonstration, Episode, build_agent, session_of
from alfworld_sft.backends import Backend, CodecSpec, PromptCodec, Reply

POLL_S = 0.5  # how long the main loop waits for a worker event when the model has nothing to do


@dataclass(frozen=True)
class RolloutConfig:
    agent: str = "zero_shot"  # agents.AGENTS
    max_steps: int = 50  # commands per trial before the game counts as lost
    seed: int = 0  # seeds every game's random state and sampled replies
    workers: int = 0  # engine worker processes; 0 plays the games in this process
    games_in_flight: int | None = None  # games started at once; default: the backend's slots, at least `workers`
    expert: str | None = engine.DEFAULT_EXPERT  # follows every game (its labels; the expert backend's replies)
    window_tokens: int | None = None  # prompt budget; default: the training window, else the agents' base window
    actions: str = "free"  # free: map the reply afterwards; constrained: choose among admissible commands
    temperature: float = 0.0  # 0: greedy; above: sampled (seeded per game and step)
    demonstrations: tuple[Demonstration, ...] = ()  # few_shot's examples (from training games)
    progress: bool = True  # a tqdm bar over games


@dataclass
class RolloutProfile:
    """Seconds spent per kind of work (workers' figures summed over workers) and counts."""

    wall_s: float = 0.0
    startup_s: float = 0.0  # starting the engine worker processes (0 when they were started before)
    engine_start_s: float = 0.0  # loading and resetting games (workers)
    engine_step_s: float = 0.0  # stepping games and mapping replies (workers)
    prompt_s: float = 0.0  # building and tokenizing prompts (workers)
    transport_s: float = 0.0  # handing games to workers and replies back (workers=0: the engine work itself)
    model_s: float = 0.0  # the backend's steps (this process)
    prefill_s: float = 0.0  # of which prefill forwards (local models)
    decode_s: float = 0.0  # of which decode forwards (local models)
    rank_s: float = 0.0  # of which scoring grounded commands whole (local models)
    wait_s: float = 0.0  # this process waiting for workers with nothing for the model to do
    games: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    generated_tokens: int = 0
    # Forwards of a local model: decode_rows per decode forward is how full its batch ran.
    prefill_forwards: int = 0
    decode_forwards: int = 0
    decode_rows: int = 0  # rows answering a request, summed over decode forwards
    rank_forwards: int = 0
    workers: int = 0

    @property
    def overhead_s(self) -> float:
        """This process's time outside the start-up, the model, the transport and the waiting: scheduling, Python."""
        return max(0.0, self.wall_s - self.startup_s - self.model_s - self.wait_s - self.transport_s)

    @property
    def prompt_tokens_per_request(self) -> float:
        """What one turn's prompt costs the model in tokens (a memory line or a longer window raises it)."""
        return round(self.prompt_tokens / self.requests, 1) if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "overhead_s": round(self.overhead_s, 3),
            "prompt_tokens_per_request": self.prompt_tokens_per_request,
        }


@dataclass
class RolloutResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (agent, gamefile, error)
    profile: RolloutProfile = field(default_factory=RolloutProfile)


# --------------------------------------------------------------------------------------------- the worker side


class GameRunner:
    """Plays the games it is given, one event at a time: `start` a game (with the rollout's config: the agent and
    its settings), hand it each `reply`. Each call returns the game's next event: ("request", job, Request),
    ("finished", job, record) or ("failed", job, error). One runner serves every config of a run (an evaluation's
    agents one after the other), building each agent once."""

    def __init__(self, codec: PromptCodec):
        self.codec = codec
        self.agents: dict[RolloutConfig, Any] = {}
        self.episodes: dict[int, tuple[Episode, dict[str, Any]]] = {}

    def agent_for(self, config: RolloutConfig) -> Any:
        if config not in self.agents:
            kwargs: dict[str, Any] = {
                "window_tokens": config.window_tokens,
                "actions": config.actions,
                "temperature": config.temperature,
            }
            if config.agent == "few_shot":
                kwargs["demonstrations"] = config.demonstrations
            self.agents[config] = build_agent(config.agent, self.codec, **kwargs)
        return self.agents[config]

    def start(self, job: int, gamefile: str, game_id: str, config: RolloutConfig) -> tuple:
        try:
            started = time.perf_counter()
            episode = Episode(
                self.agent_for(config),
                gamefile,
                game_id=game_id,
                max_steps=config.max_steps,
                seed=config.seed,
                expert=config.expert,
            )
            times = {"engine_start_s": time.perf_counter() - started, "engine_step_s": 0.0, "prompt_s": 0.0}
            self.episodes[job] = (episode, times)
            return self._next(job)
        except Exception as error:  # noqa: BLE001 - a game that breaks is reported with its game; the run goes on
            return self._fail(job, error)

    def reply(self, job: int, reply: Reply) -> tuple:
        episode, times = self.episodes[job]
        try:
            started = time.perf_counter()
            episode.advance(reply)
            times["engine_step_s"] += time.perf_counter() - started
            return self._next(job)
        except Exception as error:  # noqa: BLE001
            return self._fail(job, error)

    def _next(self, job: int) -> tuple:
        episode, times = self.episodes[job]
        if episode.finished:
            del self.episodes[job]
            return ("finished", job, {**episode.record(), "timing": {k: round(v, 4) for k, v in times.items()}})
        started = time.perf_counter()
        request = episode.request()
        times["prompt_s"] += time.perf_counter() - started
        return ("request", job, request)

    def _fail(self, job: int, error: BaseException) -> tuple:
        episode, _ = self.episodes.pop(job, (None, None))
        if episode is not None:
            episode.close()
        text = "".join(traceback.format_exception_only(type(error), error)).strip()
        return ("failed", job, text[:2000])


def _worker_main(spec: CodecSpec, inbox: Any, outbox: Any, worker: int, parent: int) -> None:
    """A worker process: build a runner, then answer messages until told to stop. `outbox` is the sending end of
    this worker's own pipe to the main process."""
    engine.exit_with_parent(parent)
    try:
        runner = GameRunner(PromptCodec(spec))
    except Exception as error:  # noqa: BLE001 - told to the main process, which stops the run with it
        outbox.send(("broken", worker, f"{type(error).__name__}: {error}"))
        return
    outbox.send(("ready", worker, None))
    while True:
        message = inbox.get()
        if message[0] == "stop":
            return
        if message[0] == "start":
            event = runner.start(*message[1:])
        else:
            event = runner.reply(*message[1:])
        outbox.send((*event[:2], event[2], worker))


# ------------------------------------------------------------------------------------------- the transports


class InlineTransport:
    """Games stepped in this process: every message is handled at once."""

    def __init__(self, codec: PromptCodec):
        self.runner = GameRunner(codec)
        self.events: deque[tuple] = deque()
        self.count = 0  # worker processes
        self.jobs_started = 0

    def start(self, job: int, gamefile: str, game_id: str, config: RolloutConfig) -> None:
        self.events.append(self.runner.start(job, gamefile, game_id, config))

    def send(self, job: int, reply: Reply) -> None:
        self.events.append(self.runner.reply(job, reply))

    def receive(self, timeout: float) -> list[tuple]:
        events = list(self.events)
        self.events.clear()
        return events

    def close(self) -> None:
        for episode, _ in self.runner.episodes.values():
            episode.close()


class ProcessTransport:
    """Games stepped by `count` worker processes; a game stays with the worker that started it. A worker that dies
    fails its games (reported) and is replaced, so the run goes on.

    Each worker sends its events through a pipe of its own. A queue shared by the workers would not survive one of
    them being killed while writing: the dead writer keeps the queue's lock, and every other worker, its
    replacement included, then waits on it forever."""

    def __init__(self, spec: CodecSpec, count: int):
        # spawn: a clean interpreter per worker, no inherited engine state or locks (also works under Jupyter).
        self.context = multiprocessing.get_context("spawn")
        self.spec, self.count = spec, count
        self.jobs_started = 0  # job numbers given so far: they never repeat within a pool's life
        self.workers: list[Any] = []
        self.inboxes: list[Any] = []
        self.outboxes: list[Any] = []  # the receiving end of each worker's pipe; None once it is closed
        self.jobs: list[set[int]] = []
        self.pending: deque[tuple] = deque()  # events read while waiting for a worker to start
        for index in range(count):
            self._spawn(index)
        self._wait_ready(count)

    def _read(self, timeout: float) -> list[tuple]:
        """Every event the workers have sent so far, waiting up to `timeout` s for the first. A pipe whose worker
        died (perhaps in the middle of a message) is closed; `_check_workers` fails that worker's games."""
        readers = {reader: index for index, reader in enumerate(self.outboxes) if reader is not None}
        events: list[tuple] = []
        ready = connection.wait(list(readers), timeout)
        while ready:
            for reader in ready:
                try:
                    events.append(reader.recv())
                except (EOFError, OSError, pickle.UnpicklingError):
                    reader.close()
                    self.outboxes[readers.pop(reader)] = None
            ready = connection.wait(list(readers), 0) if readers else []
        return events

    def _wait_ready(self, count: int) -> None:
        """Wait until `count` workers said they are ready; keep other events for `receive`."""
        deadline = time.monotonic() + 600
        while count:
            if time.monotonic() > deadline:
                raise RuntimeError("engine workers did not start within 10 minutes")
            for event in self._read(1.0):
                if event[0] == "broken":
                    self.close()
                    raise RuntimeError(f"engine worker {event[1]} could not start: {event[2]}")
                if event[0] == "ready":
                    count -= 1
                else:
                    self.pending.append(self._take(event))

    def _spawn(self, index: int) -> None:
        inbox = self.context.Queue()
        reader, writer = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=_worker_main,
            args=(self.spec, inbox, writer, index, os.getpid()),
            daemon=True,
            name=f"alfworld-engine-{index}",
        )
        process.start()
        writer.close()  # the worker holds the only sending end: its death reads as the end of the pipe
        if index < len(self.workers):
            self.workers[index], self.inboxes[index], self.outboxes[index] = process, inbox, reader
            self.jobs[index] = set()
        else:
            self.workers.append(process)
            self.inboxes.append(inbox)
            self.outboxes.append(reader)
            self.jobs.append(set())

    def start(self, job: int, gamefile: str, game_id: str, config: RolloutConfig) -> None:
        worker = min(range(self.count), key=lambda i: len(self.jobs[i]))
        self.jobs[worker].add(job)
        self.inboxes[worker].put(("start", job, gamefile, game_id, config))

    def send(self, job: int, reply: Reply) -> None:
        for worker, jobs in enumerate(self.jobs):
            if job in jobs:
                self.inboxes[worker].put(("reply", job, reply))
                return

    def receive(self, timeout: float) -> list[tuple]:
        events = list(self.pending)
        self.pending.clear()
        events.extend(self._take(event) for event in self._read(timeout))
        self._check_workers()
        events.extend(self.pending)
        self.pending.clear()
        return events

    def _take(self, event: tuple) -> tuple:
        """A worker's (kind, job, detail, worker) as (kind, job, detail), noting which games it no longer holds."""
        kind, job, detail, worker = event
        if kind in ("finished", "failed"):
            self.jobs[worker].discard(job)
        return kind, job, detail

    def _check_workers(self) -> None:
        for index, process in enumerate(self.workers):
            if process.is_alive():
                continue
            # What it sent before it died still counts: a game it finished is not failed.
            self.pending.extend(self._take(event) for event in self._drain(index))
            for job in sorted(self.jobs[index]):
                self.pending.append(("failed", job, f"engine worker {index} died (exit code {process.exitcode})"))
            self._spawn(index)
            self._wait_ready(1)

    def _drain(self, index: int) -> list[tuple]:
        """The whole messages left in a dead worker's pipe; then the pipe is closed."""
        reader, events = self.outboxes[index], []
        if reader is None:
            return events
        try:
            while reader.poll(0):
                events.append(reader.recv())
        except (EOFError, OSError, pickle.UnpicklingError):
            pass
        reader.close()
        self.outboxes[index] = None
        return events

    def close(self) -> None:
        for inbox in self.inboxes:
            inbox.put(("stop",))
        for process in self.workers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
        for reader in self.outboxes:
            if reader is not None:
                reader.close()


# ------------------------------------------------------------------------------------------------ the driver


@contextlib.contextmanager
def open_worker_pool(backend: Backend, workers: int) -> Iterator[Any]:
    """The worker pool that steps games for `backend`'s model (`workers` engine worker processes, or this process
    for 0), kept open across rollouts: an evaluation starts it once for all its agents."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    transport = ProcessTransport(backend.codec.spec(), workers) if workers else InlineTransport(backend.codec)
    try:
        yield transport
    finally:
        transport.close()


def play_rollouts(
    backend: Backend,
    gamefiles: Sequence[str | Path],
    config: RolloutConfig,
    *,
    on_finished: Callable[[dict[str, Any]], None] | None = None,
    on_failed: Callable[[str, str, str], None] | None = None,
    worker_pool: Any = None,
) -> RolloutResult:
    """Play `gamefiles` with `config.agent` on `backend`; hand each finished game's record to `on_finished` at
    once (checkpointing) and each game that could not be played to `on_failed(agent, gamefile, error)`.
    `worker_pool` (`open_worker_pool`) reuses workers already started; without it, `config.workers` are started
    for this call."""
    return play_rollout_groups(
        backend, [(config, gamefiles)], on_finished=on_finished, on_failed=on_failed, worker_pool=worker_pool
    )


def play_rollout_groups(
    backend: Backend,
    groups: Sequence[tuple[RolloutConfig, Sequence[str | Path]]],
    *,
    on_finished: Callable[[dict[str, Any]], None] | None = None,
    on_failed: Callable[[str, str, str], None] | None = None,
    worker_pool: Any = None,
) -> RolloutResult:
    """Play every group's games (a config, most often one agent, and its games) in ONE continuous batch: the
    model answers the pending requests of every game of every group together, so a run of several agents never
    waits for one agent's last long games before the next agent starts. The worker pool's settings (`workers`,
    `games_in_flight`, `progress`) are the first group's; each game plays by its own group's config."""
    if not groups:
        return RolloutResult()
    for config, _ in groups:
        if config.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {config.max_steps}")
    if worker_pool is not None:
        return _play(backend, groups, worker_pool, on_finished, on_failed, startup_s=0.0)
    started = time.perf_counter()
    with open_worker_pool(backend, groups[0][0].workers) as pool:
        return _play(backend, groups, pool, on_finished, on_failed, startup_s=time.perf_counter() - started)


def _play(
    backend: Backend,
    groups: Sequence[tuple[RolloutConfig, Sequence[str | Path]]],
    transport: Any,
    on_finished: Callable[[dict[str, Any]], None] | None,
    on_failed: Callable[[str, str, str], None] | None,
    *,
    startup_s: float,
) -> RolloutResult:
    from tqdm.auto import tqdm

    started = time.perf_counter()
    result = RolloutResult()
    profile = result.profile
    profile.workers, profile.startup_s = getattr(transport, "count", 0), startup_s
    first = groups[0][0]
    limit = first.games_in_flight or max(backend.slots, profile.workers, 1)
    if backend.games_at_once is not None:
        limit = min(limit, backend.games_at_once)
    waiting = deque((config, str(g), games.game_id(g)) for config, gamefiles in groups for g in gamefiles)
    in_flight: dict[int, tuple[RolloutConfig, str, str]] = {}
    next_job = transport.jobs_started
    label = " + ".join(dict.fromkeys(config.agent for config, _ in groups))
    bar = tqdm(total=len(waiting), desc=label, unit="game", disable=not first.progress, dynamic_ncols=True)
    stats_before = _decoder_stats(backend)
    try:
        while waiting or in_flight:
            moved = time.perf_counter()
            while waiting and len(in_flight) < limit:
                config, gamefile, game_id = waiting.popleft()
                in_flight[next_job] = (config, gamefile, game_id)
                transport.start(next_job, gamefile, game_id, config)
                next_job += 1
            profile.transport_s += time.perf_counter() - moved
            waited = time.perf_counter()
            events = transport.receive(0 if backend.busy else POLL_S)
            if not backend.busy and not events:
                profile.wait_s += time.perf_counter() - waited
            else:
                profile.transport_s += time.perf_counter() - waited
            for kind, job, detail in events:
                config, gamefile, game_id = in_flight[job]
                if kind == "request":
                    backend.submit(job, detail)
                    profile.requests += 1
                    continue
                del in_flight[job]
                backend.release(session_of(config.agent, game_id))
                bar.update(1)
                if kind == "failed":
                    result.failed.append((config.agent, gamefile, detail))
                    bar.write(f"could not play {game_id} ({config.agent}): {detail.splitlines()[-1] if detail else ''}")
                    if on_failed:
                        on_failed(config.agent, gamefile, detail)
                    continue
                record = records.make_rollout(config.agent, gamefile, game_id, detail)
                for key in ("engine_start_s", "engine_step_s", "prompt_s"):
                    setattr(profile, key, getattr(profile, key) + record["timing"][key])
                profile.games += 1
                result.records.append(record)
                if on_finished:
                    on_finished(record)
            if backend.busy:
                model_started = time.perf_counter()
                replies = backend.step()
                moved = time.perf_counter()
                profile.model_s += moved - model_started
                for job, reply in replies:
                    transport.send(job, reply)
                profile.transport_s += time.perf_counter() - moved
    finally:
        bar.close()
        transport.jobs_started = next_job
        if in_flight:  # stopped early: nothing of this run may reach the next one
            backend.abort()
            for config, _, game_id in in_flight.values():
                backend.release(session_of(config.agent, game_id))
    stats_after = _decoder_stats(backend)
    if stats_after is not None:
        counters = (
            "prompt_tokens",
            "reused_tokens",
            "generated_tokens",
            "prefill_forwards",
            "decode_forwards",
            "decode_rows",
            "rank_forwards",
        )
        for key in ("prefill_s", "decode_s", "rank_s", *counters):
            setattr(profile, key, stats_after[key] - stats_before[key])
    profile.wall_s = startup_s + time.perf_counter() - started
    return result


def _decoder_stats(backend: Backend) -> dict[str, Any] | None:
    """A local model's decoding counters (time in prefill and decode, prompt tokens computed or reused)."""
    decoder = getattr(backend, "decoder", None)
    return asdict(decoder.stats) if decoder is not None else None
