"""environment.yml mirrors pyproject.toml, the one source of truth for versions."""

import tomllib

import yaml
from alfworld_sft.environment import read_pins
from alfworld_sft.paths import REPO_ROOT


def test_environment_yml_mirrors_the_pins():
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_pins = {line for line in pip_section if not line.startswith("-")}
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    expected = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    expected |= set(project["optional-dependencies"]["lab"])
    assert conda_pins == expected
    assert "python=3.11" in env["dependencies"]


def test_no_deps_packages_are_named_in_the_conda_instructions():
    text = (REPO_ROOT / "environment.yml").read_text()
    for name, specifier, group in read_pins():
        if group == "no-deps":
            assert f"pip install --no-deps {name}{specifier}" in text


def test_every_pin_is_exact():
    for name, specifier, _ in read_pins():
        assert specifier.startswith("=="), f"{name} is not pinned exactly: {specifier}"
