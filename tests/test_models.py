import time

import pytest
from alfworld_sft import models


def test_default_model_loads_from_cache_quickly_and_answers(tmp_path):
    models.ensure_default_model()  # first call may convert (~25 s)
    started = time.perf_counter()
    model = models.load_model(models.DEFAULT_MODEL)
    tokenizer = models.load_tokenizer(models.DEFAULT_MODEL)
    assert time.perf_counter() - started < 15
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    reply = models.generate_reply(model, tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in reply


@pytest.mark.slow
def test_interrupted_conversion_leaves_nothing_that_loads(tmp_path, monkeypatch):
    target = tmp_path / "models" / "smol"
    real_convert = models._convert_gguf

    def crash_after_writing(gguf, out):
        real_convert(gguf, out)
        (out / models.COMPLETE_MARKER).unlink()  # as if killed before the folder was complete
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert_gguf", crash_after_writing)
    with pytest.raises(KeyboardInterrupt):
        models.ensure_default_model(target)
    assert not target.exists()
    assert not list(target.parent.glob(".*partial*"))

    monkeypatch.setattr(models, "_convert_gguf", real_convert)
    assert models.ensure_default_model(target) == target
    assert (target / models.COMPLETE_MARKER).exists() and (target / "model.safetensors").exists()
    stamp = (target / models.COMPLETE_MARKER).stat().st_mtime
    models.ensure_default_model(target)  # idempotent: reused, not converted again
    assert (target / models.COMPLETE_MARKER).stat().st_mtime == stamp


def test_unreachable_hub_model_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    started = time.perf_counter()
    with pytest.raises(models.ModelUnavailableError, match="cannot be reached.*embedded default"):
        models.load_tokenizer("meta-llama/Llama-3.1-8B-Instruct")
    assert time.perf_counter() - started < 10


def test_gated_model_error_points_to_licence_and_login():
    import httpx
    from huggingface_hub.errors import GatedRepoError

    url = "https://huggingface.co/meta-llama/Llama-3.1-8B/resolve/main/config.json"
    response = httpx.Response(403, request=httpx.Request("HEAD", url))
    gated = GatedRepoError("Access to model meta-llama/Llama-3.1-8B is restricted.", response=response)
    wrapped = OSError("You are trying to access a gated repo.")
    wrapped.__cause__ = gated
    message = str(models.explain_load_error("meta-llama/Llama-3.1-8B", wrapped))
    assert "huggingface.co/meta-llama/Llama-3.1-8B" in message and "huggingface-cli login" in message


def test_missing_local_folder_is_named():
    with pytest.raises(models.ModelUnavailableError, match="does not exist"):
        models.resolve_model("./no/such/model")


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(models.ModelUnavailableError, match="no config.json"):
        models.resolve_model(str(tmp_path))


# A stand-in for the 25-second GGUF conversion, for the tests of concurrent and killed conversions: it announces
# itself in a log, writes a file, waits, then finishes the folder as the real one does (marker last).
SLOW_CONVERSION = """
import os, sys, time
from pathlib import Path
from alfworld_sft import models

log = Path(sys.argv[2])

def slow_convert(gguf, out):
    out.mkdir(parents=True)
    with open(log, "a") as handle:
        handle.write(f"converting {os.getpid()}\\n")
    (out / "weights.bin").write_bytes(b"w" * 1000)
    time.sleep(float(sys.argv[3]))
    (out / models.COMPLETE_MARKER).write_text("{}")

models._convert_gguf = slow_convert
print(models.ensure_default_model(Path(sys.argv[1])))
"""


def start_conversion(target, log, seconds):
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-c", SLOW_CONVERSION, str(target), str(log), str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(path, text, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never said {text!r}")


def test_two_processes_converting_at_once_convert_once_and_share_the_result(tmp_path):
    target, log = tmp_path / "models" / "smol", tmp_path / "conversions.log"
    first = start_conversion(target, log, seconds=3)
    wait_for_line(log, "converting")  # the first is mid-conversion when the second starts
    second = start_conversion(target, log, seconds=3)
    outputs = [process.communicate(timeout=60) for process in (first, second)]
    assert [process.returncode for process in (first, second)] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == [str(target), str(target)]
    assert log.read_text().count("converting") == 1, "the second process must wait and reuse the first's folder"
    assert "waiting: another process is converting smol" in outputs[1][1]
    assert (target / models.COMPLETE_MARKER).exists() and (target / "weights.bin").stat().st_size == 1000
    assert not list(target.parent.glob(".smol.partial-*"))


def test_a_killed_conversion_is_cleaned_up_but_a_live_one_is_left_alone(tmp_path, monkeypatch):
    import signal
    import subprocess
    import sys

    target, log = tmp_path / "models" / "smol", tmp_path / "conversions.log"
    killed = start_conversion(target, log, seconds=60)
    wait_for_line(log, "converting")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=10)
    dead_partial = target.parent / f".smol.partial-{killed.pid}"
    assert dead_partial.is_dir() and not target.exists()

    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live_partial = target.parent / f".smol.partial-{bystander.pid}"
        live_partial.mkdir()

        def quick_convert(gguf, out):
            out.mkdir(parents=True)
            (out / models.COMPLETE_MARKER).write_text("{}")

        monkeypatch.setattr(models, "_convert_gguf", quick_convert)
        assert models.ensure_default_model(target) == target  # the dead holder's lock is released by the kernel
        assert not dead_partial.exists(), "a killed conversion's leftovers are removed"
        assert live_partial.is_dir(), "a live process's work in progress is never removed"
    finally:
        bystander.kill()
        bystander.wait()


def test_load_error_advice_names_the_callers_flag():
    error = models.explain_load_error("org/model", ConnectionError("unreachable"), flag="--base")
    assert "--base" in str(error) and "--model" not in str(error)
    with pytest.raises(models.ModelUnavailableError, match="check --base"):
        models.resolve_model("./no/such/model", flag="--base")


def test_a_local_model_that_fails_to_load_says_why_not_offline():
    """A folder that is there but cannot load with these settings is no hub problem: the real cause is shown."""
    with pytest.raises(models.ModelUnavailableError) as raised:
        models.load_model(models.DEFAULT_MODEL, attn_implementation="no_such_attention")
    assert "no_such_attention" in str(raised.value) and "offline" not in str(raised.value)
