"""Every command against bad paths: exit status 2, a message that names the path and says what to do, no traceback,
and nothing written or moved (issue "Nothing silently wrong"). A new command joins the table."""

import dataclasses
import json
import os
import shutil
import socket
import subprocess

import pytest
from alfworld_sft import cli, collect, llama_server, models, prompts, records, train_config
from conftest import games_of_type

# (command line, the path or flag the message must name). Placeholders: {dir} an existing folder, {file} a JSON file
# of another kind, {torn} a torn JSON, {torn_jsonl} a JSONL torn on its second line, {empty} an empty file, {missing} a
# path that does not exist, {out} a path that does not exist yet (a good output), {readonly} a folder nobody may write,
# {not_utf8} a JSONL that is not UTF-8, {torn_adapter} / {weightless} / {torn_weights} adapter folders with a torn
# config, no weights, torn weights; good inputs, so that an output is what is wrong: {adapter} a real adapter,
# {sft_adapter} one whose record holds its training recipe, {trajectories} real oracle trajectories
# ({torn_trajectories}: torn on line 2). Served models: {free_port} a port nothing listens on, {taken_port} one a
# socket listens on, {llama_server_url} a real llama-cpp-python server's API base (it serves the default model's
# GGUF), {gguf_file} that GGUF, {wrong_base_gguf} a folder with it and a training record naming another base model.
# Every subcommand has a row (test_every_command_is_in_the_table).
GOOD_DATA = ["--data", "{trajectories}", "--eval-fraction", "0"]  # one game: too few to hold any out
DAGGER = ["dagger", "--adapter", "{sft_adapter}", "--expert-data", "{trajectories}"]
EVAL = ["evaluate", "--model", "expert", "--num-games", "1", "--split", "eval_in_distribution"]
SERVED = ["evaluate", "--num-games", "1", "--split", "eval_in_distribution", "--output", "{out}/r.json", "--model"]
CASES = [
    # doctor: its report's output
    (["doctor", "--output", "{dir}"], "{dir}"),
    (["doctor", "--output", "{file}/d.json"], "{file}"),
    (["doctor", "--output", "{readonly}/d.json"], "{readonly}"),
    # model: the course cache it converts into
    (["model", "ENV:ALFWORLD_SFT_CACHE={file}"], "{file}"),
    (["model", "ENV:ALFWORLD_SFT_CACHE={readonly}/cache"], "{readonly}"),
    # data
    (["data", "status", "ENV:ALFWORLD_DATA={file}"], "{file}"),
    (["data", "generate", "ENV:ALFWORLD_DATA=", "--split", "train", "--count", "-1"], "--count"),
    (["data", "download", "--data-dir", "{file}"], "{file}"),
    (["data", "download", "--data-dir", "{readonly}/alfworld"], "{readonly}"),
    # collect
    (["collect", "--split", "train", "--limit", "1", "--output", "{dir}"], "{dir}"),
    (["collect", "--split", "train", "--limit", "1", "--output", "{file}/x.jsonl"], "{file}"),
    (["collect", "--split", "train", "--limit", "1", "--output", "{readonly}/x.jsonl"], "{readonly}"),
    (["collect", "--split", "train", "--limit", "1", "--max-steps", "0", "--output", "{out}/x.jsonl"], "--max-steps"),
    (["collect", "--split", "train", "--task-types", "juggling", "--output", "{out}/x.jsonl"], "juggling"),
    # format
    (["format", "--data", "{dir}", "--output", "{out}/f"], "{dir}"),
    (["format", "--data", "{missing}", "--output", "{out}/f"], "{missing}"),
    (["format", "--data", "{empty}", "--output", "{out}/f"], "{empty}"),
    (["format", "--data", "{torn_trajectories}", "--output", "{out}/f"], "{torn_trajectories}:2"),
    (["format", "--data", "{file}", "--output", "{out}/f"], "{file}:1"),
    (["format", "--data", "{not_utf8}", "--output", "{out}/f"], "{not_utf8}:1"),
    (["format", *GOOD_DATA, "--output", "{readonly}/f"], "{readonly}"),
    (["format", *GOOD_DATA, "--output", "{file}"], "{file}"),
    (["format", *GOOD_DATA, "--output", "{out}/f", "--max-seq-len", "0"], "--max-seq-len"),
    # train
    (["train", "--data", "{dir}", "--output", "{out}/t"], "{dir}"),
    (["train", "--data", "{missing}", "--output", "{out}/t"], "{missing}"),
    (["train", "--data", "{not_utf8}", "--output", "{out}/t", "--base", "ollama:llama3"], "--base ollama:llama3"),
    (["train", *GOOD_DATA, "--output", "{readonly}/t"], "{readonly}"),
    (["train", *GOOD_DATA, "--output", "{file}"], "{file}"),
    (["train", *GOOD_DATA, "--output", "{out}/t", "--epochs", "0"], "--epochs"),
    (["train", *GOOD_DATA, "--output", "{out}/t", "--init-adapter", "{dir}"], "{dir}"),
    # merge
    (["merge", "--adapter", "{file}", "--output", "{out}/m"], "{file}"),
    (["merge", "--adapter", "{missing}", "--output", "{out}/m"], "{missing}"),
    (["merge", "--adapter", "{dir}", "--output", "{out}/m", "--verify-prompts", "0"], "--verify-prompts"),
    (["merge", "--adapter", "{torn_weights}", "--output", "{out}/m"], "{torn_weights}/adapter_model.safetensors"),
    (["merge", "--adapter", "{adapter}", "--output", "{readonly}/m"], "{readonly}"),
    (["merge", "--adapter", "{adapter}", "--output", "{file}"], "{file}"),
    # export-gguf
    (["export-gguf", "--merged", "{file}", "--output", "{out}/g"], "{file}"),
    (["export-gguf", "--merged", "{missing}", "--output", "{out}/g"], "{missing}"),
    (["export-gguf", "--merged", "{file}", "--output", "{readonly}/g"], "{readonly}"),
    (["export-gguf", "--merged", "{dir}", "--output", "{out}/g", "--outtype", "q8_0"], "--quantize none"),
    # evaluate
    ([*EVAL, "--checkpoint", "{dir}", "--output", "{out}/r.json"], "{dir}"),
    ([*EVAL, "--agents", "few_shot", "--trajectories", "{dir}", "--output", "{out}/r.json"], "{dir}"),
    ([*EVAL, "--checkpoint", "{file}", "--output", "{out}/r.json"], "{file}"),
    ([*EVAL, "--output", "{file}/r.json"], "{file}"),
    ([*EVAL, "--output", "{readonly}/r.json"], "{readonly}"),
    ([*EVAL, "--output", "{out}/r.json", "--max-steps", "0"], "--max-steps"),
    ([*EVAL, "--output", "{out}/r.json", "--shard", "3/2"], "--shard"),
    (["evaluate", "--adapter", "{torn_adapter}", "--num-games", "1", "--split", "eval_in_distribution", "--output",
      "{out}/r.json"], "{torn_adapter}/adapter_config.json"),
    (["evaluate", "--adapter", "{weightless}", "--num-games", "1", "--split", "eval_in_distribution", "--output",
      "{out}/r.json"], "{weightless}"),
    (["evaluate", "--adapter", "{torn_weights}", "--num-games", "1", "--split", "eval_in_distribution", "--output",
      "{out}/r.json"], "{torn_weights}/adapter_model.safetensors"),
    # evaluate, served models: a server that is not there, a model it does not serve, GGUF paths, a taken port
    ([*SERVED, "openai:http://127.0.0.1:{free_port}/v1/alfworld-sft"], "http://127.0.0.1:{free_port}/v1"),
    ([*SERVED, "openai:http://127.0.0.1:{free_port}/alfworld-sft"], "no /v1 segment"),
    ([*SERVED, "openai:{llama_server_url}/alfworld-sft"], f"it serves: {models.DEFAULT_MODEL_GGUF}"),
    ([*SERVED, "gguf:{missing}"], "{missing}"),
    ([*SERVED, "gguf:{dir}"], "{dir}"),
    ([*SERVED, "gguf:{file}"], "{file}"),
    ([*SERVED, "gguf:{wrong_base_gguf}"], "{wrong_base_gguf}/model.gguf is not a model of"),
    ([*SERVED, "gguf:{gguf_file}", "--server-port", "{taken_port}"], "port {taken_port} on 127.0.0.1 is taken"),
    ([*SERVED, "gguf:{gguf_file}", "--adapter", "{adapter}"], "--adapter"),
    # dagger
    (["dagger", "--adapter", "{missing}", "--output", "{out}/d"], "{missing}"),
    (["dagger", "--adapter", "{sft_adapter}", "--expert-data", "{dir}", "--output", "{out}/d"], "{dir}"),
    (["dagger", "--adapter", "{sft_adapter}", "--expert-data", "{torn_jsonl}", "--output", "{out}/d"], "{torn_jsonl}:"),
    ([*DAGGER, "--output", "{readonly}/d"],
     "{readonly}"),
    ([*DAGGER, "--output", "{file}"], "{file}"),
    ([*DAGGER, "--output", "{out}/d", "--rounds", "0"],
     "--rounds"),
    # dagger-compare
    (["dagger-compare", "{missing}", "{dir}", "--output", "{out}/c.png"], "{missing}"),
    (["dagger-compare", "{dir}", "{file}", "--output", "{out}/c.png"], "{dir}"),
    (["dagger-compare", "{dir}", "--output", "{readonly}/c.png"], "{readonly}"),
    (["compare", "{file}", "{file}", "--plot", "{readonly}/c.png"], "{readonly}"),
    # compare
    (["compare", "{dir}", "{dir}"], "{dir}"),
    (["compare", "{file}", "{file}"], "{file}"),
    (["compare", "{torn}", "{file}"], "{torn}"),
    (["compare", "{missing}", "{file}"], "{missing}"),
    (["compare", "{empty}", "{file}"], "{empty}"),
    (["compare", "{not_utf8}", "{file}"], "{not_utf8}"),
    # course
    (["course", "--only", "42"], "42"),
]  # fmt: skip


def snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def trajectories(train_games, tmp_path_factory):
    """Real oracle trajectories of one short game: a good `--data` / `--expert-data`."""
    output = tmp_path_factory.mktemp("oracle") / "trajectories.jsonl"
    [game] = games_of_type(train_games, "pick_and_place_simple")[:1]
    collect.collect_trajectories(collect.CollectConfig(games=(game,), output=output, max_steps=20, progress=False))
    return output


@pytest.fixture(scope="module")
def torn_trajectories(trajectories, tmp_path_factory):
    """A good trajectory record, then a line torn as a killed writer leaves it."""
    path = tmp_path_factory.mktemp("torn") / "trajectories.jsonl"
    path.write_text(trajectories.read_text().splitlines(keepends=True)[0] + '{"game_id": "torn')
    return path


@pytest.fixture(scope="module")
def sft_adapter(adapter, tmp_path_factory):
    """The tiny adapter with the training configuration in its record, as `alfworld-sft train` writes it."""
    folder = tmp_path_factory.mktemp("sft") / "sft_adapter"
    shutil.copytree(adapter, folder)
    record = records.read_training_record(folder)
    details = {"config": json.loads(json.dumps(dataclasses.asdict(train_config.course_config(True, 0))))}
    records.write_training_record(folder, dataclasses.replace(record, details=details), seed=0)
    return folder


@pytest.fixture
def free_port():
    return llama_server.free_port()


@pytest.fixture
def taken_port():
    """A port a socket listens on for the test's duration."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        yield listening.getsockname()[1]


def require_llama_server():
    if llama_server.server_missing() is not None:
        pytest.skip(llama_server.server_missing())


@pytest.fixture(scope="module")
def llama_server_url():
    """A real llama-cpp-python server on the default model's GGUF."""
    require_llama_server()
    config = llama_server.LlamaServerConfig(gguf=models.locate_default_gguf(), threads=1)
    with llama_server.LlamaServer(config) as server:
        yield server.url


@pytest.fixture
def gguf_file():
    return models.locate_default_gguf()


@pytest.fixture(scope="module")
def wrong_base_gguf(tmp_path_factory):
    """The default model's GGUF beside a training record that names a base model of another shape."""
    base = tmp_path_factory.mktemp("other_base")
    shape = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 1000, **shape}))
    folder = tmp_path_factory.mktemp("gguf")
    (folder / "model.gguf").symlink_to(models.locate_default_gguf())
    record = records.TrainingRecord(base_model=str(base), prompt_format=prompts.PromptFormat(), max_seq_len=512)
    records.write_training_record(folder, record, seed=0)
    return folder


@pytest.fixture
def readonly(tmp_path):
    """A folder this process may not write into: mode 555, and immutable where that is what stops root."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    if os.access(folder, os.W_OK) and shutil.which("chattr"):
        immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False).returncode == 0
    try:
        (folder / "probe").touch()
    except OSError:
        yield folder
    else:
        pytest.skip("no folder can be made read-only for this user here (root without chattr)")
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=False)
        folder.chmod(0o755)


def command_argv():
    return [(name, action) for name, action in cli.build_parser()._subparsers._group_actions[0].choices.items()]


def test_every_command_is_in_the_table():
    commands = {name for name, _ in command_argv()}
    data_actions = {f"data {name}" for name in dict(command_argv())["data"]._subparsers._group_actions[0].choices}
    tabled = {" ".join(argv[:2]) if argv[0] == "data" else argv[0] for argv, _ in CASES}
    assert (commands - {"data"}) | data_actions <= tabled, "a command without bad-input rows: add them to CASES"


@pytest.mark.parametrize(("argv", "named"), CASES, ids=[" ".join(case[0][:3]) for case in CASES])
def test_a_bad_input_is_named_and_nothing_is_written(argv, named, tmp_path, request):
    folder, data, torn = tmp_path / "a_folder", tmp_path / "a_file.json", tmp_path / "torn.json"
    torn.write_text('{"agents": {"zero_sh')
    adapters = {name: tmp_path / name for name in ("torn_adapter", "weightless", "torn_weights")}
    for folder_of_adapter in adapters.values():
        folder_of_adapter.mkdir()
        (folder_of_adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    adapters["torn_adapter"].joinpath("adapter_config.json").write_text('{"peft_type": ')
    adapters["torn_weights"].joinpath("adapter_model.safetensors").write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{")
    not_utf8 = tmp_path / "latin1.jsonl"
    not_utf8.write_bytes(b'{"game_id": "caf\xe9"}\n')
    torn_jsonl = tmp_path / "torn.jsonl"
    torn_jsonl.write_text('{"game_id": "a"}\n{"game_id": \n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    folder.mkdir()
    (folder / "inside.txt").write_text("kept\n")
    data.write_text('{"not": "what the command reads"}\n')
    fill = {
        "dir": str(folder),
        "file": str(data),
        "torn": str(torn),
        "torn_jsonl": str(torn_jsonl),
        "empty": str(empty),
        "missing": str(tmp_path / "missing"),
        "out": str(tmp_path / "out"),
        "not_utf8": str(not_utf8),
        **{name: str(path) for name, path in adapters.items()},
    }
    text = " ".join(argv)
    for name in (
        "readonly",
        "adapter",
        "sft_adapter",
        "trajectories",
        "torn_trajectories",
        "free_port",
        "taken_port",
        "llama_server_url",
        "gguf_file",
        "wrong_base_gguf",
    ):  # made only for the rows that use them
        if "{" + name + "}" in text:
            fill[name] = str(request.getfixturevalue(name))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    words = [part.format(**fill) for part in argv]
    for name, value in (word[len("ENV:") :].split("=", 1) for word in words if word.startswith("ENV:")):
        env.pop(name, None) if value == "" else env.update({name: value})
    before = snapshot(tmp_path)
    result = subprocess.run(
        ["alfworld-sft", *(word for word in words if not word.startswith("ENV:"))],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr and named.format(**fill) in result.stderr, result.stderr[-2000:]
    assert "error:" in result.stderr.splitlines()[-1]
    assert snapshot(tmp_path) == before  # nothing written, nothing moved aside
