"""The headless runner: execute the numbered notebooks in order with papermill, like a learner would.

    alfworld-sft course                  # small mode: every notebook for real, in minutes (CI, first try)
    alfworld-sft course --mode full      # everything: the whole train split, the seed's training, 134 games
    alfworld-sft course --only 00 01     # a subset, by number

Each notebook runs with the kernel named `python3`, which is the Python that runs this command (the venv's),
in the notebooks folder, with the shared parameters `small` and `seed`. Executed copies go to
results/executed/<mode>/ (git-ignored). The run stops at the first failing notebook and names it and the
failing cell; it ends with a table of notebook, status and seconds, also written to `run_dir/course.json`.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alfworld_sft.paths import EXECUTED_DIR, NOTEBOOKS_DIR, run_dir
from alfworld_sft.results import format_table, write_result


@dataclass(frozen=True)
class CourseConfig:
    mode: str = "small"  # "small" runs every notebook on a few games in minutes; "full" runs everything
    seed: int = 0  # passed to every notebook
    only: tuple[str, ...] = ()  # notebook numbers to run ("00", "03"); empty runs all
    notebooks_dir: Path = NOTEBOOKS_DIR  # where the numbered notebooks live
    kernel: str = "python3"  # the kernel name notebooks are saved with

    def __post_init__(self) -> None:
        if self.mode not in ("small", "full"):
            raise ValueError(f"mode must be 'small' or 'full', not {self.mode!r}")


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
    parameters = {"small": config.mode == "small", "seed": config.seed}
    result = CourseResult(config.mode, [NotebookRun(nb.name, "not run") for nb in notebooks])
    for index, (notebook, run) in enumerate(zip(notebooks, result.runs), start=1):
        print(f"[{index}/{len(notebooks)}] {notebook.name} ({config.mode} mode)", flush=True)
        run.executed = str(out_dir / notebook.name)
        started = time.perf_counter()
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
    write_result(run_dir(config.mode == "small") / "course.json", {
        "mode": config.mode, "ok": result.ok, "runs": [asdict(r) for r in result.runs]
    }, seed=config.seed)
    return result


def configure_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("course", help="run the numbered notebooks headless with papermill")
    parser.add_argument("--mode", choices=("small", "full"), default="small", help="small: minutes, for CI; full: everything")
    parser.add_argument("--seed", type=int, default=0, help="seed passed to every notebook")
    parser.add_argument("--only", nargs="*", default=(), metavar="NN", help="run only these notebook numbers")
    parser.set_defaults(func=_run_course_cli)


def _run_course_cli(args: argparse.Namespace) -> int:
    result = run_course(CourseConfig(mode=args.mode, seed=args.seed, only=tuple(args.only)))
    print("\n" + result.table())
    return 0 if result.ok else 1
