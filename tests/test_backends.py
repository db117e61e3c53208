"""Backends: the scripted expert wins real games, batched generation equals one-at-a-time, Ollama errors are clear."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from alfworld_sft import records
from alfworld_sft.backends import BackendError, ExpertBackend, OllamaBackend, Request, choose_backend
from alfworld_sft.task_types import TASK_TYPES


def short_games(gamefiles: list[Path]) -> list[Path]:
    """Games of every task type but pick_two (the expert often needs more than 50 steps there)."""
    from conftest import games_of_type

    return games_of_type(gamefiles, *(t for t in TASK_TYPES if t != "pick_two_obj_and_place"))


@pytest.mark.slow
def test_expert_backend_wins_at_least_90_percent_of_fixed_games(eval_games):
    from alfworld_sft.rollouts import RolloutConfig, play_rollouts

    chosen = short_games(eval_games)
    assert len(chosen) == 10
    result = play_rollouts(ExpertBackend(), chosen, RolloutConfig(max_steps=50, seed=0, workers=2, progress=False))
    assert sorted(r["gamefile"] for r in result.records) == sorted(map(str, chosen))
    won = sum(r["won"] for r in result.records)
    assert won >= 9, [(r["game_id"], r["steps"]) for r in result.records if not r["won"]]
    assert all(r["invalid_replies"] == 0 for r in result.records)  # the expert's commands are always admissible


@pytest.fixture(scope="module")
def default_backend():
    from alfworld_sft.backends import load_backend

    return load_backend("smollm2-135m-instruct", device="cpu", threads=2, batch_size=3)


def reference_replies(backend, prompts, max_new_tokens, model=None):
    """transformers' own greedy `generate` (of `model`, else the backend's), one prompt at a time: the independent
    reference."""
    import torch

    replies = []
    for messages in prompts:
        ids = torch.tensor([backend.codec.encode(messages)])
        with torch.no_grad():
            out = (model or backend.model).generate(
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
def test_an_adapter_is_merged_at_load_and_answers_as_base_plus_adapter(adapter):
    """The backend folds the adapter into the weights (no LoRA layer is left to run) and replies exactly as the
    unmerged base + adapter does (float32)."""
    import torch
    from alfworld_sft import models
    from alfworld_sft.backends import load_backend
    from peft import PeftModel

    backend = load_backend("", adapter=adapter, device="cpu", dtype="float32", threads=2, batch_size=3)
    assert not [name for name, _ in backend.model.named_parameters() if "lora" in name]
    base = models.load_model(models.DEFAULT_MODEL, dtype=torch.float32)
    unmerged = PeftModel.from_pretrained(base, str(adapter)).eval()
    replies = backend.generate([Request(p, 12) for p in PROMPTS])
    assert [r.text for r in replies] == reference_replies(backend, PROMPTS, 12, model=unmerged)


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


def write_adapter_files(folder, fill: float) -> None:
    """An adapter's two files as PEFT writes them (a config, weights in safetensors), with no model behind them."""
    import torch
    from safetensors.torch import save_file

    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    save_file({"lora_A.weight": torch.full((2, 2), fill)}, str(folder / "adapter_model.safetensors"))


def test_an_adapter_on_another_base_is_refused(tmp_path):
    from alfworld_sft import prompts

    write_adapter_files(tmp_path, fill=0.0)
    record = records.TrainingRecord(
        base_model="smollm2-135m-instruct", prompt_format=prompts.PromptFormat(), max_seq_len=512
    )
    records.write_training_record(tmp_path, record, seed=0)
    with pytest.raises(BackendError, match="was trained on 'smollm2-135m-instruct'.*Drop --model"):
        choose_backend("meta-llama/Llama-3.1-8B-Instruct", adapter=tmp_path)
    assert choose_backend("", adapter=tmp_path).model == "smollm2-135m-instruct"


def test_grounded_actions_need_a_backend_that_can_ground_them():
    backend = OllamaBackend.__new__(OllamaBackend)  # no server here: the check happens before any request
    from alfworld_sft.backends import Backend, CodecSpec, PromptCodec

    Backend.__init__(backend, "ollama:x", PromptCodec(CodecSpec(None, None)))
    with pytest.raises(BackendError, match="need the transformers backend"):
        backend.submit("k", Request(({"role": "user", "content": "x"},), 4, choices=("look",)))


def test_the_weights_fingerprint_changes_when_an_adapter_is_retrained_in_place(tmp_path):
    from alfworld_sft import prompts
    from alfworld_sft.backends import weights_fingerprint

    record = records.TrainingRecord(
        base_model="smollm2-135m-instruct", prompt_format=prompts.PromptFormat(), max_seq_len=512
    )
    records.write_training_record(tmp_path, record, seed=0)
    write_adapter_files(tmp_path, fill=0.0)  # first weights
    choice = choose_backend("", adapter=tmp_path, backend="transformers")
    first = weights_fingerprint(choice)
    assert weights_fingerprint(choice) == first  # the same weights, the same key
    write_adapter_files(tmp_path, fill=1.0)  # retrained weights
    assert weights_fingerprint(choice) != first
    assert choice.name == f"smollm2-135m-instruct+{tmp_path.name}"  # the label alone would not have told
