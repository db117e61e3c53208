"""Serving with Ollama (04, last section): the Modelfile beside an exported GGUF.

A Modelfile with only `FROM` makes a fine-tuned model ramble (field notes §3): Ollama must render conversations
exactly as the chat template the model was trained with, and stop at its end of turn. `write_modelfile` writes:

* `TEMPLATE`: the Go template of the tokenizer's chat family, from `templates/`. Each family (ChatML for SmolLM2,
  Llama-3.1's headers) comes with a golden render of a fixed conversation (`templates/families.json`). The
  tokenizer must render that conversation exactly as the golden text, which proves the family; the TEMPLATE file
  must be the one that was verified, by rendering it with Go's text/template (Ollama's engine), to give that golden
  text (its sha256 is pinned next to it). Ollama itself renders a TEMPLATE only inside its server (`ollama create`,
  then a chat request), so no Ollama render is done here; `tests/data/render_go_template.go` renders it offline.
* `SYSTEM`: the system prompt the model was trained with (the training record's data format), which Ollama puts
  first when a request has none; so the templates only ever render conversations that start with a system message.
* `PARAMETER stop`: the end-of-turn marker and eos (`models.end_of_turn_marker`, `models.stop_token_ids`),
  `temperature 0`, and `num_ctx` = the training window, since Ollama's shorter default would cut a long game.

The training record is read from the GGUF's folder, where `gguf.export_gguf` put it.

    alfworld-sft export-gguf --merged results/sft_merged --output results/gguf   # writes gguf/Modelfile too
    ollama create alfworld-sft -f results/gguf/Modelfile
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alfworld_sft import files, models, prompts, records
from alfworld_sft.paths import resolve_repo_path

TEMPLATES_DIR = Path(__file__).with_name("templates")
FAMILIES_FILE = "families.json"
MODELFILE = "Modelfile"
OLLAMA_RENDER_NOTE = (
    "not rendered by Ollama: it renders a TEMPLATE only inside its server; the TEMPLATE is the one verified with "
    "Go's text/template (Ollama's engine) for the family's golden text"
)


class TemplateFamilyError(ValueError):
    """A chat template whose render of the golden conversation matches no family the course has a TEMPLATE for."""


class UnverifiedTemplateError(ValueError):
    """A TEMPLATE or golden text that changed since the pair was verified."""


@dataclass(frozen=True)
class ChatFamily:
    """One chat format with its verified Ollama TEMPLATE."""

    name: str  # "chatml" or "llama3"
    description: str  # which chat templates render this way
    template: str  # the Ollama TEMPLATE (Go text/template), verified to render the golden conversation as `golden`
    golden: str  # the family's chat template's render of the golden conversation, with a generation prompt
    runtime_prefix: str  # the start of `golden` that the runtime adds as a token (a BOS) and the TEMPLATE leaves out
    verified_with: str  # how and when the TEMPLATE was checked against `golden`


@dataclass(frozen=True)
class ModelfileConfig:
    gguf: Path  # the GGUF file to serve; the Modelfile is written beside it, where its training record lies
    merged: Path  # the merged Hugging Face folder: its tokenizer decides the TEMPLATE and stop tokens
    name: str = "alfworld-sft"  # the Ollama model name
    create_ollama: bool = False  # run `ollama create` when ollama is on PATH


def read_chat_families(folder: Path = TEMPLATES_DIR) -> tuple[list[prompts.Message], dict[str, ChatFamily]]:
    """The golden conversation and the families of `folder`/families.json. A TEMPLATE or golden text whose sha256
    is not the verified one raises `UnverifiedTemplateError`."""
    manifest = files.read_json_object(
        folder / FAMILIES_FILE,
        "reinstall the course (pip install -e .), or restore it with git",
        required_keys=("conversation", "families"),
    )
    families = {}
    for name, entry in manifest["families"].items():
        texts = {}
        for kind in ("template", "golden"):
            path = folder / entry[kind]
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != entry[f"{kind}_sha256"]:
                raise UnverifiedTemplateError(
                    f"{path} changed since the {name} TEMPLATE was verified against its golden text "
                    f"({entry['verified_with']}): render {folder / entry['template']} again, with Ollama or "
                    f"`go run tests/data/render_go_template.go TEMPLATE < {folder / FAMILIES_FILE}`, check that it "
                    f"gives {folder / entry['golden']} (less {entry['runtime_prefix']!r}), then write the new "
                    f"{kind}_sha256 {hashlib.sha256(data).hexdigest()} and verified_with into {FAMILIES_FILE}"
                )
            texts[kind] = data.decode("utf-8")
        families[name] = ChatFamily(
            name=name,
            description=entry["chat_template"],
            template=texts["template"],
            golden=texts["golden"],
            runtime_prefix=entry["runtime_prefix"],
            verified_with=entry["verified_with"],
        )
    return manifest["conversation"], families


def detect_chat_family(tokenizer: Any, folder: Path = TEMPLATES_DIR) -> ChatFamily:
    """The family whose golden text the tokenizer's own chat template renders exactly; `TemplateFamilyError` when
    none does (another chat format, or a variant such as a template that dates its system prompt today)."""
    conversation, families = read_chat_families(folder)
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    for family in families.values():
        if rendered == family.golden:
            return family
    raise TemplateFamilyError(
        f"this tokenizer's chat template renders the golden conversation of {folder / FAMILIES_FILE} as "
        f"{rendered!r}, which is none of the verified families ({', '.join(families)}): "
        "write an Ollama TEMPLATE for it, verify it renders that text (Ollama, or "
        "tests/data/render_go_template.go), and add it with its golden text to templates/"
    )


def modelfile_stop_tokens(tokenizer: Any, end_of_turn: str | None = None) -> list[str]:
    """The texts Ollama stops at: the end-of-turn marker (probed when not given) and the tokens generation stops
    at (`models.stop_token_ids`)."""
    marker = end_of_turn or models.end_of_turn_marker(tokenizer)
    stops = [marker, *(tokenizer.decode([i]) for i in models.stop_token_ids(tokenizer, marker))]
    return list(dict.fromkeys(stops))


def build_modelfile(
    gguf_name: str, template: str, stop_tokens: list[str], system: str | None = None, num_ctx: int | None = None
) -> str:
    """The Modelfile text; `system` and `num_ctx` come from the training record when there is one."""
    quoted = [("TEMPLATE", template, '"""'), ("SYSTEM", system or "", '"""')]
    quoted += [("stop token", token, '"') for token in stop_tokens]
    for label, text, quote in quoted:
        if quote in text:
            raise ValueError(f"the {label} {text[:80]!r} contains {quote}, which a Modelfile cannot quote")
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    lines += [f'SYSTEM """{system}"""'] if system else []
    lines += [f'PARAMETER stop "{token}"' for token in stop_tokens]
    lines += ["PARAMETER temperature 0"]
    lines += [f"PARAMETER num_ctx {num_ctx}"] if num_ctx else []
    return "\n".join(lines) + "\n"


def write_modelfile(config: ModelfileConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the Modelfile beside `config.gguf` (and run `ollama create` when asked and ollama is on PATH).
    Returns what was written: path, `ollama create` command, family, stop tokens, system prompt, context."""
    gguf = resolve_repo_path(config.gguf)
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf} does not exist: export the GGUF first (`alfworld-sft export-gguf`)")
    tokenizer = models.load_tokenizer(str(resolve_repo_path(config.merged)))
    family = detect_chat_family(tokenizer)
    record = records.read_training_record(gguf.parent, required=False)
    if record is None:
        log(
            f"no {records.TRAINING_RECORD_FILE} beside {gguf.name}: the Modelfile gets no SYSTEM prompt nor num_ctx; "
            "export from a merged folder that has one (`alfworld-sft merge` copies the adapter's)"
        )
    system = record.system() if record else None
    num_ctx = record.max_seq_len if record else None
    stops = modelfile_stop_tokens(tokenizer, record.end_of_turn if record else None)
    path = files.write_text(
        gguf.parent / MODELFILE, build_modelfile(gguf.name, family.template, stops, system, num_ctx)
    )
    command = ["ollama", "create", config.name, "-f", str(path)]
    result = {
        "modelfile": str(path),
        "ollama_create": shlex.join(command),
        "ollama_created": False,
        "family": family.name,
        "template_verified_with": family.verified_with,
        "ollama_render": OLLAMA_RENDER_NOTE,
        "stop": stops,
        "system": system,
        "num_ctx": num_ctx,
    }
    if config.create_ollama and shutil.which("ollama"):
        created = subprocess.run(command, check=False, capture_output=True, text=True)
        result["ollama_created"] = created.returncode == 0
        log(created.stdout + created.stderr)
    else:
        log(f"to serve the model, install Ollama (https://ollama.com) and run:\n  {result['ollama_create']}")
    return result


def write_modelfile_when_exported(
    export: Mapping[str, Any], merged: Path, name: str, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """`write_modelfile` for the GGUF an export record serves; when the export was skipped (no llama.cpp), say so
    instead (notebook 04 keeps going on a machine without the `export` extra)."""
    if not export.get("served"):
        return {"skipped": ["Modelfile: no GGUF was exported", *export.get("skipped", [])]}
    return write_modelfile(ModelfileConfig(gguf=Path(export["served"]), merged=merged, name=name), log)
