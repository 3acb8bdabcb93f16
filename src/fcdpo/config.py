"""Profiles: the choices of a run, loaded from `configs/<profile>.yaml` and checked against the library.

Layer: the profile; imports `fcdpo.settings`, `fcdpo.tasks` and `fcdpo.backends`.

Knowledge lives in the library, choices live in YAML. The sections are the dataclasses of
`fcdpo.settings`, which checks every key and value type; a profile is further checked against the
library: its tasks and their difficulty keys, its training methods, its lab section and its backend
specs. Every mistake is an error that names the file and the key, so a typo never silently falls back
to a default.
"""

from __future__ import annotations

import copy
import inspect
import re
import string
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fcdpo import arms
from fcdpo.backends import check_backend_spec
from fcdpo.settings import (  # noqa: F401 - the sections are also importable from here, as the profile's parts
    CONFIG_DIR,
    AgentConfig,
    ConfigError,
    EvaluationConfig,
    GLPFTConfig,
    GRPOSettings,
    LabConfig,
    MultiAgentConfig,
    MultiAgentSection,
    PreferenceConfig,
    RolloutConfig,
    TaskConfig,
    TrainingConfig,
    build,
)
from fcdpo.tasks import Task, get_task


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
    preferences: PreferenceConfig = field(default_factory=PreferenceConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    multi_agent: MultiAgentSection = field(default_factory=MultiAgentSection)

    def task(self, name: str) -> Task:
        """The task `name` as this profile configures it (its offered functions)."""
        if name not in self.tasks:
            return get_task(name)
        settings = self.tasks[name]
        return get_task(name, settings.functions, settings.function_examples, settings.brief_prompt,
                        settings.echo_next)

    @property
    def run_path(self) -> Path:
        path = Path(self.run_dir.format(name=self.name))
        return path if path.is_absolute() else CONFIG_DIR.parent / path


TINY_LAB_STUDENT = {"kind": "hf", "model": "lab/student"}  # what the tiny lab builds in the run folder


def student_spec(profile: Profile) -> dict[str, Any]:
    """The profile's student backend spec; an empty one means the tiny lab's student in the run folder."""
    return dict(profile.student or TINY_LAB_STUDENT)


_PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*\Z")  # names a file in configs/ and a folder in runs/


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (first on line {seen[key].start_mark.line + 1})",
                    key_node.start_mark)
            if isinstance(key, typing.Hashable):
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def load_profile(name_or_path: str | Path = "tiny-cpu", overrides: dict[str, Any] | None = None) -> Profile:
    """Load a profile by name (`configs/<name>.yaml`) or by path, with optional overrides.

    `overrides` maps dotted keys to values, e.g. `{"tasks.math.train": 20}`; they are checked like the file.
    A profile must be UTF-8 YAML, not empty, with no key given twice; a profile name (given here or
    as `name:`) is letters, digits and _ . + - only, so it stays inside `configs/` and `runs/`.
    A profile may start from another with `extends: <profile>`: its sections are merged into the other's
    key by key (a mapping merges, anything else replaces), and `name` is its own.
    """
    path = _profile_path(name_or_path)
    raw = _read_profile(path, chain=())
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    profile = build(Profile, raw, where=str(path))
    _check_profile(profile, str(path))
    return profile


def _profile_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        if not _PROFILE_NAME.match(str(name_or_path)) or ".." in str(name_or_path):
            raise ConfigError(f"profile name {str(name_or_path)!r} must be letters, digits and _ . + - "
                              "(a profile in another folder is given by its path, ending in .yaml)")
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"no profile {str(name_or_path)!r}: {path} does not exist (known profiles: {known})")
    return path


def _read_profile(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """The profile file's mapping, with the profile it `extends` (if any) merged under it."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if raw is None or raw == {}:
        raise ConfigError(f"{path}: the profile is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw
    if not isinstance(base_name, str):
        raise ConfigError(f"{path}:extends: expected a profile name, got {base_name!r}")
    try:
        base_path = _profile_path(base_name)
    except ConfigError as exc:
        raise ConfigError(f"{path}:extends: {exc}") from None
    if base_path.resolve() in {p.resolve() for p in (*chain, path)}:
        names = " -> ".join(p.stem for p in (*chain, path, base_path))
        raise ConfigError(f"{path}:extends: profiles extend each other in a circle ({names})")
    if "name" not in raw:
        raise ConfigError(f"{path}: a profile that extends another needs its own `name` (it names the run folder)")
    return _merged(_read_profile(base_path, (*chain, path)), raw)


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _check_profile(profile: Profile, where: str) -> None:
    """What `build` cannot check from the types alone: names, run_dir, task settings, the lab section,
    backend specs."""
    if not _PROFILE_NAME.match(profile.name) or ".." in profile.name:
        raise ConfigError(f"{where}:name: {profile.name!r} must be letters, digits and _ . + - (it names the run folder)")
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(profile.run_dir) if field is not None]
    except ValueError as exc:
        raise ConfigError(f"{where}:run_dir: {profile.run_dir!r} is not a valid pattern ({exc})") from None
    unknown = sorted({field for field in fields if field != "name"})
    if unknown:
        raise ConfigError(f"{where}:run_dir: unknown placeholder(s) {unknown} in {profile.run_dir!r}; "
                          "the only one is {name}")
    for task_name, task in profile.tasks.items():
        try:
            generator = get_task(task_name).generate
        except ValueError as exc:
            raise ConfigError(f"{where}:tasks.{task_name}: {exc}") from None
        parameters = inspect.signature(generator).parameters
        accepted = sorted(name for name, p in parameters.items() if p.kind == p.KEYWORD_ONLY)
        if not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
            wrong = sorted(set(task.difficulty) - set(accepted))
            if wrong:
                raise ConfigError(f"{where}:tasks.{task_name}.difficulty: unknown key(s) {wrong}; "
                                  f"valid keys are {accepted}")
    if profile.lab is not None:  # read by the lab only when it builds; its mistakes are found here
        build(LabConfig, profile.lab, f"{where}:lab")
    unknown = [method for method in profile.training.methods if method not in arms.names()]
    if unknown:
        raise ConfigError(f"{where}:training.methods: unknown method(s) {unknown}; the methods are {list(arms.names())}")
    for role in ("teacher", "student"):
        spec = getattr(profile, role)
        if spec:
            try:
                check_backend_spec(spec)
            except ValueError as exc:
                raise ConfigError(f"{where}:{role}: {exc}") from None


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[leaf] = copy.deepcopy(value)  # one value given for two keys must not become one section


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Command-line `KEY=VALUE` overrides (`training.max_steps=10`) as a dict, each value read as YAML.

    Raises:
        ValueError: for an item without `=`.
    """
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides
