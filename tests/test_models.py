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
