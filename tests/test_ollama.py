"""The Ollama Modelfile (04): golden renders of each chat family, the verified TEMPLATEs, stop tokens, the training
record's system prompt and window."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from alfworld_sft import models, ollama, prompts, records
from alfworld_sft.paths import REPO_ROOT
from chat_templates import build_llama31_tokenizer

GO_RENDERER = Path(__file__).parent / "data" / "render_go_template.go"
FAMILY_TOKENIZERS = {"chatml": lambda: models.load_tokenizer(models.DEFAULT_MODEL), "llama3": build_llama31_tokenizer}


@pytest.mark.parametrize("family", FAMILY_TOKENIZERS)
def test_tokenizer_renders_the_golden_text_of_its_family(family: str) -> None:
    conversation, families = ollama.read_chat_families()
    assert [m["role"] for m in conversation] == ["system", "user", "assistant", "user"]
    tokenizer = FAMILY_TOKENIZERS[family]()
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert rendered == families[family].golden
    assert ollama.detect_chat_family(tokenizer).name == family


@pytest.mark.skipif(shutil.which("go") is None, reason="Go is not installed: the TEMPLATEs' sha256 pins stand in")
@pytest.mark.parametrize("family", FAMILY_TOKENIZERS)
def test_template_renders_the_golden_text_in_go(family: str) -> None:
    """Go's text/template is the engine Ollama runs a TEMPLATE on (Ollama itself renders only in its server)."""
    conversation, families = ollama.read_chat_families()
    entry = json.loads((ollama.TEMPLATES_DIR / ollama.FAMILIES_FILE).read_text())["families"][family]
    result = subprocess.run(
        ["go", "run", str(GO_RENDERER), str(ollama.TEMPLATES_DIR / entry["template"])],
        input=json.dumps({"conversation": conversation}),
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    )
    assert result.stdout == families[family].golden.removeprefix(families[family].runtime_prefix)


@pytest.mark.parametrize("changed", ["ollama_chatml.gotmpl", "golden_llama3.txt"])
def test_changed_template_or_golden_text_is_refused_until_verified(tmp_path: Path, changed: str) -> None:
    folder = shutil.copytree(ollama.TEMPLATES_DIR, tmp_path / "templates")
    assert set(ollama.read_chat_families(folder)[1]) == {"chatml", "llama3"}
    path = folder / changed
    path.write_text(path.read_text().replace("\n", "\n\n", 1))  # one blank line is a different prompt
    with pytest.raises(ollama.UnverifiedTemplateError, match=f"{changed} changed since .* verified.*sha256"):
        ollama.read_chat_families(folder)


def test_other_chat_template_is_refused_with_advice() -> None:
    tokenizer = build_llama31_tokenizer()
    # Llama-3.2's template dates the system prompt today: the same headers, a different prompt.
    tokenizer.chat_template = tokenizer.chat_template.replace('"26 Jul 2024"', '"28 Nov 2026"')
    with pytest.raises(ollama.TemplateFamilyError, match="none of the verified families.*write an Ollama TEMPLATE"):
        ollama.detect_chat_family(tokenizer)


def test_modelfile_serves_the_gguf_as_trained(tmp_path: Path) -> None:
    folder = tmp_path / "gguf"
    folder.mkdir()
    (folder / "m-q4_k_m.gguf").write_bytes(b"GGUF")
    record = records.TrainingRecord(
        base_model=models.DEFAULT_MODEL,
        prompt_format=prompts.PromptFormat(),
        max_seq_len=2048,
        end_of_turn="<|im_end|>",
        data_format="thoughts",
    )
    records.write_training_record(folder, record, seed=0)
    config = ollama.ModelfileConfig(gguf=folder / "m-q4_k_m.gguf", merged=models.default_model_dir(), name="m")
    result = ollama.write_modelfile(config)
    text = (folder / "Modelfile").read_text()
    template = ollama.read_chat_families()[1]["chatml"].template
    assert text == (
        f'FROM ./m-q4_k_m.gguf\nTEMPLATE """{template}"""\nSYSTEM """{prompts.THOUGHTS_SYSTEM_PROMPT}"""\n'
        'PARAMETER stop "<|im_end|>"\nPARAMETER temperature 0\nPARAMETER num_ctx 2048\n'
    )
    assert result["family"] == "chatml" and result["ollama_create"] == f"ollama create m -f {folder / 'Modelfile'}"
    # Without a training record beside the GGUF, nothing is made up: no SYSTEM, Ollama's own window.
    (folder / records.TRAINING_RECORD_FILE).unlink()
    ollama.write_modelfile(config)
    text = (folder / "Modelfile").read_text()
    assert "SYSTEM" not in text and "num_ctx" not in text and 'PARAMETER stop "<|im_end|>"' in text


def test_llama3_modelfile_stops_at_eot(tmp_path: Path) -> None:
    merged = tmp_path / "merged"
    build_llama31_tokenizer().save_pretrained(merged)
    shutil.copy(models.default_model_dir() / "config.json", merged)  # a model folder, as a merge leaves it
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    result = ollama.write_modelfile(ollama.ModelfileConfig(gguf=tmp_path / "model.gguf", merged=merged))
    text = Path(result["modelfile"]).read_text()
    assert result["family"] == "llama3" and result["stop"] == ["<|eot_id|>"]
    assert "<|begin_of_text|>" not in text  # llama.cpp adds the BOS as a token
    assert "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n{{ .Content }}" in text


def test_stop_tokens_are_the_end_of_turn_and_eos() -> None:
    tokenizer = models.load_tokenizer(models.DEFAULT_MODEL)
    assert ollama.modelfile_stop_tokens(tokenizer) == ["<|im_end|>"]
    tokenizer.eos_token = "<|endoftext|>"  # an eos that is not the end-of-turn marker stops too
    assert ollama.modelfile_stop_tokens(tokenizer) == ["<|im_end|>", "<|endoftext|>"]


def test_modelfile_refuses_what_it_cannot_quote() -> None:
    with pytest.raises(ValueError, match='SYSTEM .* contains """'):
        ollama.build_modelfile("m.gguf", "{{ .Content }}", ["<|im_end|>"], system='say """hi"""')
