"""A DAgger run's folder read back: its files, the table of its rounds, runs side by side (`dagger-compare`).

`alfworld-sft dagger --output FOLDER` (`dagger.run_dagger`) writes a folder per round, FOLDER/round_N/: `ROLLOUTS`
(the round's finished games, a game log), `LABELLED` (its new trajectory records), `TRAIN_DATA`, `SUMMARY` (written
when the round's adapter is trained: the round is done) and `EVAL`; FOLDER/round_0/`EVAL` is the starting adapter's
evaluation. This module names those files and reads them back, from a finished run or one cut short:

* `round_rows`: one row per round from the rounds' summaries (round 0: the starting adapter, when evaluated);
* `read_run_rows`: the method and the rows of the run in a folder; rounds of another run are refused, not mixed;
* `compare_runs`: several runs' rows side by side and one plot of success per round (`reports.plot_methods`);
* `pick_example`: a round's label record with the longest history and its rollout (notebook 06).

    alfworld-sft dagger-compare results/dagger results/self_imitation results/both   # a table each, one plot

    from alfworld_sft import dagger_runs
    method, rows = dagger_runs.read_run_rows("results/dagger")   # rows: as `alfworld-sft dagger` prints them
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alfworld_sft import files, paths, reports

ROLLOUTS = "rollouts.jsonl"  # a round's finished games, one line each, appended as they finish
LABELLED = "labelled.jsonl"  # the round's new trajectory records
TRAIN_DATA = "train.jsonl"  # the round's training data: expert records and every round's labelled records so far
SUMMARY = "summary.json"  # written when the round's adapter is trained: the round is done
EVAL = "eval.json"  # the evaluation of the round's adapter


def round_rows(summaries: Sequence[Mapping[str, Any]], start_eval: Mapping[str, Any] | None = None) -> list[dict]:
    """One row per round (round 0: the starting adapter, when it was evaluated): the rollouts (played by the
    previous round's adapter), the labels, the data and the round's adapter's evaluation."""
    rows = []
    for summary in summaries:
        labels, data = summary["labels"], summary["data"]
        rows.append(
            {
                "round": summary["round"],
                "games": summary["played"],
                "rollouts_won": summary["rollouts_win_rate"],
                **{name: labels[name] for name in ("states", "labelled", "disagreed", "guesses")},
                "records_added": summary["records_added"],
                "expert_records": data["expert_records"],
                "new_records": data["new_records"],
                "eval_success": summary["eval"]["success_rate"] if summary["eval"] else None,
            }
        )
    if start_eval is not None:
        columns = rows[0] if rows else {"round": 0}
        rows.insert(0, {**dict.fromkeys(columns), "round": 0, "eval_success": start_eval["success_rate"]})
    return rows


# What `round_rows` reads of a round's summary, and of its key.
ROW_KEYS = ("key", "round", "played", "rollouts_win_rate", "labels", "records_added", "data", "eval")
ROW_KEY_FIELDS = ("method", "agent", "start_weights")


def read_run_rows(folder: str | os.PathLike[str]) -> tuple[str, list[dict[str, Any]]]:
    """The method and the per-round rows (`round_rows`) of the run in `folder`, a run cut short included: every
    round whose summary was written, and round 0 when the starting adapter's evaluation finished. Rounds of
    another run (their settings differ) are refused, not mixed."""
    folder = paths.resolve_repo_path(folder)
    numbered = {}
    for path in folder.glob(f"round_*/{SUMMARY}"):
        match = re.fullmatch(r"round_(\d+)", path.parent.name)
        if match and int(match.group(1)) > 0:
            numbered[int(match.group(1))] = path
    if not numbered:
        raise FileNotFoundError(
            f"{folder} holds no finished round (round_N/{SUMMARY}): name the --output folder of an "
            "`alfworld-sft dagger` run whose first round finished"
        )
    remedy = "delete the round's folder and rerun the dagger command to redo it"
    summaries = []
    for number in sorted(numbered):
        summary = files.read_json_object(numbered[number], remedy, required_keys=ROW_KEYS)
        missing = [name for name in ROW_KEY_FIELDS if name not in summary["key"]]
        if missing or summary["round"] != number:
            raise files.CorruptFileError(
                f"{numbered[number]} is not round {number}'s summary (its key lacks {', '.join(missing) or 'nothing'}, "
                f"its round is {summary['round']}): {remedy}"
            )
        first = summaries[0]["key"] if summaries else summary["key"]
        differs = sorted(
            k for k in set(first) | set(summary["key"]) if k != "round" and first.get(k) != summary["key"].get(k)
        )
        if differs:
            raise ValueError(
                f"{numbered[number]} belongs to another run than round {summaries[0]['round']} of {folder} (they "
                f"differ in {', '.join(differs)}): keep each run in its own --output folder"
            )
        summaries.append(summary)
    key = summaries[0]["key"]
    start = folder / "round_0" / EVAL
    start_eval = None
    if start.exists():
        evaluated = files.read_json_object(
            start, "delete it and rerun the dagger command", required_keys=("agents", "run")
        )
        if evaluated["run"].get("weights") != key["start_weights"]:
            raise ValueError(
                f"{start} evaluated other weights ({evaluated['run'].get('weights')}) than the run started from "
                f"({key['start_weights']}): delete it and rerun the dagger command to evaluate the starting adapter"
            )
        start_eval = evaluated["agents"].get(key["agent"]) if isinstance(evaluated["agents"], dict) else None
        if start_eval is None:
            raise files.CorruptFileError(
                f"{start} holds no results of {key['agent']}: delete it and rerun the dagger command"
            )
    return key["method"], round_rows(summaries, start_eval)


def compare_runs(folders: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str]) -> tuple[dict, Path]:
    """Rounds of several runs (DAgger, self-imitation, both; or one method with other settings) side by side: the
    rows of each, named by its folder (with the folder above it where two names collide), and one plot of success
    per round (`reports.plot_methods`)."""
    resolved = [paths.resolve_repo_path(folder) for folder in folders]
    names = [folder.name for folder in resolved]
    names = [f"{f.parent.name}/{f.name}" if names.count(f.name) > 1 else f.name for f in resolved]
    if len(set(names)) < len(names):
        raise ValueError(f"the runs {names} cannot be told apart by their folders: name each one once")
    runs = {}
    for name, folder in zip(names, resolved):
        method, rows = read_run_rows(folder)
        runs[name] = {"method": method, "rows": rows}
    plot = reports.plot_methods({name: run["rows"] for name, run in runs.items()}, paths.resolve_repo_path(output))
    return runs, plot


def pick_example(output: str | os.PathLike[str], number: int = 1) -> dict[str, Any]:
    """Round `number`'s label record with the longest history (the model's own turns before the expert's label) in
    the run folder `output`, and the rollout it comes from: {"rollout": ..., "record": ...}."""
    folder = paths.resolve_repo_path(output) / f"round_{number}"
    labelled = list(files.read_jsonl(folder / LABELLED))
    if not labelled:
        raise ValueError(f"{folder / LABELLED} holds no records: run the round first")
    labels = [record for record in labelled if record["dagger_kind"] == "label"] or labelled
    record = max(labels, key=lambda r: (len(r["conversations"]), r["game_id"]))
    rollout = next(line for line in files.read_jsonl(folder / ROLLOUTS) if line["game_id"] == record["game_id"])
    return {"rollout": rollout, "record": record}


# -------------------------------------------------------------------------------------------------------- CLI


def configure_parser(subparsers: argparse._SubParsersAction) -> None:
    compare = subparsers.add_parser(
        "dagger-compare", help="06: rounds of several dagger runs side by side (a table each, one plot)"
    )
    # by hand: no config dataclass, the arguments of `compare_runs`
    compare.add_argument("folders", nargs="+", help="the --output folders of `alfworld-sft dagger` runs")
    compare.add_argument("--output", default="results/dagger_compare.png", help="the plot of success per round")
    compare.set_defaults(func=_compare_runs)


def _compare_runs(args: argparse.Namespace) -> int:
    files.check_output(paths.resolve_repo_path(args.output), "--output")
    runs, plot = compare_runs(args.folders, args.output)
    for name, run in runs.items():
        print(f"{name} ({run['method']})\n{reports.format_table(run['rows'])}\n")
    print(f"plot: {plot}")
    return 0
