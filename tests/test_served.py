"""Served models (`served`, `llama_server`): the real llama-cpp-python server on real GGUF files (the merged default
model exported as Q4_K_M, and the default model's own GGUF), real games in the real engine, free and grounded; the
server's lifecycle (no process left after an error, Ctrl-C or a kill); a server that ignores grammars; a GGUF of
another base. The command line's bad input (unreachable server, unknown model, taken port) is in test_bad_input."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
import pytest
from alfworld_sft import backends, evaluation, llama_server, merge, models, prompts, records, served
from alfworld_sft.agents import map_action
from alfworld_sft.backends import Request
from alfworld_sft.evaluation import EvalConfig, run_evaluation

needs_server = pytest.mark.skipif(llama_server.server_missing() is not None, reason=str(llama_server.server_missing()))


def llama_servers() -> list[psutil.Process]:
    """This process's llama-cpp-python servers that are still running (a reaped one is gone)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "llama_cpp.server" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def played_commands(record: dict) -> list[tuple[str, str | None, str, list[str]]]:
    """(reply, command, how, the commands admissible when it was chosen) of every turn of a one-trial rollout."""
    admissible = record["first_admissible"]
    turns = []
    for turn in record["transcript"][0]["turns"]:
        turns.append((turn["reply"], turn["command"], turn["how"], admissible))
        admissible = turn["admissible"]
    return turns


def game_log(results: dict) -> list[dict]:
    path = Path(results["config"]["checkpoint"])
    return [json.loads(line) for line in path.read_text().splitlines()]


def served_config(tmp_path: Path, model: str, **changes) -> EvalConfig:
    values = dict(
        agents=("zero_shot",),
        num_games=1,
        max_steps=3,
        model=model,
        split="eval_in_distribution",
        output=str(tmp_path / "run.json"),
        workers=0,
        batch_size=2,
        threads=2,
    )
    return EvalConfig(**{**values, **changes})


# ----------------------------------------------------------------------------------------------- syntax


@pytest.mark.parametrize(
    ("spec", "base", "model"),
    [
        ("openai:http://127.0.0.1:8080/v1/alfworld-sft", "http://127.0.0.1:8080/v1", "alfworld-sft"),
        ("openai:http://gpu:8000/v1/meta-llama/Llama-3.1-8B", "http://gpu:8000/v1", "meta-llama/Llama-3.1-8B"),
        ("openai:https://host/proxy/v1/", "https://host/proxy/v1", None),
        ("http://localhost:11434/v1/llama3.1:8b", "http://localhost:11434/v1", "llama3.1:8b"),
    ],
)  # fmt: skip
def test_an_openai_model_is_the_api_base_through_v1_then_its_name(spec, base, model):
    assert served.parse_openai_model(spec) == (base, model)


@pytest.mark.parametrize(("spec", "said"), [("openai:localhost:80/v1/m", "not an http"), ("openai:http://h/m", "/v1")])
def test_an_openai_model_without_scheme_or_v1_is_explained(spec, said):
    with pytest.raises(ValueError, match=said):
        served.parse_openai_model(spec)


def test_a_grammar_is_the_commands_or_a_thought_line_then_the_marker_and_a_command():
    assert served.gbnf_literal('open "box" 1\\2\n') == '"open \\"box\\" 1\\\\2\\n"'
    assert served.choice_grammar(["look", "go to desk 1", "look"]) == (
        'root ::= command\ncommand ::= "look" | "go to desk 1"\n'
    )
    assert served.choice_grammar(["look"], "Action:", 40) == (
        'root ::= ([^\\n]{0,40} "\\n")? "Action: " command\ncommand ::= "look"\n'
    )


# ----------------------------------------------------------------------------------------------- the server


@needs_server
def test_grounded_replies_from_the_server_are_the_commands_quotes_and_all():
    # The default model's own GGUF: no training record, so chat messages rendered by the GGUF's template.
    messages = ({"role": "user", "content": 'You see a shelf 1 and a drawer "2". Where do you go?'},)
    tricky = ('open drawer "2"', "go to shelf\\1", "say {x} | [y]")
    with served.load_served_backend(backends.choose_backend(f"gguf:{models.locate_default_gguf()}")) as backend:
        assert backend.describe()["grammar"] == "gbnf" and backend.grounds_choices
        assert backend.describe()["prompt"] == "chat"
        replies = backend.generate(
            [Request(messages, 4, choices=tricky), Request(messages, 8, choices=tricky, choice_after="Action:")]
        )
    assert replies[0].text in tricky  # the whole command, though it may take more tokens than the budget
    thought, _, command = replies[1].text.rpartition("\nAction: ")
    assert command in tricky and len(thought) <= served.THOUGHT_CHARS_PER_TOKEN * 8  # the thought's line, then one


@needs_server
def test_no_server_is_left_after_an_error_inside_the_with(tmp_path):
    config = llama_server.LlamaServerConfig(gguf=models.locate_default_gguf(), threads=1)
    with pytest.raises(RuntimeError, match="inside"):
        with llama_server.LlamaServer(config) as server:
            pid = server.process.pid
            assert httpx.get(server.url + "/models").json()["data"][0]["id"] == models.DEFAULT_MODEL_GGUF
            raise RuntimeError("an error inside the with")
    assert not psutil.pid_exists(pid) and llama_servers() == []
    choice = backends.choose_backend(f"gguf:{models.locate_default_gguf()}")
    with pytest.raises(KeyboardInterrupt):
        with served.load_served_backend(choice, threads=1) as backend:
            pid = backend.server.process.pid
            raise KeyboardInterrupt
    assert not psutil.pid_exists(pid) and llama_servers() == []


@needs_server
def test_a_server_that_dies_at_start_shows_its_last_lines(tmp_path):
    import gguf

    path = tmp_path / "model.gguf"  # a well-formed GGUF of an architecture llama.cpp does not know
    writer = gguf.GGUFWriter(str(path), arch="nonesuch")
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    said = r"(?s)exited with code 1 before it answered; its last lines:\n.*unknown model architecture: 'nonesuch'"
    with pytest.raises(llama_server.ServerStartError, match=said):
        served.load_served_backend(backends.choose_backend(f"gguf:{path}"), threads=1)
    assert llama_servers() == []


@needs_server
def test_a_gguf_of_another_base_than_its_record_is_refused_before_a_server_starts(tmp_path):
    base = tmp_path / "other_base"  # a model of another shape, as its config.json says
    base.mkdir()
    shape = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 1000, **shape}))
    folder = tmp_path / "gguf"
    folder.mkdir()
    (folder / "model.gguf").symlink_to(models.locate_default_gguf())
    record = records.TrainingRecord(base_model=str(base), prompt_format=prompts.PromptFormat(), max_seq_len=512)
    records.write_training_record(folder, record, seed=0)
    choice = backends.choose_backend(f"gguf:{folder}")
    assert choice.record_folder == folder  # the record beside the path given, not beside the link's target
    said = r"model\.gguf is not a model of .*other_base.*layers 30 where it has 2, width 576 where it has 64"
    with pytest.raises(llama_server.GgufBaseError, match=said):
        served.load_served_backend(choice)
    assert llama_servers() == []


# ----------------------------------------------------------------------------------------------- real games


@needs_server
@pytest.mark.slow
def test_the_exported_gguf_plays_real_games_grounded_and_free_as_it_was_trained(exported_gguf, eval_games, tmp_path):
    started = time.perf_counter()
    grounded = run_evaluation(served_config(tmp_path, f"gguf:{exported_gguf}", actions="constrained"))
    info = grounded["served"]
    assert grounded["actions"] == "constrained" and info["grammar"] == "gbnf" and info["prompt"] == "text"
    assert info["gguf"]["quant"] == "Q4_K_M" and info["base_check"].startswith("shape matches")
    assert info["gguf"]["sha256"] == hashlib.sha256(exported_gguf.read_bytes()).hexdigest()
    assert "<|im_end|>" in info["stop"]
    [rollout] = game_log(grounded)
    turns = played_commands(rollout)
    assert len(turns) >= 1 and all(how == "exact" and command in allowed for _, command, how, allowed in turns)
    free_config = served_config(tmp_path, f"gguf:{exported_gguf}", actions="free", output=str(tmp_path / "free.json"))
    free = run_evaluation(free_config)
    assert free["actions"] == "free" and free["agents"]["zero_shot"]["games"] == 1
    assert free["served"]["grammar"] == "gbnf" and len(played_commands(game_log(free)[0])) >= 1
    assert llama_servers() == []
    print(f"two games through the server in {time.perf_counter() - started:.1f} s")


@needs_server
@pytest.mark.slow
def test_the_server_reads_the_prompt_as_the_tokens_the_model_was_trained_on(exported_gguf):
    choice = backends.choose_backend(f"gguf:{exported_gguf}")
    with served.load_served_backend(choice, threads=2) as backend:
        for messages in merge.sample_conversations(2, backend.codec.training_record):
            said = httpx.post(
                backend.probe.url.removesuffix("/v1") + "/extras/tokenize", json={"input": backend.render(messages)}
            )
            assert said.json()["tokens"] == backend.codec.encode(messages)


@needs_server
@pytest.mark.slow
def test_a_base_gguf_thinks_then_plays_a_grounded_action(eval_games, tmp_path):
    results = run_evaluation(
        served_config(tmp_path, f"gguf:{models.locate_default_gguf()}", agents=("react",), actions="constrained")
    )
    assert results["served"]["prompt"] == "chat" and results["actions"] == "constrained"
    for reply, command, how, allowed in played_commands(game_log(results)[0]):
        assert "Action: " in reply and how == "exact" and command in allowed


class GrammarDroppingProxy(BaseHTTPRequestHandler):
    """A server in front of the real llama-cpp-python server that drops every request's `grammar` field, as servers
    without grammars do (vLLM logs and ignores unknown fields; none of them can run on this machine)."""

    target = ""

    def do_GET(self):
        self._relay(httpx.get(self.target + self.path))

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body.pop("grammar", None)
        self._relay(httpx.post(self.target + self.path, json=body, timeout=600))

    def _relay(self, response):
        self.send_response(response.status_code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(response.content)

    def log_message(self, *args):
        pass


@needs_server
@pytest.mark.slow
def test_a_server_that_ignores_grammars_plays_free_replies_and_says_so(exported_gguf, eval_games, tmp_path, capsys):
    config = llama_server.LlamaServerConfig(gguf=exported_gguf, threads=2)
    with llama_server.LlamaServer(config) as server:
        handler = type("Proxy", (GrammarDroppingProxy,), {"target": server.url.removesuffix("/v1")})
        proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{proxy.server_address[1]}/v1/{server.alias}"
            results = run_evaluation(
                served_config(tmp_path, f"openai:{url}", record=str(exported_gguf.parent), actions="constrained")
            )
        finally:
            proxy.shutdown()
    assert "ignored the request's grammar" in capsys.readouterr().out
    assert results["actions"] == "free" and results["run"]["actions"] == "free"
    assert results["served"]["grammar"] == "the server ignored the request's grammar"
    assert results["served"]["prompt"] == "text" and results["served"]["backend"] == "openai"
    for reply, command, how, allowed in played_commands(game_log(results)[0]):
        assert map_action(reply, allowed).command == command  # mapped as the course maps every free reply


@needs_server
@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_no_server_outlives_an_evaluation_stopped_by_ctrl_c_or_a_kill(stop, eval_games, tmp_path):
    command = ["alfworld-sft", "evaluate", "--model", f"gguf:{models.locate_default_gguf()}", "--agents", "react",
               "--num-games", "2", "--max-steps", "30", "--split", "eval_in_distribution", "--workers", "0",
               "--output", str(tmp_path / "run.json")]  # fmt: skip
    # Output to a file, not a pipe nobody reads while the test waits: a full pipe would block the process.
    log = (tmp_path / "evaluate.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    server = None
    deadline = time.monotonic() + 120
    while server is None and time.monotonic() < deadline and process.poll() is None:
        children = [c for c in psutil.Process(process.pid).children() if "llama_cpp.server" in " ".join(c.cmdline())]
        if children:
            port = children[0].cmdline()[children[0].cmdline().index("--port") + 1]
            try:  # playing: the server answers the games' requests
                if httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 200:
                    server = children[0]
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    assert server is not None, (tmp_path / "evaluate.log").read_text()[-2000:]
    time.sleep(1.0)
    process.send_signal(stop)
    try:
        # Bounded, not instant: on CI's loaded 2 cores the evaluation outlived a SIGINT by over 60 s twice (a reply in
        # flight), while it ends in seconds on an idle machine. What must never happen is a hang or an orphan server.
        process.wait(timeout=180)
    except subprocess.TimeoutExpired:
        process.kill()
        tail = (tmp_path / "evaluate.log").read_text()[-3000:]
        pytest.fail(f"the evaluation outlived its {stop!r} by 180 s: {tail}")
    finally:
        log.close()
    deadline = time.monotonic() + 30
    while not has_ended(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert has_ended(server), f"the server {server.pid} outlived its evaluation"


def has_ended(process: psutil.Process) -> bool:
    """Gone, or a zombie that nobody reaped yet (an orphan in a container whose init does not reap)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@needs_server
def test_the_course_skips_the_served_run_without_a_gguf_and_says_why(tmp_path, capsys):
    base = served_config(tmp_path, "smollm2-135m-instruct")
    assert evaluation.run_served_when_present(base, tmp_path / "gguf") is None
    assert f"no GGUF file at {tmp_path / 'gguf'}: export one first" in capsys.readouterr().out
    assert not (tmp_path / "served_gguf.json").exists()


@needs_server
@pytest.mark.slow
def test_the_course_plays_the_export_folder_through_the_server_beside_its_runs(exported_gguf, eval_games, tmp_path):
    base = evaluation.course_config(small=True, seed=0)
    base = replace(base, output=str(tmp_path / "eval" / "base.json"), trajectories=None)
    results = evaluation.run_served_when_present(base, exported_gguf.parent)
    assert (tmp_path / "eval" / "served_gguf.json").exists() and list(results["agents"]) == ["zero_shot"]
    assert results["num_games"] == base.num_games and results["served"]["gguf"]["path"] == str(exported_gguf)
    assert results["actions"] == "constrained" and results["agents"]["zero_shot"]["invalid_replies"] == 0
