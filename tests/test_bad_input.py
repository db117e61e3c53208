"""Every command against bad paths: exit status 2, a message that names the path and says what to do, no traceback,
and nothing written or moved (issue "Nothing silently wrong"). A new command joins the table."""

import os
import subprocess

import pytest

# (command line with {dir} = an existing folder, {file} = a JSON file of another kind, {torn} = a torn JSON, {out} = a
# path that does not exist yet, {torn_adapter} / {weightless} / {torn_weights} = adapter folders with a torn config,
# no weights, torn weights, {not_utf8} = a JSONL that is not UTF-8; the path or flag the message must name)
CASES = [
    (["collect", "--split", "train", "--limit", "1", "--output", "{dir}"], "{dir}"),
    (["collect", "--split", "train", "--limit", "1", "--output", "{file}/x.jsonl"], "{file}"),
    (["evaluate", "--model", "expert", "--num-games", "1", "--split", "eval_in_distribution", "--checkpoint", "{dir}",
      "--output", "{out}/r.json"], "{dir}"),
    (["evaluate", "--model", "expert", "--agents", "few_shot", "--num-games", "1", "--split", "eval_in_distribution",
      "--trajectories", "{dir}", "--output", "{out}/r.json"], "{dir}"),
    (["evaluate", "--model", "expert", "--num-games", "1", "--split", "eval_in_distribution", "--checkpoint",
      "{file}", "--output", "{out}/r.json"], "{file}"),
    (["compare", "{dir}", "{dir}"], "{dir}"),
    (["compare", "{file}", "{file}"], "{file}"),
    (["compare", "{torn}", "{file}"], "{torn}"),
    (["train", "--data", "{dir}", "--output", "{out}/t"], "{dir}"),
    (["evaluate", "--model", "expert", "--num-games", "1", "--split", "eval_in_distribution", "--output",
      "{file}/r.json"], "{file}"),
    (["format", "--data", "{dir}", "--output", "{out}/f"], "{dir}"),
    (["merge", "--adapter", "{file}", "--output", "{out}/m"], "{file}"),
    (["export-gguf", "--merged", "{file}", "--output", "{out}/g"], "{file}"),
    (["merge", "--adapter", "{dir}", "--output", "{out}/m", "--verify-prompts", "0"], "--verify-prompts"),
    (["evaluate", "--adapter", "{torn_adapter}", "--num-games", "1", "--split", "eval_in_distribution", "--output",
      "{out}/r.json"], "{torn_adapter}/adapter_config.json"),
    (["evaluate", "--adapter", "{weightless}", "--num-games", "1", "--split", "eval_in_distribution", "--output",
      "{out}/r.json"], "{weightless}"),
    (["evaluate", "--adapter", "{torn_weights}", "--num-games", "1", "--split", "eval_in_distribution", "--output",
      "{out}/r.json"], "{torn_weights}/adapter_model.safetensors"),
    (["merge", "--adapter", "{torn_weights}", "--output", "{out}/m"], "{torn_weights}/adapter_model.safetensors"),
    (["format", "--data", "{not_utf8}", "--output", "{out}/f"], "{not_utf8}:1"),
    (["train", "--data", "{not_utf8}", "--output", "{out}/t", "--base", "ollama:llama3"], "--base ollama:llama3"),
]  # fmt: skip


def snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


@pytest.mark.parametrize(("argv", "named"), CASES, ids=[" ".join(case[0][:3]) for case in CASES])
def test_a_bad_path_is_named_and_nothing_is_written(argv, named, tmp_path):
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
    folder.mkdir()
    (folder / "inside.txt").write_text("kept\n")
    data.write_text('{"not": "what the command reads"}\n')
    out = tmp_path / "out"
    fill = {"dir": str(folder), "file": str(data), "torn": str(torn), "out": str(out), "not_utf8": str(not_utf8)}
    fill.update({name: str(path) for name, path in adapters.items()})
    before = snapshot(tmp_path)
    result = subprocess.run(
        ["alfworld-sft", *(part.format(**fill) for part in argv)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr and named.format(**fill) in result.stderr
    assert "error:" in result.stderr.splitlines()[-1]
    assert snapshot(tmp_path) == before  # nothing written, nothing moved aside
