"""A DAgger run's folder read back: the round table (round 0: the starting adapter), runs cut short compared round
by round with `alfworld-sft dagger-compare`, and a run the table cannot read named with what to do."""

from __future__ import annotations

import json

import pytest
from alfworld_sft import cli, dagger_runs, labelling, reports


def test_the_round_table_starts_with_the_starting_adapter(tmp_path):
    summary = {
        "round": 1,
        "played": 3,
        "rollouts_win_rate": 0.0,
        "labels": dict.fromkeys(labelling.LABEL_COUNTS, 2),
        "records_added": 2,
        "data": {"expert_records": 4, "new_records": 2},
        "eval": {"success_rate": 0.5},
    }
    rows = dagger_runs.round_rows([summary], {"success_rate": 0.25})
    assert rows[0] == {**dict.fromkeys(rows[1]), "round": 0, "eval_success": 0.25}
    assert "| round | games | rollouts_won | states |" in reports.format_table(rows)
    assert reports.plot_rounds(rows, tmp_path / "rounds.png").stat().st_size > 0


def write_round(folder, number: int, method: str, success: float, **changes) -> None:
    """A round's summary as `make_round` writes it, with only what the round table reads."""
    summary = {
        "key": {"method": method, "agent": "zero_shot", "start_weights": "w0", "round": number},
        "round": number,
        "played": 3,
        "rollouts_win_rate": 1.0,
        "labels": dict.fromkeys(labelling.LABEL_COUNTS, 1),
        "records_added": 1,
        "data": {"expert_records": 4, "new_records": number},
        "eval": {"success_rate": success},
        **changes,
    }
    (folder / f"round_{number}").mkdir(parents=True)
    (folder / f"round_{number}" / dagger_runs.SUMMARY).write_text(json.dumps(summary))


def write_start(folder, weights: str = "w0") -> None:
    """Round 0's evaluation: the starting adapter's results, with the weights it played."""
    (folder / "round_0").mkdir(parents=True)
    evaluated = {"run": {"weights": weights}, "agents": {"zero_shot": {"success_rate": 0.25}}}
    (folder / "round_0" / dagger_runs.EVAL).write_text(json.dumps(evaluated))


def test_runs_cut_short_compare_round_by_round(tmp_path, capsys):
    for number, success in ((10, 0.75), (2, 0.5)):  # rows follow round numbers, not the folders' names
        write_round(tmp_path / "self_imitation", number, "self_imitation", success)
    (tmp_path / "self_imitation" / "round_old").mkdir()  # a folder that is no round is not read
    (tmp_path / "self_imitation" / "round_old" / dagger_runs.SUMMARY).write_text("{}")
    write_round(tmp_path / "both", 1, "both", 0.75)
    write_start(tmp_path / "both")
    method, rows = dagger_runs.read_run_rows(tmp_path / "self_imitation")
    assert method == "self_imitation" and [(r["round"], r["eval_success"]) for r in rows] == [(2, 0.5), (10, 0.75)]
    plot = tmp_path / "methods.png"
    folders = [str(tmp_path / "self_imitation"), str(tmp_path / "both")]
    assert cli.main(["dagger-compare", *folders, "--output", str(plot)]) == 0
    printed = capsys.readouterr().out
    assert "self_imitation (self_imitation)" in printed and "both (both)" in printed and plot.stat().st_size > 0
    assert [r["eval_success"] for r in dagger_runs.read_run_rows(tmp_path / "both")[1]] == [0.25, 0.75]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: (folder / "round_1").mkdir(parents=True), "holds no finished round"),
        (
            lambda folder: write_round(folder, 1, "dagger", 0.5, played=None) or write_round(folder, 2, "both", 0.5),
            "differ in method",
        ),
        (lambda folder: write_round(folder, 1, "dagger", 0.5, key={"method": "dagger"}), "lacks agent, start_weights"),
        (lambda folder: write_round(folder, 1, "dagger", 0.5) or write_start(folder, "w1"), "evaluated other weights"),
    ],
)
def test_a_run_the_table_cannot_read_is_named_with_what_to_do(make, message, tmp_path, capsys):
    make(tmp_path / "dagger")
    assert cli.main(["dagger-compare", str(tmp_path / "dagger"), "--output", str(tmp_path / "m.png")]) == 2
    assert message in capsys.readouterr().err


def test_a_summary_without_a_field_of_the_table_is_named(tmp_path, capsys):
    write_round(tmp_path / "dagger", 1, "dagger", 0.5)
    summary = tmp_path / "dagger" / "round_1" / dagger_runs.SUMMARY
    summary.write_text(json.dumps({k: v for k, v in json.loads(summary.read_text()).items() if k != "played"}))
    assert cli.main(["dagger-compare", str(tmp_path / "dagger"), "--output", str(tmp_path / "m.png")]) == 2
    assert f"{summary}" in capsys.readouterr().err
