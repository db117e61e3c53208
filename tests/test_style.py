"""One style for the whole tree: `ruff check` (pyflakes, pycodestyle with the line length, import order) and
`ruff format` report nothing (CONTRIBUTING.md, "Conventions"); the library's modules import each other without a
cycle; no module is longer than a reader holds in mind (700 lines)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from alfworld_sft.paths import REPO_ROOT

TREES = ["lib", "tests", "benchmarks", "tools"]
RUFF = Path(sys.executable).with_name("ruff")


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_reports_nothing(command):
    result = subprocess.run([str(RUFF), *command, *TREES], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


LIB = REPO_ROOT / "lib" / "alfworld_sft"


def course_imports(path: Path, modules: set[str]) -> set[str]:
    """The library modules `path` imports (`from alfworld_sft import x`, `from alfworld_sft.x import ...`,
    `import alfworld_sft.x`), at module level and inside functions alike: a function-level import still ties the
    two modules together, it only defers the failure."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            # `from . import x` and `from .x import y` name the package relatively
            source = f"alfworld_sft.{node.module or ''}".rstrip(".") if node.level == 1 else node.module or ""
            if source == "alfworld_sft":
                found |= {alias.name for alias in node.names if alias.name in modules}
            elif source.startswith("alfworld_sft."):
                found.add(source.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("alfworld_sft.")}
    return found - {path.stem}


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One import cycle of `graph` (module -> the modules it imports) as [a, b, ..., a], or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        path.append(module)
        for imported in graph.get(module, ()):
            cycle = visit(imported)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return None

    return next((cycle for module in sorted(graph) if (cycle := visit(module))), None)


def test_the_library_has_no_import_cycle():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == ["a", "b", "c", "a"]
    modules = {path.stem for path in LIB.glob("*.py")}
    graph = {path.stem: sorted(course_imports(path, modules)) for path in sorted(LIB.glob("*.py"))}
    assert "train_config" in graph["training"] and "teacher" in graph["engine"], graph  # the graph is read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in lib/alfworld_sft: " + " -> ".join(cycle or [])


MAX_MODULE_LINES = 700  # a module a reader holds in mind (CONTRIBUTING, "Layout")


def test_no_library_module_outgrows_what_a_reader_holds_in_mind():
    lengths = {path.name: len(path.read_text().splitlines()) for path in LIB.glob("*.py")}
    assert {name: n for name, n in lengths.items() if n > MAX_MODULE_LINES} == {}
