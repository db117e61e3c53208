"""The headless runner: notebooks run in order with papermill, a failure names its notebook and cell, and the
whole course runs for real in small mode."""

import json
import os
import subprocess

import nbformat
import pytest
from alfworld_sft import course
from alfworld_sft.course import CourseConfig, list_notebooks, run_course
from alfworld_sft.paths import NOTEBOOKS_DIR, REPO_ROOT


def _notebook(path, *sources, parameters="small = False  # mode\nseed = 1  # seed"):
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    notebook.cells = [params] + [nbformat.v4.new_code_cell(source) for source in sources]
    nbformat.write(notebook, path)


def test_notebooks_are_listed_in_course_order():
    names = [p.name for p in list_notebooks()]
    assert names == sorted(names) and names[0].startswith("00_")
    with pytest.raises(ValueError, match="no notebook numbered 99"):
        list_notebooks(NOTEBOOKS_DIR, ("99",))


@pytest.mark.slow
def test_runner_passes_parameters_and_stops_at_the_failing_cell(tmp_path, monkeypatch):
    monkeypatch.setattr("alfworld_sft.course.EXECUTED_DIR", tmp_path / "executed")
    monkeypatch.setattr("alfworld_sft.course.run_dir", lambda small: tmp_path)
    _notebook(tmp_path / "00_first.ipynb", "assert small is True and seed == 7", "open('ran-00', 'w').close()")
    _notebook(tmp_path / "01_broken.ipynb", "x = 1", "raise ValueError('the data path is wrong')")
    _notebook(tmp_path / "02_never.ipynb", "open('ran-02', 'w').close()")

    result = run_course(CourseConfig(mode="small", seed=7, notebooks_dir=tmp_path))

    assert [r.status for r in result.runs] == ["ok", "failed", "not run"]
    assert (tmp_path / "ran-00").exists() and not (tmp_path / "ran-02").exists()
    assert "ValueError: the data path is wrong" in result.runs[1].error and "cell" in result.runs[1].error
    assert (tmp_path / "executed" / "small" / "01_broken.ipynb").exists()
    summary = json.loads((tmp_path / "course.json").read_text())
    assert summary["ok"] is False and summary["meta"]["seed"] == 7


@pytest.mark.slow
def test_the_split_reaches_only_the_notebooks_that_take_it(tmp_path, monkeypatch):
    monkeypatch.setattr("alfworld_sft.course.EXECUTED_DIR", tmp_path / "executed")
    monkeypatch.setattr("alfworld_sft.course.run_dir", lambda small: tmp_path)
    _notebook(tmp_path / "00_plain.ipynb", "assert 'split' not in globals()")
    with_split = 'small = False  # mode\nseed = 1  # seed\nsplit = ""  # games; empty: the default'
    _notebook(tmp_path / "05_eval.ipynb", "assert split == 'eval_in_distribution'", parameters=with_split)

    result = run_course(CourseConfig(mode="full", split="eval_in_distribution", notebooks_dir=tmp_path))

    assert [r.status for r in result.runs] == ["ok", "ok"], [r.error for r in result.runs]
    assert json.loads((tmp_path / "course.json").read_text())["split"] == "eval_in_distribution"
    with pytest.raises(ValueError, match="--split must be one of train, eval_in_distribution"):
        CourseConfig(split="valid_unseen")


@pytest.mark.slow
def test_the_whole_course_runs_headless_on_a_fresh_machine(tmp_path):
    """`make course` as a newcomer runs it (README, "Quickstart"): no $ALFWORLD_DATA, so the course generates every
    split it plays from nothing (a fresh data folder), then the real engine, the real model, every notebook, into
    a scratch results folder. CI has the real games beside its checkout: this test takes them away."""
    env = {key: value for key, value in os.environ.items() if key != "ALFWORLD_DATA"}
    env.update(ALFWORLD_SFT_RESULTS_DIR=str(tmp_path / "results"), ALFWORLD_SFT_DATA_DIR=str(tmp_path / "data"))
    result = subprocess.run(
        ["alfworld-sft", "course", "--mode", "small"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads((tmp_path / "results" / "small" / "course.json").read_text())
    assert summary["ok"] and len(summary["runs"]) == len(list_notebooks())
    summary_md = (tmp_path / "results" / "small" / "summary.md").read_text()
    assert "| 03_training" in summary_md and "loss_curve.png" in summary_md
    environment = json.loads((tmp_path / "results" / "environment.json").read_text())
    assert environment["ready"] and environment["banner"]["cpu_cores"] == os.cpu_count()
    generated = tmp_path / "data" / "generated" / "json_2.1.1"
    assert {path.name for path in generated.iterdir()} >= {"train", "valid_seen"}  # 05's split too
    collection = json.loads((tmp_path / "results" / "small" / "01_oracle_collection.json").read_text())
    assert collection["data_root"] == str(tmp_path / "data" / "generated")


def test_readme_results_block_is_what_the_reference_run_renders():
    """README's results come from the published run's summaries by `alfworld-sft course --publish`, never by hand."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    start, end = course.README_MARKERS
    assert readme.count(start) == readme.count(end) == 1
    assert readme.split(start)[1].split(end)[0].strip() == course.render_results(course.REFERENCE_RUN).strip()


def test_publishing_copies_a_finished_run_and_writes_the_readme_block(tmp_path, monkeypatch):
    run, executed = tmp_path / "results", tmp_path / "executed"
    (executed / "full").mkdir(parents=True)
    run.mkdir()
    monkeypatch.setattr(course, "run_dir", lambda small: run)
    monkeypatch.setattr(course, "EXECUTED_DIR", executed)
    monkeypatch.setattr("alfworld_sft.environment.ENVIRONMENT_JSON", run / "environment.json")
    (executed / "full" / "05_evaluation.ipynb").write_text("{}")
    (run / "environment.json").write_text(json.dumps({"banner": {"gpu": "NVIDIA H200 x1", "cpu_cores": 16}}))
    (run / "summary.md").write_text("# Course summary\n")
    row = {"agent": "zero_shot", "games": 140, "won": 134, "success_rate": 0.957}
    (run / "05_evaluation.json").write_text(
        json.dumps({"base": [{**row, "won": 0}], "finetuned": None, "finetuned_constrained": [row],
                    "split": "eval_in_distribution", "max_steps": {"base": 20, "constrained": 50}})
    )  # fmt: skip
    runs = [{"notebook": "05_evaluation.ipynb", "status": "failed", "seconds": 30.4}]
    (run / "course.json").write_text(
        json.dumps({"mode": "full", "split": "eval_in_distribution", "ok": False, "runs": runs})
    )
    readme = tmp_path / "README.md"
    readme.write_text(f"# Course\n{course.README_MARKERS[0]}\nold\n{course.README_MARKERS[1]}\nafter\n")
    with pytest.raises(ValueError, match="did not finish"):
        course.publish_run("full", tmp_path / "reference", readme)

    runs[0]["status"] = "ok"
    (run / "course.json").write_text(
        json.dumps({"mode": "full", "split": "eval_in_distribution", "ok": True, "runs": runs})
    )
    target = course.publish_run("full", tmp_path / "reference", readme)

    assert sorted(p.name for p in target.iterdir()) == [
        "05_evaluation.ipynb", "05_evaluation.json", "course.json", "environment.json", "summary.md",
    ]  # fmt: skip
    block = readme.read_text().split(course.README_MARKERS[0])[1].split(course.README_MARKERS[1])[0]
    assert "`alfworld-sft course --mode full --split eval_in_distribution`" in block and "NVIDIA H200 x1, 16" in block
    assert "| 05_evaluation.ipynb | ok     | 30      |" in block
    assert "| zero_shot | 0/140      | -                | 134/140              |" in block
    assert "(steps a game: base 20, constrained 50)" in block
    assert readme.read_text().endswith("after\n") and block.strip() == course.render_results(target).strip()


def test_a_run_names_the_commit_it_was_given_where_its_copy_has_another_history(monkeypatch):
    """On the lent GPU machine the copy's git history is the session's first commit, not the code's."""
    from alfworld_sft import results

    monkeypatch.delenv("ALFWORLD_SFT_GIT_COMMIT", raising=False)
    own = results.git_commit()
    monkeypatch.setenv("ALFWORLD_SFT_GIT_COMMIT", "abc1234")
    assert results.run_metadata(0)["git_commit"] == "abc1234" != own
