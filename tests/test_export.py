"""Merge, GGUF export and the Ollama Modelfile (04) on a real LoRA adapter of the default model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alfworld_sft import export, models, prompts

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def train_tiny_adapter(out: Path, steps: int = 3) -> Path:
    """A real LoRA adapter: r=8 on the seven projections, a few AdamW steps on one short game chat, so the
    B matrices are no longer zero; saved as training will save it (adapter, tokenizer, training record)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    tokenizer = models.load_tokenizer(models.DEFAULT_MODEL)
    model = models.load_model(models.DEFAULT_MODEL, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
    messages = prompts.build_messages(
        prompts.SYSTEM_PROMPT,
        [
            {
                "role": "user",
                "content": "Task: put a clean ladle in countertop.\nObservation: you see a sinkbasin 1.",
            },
            {"role": "assistant", "content": "go to sinkbasin 1"},
        ],
    )
    ids = tokenizer.apply_chat_template(messages, return_tensors="pt", return_dict=True)["input_ids"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    record = {
        "base_model": models.DEFAULT_MODEL,
        "prompt_format": {"show_admissible_commands": False},
        "max_seq_len": 1024,
    }
    (out / export.TRAINING_RECORD).write_text(json.dumps(record))
    return out


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_adapter(tmp_path_factory.mktemp("adapter") / "sft_adapter")


@pytest.fixture(scope="module")
def merged(adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("merge") / "sft_merged"
    record = export.merge_adapter(export.MergeConfig(adapter=adapter, output=output, verify_prompts=2))
    return output, record


@pytest.mark.slow
def test_merge_matches_base_plus_adapter(merged: tuple[Path, dict]) -> None:
    output, record = merged
    assert record["dtype"] == "float32" and record["base_model"] == models.DEFAULT_MODEL
    # The adapter really changes the model, so logit equality is not trivially true...
    assert record["adapter_effect_max_abs_logit_diff"] > 100 * record["tolerance"]
    # ...and the saved merged folder reproduces base+adapter.
    assert record["max_abs_logit_diff"] <= record["tolerance"] == export.LOGIT_TOLERANCE["float32"]
    names = {p.name for p in output.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "chat_template.jinja",
        "generation_config.json",
        export.TRAINING_RECORD,
        export.MERGE_RECORD,
    } <= names
    assert not any(name.startswith("adapter_") for name in names)
    generation = json.loads((output / "generation_config.json").read_text())
    tokenizer = models.load_tokenizer(str(output))
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in generation["eos_token_id"]
    assert not list(output.parent.glob(".*partial*"))


def test_wrong_base_model_is_refused(adapter: Path, tmp_path: Path) -> None:
    with pytest.raises(export.BaseModelMismatchError, match="trained on 'smollm2-135m-instruct'.*--base"):
        export.merge_adapter(export.MergeConfig(adapter=adapter, output=tmp_path / "m", base="meta-llama/Llama-3.1-8B"))
    assert not (tmp_path / "m").exists()
    # The same model under another name (its converted folder) is accepted.
    assert export.check_base_model(adapter, str(models.default_model_dir())) == models.DEFAULT_MODEL


def test_missing_adapter_says_train_first(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a LoRA adapter folder.*notebook 03"):
        export.merge_adapter(export.MergeConfig(adapter=tmp_path, output=tmp_path / "m"))


def test_cli_reports_wrong_base_without_traceback(adapter: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alfworld_sft.cli",
            "merge",
            "--adapter",
            str(adapter),
            "--output",
            str(tmp_path / "m"),
            "--base",
            "HuggingFaceTB/SmolLM2-360M-Instruct",
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "error: the adapter" in result.stderr and "Traceback" not in result.stderr


def test_quantizer_type_as_outtype_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="quantizer type, not a converter type.*--quantize q4_k_m"):
        export.convert_to_gguf(tmp_path, tmp_path / "x.gguf", "q4_k_m")


def test_missing_llama_cpp_says_what_to_install() -> None:
    # Run in a child whose import of llama_cpp fails, as on a machine without the export extra.
    code = (
        "import sys; sys.modules['llama_cpp'] = None\n"
        "from pathlib import Path\n"
        "from alfworld_sft import export\n"
        "assert not export.llama_cpp_available()\n"
        "try:\n"
        "    export.quantize_gguf(Path('in.gguf'), Path('out.gguf'))\n"
        "except export.ToolMissingError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "pip install -e '.[export]'" in result.stdout


def test_missing_converter_download_says_what_to_do(tmp_path: Path) -> None:
    env = {**os.environ, "ALFWORLD_SFT_CACHE": str(tmp_path), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}
    code = "from alfworld_sft import export\nexport.ensure_converter(log=lambda _: None)\n"
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env)
    assert result.returncode != 0
    assert "ToolMissingError" in result.stderr and "pip download --no-binary :all:" in result.stderr
    assert "convert_hf_to_gguf.py" in result.stderr


# ---------------------------------------------------------------------------------- Ollama TEMPLATE


def test_modelfile_template_renders_like_chat_template(tmp_path: Path) -> None:
    tokenizer = models.load_tokenizer(models.DEFAULT_MODEL)
    template = export.build_ollama_template(tokenizer)
    cases = export.check_ollama_template(tokenizer, template)
    assert len(cases) == 3 and any(c["ends_with_reply"] for c in cases)
    # A conversation without a system prompt gets SmolLM2's default one, as the Jinja template does.
    lone = [{"role": "user", "content": "hi"}]
    rendered = export.render_go_template(template, {"Messages": [{"Role": "user", "Content": "hi"}]})
    assert rendered == tokenizer.apply_chat_template(lone, tokenize=False, add_generation_prompt=True)
    assert "named SmolLM" in rendered
    path, command = export.write_modelfile(tmp_path, tmp_path / "m-q4_k_m.gguf", tokenizer, "alfworld-sft", 2048)
    text = path.read_text()
    assert text.startswith("FROM ./m-q4_k_m.gguf\n") and 'PARAMETER stop "<|im_end|>"' in text
    assert "PARAMETER num_ctx 2048" in text
    assert f'TEMPLATE """{template}"""' in text
    assert command == f"ollama create alfworld-sft -f {path}"


def test_modelfile_template_differs_when_chat_template_differs() -> None:
    tokenizer = models.load_tokenizer(models.DEFAULT_MODEL)
    template = export.build_ollama_template(tokenizer).replace("<|im_end|>\n{{ if", "<|im_end|>{{ if")
    with pytest.raises(ValueError, match="renders a conversation differently"):
        export.check_ollama_template(tokenizer, template)


# The no-tools path of Llama-3.1-Instruct's chat template (tokenizer_config.json), with its special tokens.
LLAMA31_TEMPLATE = (
    '{{- bos_token }}{%- if not date_string is defined %}{%- set date_string = "26 Jul 2024" %}{%- endif %}'
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}"
    '{%- set messages = messages[1:] %}{%- else %}{%- set system_message = "" %}{%- endif %}'
    '{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}'
    '{{- "Cutting Knowledge Date: December 2023\\n" }}'
    '{{- "Today Date: " + date_string + "\\n\\n" }}{{- system_message }}{{- "<|eot_id|>" }}'
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def test_llama3_modelfile_template_renders_like_chat_template() -> None:
    tokenizer = models.load_tokenizer(models.DEFAULT_MODEL)
    tokenizer.add_special_tokens(
        {
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"],
        }
    )
    tokenizer.chat_template = LLAMA31_TEMPLATE
    assert export.chat_family(tokenizer) == "llama3"
    template = export.build_ollama_template(tokenizer)
    assert "Cutting Knowledge Date" in template and "<|begin_of_text|>" not in template  # llama.cpp adds BOS
    assert len(export.check_ollama_template(tokenizer, template)) == 3
    assert "<|eot_id|>" in [tokenizer.convert_ids_to_tokens(i) for i in export.end_of_turn_ids(tokenizer)]


def test_go_renderer_rejects_what_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="unsupported template function 'printf'"):
        export.render_go_template('{{ printf "%s" .X }}', {"X": "a"})
    with pytest.raises(ValueError, match="end.*missing"):
        export.render_go_template("{{ if .X }}a", {"X": True})


# ---------------------------------------------------------------------------------------- GGUF


@pytest.mark.slow
@pytest.mark.skipif(
    not export.llama_cpp_available(),
    reason="llama.cpp's quantizer and runtime are not installed: pip install -e '.[export]'",
)
def test_gguf_round_trip(merged: tuple[Path, dict], tmp_path: Path) -> None:
    output, _ = merged
    started = time.perf_counter()
    record = export.export_gguf(
        export.ExportConfig(
            merged=output,
            output=tmp_path / "gguf",
            outtype="f16",
            quantize="q4_k_m",
            verify_prompts=2,
            max_new_tokens=8,
            create_ollama=False,
        )
    )
    f16, q4 = record["verification"]["f16"], record["verification"]["q4_k_m"]
    # f16 reproduces the merged model's greedy replies; a divergence is allowed only at a near-tie.
    assert f16["runtime"] == "llama.cpp" and f16["replies"] == 2
    assert all(margin <= export.NEAR_TIE_LOGITS for margin in f16["divergence_margins"])
    assert f16["prompts_tokenized_identically"] == 2 and q4["prompts_tokenized_identically"] == 2
    assert 0.0 <= q4["token_agreement"] <= 1.0
    sizes = {kind: entry["size_mb"] for kind, entry in record["files"].items()}
    assert sizes["q4_k_m"] < 0.6 * sizes["f16"]
    modelfile = Path(record["modelfile"]).read_text()
    assert modelfile.startswith("FROM ./alfworld-sft-q4_k_m.gguf")
    print(f"GGUF round trip {time.perf_counter() - started:.0f} s, sizes {sizes} MB, q4_k_m agreement {q4}")
