"""Profiles: the choices of a run, loaded from `configs/<profile>.yaml` into dataclasses.

Knowledge lives in the library, choices live in YAML. Every key is checked: an unknown or misspelled
key is an error that names the file, the section and the valid keys, so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import string
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fcdpo.agent import AgentConfig
from fcdpo.glpft import GLPFTConfig
from fcdpo.multi_agent import MultiAgentConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


class ConfigError(ValueError):
    """A profile file that cannot be loaded; the message names the file and the key."""


@dataclass
class TaskConfig:
    """Where one task's problems come from, how many each stage uses, and how hard generated ones are."""

    # "generated" (the task's seeded generator), or a real dataset (fcdpo.tasks.sources): "gsm8k"
    # for math; "folio", "prontoqa" or "proofwriter" for fol. A real dataset's training problems come
    # from its train split and held-out ones from its test / validation split.
    source: str = "generated"
    train: int | None = 200  # problems the teacher is rolled out on (real data: a seeded sample; None: all)
    eval: int | None = 200  # held-out problems, never seen in training (real data: the first rows; None: all)
    dev: int = 0  # generated only: held-out problems for choosing recipes (the lab's), never reported as results
    train_path: str | None = None  # real data: a local file of the train split (relative: to the repository)
    eval_path: str | None = None  # real data: a local file of the held-out split; None: from the hub
    hub: str | None = None  # real data: another hub id than the default (openai/gsm8k, tasksource/folio)
    strict: bool = False  # real data: a malformed row is an error (default: skipped, counted and reported)
    difficulty: dict[str, Any] = field(default_factory=dict)  # keyword arguments of Task.generate
    functions: list[str] | None = None  # the functions offered to the model (None: all of the task's)
    function_examples: bool = True  # show each function's example call in the prompt
    brief_prompt: bool = False  # one line per function and a one-line call format (python syntax)
    echo_next: bool = False  # fol: a recorded statement's result hands out the question's next statement


@dataclass
class RolloutConfig:
    """How the teacher is sampled for preference data."""

    k: int = 4  # chains per problem
    temperature: float = 1.0
    batch_size: int = 32  # chains advanced together
    seed: int = 0


@dataclass
class PreferenceConfig:
    """How teacher chains become preference pairs (`fcdpo.preferences`, notebook 02)."""

    pairs_per_prompt: int = 4  # at most this many (correct, incorrect) pairs per problem
    drop_identical: bool = True  # collapse chains with the same assistant turns; never pair a chain with its twin
    balance_tasks: bool = False  # cut every task to the pair count of the task with the fewest pairs
    validation: float = 0.1  # fraction of problems (never of pairs) held out for validation, per task
    seed: int = 0
    # The step_dpo arm's pairs (`build_step_pairs`): the two diverging turns alone (False), or the rest
    # of each chain from the turn where they part ways (True).
    step_rest_of_chain: bool = False


@dataclass
class GRPOSettings:
    """The grpo arm (`fcdpo.grpo`): the student's own chains, rewarded by the task's answer check."""

    generations: int = 4  # chains per problem in a step: the group whose rewards are compared
    learning_rate: float = 1e-5
    temperature: float = 1.0  # sampling temperature of the chains
    beta: float = 0.0  # KL penalty towards the reference (the base, adapter disabled); 0: none
    format_weight: float = 0.1  # reward for a chain ending in a final answer with no parse or call error
    problems: int | None = None  # training problems per task used (None: the whole train split)


@dataclass
class TrainingConfig:
    """How the student is fine-tuned on the pairs: DPO, and the SFT baseline on the same budget (`fcdpo.training`)."""

    load_in_4bit: bool = False  # QLoRA: the frozen base in 4-bit NF4 with double quantisation (bitsandbytes)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    beta: float = 0.1  # DPO: how far the policy may drift from the reference (higher: less)
    # DPO's loss terms (TRL `loss_type`): "sigmoid" is the paper's DPO; adding "sft" (the chosen chains'
    # negative log-likelihood, as in RPO) keeps the policy from lowering both chains' likelihood.
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])
    loss_weights: list[float] | None = None  # one per loss_type; default: all 1
    learning_rate: float = 5e-6  # DPO
    sft_learning_rate: float = 1e-4  # the SFT baseline
    max_steps: int = 0  # optimizer steps of both methods; 0: `epochs` passes over the training pairs
    epochs: float = 1.0
    batch_size: int = 4  # pairs (DPO) or chains (SFT) per device and micro-batch
    grad_accumulation: int = 1
    max_length: int = 1024  # tokens of prompt + chain; longer pairs are dropped and counted, never truncated
    warmup: float = 0.1  # learning-rate warmup: a fraction of the steps when < 1, else a number of steps
    gradient_checkpointing: bool | None = None  # None: on for GPUs, off on CPU
    # None: the student's own chat template; a name in fcdpo.chat_templates.CHAT_TEMPLATES or a .jinja file
    # (one that can render tool turns: Mistral-7B-Instruct-v0.2's own template refuses them).
    chat_template: str | None = None
    logging_steps: int = 5
    eval_steps: int = 0  # evaluate on the validation pairs every this many steps; 0: once, at the end
    seed: int = 0
    # More training seeds: each method is also trained with each of these (adapter initialisation and
    # data order), as `training/<method>-s<seed>/`, so results can be given as a mean over seeds.
    extra_seeds: list[int] = field(default_factory=list)
    # The arms notebook 03 trains and notebook 04 evaluates (`fcdpo.training.METHODS`): dpo and sft always,
    # and any of "step_dpo" (step-level pairs of the teacher's chains), "onpolicy_dpo" (pairs of the
    # student's own chains) and "grpo" (reinforcement learning on the answer check, `grpo` below) named here.
    methods: list[str] = field(default_factory=lambda: ["dpo", "sft"])
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    # onpolicy_dpo: rounds of sampling and DPO. Each round after the first samples the previous round's
    # model, starts from its adapter and takes it as the reference (iterative RPO, Pang et al. 2024,
    # with loss_type [sigmoid, sft]); every round gets the same steps.
    onpolicy_rounds: int = 1


@dataclass
class EvaluationConfig:
    """How every model of the run is evaluated on held-out problems (`fcdpo.evaluation`, notebook 04)."""

    samples: int = 1  # chains per problem; 1 with temperature 0 is greedy decoding, more gives pass@k
    temperature: float = 0.0
    batch_size: int = 32  # chains advanced together
    seed: int = 0  # sampling and bootstrap seed
    resamples: int = 1000  # bootstrap resamples of the 95% accuracy intervals
    gsm8k_path: str | None = None  # GSM8K test.jsonl (relative: to the repository root); None skips it
    folio_path: str | None = None  # FOLIO validation jsonl; None skips it
    benchmark_limit: int | None = None  # evaluate only the first problems of each benchmark
    # Parameter counts by model label ("teacher", ...) for models that are not local (an endpoint).
    parameters: dict[str, float] = field(default_factory=dict)


@dataclass
class MultiAgentSection:
    """alpha-UMi's multi-LLM agent: how it runs (`agent`) and how GLPFT trains its adapters (`glpft`)."""

    agent: MultiAgentConfig = field(default_factory=MultiAgentConfig)
    glpft: GLPFTConfig = field(default_factory=GLPFTConfig)


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

    def task(self, name: str):
        """The task `name` as this profile configures it (its offered functions)."""
        from fcdpo.tasks import get_task

        if name not in self.tasks:
            return get_task(name)
        settings = self.tasks[name]
        return get_task(name, settings.functions, settings.function_examples, settings.brief_prompt,
                        settings.echo_next)

    @property
    def run_path(self) -> Path:
        path = Path(self.run_dir.format(name=self.name))
        return path if path.is_absolute() else CONFIG_DIR.parent / path


_PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*\Z")  # names a file in configs/ and a folder in runs/
# Counts that must be at least 1 (or at least 0), by section; a zero or negative one is a mistake.
_AT_LEAST = {
    "TaskConfig": {"train": 0, "eval": 0},
    "RolloutConfig": {"k": 1, "batch_size": 1},
    "PreferenceConfig": {"pairs_per_prompt": 1},
    "GRPOSettings": {"generations": 2, "problems": 1},
    "TrainingConfig": {"lora_r": 1, "max_steps": 0, "batch_size": 1, "grad_accumulation": 1, "max_length": 1,
                       "logging_steps": 1, "eval_steps": 0, "onpolicy_rounds": 1},
    "EvaluationConfig": {"samples": 1, "batch_size": 1, "resamples": 1},
    # the lab section (fcdpo.tinylab.LabConfig, read with `build` here and by the lab itself)
    "LabConfig": {"vocab_size": 1},
    "ModelRecipe": {"hidden_size": 1, "num_layers": 1, "num_heads": 1, "intermediate_size": 1,
                    "problems_per_task": 1},
    "SFTSettings": {"steps": 1, "batch_size": 1, "warmup_steps": 0, "max_length": 1, "threads": 1},
}


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
    """
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        if not _PROFILE_NAME.match(str(name_or_path)) or ".." in str(name_or_path):
            raise ConfigError(f"profile name {str(name_or_path)!r} must be letters, digits and _ . + - "
                              "(a profile in another folder is given by its path, ending in .yaml)")
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"no profile {str(name_or_path)!r}: {path} does not exist (known profiles: {known})")
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
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    profile = build(Profile, raw, where=str(path))
    _check_profile(profile, str(path))
    return profile


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
    from fcdpo.tasks import get_task

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
        from fcdpo.tinylab import LabConfig

        build(LabConfig, profile.lab, f"{where}:lab")
    from fcdpo.training import METHODS

    unknown = [method for method in profile.training.methods if method not in METHODS]
    if unknown:
        raise ConfigError(f"{where}:training.methods: unknown method(s) {unknown}; the methods are {list(METHODS)}")
    from fcdpo.backends import check_backend_spec

    for role in ("teacher", "student"):
        spec = getattr(profile, role)
        if spec:
            try:
                check_backend_spec(spec)
            except ValueError as exc:
                raise ConfigError(f"{where}:{role}: {exc}") from None


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
    for name, least in _AT_LEAST.get(cls.__name__, {}).items():
        if name in values and values[name] is not None and values[name] < least:
            raise ConfigError(f"{where}:{name}: must be at least {least}, got {values[name]!r}")
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:  # a section's own checks (e.g. agent.syntax)
        raise ConfigError(f"{where}: {exc}") from None


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
