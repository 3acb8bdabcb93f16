"""Profiles: the choices of a run, loaded from `configs/<profile>.yaml` into dataclasses.

Knowledge lives in the library, choices live in YAML. Every key is checked: an unknown or misspelled
key is an error that names the file, the section and the valid keys, so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fcdpo.agent import AgentConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


class ConfigError(ValueError):
    """A profile file that cannot be loaded; the message names the file and the key."""


@dataclass
class TaskConfig:
    """How many problems of one task each stage uses, and how hard they are."""

    train: int = 200  # problems the teacher is rolled out on
    eval: int = 200  # held-out problems, never seen in training
    difficulty: dict[str, Any] = field(default_factory=dict)  # keyword arguments of Task.generate
    functions: list[str] | None = None  # the functions offered to the model (None: all of the task's)


@dataclass
class RolloutConfig:
    """How the teacher is sampled for preference data."""

    k: int = 4  # chains per problem
    temperature: float = 1.0
    batch_size: int = 32  # chains advanced together
    seed: int = 0


@dataclass
class Profile:
    """Everything a run needs to know; one YAML file per profile."""

    name: str = "tiny-cpu"
    seed: int = 0
    run_dir: str = "runs/{name}"  # where every stage writes; relative to the repository root
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    agent: AgentConfig = field(default_factory=AgentConfig)
    rollouts: RolloutConfig = field(default_factory=RolloutConfig)
    # Backend specs (see fcdpo.backends.load_backend); a relative `model` or `adapter` path is
    # resolved in the run folder, where the tiny lab writes its models.
    teacher: dict[str, Any] = field(default_factory=dict)
    student: dict[str, Any] = field(default_factory=dict)
    # tiny-cpu only: how the tiny lab builds its tokenizer, teacher and student (fcdpo.tinylab).
    lab: dict[str, Any] | None = None

    def task(self, name: str):
        """The task `name` as this profile configures it (its offered functions)."""
        from fcdpo.tasks import get_task

        return get_task(name, self.tasks[name].functions if name in self.tasks else None)

    @property
    def run_path(self) -> Path:
        path = Path(self.run_dir.format(name=self.name))
        return path if path.is_absolute() else CONFIG_DIR.parent / path


def load_profile(name_or_path: str | Path = "tiny-cpu", overrides: dict[str, Any] | None = None) -> Profile:
    """Load a profile by name (`configs/<name>.yaml`) or by path, with optional overrides.

    `overrides` maps dotted keys to values, e.g. `{"tasks.math.train": 20}`; they are checked like the file.
    """
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"no profile {str(name_or_path)!r}: {path} does not exist (known profiles: {known})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    return build(Profile, raw, where=str(path))


def build(cls: type, raw: Any, where: str) -> Any:
    """Turn plain YAML data into dataclass `cls`, checking every key and value type."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} in {cls.__name__}; valid keys are {sorted(fields)}")
    values = {name: _convert(hints[name], value, f"{where}:{name}") for name, value in raw.items()}
    return cls(**values)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        return _convert(hint, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {k: _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(hint, type) and not isinstance(value, hint) or (hint in (int, float) and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
    return value


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[leaf] = value
