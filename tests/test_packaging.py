"""The repository's setup files agree with each other and keep their promises."""

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def pyproject_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + project["optional-dependencies"]["dev"]


def conda_pip_requirements() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return [r for r in pip_section if not r.startswith("-e")]


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    def normal(reqs):
        return sorted(str(Requirement(r)) for r in reqs)

    assert normal(conda_pip_requirements()) == normal(pyproject_requirements())


def test_drifting_libraries_are_pinned_with_an_upper_bound():
    for req in map(Requirement, pyproject_requirements()):
        if req.name in {"transformers", "trl", "peft", "bitsandbytes", "torch"}:
            assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), f"{req} has no upper bound"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make reproduce" in readme
    commands = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert "make test" in commands


def test_readme_examples_are_what_the_generators_produce():
    from fcdpo.tasks.__main__ import examples_markdown

    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- examples:start -->")[1].split("<!-- examples:end -->")[0]
    assert section.strip() == examples_markdown().strip(), "regenerate with: python -m fcdpo.tasks"
