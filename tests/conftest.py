"""Fixtures shared by the stage-04 tests (test_merge, test_gguf): one real LoRA adapter of the default model and
its merge, made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
from alfworld_sft import merge, models, prompts, records
from partials import leave_killed_partial

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
        prompt_format=prompts.PromptFormat(show_admissible_commands=False),
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
