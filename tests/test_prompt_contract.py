"""The system prompt is part of the training contract: the training record keeps the text the model was trained
under, every player uses that text (not today's `prompts.py`), and a game log's run key holds its hash, so that a
changed prompt is another run and never mixes with the games of the first."""

import dataclasses
import json
import shutil

import pytest
from alfworld_sft import evaluation, files, prompts, records
from alfworld_sft.agents import build_agent
from alfworld_sft.backends import PromptCodec, codec_spec
from alfworld_sft.evaluation import EvalConfig, run_evaluation

EDITED = "You are a careful household robot in ALFWorld. Reply with one command only."


def with_system_prompt(adapter, folder, text):
    """A copy of `adapter` whose training record says it was trained under `text`."""
    if not folder.exists():
        shutil.copytree(adapter, folder)
    record = records.read_training_record(folder)
    records.write_training_record(folder, dataclasses.replace(record, system_prompt=text), seed=0)
    return folder


def test_the_record_keeps_the_prompt_and_a_record_without_one_falls_back_to_its_format(tmp_path):
    record = records.TrainingRecord("m", prompts.PromptFormat(), 512, system_prompt=EDITED)
    records.write_training_record(tmp_path, record, seed=0)
    assert records.read_training_record(tmp_path).system() == EDITED
    raw = files.read_json(tmp_path / records.TRAINING_RECORD_FILE)
    del raw["system_prompt"]  # a record written before the field existed
    (tmp_path / records.TRAINING_RECORD_FILE).write_text(json.dumps(raw))
    older = records.read_training_record(tmp_path)
    assert older.system_prompt is None and older.system() == prompts.SYSTEM_PROMPT
    assert older.system_sha256() != record.system_sha256()


@pytest.mark.slow
def test_a_model_plays_under_its_own_prompt_and_an_edited_prompt_is_another_run(adapter, tmp_path):
    tuned = with_system_prompt(adapter, tmp_path / "adapter", EDITED)
    agent = build_agent("zero_shot", PromptCodec(codec_spec("", tuned)))
    assert agent.system_prompt == EDITED
    gamefile = evaluation.select_games("eval_in_distribution", 1, seed=0)[0]
    assert EDITED in evaluation.preview_prompt("zero_shot", "", tuned, gamefile, system_only=True)

    config = EvalConfig(
        agents=("zero_shot",),
        num_games=1,
        max_steps=2,
        model="",
        adapter=str(tuned),
        split="eval_in_distribution",
        output=str(tmp_path / "run.json"),
        device="cpu",
        threads=2,
    )
    first = run_evaluation(config)
    log = tmp_path / "run.ckpt.jsonl"
    [line] = files.read_jsonl(log)
    assert line["run"]["prompt"]["system_sha256"] == records.read_training_record(tuned).system_sha256()
    assert first["agents"]["zero_shot"]["games"] == 1

    with_system_prompt(adapter, tuned, prompts.SYSTEM_PROMPT)  # the same weights, trained (it says) under another
    with pytest.warns(UserWarning):
        run_evaluation(config)
    lines = list(files.read_jsonl(log))
    assert len(lines) == 1 and lines[0]["run"]["prompt"]["system_sha256"] != line["run"]["prompt"]["system_sha256"]
