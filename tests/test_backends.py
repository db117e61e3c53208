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
    for task_type in ("pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
                      "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep"):
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


@pytest.mark.slow
def test_batched_generation_matches_one_at_a_time():
    """Left padding with pad != eos: a reply must not depend on the other prompts of its batch."""
    from alfworld_sft.backends import load_backend

    backend = load_backend("smollm2-135m-instruct")
    assert backend.tokenizer.pad_token_id != backend.tokenizer.eos_token_id
    prompts = [
        ({"role": "system", "content": "Reply with one command."}, {"role": "user", "content": text})
        for text in ("Task: put a mug in shelf.\nObservation: You see a shelf 1 and a countertop 1.",
                     "Observation: Nothing happens.", "Task: examine the book with the desklamp.")
    ]
    batched = backend.generate([Request(p, 8) for p in prompts])
    alone = [backend.generate([Request(p, 8)])[0] for p in prompts]
    assert [r.text for r in batched] == [r.text for r in alone]
    assert all(0 < r.new_tokens <= 8 for r in batched)


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
    (tmp_path / "training_record.json").write_text(json.dumps(
        {"base_model": "smollm2-135m-instruct", "prompt_format": {"show_admissible_commands": True},
         "max_seq_len": 1024}))
    record = read_training_record(tmp_path)
    assert record.max_seq_len == 1024 and record.prompt_format == {"show_admissible_commands": True}
    (tmp_path / "training_record.json").write_text("{}")
    with pytest.raises(BackendError, match="training_record.json is not a valid training record"):
        read_training_record(tmp_path)
