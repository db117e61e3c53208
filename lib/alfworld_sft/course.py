"""The headless runner: execute the numbered notebooks in order with papermill, like a learner would.

    alfworld-sft course                  # small mode: every notebook for real, in minutes (CI, first try)
    alfworld-sft course --mode full      # full size on one GPU, in one sitting (each notebook says what it plays)
    alfworld-sft course --only 00 01     # a subset, by number
    alfworld-sft course --mode full --split eval_in_distribution   # without the 134 out-of-distribution games
    alfworld-sft course --mode full --publish   # the finished run -> docs/reference-run/, README's results block

Each notebook runs with the kernel named `python3`, which is the Python that runs this command (the venv's),
in the notebooks folder, with the shared parameters `small` and `seed`, and `split` (the games notebooks 05 and
06 play) for the notebooks that take it. Executed copies go to
results/executed/<mode>/ (git-ignored). The run stops at the first failing notebook and names it and the
failing cell; it ends with a table of notebook, status and seconds, also written to `run_dir/course.json`,
and with `run_dir/summary.md`: the headline figures of every stage and links to its plots.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alfworld_sft import flags
from alfworld_sft.files import read_json, write_text
from alfworld_sft.flags import option
from alfworld_sft.games import SPLITS
from alfworld_sft.paths import EXECUTED_DIR, NOTEBOOKS_DIR, REPO_ROOT, run_dir
from alfworld_sft.reports import format_table
from alfworld_sft.results import write_result

MODES = ("small", "full")  # --mode choices


@dataclass(frozen=True)
class CourseConfig:
    """One headless run. The fields with help are `alfworld-sft course` flags (`flags`)."""

    mode: str = option(
        "small", "small: every notebook on a few games, in minutes (CI); full: everything", choices=MODES
    )
    seed: int = option(0, "seed passed to every notebook")
    # nargs="*": a bare --only runs them all, as leaving it out does
    only: tuple[str, ...] = option((), "run only these notebook numbers (such as 00 03)", nargs="*", metavar="NN")
    split: str = option(  # "": each notebook's own default
        "",
        "the games notebooks 05 and 06 play (default: small mode eval_in_distribution, full mode "
        "eval_out_of_distribution)",
        choices=SPLITS,
    )
    notebooks_dir: Path = NOTEBOOKS_DIR  # where the numbered notebooks live (Python only: no flag)
    kernel: str = "python3"  # the kernel name notebooks are saved with (Python only: no flag)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be 'small' or 'full', not {self.mode!r}")
        if self.split and self.split not in SPLITS:
            raise ValueError(f"--split must be one of {', '.join(SPLITS)}, not {self.split!r}")


@dataclass
class NotebookRun:
    notebook: str
    status: str  # "ok", "failed" or "not run"
    seconds: float = 0.0
    executed: str = ""  # path of the executed copy
    error: str = ""  # for a failure: the cell and the exception


@dataclass
class CourseResult:
    mode: str
    runs: list[NotebookRun] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(run.status == "ok" for run in self.runs)

    def table(self) -> str:
        rows = [(r.notebook, r.status, f"{r.seconds:.0f}") for r in self.runs]
        rows.append(("total", "ok" if self.ok else "failed", f"{sum(r.seconds for r in self.runs):.0f}"))
        return format_table(rows, ("notebook", "status", "seconds"))


def list_notebooks(notebooks_dir: Path = NOTEBOOKS_DIR, only: tuple[str, ...] = ()) -> list[Path]:
    """The numbered notebooks (`NN_name.ipynb`) in course order, optionally only some numbers."""
    notebooks = sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if only:
        notebooks = [nb for nb in notebooks if nb.name[:2] in only]
        unknown = set(only) - {nb.name[:2] for nb in notebooks}
        if unknown:
            raise ValueError(f"no notebook numbered {', '.join(sorted(unknown))} in {notebooks_dir}")
    if not notebooks:
        raise FileNotFoundError(f"no numbered notebooks (NN_name.ipynb) in {notebooks_dir}")
    return notebooks


def run_course(config: CourseConfig = CourseConfig()) -> CourseResult:
    """Execute the notebooks in order; stop at the first failure."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    notebooks = list_notebooks(config.notebooks_dir, config.only)
    out_dir = EXECUTED_DIR / config.mode
    out_dir.mkdir(parents=True, exist_ok=True)
    shared = {"small": config.mode == "small", "seed": config.seed, **({"split": config.split} if config.split else {})}
    result = CourseResult(config.mode, [NotebookRun(nb.name, "not run") for nb in notebooks])
    for index, (notebook, run) in enumerate(zip(notebooks, result.runs), start=1):
        print(f"[{index}/{len(notebooks)}] {notebook.name} ({config.mode} mode)", flush=True)
        run.executed = str(out_dir / notebook.name)
        started = time.perf_counter()
        declared = papermill.inspect_notebook(str(notebook))
        parameters = {name: value for name, value in shared.items() if name in declared}
        try:
            papermill.execute_notebook(
                str(notebook),
                run.executed,
                parameters=parameters,
                kernel_name=config.kernel,
                cwd=str(config.notebooks_dir),
                progress_bar=True,
            )
            run.status = "ok"
        except PapermillExecutionError as error:
            run.status = "failed"
            run.error = f"cell {error.cell_index} (In [{error.exec_count}]): {error.ename}: {error.evalue}"
        finally:
            run.seconds = time.perf_counter() - started
        if run.status == "failed":
            print(f"\n{notebook.name} failed at {run.error}\nSee the executed copy: {run.executed}", flush=True)
            break
    write_result(
        run_dir(config.mode == "small") / "course.json",
        {"mode": config.mode, "split": config.split, "ok": result.ok, "runs": [asdict(r) for r in result.runs]},
        seed=config.seed,
    )
    write_course_summary(run_dir(config.mode == "small"))
    return result


EVALUATION_RUNS = ("base", "finetuned", "finetuned_constrained")  # notebook 05's summary: a results table each


def _stage_rows(stage: str, summary: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """The headline figures of one notebook's summary JSON: (stage, figure, value)."""
    rows: list[tuple[str, str, Any]] = []

    def add(figure: str, value: Any) -> None:
        if value is not None:
            rows.append((stage, figure, value))

    if stage.startswith("00"):
        add("machine ready", summary.get("ready"))
        add("default model's greedy reply", summary.get("greedy_reply"))
    elif stage.startswith("01"):
        add("games won / attempted", f"{summary.get('won')} / {summary.get('attempted')}")
        add("records written", summary.get("records"))
        for task_type, figures in (summary.get("per_task_type") or {}).items():
            add(f"won {task_type}", f"{figures.get('won')} / {figures.get('attempted')}")
        add("collection wall time (s)", summary.get("wall_time_s"))
    elif stage.startswith("02"):
        add("examples (train / eval)", " / ".join(str(v) for v in (summary.get("examples") or {}).values()))
        tokens = summary.get("tokens") or {}
        add(
            "tokens per example (median / p95 / max)",
            f"{tokens.get('median')} / {tokens.get('p95')} / {tokens.get('max')}",
        )
        add("trained (assistant) tokens", summary.get("trained_tokens_total"))
        add("examples cut by the window", summary.get("truncated_examples"))
    elif stage.startswith("03"):
        add("optimizer steps", summary.get("global_step"))
        add("final train loss", _round(summary.get("train_loss")))
        add(
            "eval loss before -> best",
            f"{_round(summary.get('eval_loss_initial'))} -> {_round(summary.get('eval_loss_best'))}",
        )
        add("training time (s)", _round(summary.get("runtime_s")))
    elif stage.startswith("04"):
        merge = summary.get("merge") or {}
        add("merged vs base+adapter max |logit diff|", merge.get("max_abs_logit_diff"))
        for name, gguf in (summary.get("gguf_files") or {}).items():
            add(f"GGUF {name} (MB)", gguf.get("size_mb") if isinstance(gguf, dict) else gguf)
        if summary.get("skipped"):
            add("GGUF export", f"skipped: {summary['skipped']}")
    elif stage.startswith("05"):
        runs = [{row["agent"]: row for row in summary.get(name) or []} for name in EVALUATION_RUNS]
        for agent in dict.fromkeys(agent for run in runs for agent in run):  # every agent any run played, in order
            rates = " / ".join(str(run.get(agent, {}).get("success_rate", "-")) for run in runs)
            add(f"success {agent} (base / fine-tuned / fine-tuned, grounded)", rates)
    elif stage.startswith("06"):
        for row in summary.get("rounds") or []:
            if row.get("games") is None:
                continue
            add(f"round {row['round']}: rollouts won", row.get("rollouts_won"))
            add(f"round {row['round']}: states labelled / disagreed", f"{row.get('labelled')} / {row.get('disagreed')}")
            add(f"round {row['round']}: records added", row.get("records_added"))
    return rows


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def write_course_summary(folder: Path) -> Path:
    """`summary.md` in a run folder: one table of every stage's headline figures, then links to the plots."""
    rows = []
    for path in sorted(folder.glob("[0-9][0-9]_*.json")):
        rows += _stage_rows(path.stem, read_json(path))
    plots = sorted(p.relative_to(folder) for p in folder.rglob("*.png") if "executed" not in p.parts)
    lines = [
        "# Course summary",
        "",
        f"Run folder: `{folder}`",
        "",
        format_table(rows, ("stage", "figure", "value")),
    ]
    lines += ["", "## Plots", ""] + [f"- [{plot}]({plot})" for plot in plots]
    return write_text(folder / "summary.md", "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------- the reference run

REFERENCE_RUN = REPO_ROOT / "docs" / "reference-run"  # the published full-mode run: executed notebooks, summaries
README_MARKERS = ("<!-- reference-run:start -->", "<!-- reference-run:end -->")


def publish_run(mode: str = "full", target: Path = REFERENCE_RUN, readme: Path = REPO_ROOT / "README.md") -> Path:
    """Copy a finished run (its executed notebooks, outputs and plots included, and every summary JSON) into
    `target`, replacing what was there, then rewrite README's results block from it."""
    from alfworld_sft.environment import ENVIRONMENT_JSON

    source = run_dir(mode == "small")
    course = read_json(source / "course.json")
    if not course.get("ok"):
        raise ValueError(
            f"{source / 'course.json'} records a run that did not finish: publish only a run whose notebooks all passed"
        )
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for path in [*sorted((EXECUTED_DIR / mode).glob("[0-9][0-9]_*.ipynb")), *sorted(source.glob("[0-9][0-9]_*.json"))]:
        shutil.copy2(path, target / path.name)
    for path in (source / "course.json", source / "summary.md", ENVIRONMENT_JSON):
        shutil.copy2(path, target / path.name)
    write_readme_results(target, readme)
    return target


def render_results(folder: Path = REFERENCE_RUN) -> str:
    """README's results block: where the reference run came from, each notebook's time, and what each agent won, all
    read from the run's summary JSONs (nothing typed by hand). Without a published run, a line that says so."""
    if not (folder / "course.json").exists():
        return "No full-mode reference run is published yet (`alfworld-sft course --publish`, tools/README.md)."
    course = read_json(folder / "course.json")
    banner = read_json(folder / "environment.json")["banner"] if (folder / "environment.json").exists() else {}
    machine = ", ".join(str(banner[key]) for key in ("gpu", "cpu_cores") if banner.get(key))
    meta = course.get("meta") or {}
    runs = [(r["notebook"], r["status"], f"{r['seconds']:.0f}") for r in course["runs"]]
    runs.append(("total", "ok" if course["ok"] else "failed", f"{sum(r['seconds'] for r in course['runs']):.0f}"))
    command = f"alfworld-sft course --mode {course['mode']}" + (
        f" --split {course['split']}" if course.get("split") else ""
    )
    where = folder.relative_to(REPO_ROOT) if folder.is_relative_to(REPO_ROOT) else folder
    lines = [
        f"`{command}` at commit {str(meta.get('git_commit'))[:7]}, {meta.get('created', '')[:10]}"
        + (f", on {machine} cores" if machine else "")
        + f"; the executed notebooks, outputs included: [`{where}`]({where}).",
        "",
        format_table(runs, ("notebook", "status", "seconds")),
    ]
    evaluation = folder / "05_evaluation.json"
    if evaluation.exists():
        summary = read_json(evaluation)
        tables = [{row["agent"]: row for row in summary.get(name) or []} for name in EVALUATION_RUNS]
        rows = []
        for agent in dict.fromkeys(agent for table in tables for agent in table):
            cells = [table.get(agent) for table in tables]
            rows.append((agent, *(f"{c['won']}/{c['games']}" if c else "-" for c in cells)))
        steps = summary["max_steps"]
        if isinstance(steps, dict):  # per run: the base model plays fewer steps in full mode (notebook 05)
            steps = ", ".join(f"{run} {n}" for run, n in steps.items())
        lines += ["", f"Games won on `{summary['split']}` (steps a game: {steps}):", ""]
        lines.append(format_table(rows, ("agent", "base model", "fine-tuned, free", "fine-tuned, grounded")))
    return "\n".join(lines)


def write_readme_results(folder: Path = REFERENCE_RUN, readme: Path = REPO_ROOT / "README.md") -> Path:
    """Put `render_results(folder)` between README's markers."""
    text = readme.read_text(encoding="utf-8")
    start, end = README_MARKERS
    if start not in text or end not in text:
        raise ValueError(f"{readme} lacks the markers {start} and {end} around its results block")
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    return write_text(readme, f"{head}{start}\n{render_results(folder)}\n{end}{tail}")


def configure_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("course", help="run the numbered notebooks headless with papermill")
    flags.add_options(parser, CourseConfig)
    # Not a CourseConfig field: it switches the command from running the notebooks to publishing a finished run.
    parser.add_argument(
        "--publish",
        action="store_true",
        help="instead of running: copy the last finished run of --mode into "
        f"{REFERENCE_RUN.relative_to(REPO_ROOT)} and rewrite README's results block from it",
    )
    parser.set_defaults(func=_run_course_cli)


def _run_course_cli(args: argparse.Namespace) -> int:
    if args.publish:
        target = publish_run(args.mode)
        print(f"published {target}; README.md's results block:\n\n{render_results(target)}")
        return 0
    result = run_course(flags.config_from_args(CourseConfig, args))
    print("\n" + result.table())
    return 0 if result.ok else 1
