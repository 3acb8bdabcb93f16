"""The repository's setup files agree with each other and keep their promises."""

from pathlib import Path

import tomllib
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


def test_only_the_two_known_library_messages_are_quieted():
    import logging
    import warnings

    import fcdpo  # noqa: F401 - importing the package installs the filters

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        import importlib

        importlib.reload(fcdpo)  # the filter goes in front of "default", as on a first import
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning, stacklevel=1)
        warnings.warn("`past_key_values` is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["`past_key_values` is deprecated"]
    assert logging.getLogger("bitsandbytes.backends.cpu.ops").getEffectiveLevel() == logging.ERROR
    assert logging.getLogger("bitsandbytes").getEffectiveLevel() < logging.ERROR  # the rest of it still speaks
