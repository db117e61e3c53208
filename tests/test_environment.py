import json
import os
import subprocess

import pytest
from alfworld_sft import environment


@pytest.fixture(scope="module")
def report():
    return environment.check_environment()


def test_banner_holds_true_values_for_this_machine(report):
    import torch

    assert report.banner["cpu_cores"] == os.cpu_count()
    assert report.banner["torch"] == torch.__version__
    assert (report.banner["gpu"] is None) == (not torch.cuda.is_available())
    assert report.banner["ram_gib"] > 0 and report.banner["disk_free_gib"] > 0


def test_packages_are_compared_with_the_pins(report):
    by_name = {p.name: p for p in report.packages}
    assert by_name["transformers"].status == "ok" and by_name["transformers"].pinned == "==5.17.0"
    assert {p.status for p in report.packages} <= {"ok", "differs", "missing"}


def test_live_probes_run(report):
    checks = {c.name: c for c in report.checks}
    assert checks["bitsandbytes 4-bit"].status == "ok", checks["bitsandbytes 4-bit"].detail
    assert checks["ALFWorld engine"].status == "ok", checks["ALFWorld engine"].detail
    assert report.ready, report.checks_table()


def _doctor(tmp_path, **env):
    output = tmp_path / "environment.json"
    result = subprocess.run(
        ["alfworld-sft", "doctor", "--output", str(output)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
        check=False,
    )
    return result, output


@pytest.mark.slow
def test_doctor_prints_the_report_and_writes_json(tmp_path):
    result, output = _doctor(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    payload = json.loads(output.read_text())
    assert payload["ready"] is True and payload["banner"]["cpu_cores"] == os.cpu_count()
    assert "meta" in payload and "This machine is ready" in result.stdout


@pytest.mark.slow
def test_doctor_fails_on_a_missing_data_directory(tmp_path):
    result, output = _doctor(tmp_path, ALFWORLD_DATA=str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert f"ALFWORLD_DATA={tmp_path / 'nowhere'} is not a directory" in result.stdout
    assert json.loads(output.read_text())["ready"] is False


def test_require_ready_names_the_failed_check_and_fix():
    report = environment.EnvironmentReport(
        {}, [], [environment.Check("ALFWorld data", "fail", "no games", "unpack the archives")]
    )
    with pytest.raises(RuntimeError, match="ALFWorld data: no games. Fix: unpack the archives"):
        environment.require_ready(report)


@pytest.mark.parametrize(("version", "status"), [((3, 11), "ok"), ((3, 12), "warn"), ((3, 10), "fail")])
def test_python_312_runs_the_course_with_a_warning(version, status, monkeypatch):
    """The GPU machine and Colab run Python 3.12: the course ran there, so it is no failure that stops notebook 00."""
    monkeypatch.setattr(environment.sys, "version_info", (*version, 0, "final", 0))
    check = environment.check_python()
    assert check.status == status and "3.11" in check.fix


def test_library_noise_that_reads_as_an_error_is_kept_out_of_the_output():
    """bitsandbytes logs "Failed to load CPU gemm_4bit_forward ..." on every import on a CPU with AVX512-BF16 (the
    course's machine): a learner reads it as an error. Importing the course first keeps it out."""
    import sys

    command = [
        sys.executable,
        "-c",
        "import alfworld_sft, bitsandbytes, logging; logging.getLogger('bitsandbytes').warning('kept')",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "Failed to load CPU gemm_4bit_forward" not in result.stderr + result.stdout
    assert "kept" in result.stderr  # bitsandbytes' other warnings still show
