"""GGUF (04): llama.cpp's converter and quantizer on the merged default model, checked in llama.cpp (fixtures in
conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from alfworld_sft import gguf, ollama, prompts, records
from partials import leave_killed_partial


def test_quantizer_type_as_outtype_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="quantizer type, not a converter type.*--quantize q4_k_m"):
        gguf.convert_to_gguf(tmp_path, tmp_path / "x.gguf", "q4_k_m")


def test_missing_llama_cpp_says_what_to_install() -> None:
    # Run in a child whose import of llama_cpp fails, as on a machine without the export extra.
    code = (
        "import sys; sys.modules['llama_cpp'] = None\n"
        "from pathlib import Path\n"
        "from alfworld_sft import gguf\n"
        "assert 'import llama_cpp failed' in gguf.llama_cpp_missing()\n"
        "try:\n"
        "    gguf.quantize_gguf(Path('in.gguf'), Path('out.gguf'))\n"
        "except gguf.ToolMissingError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "pip install -e '.[export]'" in result.stdout


def test_missing_converter_download_says_what_to_do_and_leaves_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "ALFWORLD_SFT_CACHE": str(tmp_path), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}
    target = tmp_path / "llama.cpp" / f"llama-cpp-python-{gguf.LLAMA_CPP_PYTHON_VERSION}"
    target.parent.mkdir()
    leave_killed_partial(target)  # a download killed earlier
    code = "from alfworld_sft import gguf\ngguf.ensure_converter(log=lambda _: None)\n"
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env)
    assert result.returncode != 0
    assert "ToolMissingError" in result.stderr and "pip download --no-binary :all:" in result.stderr
    assert "convert_hf_to_gguf.py" in result.stderr
    assert list((tmp_path / "llama.cpp").iterdir()) == []


def test_compare_replies_counts_tokens_before_each_divergence() -> None:
    reference = [[1, 2, 3, 4], [5, 6], [7]]
    candidate = [[1, 2, 9, 4], [5, 6], [7, 8]]
    # Reply 1 agrees on 2 of 4 tokens, reply 2 on both, reply 3 on 1 of 2 (the candidate runs one token longer).
    assert gguf.compare_replies(reference, candidate) == {
        "identical_replies": 1,
        "replies": 3,
        "token_agreement": round(5 / 8, 4),
    }
    assert gguf.compare_replies([[]], [[]])["token_agreement"] == 1.0


def test_skipped_export_says_what_to_install() -> None:
    skipped = {"skipped": ["GGUF export skipped: install `pip install -e '.[export]'`"], "files": {}, "served": None}
    assert gguf.format_gguf_table(skipped, parameters=1).startswith("no GGUF files: GGUF export skipped")
    modelfile = ollama.write_modelfile_when_exported(skipped, Path("unused"), "alfworld-sft")
    assert modelfile["skipped"][0].startswith("Modelfile: no GGUF") and skipped["skipped"][0] in modelfile["skipped"]


def test_a_check_that_memory_cannot_hold_is_refused_before_converting(
    merged: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=10_000_000))
    config = gguf.ExportConfig(merged=merged[0], output=tmp_path / "gguf", quantize=None)
    with pytest.raises(gguf.CheckMemoryError, match=r"float32 .* 0\.0 GB of memory free.*--verify-prompts 0"):
        gguf.export_gguf(config)
    assert not (tmp_path / "gguf").exists()


@pytest.mark.slow
def test_an_export_without_the_check_writes_the_file_and_says_so(merged: tuple[Path, dict], tmp_path: Path) -> None:
    config = gguf.ExportConfig(merged=merged[0], output=tmp_path / "gguf", quantize=None, verify_prompts=0)
    record = gguf.export_gguf(config)
    assert record["verification"] == {}
    assert "the check against the merged model (--verify-prompts 0)" in record["skipped"]
    served = Path(record["served"])
    assert served == tmp_path / "gguf" / "alfworld-sft-f16.gguf" and served.read_bytes()[:4] == b"GGUF"


@pytest.mark.slow
@pytest.mark.skipif(
    gguf.llama_cpp_missing() is not None,
    reason="llama.cpp's quantizer and runtime are not installed: pip install -e '.[export]'",
)
def test_gguf_round_trip(merged: tuple[Path, dict], tmp_path: Path) -> None:
    output, _ = merged
    started = time.perf_counter()
    (tmp_path / "gguf").mkdir()
    killed = leave_killed_partial(tmp_path / "gguf" / "alfworld-sft-f16.gguf")
    record = gguf.export_gguf(
        gguf.ExportConfig(
            merged=output,
            output=tmp_path / "gguf",
            outtype="f16",
            quantize="q4_k_m",
            verify_prompts=2,
            max_new_tokens=8,
        )
    )
    f16, q4 = record["verification"]["f16"], record["verification"]["q4_k_m"]
    # f16 reproduces the merged model's greedy replies; a divergence is allowed only at a near-tie.
    assert f16["runtime"] == "llama.cpp" and f16["replies"] == 2 and f16["must_match"]
    assert all(margin <= gguf.NEAR_TIE_LOGITS for margin in f16["divergence_margins"])
    # llama.cpp's own tokenizer reads the rendered prompts as transformers does (what Ollama will feed it).
    assert f16["prompts_tokenized_identically"] == 2 and q4["prompts_tokenized_identically"] == 2
    assert not q4["must_match"] and len(q4["replies_text"]) == 2
    sizes = {kind: entry["size_mb"] for kind, entry in record["files"].items()}
    assert sizes["q4_k_m"] < 0.6 * sizes["f16"]
    # The folder holds the files, the training record to play them by, and nothing half-written.
    folder = tmp_path / "gguf"
    assert record["served"] == str(folder / "alfworld-sft-q4_k_m.gguf")
    assert records.read_training_record(folder) == records.read_training_record(output)
    assert not killed.exists() and not list(folder.glob(".*"))
    assert {p.name for p in folder.iterdir()} == {
        "alfworld-sft-f16.gguf",
        "alfworld-sft-q4_k_m.gguf",
        gguf.GGUF_RECORD,
        records.TRAINING_RECORD_FILE,
    }
    # The Modelfile beside it serves the quantized file as trained.
    modelfile = ollama.write_modelfile_when_exported(record, output, "alfworld-sft")
    text = Path(modelfile["modelfile"]).read_text()
    assert text.startswith("FROM ./alfworld-sft-q4_k_m.gguf\n")
    assert f'SYSTEM """{prompts.SYSTEM_PROMPT}"""' in text and "PARAMETER num_ctx 1024" in text
    print(f"GGUF round trip {time.perf_counter() - started:.0f} s, sizes {sizes} MB, q4_k_m agreement {q4}")


def test_a_failed_export_leaves_no_empty_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A merged folder the converter cannot read: the error names it, and the output folder the export created is
    gone again (it used to stay behind, empty)."""
    from alfworld_sft import cli

    broken = tmp_path / "merged"
    broken.mkdir()
    (broken / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    output = tmp_path / "gguf"
    assert cli.main(["export-gguf", "--merged", str(broken), "--output", str(output), "--verify-prompts", "0"]) == 2
    assert "alfworld-sft export-gguf: error:" in capsys.readouterr().err
    assert not output.exists()
