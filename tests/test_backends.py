"""Backends: the scripted expert wins real games, batched generation equals one-at-a-time, Ollama errors are clear."""

from __future__ import annotations

import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from alfworld_sft.backends import BackendError, ExpertBackend, OllamaBackend, Request, read_training_record

needs_data = pytest.mark.skipif(not os.environ.get("ALFWORLD_DATA"), reason="ALFWORLD_DATA is not set (real games)")


def fixed_games() -> list[Path]:
    """10 valid_seen games: 2 of each task type except pick_two (the expert often needs > 50 steps there)."""
    root = Path(os.environ["ALFWORLD_DATA"]) / "json_2.1.1" / "valid_seen"
    chosen = []
    for task_type in (
        "pick_and_place_simple",
        "look_at_obj_in_light",
        "pick_clean_then_place_in_recep",
        "pick_heat_then_place_in_recep",
        "pick_cool_then_place_in_recep",
    ):
        chosen += sorted(root.glob(f"{task_type}-*/*/game.tw-pddl"))[:2]
    return chosen


@needs_data
@pytest.mark.slow
def test_expert_backend_wins_at_least_90_percent_of_fixed_real_games():
    from alfworld_sft.evaluation import play_games

    games = fixed_games()
    assert len(games) == 10
    records = play_games("zero_shot", ExpertBackend(), games, max_steps=50, seed=0, batch_size=5)
    assert sorted(r["gamefile"] for r in records) == sorted(map(str, games))
    won = sum(r["won"] for r in records)
    assert won >= 9, [(r["game_id"], r["steps"]) for r in records if not r["won"]]
    assert all(r["invalid_replies"] == 0 for r in records)  # the expert's commands are always admissible


@pytest.fixture(scope="module")
def default_backend():
    from alfworld_sft.backends import load_backend

    return load_backend("smollm2-135m-instruct", device="cpu", threads=2)


def reference_replies(backend, prompts, max_new_tokens):
    """transformers' own greedy `generate`, one prompt at a time: the independent reference."""
    import torch

    replies = []
    for messages in prompts:
        ids = torch.tensor([backend.encode(messages)])
        with torch.no_grad():
            out = backend.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=backend.stop_ids,
                pad_token_id=backend.tokenizer.pad_token_id,
            )
        replies.append(backend.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip())
    return replies


PROMPTS = [
    ({"role": "system", "content": "Reply with one command."}, {"role": "user", "content": text})
    for text in (
        "Task: put a mug in shelf.\nObservation: You see a shelf 1 and a countertop 1.",
        "Observation: Nothing happens.",
        "Task: examine the book with the desklamp.",
    )
]


@pytest.mark.slow
def test_batched_generation_matches_one_at_a_time_and_transformers_generate(default_backend):
    """Prompts of different lengths share one decode batch: no reply may depend on the others."""
    batched = default_backend.generate([Request(p, 12) for p in PROMPTS])
    alone = [default_backend.generate([Request(p, 12)])[0] for p in PROMPTS]
    assert [r.text for r in batched] == [r.text for r in alone] == reference_replies(default_backend, PROMPTS, 12)
    assert all(0 < r.new_tokens <= 12 for r in batched)


@pytest.mark.slow
def test_a_session_reuses_its_prefix_and_replies_as_if_from_scratch(default_backend):
    """The second turn of a conversation computes only its new tokens, and its reply is unchanged by that."""
    first = list(PROMPTS[0])
    reply = default_backend.generate([Request(tuple(first), 12, session="game")])[0]
    second = (
        *first,
        {"role": "assistant", "content": reply.text},
        {"role": "user", "content": "Observation: You arrive at shelf 1. On the shelf 1, you see nothing."},
    )
    before_prompt, before_reused = default_backend.prompt_tokens, default_backend.reused_tokens
    continued = default_backend.generate([Request(second, 12, session="game"), Request(PROMPTS[1], 12)])
    reused = default_backend.reused_tokens - before_reused
    assert reused >= len(default_backend.encode(first)) - 1  # the whole first prompt came from the session
    assert default_backend.prompt_tokens - before_prompt == len(default_backend.encode(second)) + len(
        default_backend.encode(PROMPTS[1])
    )
    assert [r.text for r in continued] == reference_replies(default_backend, [second, PROMPTS[1]], 12)
    assert set(default_backend.sessions) == {"game"}  # a request without a session keeps nothing


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_ollama_server_gives_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(BackendError, match=r"cannot reach the Ollama server .*ollama serve"):
        OllamaBackend("llama3.1:8b-sft", url=url)


class TagsOnly(BaseHTTPRequestHandler):
    """Answers like an Ollama server that holds one model (the real server cannot run on this machine)."""

    def do_GET(self):
        body = json.dumps({"models": [{"name": "llama3.1:8b:latest"}]}).encode()
        self.send_response(200 if self.path == "/api/tags" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_unknown_ollama_model_gives_a_clear_error():
    server = HTTPServer(("127.0.0.1", 0), TagsOnly)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(BackendError, match=r"does not know model 'llama3.1:8b-sft'.*ollama pull"):
            OllamaBackend("llama3.1:8b-sft", url=url)
    finally:
        server.shutdown()


def test_training_record_is_read_and_a_broken_one_is_named(tmp_path):
    assert read_training_record(tmp_path) is None
    (tmp_path / "training_record.json").write_text(
        json.dumps(
            {
                "base_model": "smollm2-135m-instruct",
                "prompt_format": {"show_admissible_commands": True},
                "max_seq_len": 1024,
            }
        )
    )
    record = read_training_record(tmp_path)
    assert record.max_seq_len == 1024 and record.prompt_format == {"show_admissible_commands": True}
    (tmp_path / "training_record.json").write_text("{}")
    with pytest.raises(BackendError, match="training_record.json is not a valid training record"):
        read_training_record(tmp_path)
