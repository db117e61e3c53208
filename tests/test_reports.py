"""Reports (`alfworld_sft.reports`): the tables, summaries, plots, comparisons and transcripts every stage shows,
on the files a real evaluation writes (the expert plays real games) and on rows shaped as each stage makes them.
Plots are checked as written PNG files of the figure's size."""

from __future__ import annotations

import copy
import json
import struct
from dataclasses import replace
from pathlib import Path

import pytest
from alfworld_sft import cli, failures, files, reports
from alfworld_sft.evaluation import EvalConfig, run_evaluation
from alfworld_sft.task_types import TASK_TYPES

AGENTS = ("zero_shot", "react")
GAMES = 2  # held-out games of the real run


def png_size(path: Path) -> tuple[int, int]:
    """A PNG file's (width, height) in pixels, read from its header; fails on anything that is not a whole PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    assert data.endswith(b"IEND\xaeB`\x82"), f"{path} is cut short"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def run(eval_games, tmp_path_factory) -> Path:
    """A real results file and its played games: the expert plays two held-out games with two agents, stopped at the
    shorter game's length (it wins that one and loses the other, on real games and on generated ones alike)."""
    folder = tmp_path_factory.mktemp("eval")
    config = EvalConfig(
        agents=AGENTS[:1],
        num_games=GAMES,
        max_steps=50,
        model="expert",
        split="eval_in_distribution",
        output=str(folder / "full.json"),
    )
    run_evaluation(config)
    lengths = sorted(record["steps"] for record in reports.played_games(config.output))
    assert lengths[0] < lengths[-1], f"the sample's games should differ in length: {lengths}"
    output = folder / "run.json"
    run_evaluation(replace(config, agents=AGENTS, max_steps=lengths[0], output=str(output)))
    return output


@pytest.fixture(scope="module")
def played(run) -> list[dict]:
    return reports.played_games(run)


# ---------------------------------------------------------------------------------------------------- tables


def test_format_table_writes_a_markdown_pipe_table():
    rows = [{"agent": "react", "won": 3, "note": None}, {"agent": "zero_shot", "won": 10}]
    assert reports.format_table(rows) == (
        "| agent     | won | note |\n|-----------|-----|------|\n| react     | 3   |      |\n| zero_shot | 10  |      |"
    )
    assert reports.format_table(rows, ["won"]) == "| won |\n|-----|\n| 3   |\n| 10  |"  # the columns asked for
    steps = [(1, "look"), (2, None)]
    assert reports.format_table(steps, ("step", "command")) == (
        "| step | command |\n|------|---------|\n| 1    | look    |\n| 2    |         |"
    )
    assert reports.format_table([]) == "(no rows)"
    with pytest.raises(ValueError, match="needs headers"):
        reports.format_table(steps)


# ---------------------------------------------------------------------------------------------- evaluation


def test_a_run_is_summarized_per_agent_from_its_games(played):
    game_ids = sorted({record["game_id"] for record in played})
    results = reports.summarize_run(played, AGENTS, game_ids, model="expert", max_steps=6)
    assert results["model"] == "expert" and results["max_steps"] == 6 and results["num_games"] == GAMES
    assert list(results["agents"]) == list(AGENTS)
    for agent in AGENTS:
        mine = [record for record in played if record["agent"] == agent]
        block = results["agents"][agent]
        won = sum(record["won"] for record in mine)
        assert 0 < won < GAMES, "the run should hold won and lost games"
        assert (block["games"], block["won"], block["success_rate"]) == (GAMES, won, round(won / GAMES, 4))
        assert block["avg_steps"] == round(sum(record["steps"] for record in mine) / GAMES, 2)
        assert block["invalid_replies"] == block["invalid_reply_rate"] == 0  # the expert plays admissible commands
        assert block["wall_time_s"] == round(sum(record["wall_s"] for record in mine), 1)
        assert sum(block["failures"].values()) == GAMES - won and list(block["failures"]) == list(failures.CAUSES)
        for task_type, entry in block["per_task_type"].items():
            of_type = [record for record in mine if record["task_type"] == task_type]
            assert (entry["games"], entry["won"]) == (len(of_type), sum(record["won"] for record in of_type))
        detail = {game["game_id"]: game for game in block["games_detail"]}
        assert sorted(detail) == game_ids
        for record in mine:
            game = detail[record["game_id"]]
            assert list(game) == [*reports.DETAIL_KEYS, "failure"] and game["actions"] == record["actions"]
            assert game["failure"] == (None if record["won"] else failures.classify_failure(record))
    # Only the selected games count, whatever else the records hold.
    one = reports.summarize_run(played, ["react"], game_ids[:1])
    assert list(one["agents"]) == ["react"] and one["agents"]["react"]["games"] == one["num_games"] == 1


def test_the_results_table_and_the_lost_games_by_cause(run):
    results = files.read_json(run)
    rows = reports.results_table(results)
    assert [row["agent"] for row in rows] == list(AGENTS)
    for row in rows:
        block = results["agents"][row["agent"]]
        assert not {"games_detail", "per_task_type", "failures"} & set(row)
        assert (row["games"], row["won"], row["success_rate"]) == (block["games"], block["won"], block["success_rate"])
        assert row["lost_by_cause"] == failures.format_failures(block["failures"]) != "-"
    lost = reports.failure_rows(results)
    for agent in AGENTS:
        block = results["agents"][agent]
        mine = [row for row in lost if row["agent"] == agent]
        assert mine[-1] == {
            "agent": agent,
            "task_type": "all",
            "lost": block["games"] - block["won"],
            **block["failures"],
        }
        # A row for each task type that lost a game, and they add up to the total.
        losing = [t for t, entry in block["per_task_type"].items() if entry["won"] < entry["games"]]
        assert [row["task_type"] for row in mine[:-1]] == losing
        assert sum(row["lost"] for row in mine[:-1]) == mine[-1]["lost"]
    assert reports.format_table(lost).startswith("| agent     | task_type ")


def test_the_loop_example_traces_the_lost_game_of_the_run(run, played):
    """Notebook 05's search loop, on a real run: the expert, stopped short, loses one of the two games."""
    example = reports.loop_example(files.read_json(run))
    lost = next(r for r in played if r["agent"] == "zero_shot" and not r["won"])
    assert example["heading"].startswith(f"zero_shot, {lost['game_id']}: {lost['task']}; lost (")
    assert [row["step"] for row in example["rows"]] == list(range(1, lost["steps"] + 1))
    assert [row["command"] for row in example["rows"]] == lost["actions"]
    assert "no memory line" in example["heading"] and {row["memory line read"] for row in example["rows"]} == {""}
    assert reports.loop_example(files.read_json(run), agent="reflexion") is None  # it did not play


def test_write_results_writes_the_json_with_its_metadata_and_a_plot(played, tmp_path):
    results = reports.summarize_run(played, AGENTS, sorted({r["game_id"] for r in played}), model="expert")
    path = reports.write_results(tmp_path / "eval" / "again.json", results, seed=5)
    saved = files.read_json(path)
    assert saved["meta"]["seed"] == 5 and {k: v for k, v in saved.items() if k != "meta"} == json.loads(
        json.dumps(results)
    )
    assert png_size(tmp_path / "eval" / "again.png") == (1430, 495)
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["again.json", "again.png"]  # no temporary file


# --------------------------------------------------------------------------------------------- comparisons


def test_compare_puts_real_result_files_side_by_side(run, capsys):
    """The same run twice (the labels say which is which), an agent only one of them played, the default plot path
    beside the last file, and the command line."""
    results = files.read_json(run)
    only_react = run.with_name("only_react.json")
    only_react.write_text(json.dumps({**results, "agents": {"react": results["agents"]["react"]}}))
    comparison = reports.compare_results(run, run, only_react)
    labels = comparison["labels"]
    assert labels == ["A:run", "B:run", "C:only_react"]
    assert comparison["plot"] == str(run.with_name("A_run_vs_B_run_vs_C_only_react.png"))
    assert png_size(Path(comparison["plot"]))[0] == 1430
    zero_shot, react = comparison["agents"]
    assert zero_shot["agent"] == "zero_shot" and zero_shot["success_C:only_react"] is None
    assert react["success_A:run"] == react["success_C:only_react"] == results["agents"]["react"]["success_rate"]
    assert react["games_B:run"] == GAMES and react["invalid_A:run"] == 0.0
    task_rows = [(row["agent"], row["task_type"]) for row in comparison["task_types"]]
    per_type = sorted(results["agents"]["react"]["per_task_type"])
    assert task_rows == [("zero_shot", t) for t in per_type] + [("react", t) for t in per_type]
    assert comparison["markdown"].startswith("| agent     | success_A:run | success_B:run | success_C:only_react |")

    filtered = reports.compare_results(run, only_react, agents=["react"], plot=run.with_name("react.png"))
    assert [row["agent"] for row in filtered["agents"]] == ["react"] and filtered["labels"] == ["run", "only_react"]

    assert cli.main(["compare", str(run), str(only_react), "--plot", str(run.with_name("cli.png"))]) == 0
    out = capsys.readouterr().out
    assert (
        out.startswith("| agent     | success_run | success_only_react |")
        and f"plot: {run.with_name('cli.png')}" in out
    )
    assert png_size(run.with_name("cli.png"))[0] == 1430


def test_compare_names_a_missing_or_foreign_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="alfworld-sft evaluate"):
        reports.compare_results(tmp_path / "a.json", tmp_path / "b.json")
    with pytest.raises(ValueError, match="two or more"):
        reports.compare_results(tmp_path / "a.json")
    (tmp_path / "list.json").write_text('{"agents": ["zero_shot"]}')
    with pytest.raises(files.CorruptFileError, match="list.json is not an evaluation results file"):
        reports.compare_results(tmp_path / "list.json", tmp_path / "list.json")
    (tmp_path / "other.json").write_text('{"records": 4}')
    with pytest.raises(files.CorruptFileError, match="other.json"):
        reports.compare_results(tmp_path / "other.json", tmp_path / "other.json")


def test_compare_puts_three_runs_side_by_side(tmp_path):
    """The Phase-3 table: a column per run; an agent only one run played gets no per-task-type rows."""

    def run(model: str, **won: int) -> dict:
        blocks = {
            agent: {
                "games": 4,
                "won": n,
                "success_rate": n / 4,
                "avg_steps": 9.0,
                "invalid_reply_rate": 0.0,
                "per_task_type": {"pick_two_obj_and_place": {"games": 4, "won": n, "success_rate": n / 4}},
            }
            for agent, n in won.items()
        }
        return {"model": model, "agents": blocks}

    runs = [run("m", zero_shot=0, react=1), run("m+sft", zero_shot=3), run("m+sft", zero_shot=4, reflexion=2)]
    comparison = reports.compare_results(*runs, plot=tmp_path / "phase3.png")
    assert comparison["labels"] == ["A:m", "B:m+sft", "C:m+sft"]
    zero_shot, react, reflexion = comparison["agents"]
    assert [zero_shot[f"success_{label}"] for label in comparison["labels"]] == [0.0, 0.75, 1.0]
    assert react["success_A:m"] == 0.25 and react["success_B:m+sft"] is None and reflexion["games_C:m+sft"] == 4
    assert [(row["agent"], row["won_B:m+sft"]) for row in comparison["task_types"]] == [("zero_shot", "3/4")]
    assert png_size(tmp_path / "phase3.png") == (1430, 495)


# ---------------------------------------------------------------------------------------------------- plots


def test_the_collection_training_and_dagger_plots_are_written(tmp_path):
    per_task_type = {
        task_type: {"attempted": 2, "won": index % 3, "won_rate": (index % 3) / 2, "mean_steps_won": 6.5 + index}
        for index, task_type in enumerate(TASK_TYPES)
    }
    path = reports.plot_expert_summary(per_task_type, tmp_path / "collect" / "expert.png", "train split", 50)
    assert path == tmp_path / "collect" / "expert.png" and png_size(path) == (1320, 462)

    history = [{"step": 0, "eval_loss": 2.5}, {"step": 1, "loss": 2.4}, {"step": 2, "loss": 1.9, "eval_loss": 2.0}]
    assert png_size(reports.plot_loss_curve(history, tmp_path / "loss.png")) == (770, 385)

    rounds = [
        {"round": 0, "eval_success": 0.25},
        {"round": 1, "rollouts_won": 0.33, "eval_success": 0.5, "expert_records": 4, "new_records": 2},
        {"round": 2, "rollouts_won": 0.66, "eval_success": 0.75, "expert_records": 4, "new_records": 5},
    ]
    assert png_size(reports.plot_rounds(rounds, tmp_path / "rounds.png", title="DAgger")) == (1210, 440)
    methods = {"dagger": rounds, "self-imitation": [{**row, "eval_success": 0.25} for row in rounds]}
    assert png_size(reports.plot_methods(methods, tmp_path / "methods.png")) == (770, 440)
    with pytest.raises(ValueError, match="no round of these runs was evaluated.*--eval-split"):
        reports.plot_methods({"dagger": [{"round": 1, "rollouts_won": 0.5}]}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
    assert not list(tmp_path.rglob(".*"))  # every figure saved whole, no temporary file left


def test_mean_train_loss_weights_each_logged_loss_by_the_steps_it_covers():
    history = [
        {"step": 0, "eval_loss": 9.0},
        {"step": 1, "loss": 4.0},
        {"step": 4, "loss": 2.0},
        {"step": 4, "eval_loss": 1.5},
        {"step": 5, "loss": 1.0},
        {"step": 5, "train_loss": 0.1},
    ]
    assert reports.mean_train_loss(history) == pytest.approx((4.0 + 3 * 2.0 + 1.0) / 5)
    assert reports.mean_train_loss([{"step": 0, "eval_loss": 1.0}]) is None


# ----------------------------------------------------------------------------------------------- transcripts


def test_the_played_games_behind_a_results_file(run, played):
    assert len(played) == GAMES * len(AGENTS) and {(r["agent"], r["game_id"]) for r in played} == {
        (agent, game_id) for agent in AGENTS for game_id in {r["game_id"] for r in played}
    }
    shown = reports.example_transcripts(run)
    assert list(shown) == list(AGENTS)
    for agent, text in shown.items():
        # A game the agent won, when it won any.
        won = {
            f"[{agent}] {r['game_id']}  won=True steps={r['steps']}": r
            for r in played
            if r["agent"] == agent and r["won"]
        }
        header, task = text.splitlines()[:2]
        assert header in won and task == f"Task: {won[header]['task']}"
        assert text == reports.transcript_text(won[header])


def test_a_transcript_shows_each_command_and_what_the_engine_answered(played):
    record = next(r for r in played if r["won"])
    turns = record["transcript"][0]["turns"]
    text = reports.transcript_text(record)
    lines = text.splitlines()
    assert lines[:2] == [
        f"[{record['agent']}] {record['game_id']}  won=True steps={record['steps']}",
        f"Task: {record['task']}",
    ]
    assert [line[2:] for line in lines if line.startswith("> ")] == [turn["command"] for turn in turns]
    assert f"  {turns[-1]['observation'][:200]}" in lines
    short = reports.transcript_text(record, max_turns=2)
    assert f"  ... {len(turns) - 2} more steps" in short and short.count("\n> ") == 2

    # A reply that was not the command it became, a second trial and the reflection between them.
    retried = copy.deepcopy(record)
    first = retried["transcript"][0]
    first["turns"][0] = {**first["turns"][0], "reply": "Action: " + first["turns"][0]["command"], "how": "normalized"}
    retried["transcript"] = [first, {**first, "plan": "1. look around"}]
    retried["reflections"] = ["I should have looked first."]
    text = reports.transcript_text(retried)
    assert f"> 'Action: {turns[0]['command']}' -> {turns[0]['command']} (normalized)" in text
    assert "--- trial 1" in text and "--- trial 2\nPlan:\n1. look around" in text
    assert "Reflection: I should have looked first." in text


def test_the_same_game_played_twice_side_by_side(played):
    game_id = next(r["game_id"] for r in played if not r["won"])
    left, right = (next(r for r in played if r["agent"] == agent and r["game_id"] == game_id) for agent in AGENTS)
    text = reports.side_by_side(left, right, ["free", "constrained"])
    lines = text.splitlines()
    assert lines[:3] == [game_id, f"Task: {left['task']}", lines[2]] and lines[2].startswith("| step | free ")
    commands = [turn["command"] for turn in left["transcript"][0]["turns"]]
    assert len(lines) == 3 + 1 + len(commands) + 1  # header, separator, a row per step, the outcome
    assert lines[4].startswith(f"| 1    | {commands[0]} (exact) ") and lines[-1].startswith("| won  | False")
    other = next(r for r in played if r["game_id"] != game_id)
    with pytest.raises(ValueError, match="two different games"):
        reports.side_by_side(left, other, ["a", "b"])


def test_notebook_05s_summary_names_each_runs_step_cap_and_games(run):
    results = files.read_json(run)
    base = {**results, "max_steps": 20, "num_games": 12}
    served = {**results, "served": "llama-server"}
    summary = reports.summarize_evaluations(base, {"free": results, "constrained": None}, served)
    assert summary["base"] == summary["finetuned"] == reports.results_table(results)
    assert summary["finetuned_constrained"] is None and summary["served"] == "llama-server"
    assert summary["split"] == results["split"]
    assert summary["max_steps"] == {"base": 20, "free": results["max_steps"], "served": results["max_steps"]}
    assert summary["num_games"] == {"base": 12, "free": results["num_games"]}
    alone = reports.summarize_evaluations(base, {"free": None, "constrained": None}, None)
    assert alone["finetuned"] is alone["served_gguf"] is None and list(alone["max_steps"]) == ["base"]
