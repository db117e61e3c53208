"""Every command against bad paths: exit status 2, a message that names the path and says what to do, no traceback,
and nothing written or moved (issue "Nothing silently wrong"). A new command joins the table."""

import os
import subprocess

import pytest

# (command line with {dir} = an existing folder, {file} = a JSON file of another kind, {torn} = a torn JSON, {out} = a
# path that does not exist yet; the path the message must name)
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
]  # fmt: skip


def snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


@pytest.mark.parametrize(("argv", "named"), CASES, ids=[" ".join(case[0][:3]) for case in CASES])
def test_a_bad_path_is_named_and_nothing_is_written(argv, named, tmp_path):
    folder, data, torn = tmp_path / "a_folder", tmp_path / "a_file.json", tmp_path / "torn.json"
    torn.write_text('{"agents": {"zero_sh')
    folder.mkdir()
    (folder / "inside.txt").write_text("kept\n")
    data.write_text('{"not": "what the command reads"}\n')
    out = tmp_path / "out"
    fill = {"dir": str(folder), "file": str(data), "torn": str(torn), "out": str(out)}
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
