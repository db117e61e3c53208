import json
import os
import warnings

import pytest
from alfworld_sft import files
from alfworld_sft.files import MalformedRecordError, append_jsonl, read_jsonl, repair_jsonl_tail, write_json


def test_write_json_is_atomic_and_leaves_no_temporary(tmp_path):
    path = write_json(tmp_path / "a" / "result.json", {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]


def test_torn_last_line_is_cut_and_reading_resumes(tmp_path):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, [{"id": 1}, {"id": 2}])
    with open(path, "a") as handle:
        handle.write('{"id": 3, "half')  # a writer killed mid-line
    assert repair_jsonl_tail(path) is True
    assert [r["id"] for r in read_jsonl(path)] == [1, 2]
    assert repair_jsonl_tail(path) is False


def test_unparsable_terminated_last_line_is_cut(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"id": 1}\n{"id": \n')
    assert repair_jsonl_tail(path) is True
    assert path.read_text() == '{"id": 1}\n'


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 1}\n[1, 2]\n{"id": 3}\n')
    with pytest.raises(MalformedRecordError, match=r"bad.jsonl:2: .*expected a JSON object"):
        list(read_jsonl(path))
    with pytest.warns(UserWarning, match="bad.jsonl:2"):
        assert [r["id"] for r in read_jsonl(path, skip_malformed=True)] == [1, 3]


def test_written_json_is_readable_by_others(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        path = write_json(tmp_path / "result.json", {})
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_stale_partials_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    from alfworld_sft.files import partial_path, remove_stale_partials
    from partials import leave_killed_partial, start_partial_writer

    killed = leave_killed_partial(tmp_path / "killed")
    writer, running = start_partial_writer(tmp_path / "running")
    mine = partial_path(tmp_path / "mine")
    mine.write_text("this process's own partial")
    (tmp_path / "kept.partial-1").mkdir()  # not a partial_path name
    try:
        assert remove_stale_partials(tmp_path) == [killed]
        assert not killed.exists() and running.is_dir() and mine.exists() and (tmp_path / "kept.partial-1").exists()
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
    assert remove_stale_partials(tmp_path) == [running]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"peft_type": "LORA", "base_model_n\nam', "not valid JSON .*Invalid control character"),
        ("[1, 2]", "holds a JSON list, not an object"),
        ("{}", "lacks 'peft_type'"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_corrupt_json_object_names_file_and_remedy(tmp_path, text, problem):
    from alfworld_sft.files import CorruptFileError, read_json_object

    path = tmp_path / "adapter_config.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(CorruptFileError, match=f"adapter_config.json .*{problem}.*: train again"):
        read_json_object(path, "train again", required_keys=("peft_type",))


def test_two_processes_never_write_one_output(tmp_path):
    """The second `evaluate`/`collect`/`dagger` on an output in use is refused at once and names the holder; once the
    holder is gone (killed, too: the kernel drops its lock), the output is free again."""
    import subprocess
    import sys

    output = tmp_path / "eval" / "results.json"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom alfworld_sft import files\n"
         f"with files.hold_output({str(output)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(files.OutputInUseError, match=rf"{output} is being written by process {holder.pid} "):
            with files.hold_output(output):
                pass
    finally:
        holder.kill()
        holder.wait()
    with files.hold_output(output):  # a killed holder blocks nothing
        assert f"process {os.getpid()}" in output.with_name("results.json.lock").read_text()
    assert not output.with_name("results.json.lock").exists()  # and a finished one leaves no lock file


def test_an_evaluation_on_an_output_in_use_is_refused_before_it_plays(tmp_path, capsys):
    from alfworld_sft import cli

    output = tmp_path / "r.json"
    with files.hold_output(output):
        code = cli.main(["evaluate", "--model", "expert", "--num-games", "1", "--max-steps", "2",
                         "--split", "eval_in_distribution", "--output", str(output)])  # fmt: skip
    assert code == 2 and "is being written by process" in capsys.readouterr().err
    assert not output.exists() and not output.with_suffix(".ckpt.jsonl").exists()


def finished_game(game: str, **changes) -> dict:
    """A finished game as a game log holds it (without the run's key)."""
    values = {
        "agent": "zero_shot",
        "game_id": game,
        "task_type": "pick_and_place_simple",
        "won": True,
        "steps": 3,
        "invalid_replies": 0,
        "tokens_generated": 9,
        "wall_s": 1.0,
    }
    return {**values, **changes}


def test_a_game_log_of_other_weights_is_moved_aside_not_reused(tmp_path):
    """Retraining an adapter in place changes its fingerprint: the old games are not reported for the new weights."""
    path = tmp_path / "ckpt.jsonl"
    old = {"model": "m+sft_adapter", "weights": "aaaa", "split": "s", "max_steps": 50}
    files.append_game_log(path, old, finished_game("g1"))
    files.append_game_log(path, old, finished_game("g2"))
    new = {**old, "weights": "bbbb"}
    with pytest.warns(UserWarning, match="another run .*differs in weights.*starting a fresh game log"):
        assert files.read_game_log(path, new, required={}) == []
    assert not path.exists()
    [aside] = tmp_path.glob("ckpt.other-run-*.jsonl")
    assert len(aside.read_text().splitlines()) == 2  # nothing lost
    files.append_game_log(path, new, finished_game("g1"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["game_id"] for r in files.read_game_log(path, new, required={})] == ["g1"]


def test_garbage_and_incomplete_game_log_lines_are_set_aside(tmp_path):
    path = tmp_path / "ckpt.jsonl"
    key = {"model": "m"}
    files.append_game_log(path, key, finished_game("g1"))
    with open(path, "a") as handle:
        handle.write("not json at all\n")
        handle.write(json.dumps({"run": key, "agent": "zero_shot", "game_id": "g2"}) + "\n")  # keys missing
    files.append_game_log(path, key, finished_game("g3"))
    with pytest.warns(UserWarning, match=r"ckpt.jsonl:2: malformed game log line"):
        kept = files.read_game_log(path, key, required={"agent": str, "game_id": str, "won": bool})
    assert [r["game_id"] for r in kept] == ["g1", "g3"]
    assert len(path.with_name("ckpt.jsonl.malformed").read_text().splitlines()) == 2


def test_sha256_file_is_the_digest_of_the_bytes(tmp_path):
    import hashlib

    path = tmp_path / "data.jsonl"
    path.write_bytes(b"x" * (3 << 20))  # several read blocks
    assert files.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
