"""Shared fixtures.

* The games tests play: real ALFWorld games when $ALFWORLD_DATA is set (CI unpacks them), else games the course
  generates itself (`generate.ensure_games`, made once into data/generated/), so that a fresh machine runs every
  test that needs games, as a newcomer's `make test` does.
* Stage 04 (test_merge, test_gguf): one real LoRA adapter of the default model and its merge, made once per test
  session; test_served plays the merge exported as a Q4_K_M GGUF (`exported_gguf`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from alfworld_sft import games, generate, merge, models, prompts, records
from partials import leave_killed_partial

# Games per split the suite uses: two of every task type.
SUITE_GAMES = 12


@pytest.fixture(scope="session")
def train_games() -> list[Path]:
    """A seeded, task-balanced sample of train games (real or generated)."""
    return generate.ensure_games("train", SUITE_GAMES, seed=0)


@pytest.fixture(scope="session")
def eval_games() -> list[Path]:
    """A seeded, task-balanced sample of eval_in_distribution games (real or generated), none of them a train game."""
    return generate.ensure_games("eval_in_distribution", SUITE_GAMES, seed=0)


def games_of_type(gamefiles: list[Path], *task_types: str) -> list[Path]:
    return [path for path in gamefiles if games.read_task_type(path) in task_types]


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def train_tiny_adapter(out: Path, steps: int = 3) -> Path:
    """A real LoRA adapter: r=8 on the seven projections, a few AdamW steps on one short game chat, so the
    B matrices are no longer zero; saved as training saves it (adapter, tokenizer, training record)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    tokenizer = models.load_tokenizer(models.DEFAULT_MODEL)
    model = models.load_model(models.DEFAULT_MODEL, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
    messages = prompts.build_messages(
        prompts.SYSTEM_PROMPT,
        [
            {"role": "user", "content": "Task: put a clean ladle in countertop.\nObservation: you see a sinkbasin 1."},
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
    record = records.TrainingRecord(
        base_model=models.DEFAULT_MODEL,
        prompt_format=prompts.DEFAULT_PROMPT_FORMAT,  # as the oracle fixtures collect: DAgger checks they agree
        max_seq_len=1024,
        end_of_turn=models.end_of_turn_marker(tokenizer),
    )
    records.write_training_record(out, record, seed=0)
    return out


@pytest.fixture(scope="session")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_adapter(tmp_path_factory.mktemp("adapter") / "sft_adapter")


@pytest.fixture(scope="session")
def merged(adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The merged folder and its merge record; beside it, a merge killed earlier had left its partial folder."""
    output = tmp_path_factory.mktemp("merge") / "sft_merged"
    leave_killed_partial(output)
    record = merge.merge_adapter(merge.MergeConfig(adapter=adapter, output=output, verify_prompts=2))
    return output, record


@pytest.fixture(scope="session")
def exported_gguf(merged: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The merged model exported as notebook 04 does (f16, then Q4_K_M, the training record beside them) without the
    check against the merged model (test_gguf checks exports): the Q4_K_M file."""
    from alfworld_sft import gguf

    missing = gguf.llama_cpp_missing()
    if missing is not None:
        pytest.skip(missing)
    output = tmp_path_factory.mktemp("export") / "gguf"
    return Path(gguf.export_gguf(gguf.ExportConfig(merged=merged[0], output=output, verify_prompts=0))["served"])
