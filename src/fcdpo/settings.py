"""The settings of a run: one dataclass per section of a profile, and `build`, which makes them from YAML data.

Layer: settings and formats; imports `fcdpo.arms` (the registry of training arms) and `fcdpo.runs`.

Every stage takes its section from here; `fcdpo.config` reads a profile file into them and checks it
against the tasks and backends. Every key is checked by `build`: an unknown or misspelled key, or a
value of the wrong type, is an error that names the section and the valid keys, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fcdpo import arms, runs

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


class ConfigError(ValueError):
    """A profile file that cannot be loaded; the message names the file and the key."""


SYNTAXES = ("python", "json")  # how a model writes its calls: the paper's `add(a=3, b=4)`, or native tool calls
# What `evaluation.split` may score: "dev" to choose a recipe, "eval" (the first held-out split, scored
# often while recipes changed: a second dev split now), "test" (the sealed `test` and `length` splits).
HELD_OUT_SPLITS = ("eval", "dev", "test")



def check_counts(config: Any, section: str, names: tuple[str, ...], least: int = 1) -> None:
    """ValueError naming `section.name` when one of `config`'s counts `names` is not a whole number >= `least`."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{section}.{name} must be a whole number of at least {least}, got {value!r}")


def turn_char_limit(max_new_tokens: int) -> int:
    """The longest model turn kept in a chain whose turns get `max_new_tokens` each."""
    return max(16_000, 16 * max_new_tokens)


def field_notes(cls: type) -> dict[str, str]:
    """What each field of a settings dataclass is for, read from the comments in its source: those on the
    lines just above the field, then the one at the end of its line. The notebooks show a section's
    settings with these, so a setting is explained once, here."""
    import inspect
    import re

    notes: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("# ").strip())
            continue
        match = re.match(r"(\w+): [^=]+=(.*)$", text)
        if match and match.group(1) in {f.name for f in dataclasses.fields(cls)}:
            trailing = match.group(2).split("  # ", 1)[1].strip() if "  # " in match.group(2) else ""
            notes[match.group(1)] = " ".join(above + ([trailing] if trailing else []))
        above = []
    return notes


# --------------------------------------------------------------------------- the sections of a profile


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
    # Generated only, the sealed splits (`fcdpo.tasks.sealed_sets`, docs/protocol.md): `test`, disjoint by
    # question from every other split and the lab's data, and for math by gold computation from what the
    # student was trained on; `length`, harder than training (`length_difficulty`). Scored once per recipe,
    # every scoring written to the ledger (`fcdpo.ledger`).
    test: int = 0
    length: int = 0
    length_difficulty: dict[str, Any] = field(default_factory=dict)  # `difficulty`, updated with these
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
class AgentConfig:
    """How the agent runs a chain; one per profile (the `agent` section)."""

    syntax: str = "python"  # "python": the paper's `multiply(a=3, b=4)`; "json": native tool calls
    max_steps: int = 8  # model turns per chain
    max_errors: int = 3  # parse and execution errors before the chain is abandoned
    max_new_tokens: int = 96  # per model turn
    token_budget: int = 1024  # generated tokens per chain
    few_shot: int = 0  # gold chains of other problems shown in the system prompt
    max_calls_per_turn: int = 8  # native tool calls run from one model turn; further ones are an error

    def __post_init__(self) -> None:
        if self.syntax not in SYNTAXES:
            raise ValueError(f"agent.syntax must be one of {SYNTAXES}, got {self.syntax!r}")
        check_counts(self, "agent", ("max_steps", "max_errors", "max_new_tokens", "token_budget",
                                     "max_calls_per_turn"))
        check_counts(self, "agent", ("few_shot",), least=0)

    @property
    def max_turn_chars(self) -> int:
        """The longest model turn kept in a chain; longer text (a server that ignores `max_tokens`)
        is cut, so it is neither stored, sent back, nor written whole."""
        return turn_char_limit(self.max_new_tokens)


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
    lora_r: int = 16  # rank of the LoRA update matrices
    lora_alpha: int = 32  # LoRA scale: the update is multiplied by alpha / r
    lora_dropout: float = 0.05  # dropout on the LoRA input
    # the linear layers that get an adapter
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
    epochs: float = 1.0  # passes over the training pairs when max_steps is 0
    batch_size: int = 4  # pairs (DPO) or chains (SFT) per device and micro-batch
    grad_accumulation: int = 1  # micro-batches per optimizer step
    max_length: int = 1024  # tokens of prompt + chain; longer pairs are dropped and counted, never truncated
    warmup: float = 0.1  # learning-rate warmup: a fraction of the steps when < 1, else a number of steps
    gradient_checkpointing: bool | None = None  # None: on for GPUs, off on CPU
    # Speed, not results: run each batch's distinct first turns (the system prompt) once and share their
    # keys and values with the batch's rows (`fcdpo.prefix_attention.first_turn_groups`), in DPO and SFT,
    # packing rests short enough to share a row (`fcdpo.prefix_attention.first_turn_passes`); compute the
    # reference's log-probabilities once before training (TRL's `precompute_ref_log_probs`), kept in
    # `training/reference_log_probs/` for every seed trained on the same pairs and reference.
    shared_prefix: bool = False
    precompute_ref_log_probs: bool = False  # speed: the reference's log-probabilities once, for every seed
    # DPO: whether the rejected chain's final-answer turn counts in the loss. The teacher's wrong logic
    # chains almost never answer "False", so pushing their answers down teaches a label prior
    # (docs/tiny-lab.md); false leaves the rejected answer out and keeps the rest of the chain.
    rejected_answer_in_loss: bool = True
    # None: the student's own chat template; a name in fcdpo.chat_templates.CHAT_TEMPLATES or a .jinja file
    # (one that can render tool turns: Mistral-7B-Instruct-v0.2's own template refuses them).
    chat_template: str | None = None
    logging_steps: int = 5  # one row of the curves every this many steps
    eval_steps: int = 0  # evaluate on the validation pairs every this many steps; 0: once, at the end
    seed: int = 0  # adapter initialisation and data order
    # More training seeds: each method is also trained with each of these (adapter initialisation and
    # data order), as `training/<method>-s<seed>/`, so results can be given as a mean over seeds.
    extra_seeds: list[int] = field(default_factory=list)
    # The arms notebook 03 trains and notebook 04 evaluates: sft and dpo always, then any other arm of
    # the registry (`fcdpo.arms`: rpo, sft_dpo, sft_long, step_dpo, onpolicy_dpo, grpo, ...) named here.
    methods: list[str] = field(default_factory=lambda: ["dpo", "sft"])
    # Per-arm settings, e.g. {sft_dpo: {epochs: 1.0}}: any key of this section but the run's own
    # (methods, extra_seeds, arms), on top of the arm's fixed recipe (`fcdpo.arms.Arm.recipe`).
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    grpo: GRPOSettings = field(default_factory=GRPOSettings)  # the GRPO arms (GRPOSettings above)
    # onpolicy_dpo: rounds of sampling and DPO. Each round after the first samples the previous round's
    # model, starts from its adapter and takes it as the reference (iterative RPO, Pang et al. 2024,
    # with loss_type [sigmoid, sft]); every round gets the same steps.
    onpolicy_rounds: int = 1
    # onpolicy_dpo: the temperature the student's own chains are sampled at (None: rollouts.temperature,
    # the teacher's). A teacher sampled hot for varied pairs does not make the student's setting right.
    onpolicy_temperature: float | None = None

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(TrainingConfig)
        converted = {}
        for name, values in self.arms.items():
            if name not in arms.names():
                raise ValueError(f"training.arms names {name!r}, which is not an arm; the arms are {list(arms.names())}")
            if not isinstance(values, dict):
                raise ValueError(f"training.arms.{name} must be a mapping of training settings, got {values!r}")
            wrong = sorted(set(values) - set(hints) | set(values) & set(_RUN_KEYS))
            if wrong:
                raise ValueError(f"training.arms.{name}: {wrong} cannot be set per arm; the keys are "
                                 f"{sorted(set(hints) - set(_RUN_KEYS))}")
            converted[name] = {key: _convert(hints[key], value, f"training.arms.{name}.{key}")
                               for key, value in values.items()}
        self.arms = converted


# Settings of a whole run, not of one arm: which arms and seeds train, and the per-arm section itself.
_RUN_KEYS = ("methods", "extra_seeds", "arms")


def arm_run(settings: TrainingConfig, method: str, seed: int | None = None) -> tuple[TrainingConfig, str]:
    """The settings `method` trains with at `seed`, and its run label.

    The profile's `training` section, then the arm's fixed recipe (`fcdpo.arms.Arm.recipe`, e.g. plain
    DPO's sigmoid loss), then the profile's `training.arms.<method>`; with a `seed` other than
    `training.seed`, that seed, and the label `<method>-s<seed>` (`runs.seed_label`).
    """
    arm = arms.get(method)
    chosen = dataclasses.replace(settings, **{**arm.recipe, **settings.arms.get(method, {})})
    if seed is None or seed == settings.seed:
        return chosen, method
    return dataclasses.replace(chosen, seed=seed), runs.seed_label(method, seed, settings.seed)


@dataclass
class EvaluationConfig:
    """How every model of the run is evaluated on held-out problems (`fcdpo.evaluation`, notebook 04)."""

    samples: int = 1  # chains per problem; 1 with temperature 0 is greedy decoding, more gives pass@k
    temperature: float = 0.0
    batch_size: int = 32  # chains advanced together
    seed: int = 0  # sampling and bootstrap seed
    resamples: int = 1000  # bootstrap resamples of the 95% accuracy intervals
    # The held-out split scored: "dev" (generated tasks) while choosing a recipe; "test" for the sealed
    # `test` and `length` splits, once per recipe (docs/protocol.md); "eval", the first held-out split,
    # scored while recipes changed and so a second dev split.
    split: str = "eval"
    gsm8k_path: str | None = None  # GSM8K test.jsonl (relative: to the repository root); None skips it
    folio_path: str | None = None  # FOLIO validation jsonl; None skips it
    benchmark_limit: int | None = None  # evaluate only the first problems of each benchmark
    # Parameter counts by model label ("teacher", ...) for models that are not local (an endpoint).
    parameters: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.split not in HELD_OUT_SPLITS:
            raise ValueError(f"evaluation.split must be one of {HELD_OUT_SPLITS}, got {self.split!r}")


@dataclass
class MultiAgentConfig:
    """How the multi-LLM agent runs a chain (see the module docstring for the rules)."""

    syntax: str = "python"  # the caller's call syntax: "python" or "json" (native tool calls)
    max_steps: int = 8  # planner turns per chain
    max_errors: int = 3  # parse and execution errors before the chain is abandoned
    max_new_tokens: int = 96  # per model turn, every role
    token_budget: int = 2048  # generated tokens per chain, all roles together
    # The planner's thought restates the last result ("Result: 5\nI will call multiply next.\nNext: caller")
    # in the chains GLPFT trains on and in the gold histories of the step metrics, so that what the caller
    # and the summarizer must copy stands in the turn just before theirs. The agent itself runs whatever
    # the planner writes; this shapes what the planner learns to write.
    carry_results: bool = False

    def __post_init__(self) -> None:
        if self.syntax not in SYNTAXES:
            raise ValueError(f"multi_agent.syntax must be one of {SYNTAXES}, got {self.syntax!r}")
        check_counts(self, "multi_agent", ("max_steps", "max_errors", "max_new_tokens", "token_budget"))

    @property
    def max_turn_chars(self) -> int:
        """The longest role turn kept in a chain; longer text is cut (as `AgentConfig.max_turn_chars`)."""
        return turn_char_limit(self.max_new_tokens)


ROLES = ("planner", "caller", "summarizer")  # the multi-LLM agent's roles (`fcdpo.multi_agent`)
GLPFT_STARTS = ("backbone", "student", "sft")


@dataclass
class GLPFTConfig:
    """How GLPFT trains: LoRA shape, steps per stage, optimizer, lengths, seed."""

    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # The single agent's DPO / SFT adapters' targets (`training.target_modules`), so one role adapter
    # has as many trainable parameters as the single agent's one adapter.
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    backbone_steps: int = 200  # stage 1 optimizer steps
    role_steps: int = 100  # stage 2 optimizer steps, per role
    learning_rate: float = 2e-4
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 2048  # tokens per training row; longer rows are cut (dropped if no trained token is left)
    seed: int = 0
    load_in_4bit: bool = False  # QLoRA: the base in 4-bit NF4, loaded as the single agent's training loads it
    gradient_checkpointing: bool = False  # saves GPU memory on long rows; no use on tiny CPU models
    shared_prefix: bool = False  # as `training.shared_prefix`: each batch's distinct first turns run once
    # None: the student's own chat template; else as `training.chat_template` (a name in
    # fcdpo.chat_templates.CHAT_TEMPLATES or a .jinja file). It must render consecutive assistant turns.
    chat_template: str | None = None
    # alpha-UMi's budget shape (Shen et al. 2024, section 4.1: the backbone 2 epochs on all data, then the
    # planner and caller 1 epoch and the summarizer 2 on their own samples): passes over a stage's rows
    # instead of a step count. 0 (or a role left out) keeps `backbone_steps` / `role_steps`.
    backbone_epochs: float = 0.0
    role_epochs: dict[str, float] = field(default_factory=dict)
    # What each role adapter starts from: "backbone" (stage 1 trains one on whole chains: GLPFT),
    # "student" (a fresh LoRA on the student, no stage 1: alpha-UMi's one-stage ablation) or "sft" (the
    # single agent's SFT adapter of the same seed, no stage 1: a backbone that already solves alone).
    start: str = "backbone"

    def __post_init__(self) -> None:
        for name in ("lora_r", "backbone_steps", "role_steps", "batch_size", "gradient_accumulation_steps",
                     "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"glpft.{name} must be at least 1, got {getattr(self, name)}")
        if self.start not in GLPFT_STARTS:
            raise ValueError(f"glpft.start must be one of {GLPFT_STARTS}, got {self.start!r}")
        unknown = sorted(set(self.role_epochs) - set(ROLES))
        if unknown:
            raise ValueError(f"glpft.role_epochs: unknown role(s) {unknown}; the roles are {list(ROLES)}")
        for name, epochs in {"backbone_epochs": self.backbone_epochs,
                             **{f"role_epochs.{r}": e for r, e in self.role_epochs.items()}}.items():
            if not isinstance(epochs, (int, float)) or isinstance(epochs, bool) or epochs < 0:
                raise ValueError(f"glpft.{name} must be a number of passes, 0 or more; got {epochs!r}")


@dataclass
class MultiAgentSection:
    """alpha-UMi's multi-LLM agent: how it runs (`agent`) and how GLPFT trains its adapters (`glpft`)."""

    agent: MultiAgentConfig = field(default_factory=MultiAgentConfig)
    glpft: GLPFTConfig = field(default_factory=GLPFTConfig)
    # The variants notebook 03 trains (`glpft.start` of each): "backbone" is GLPFT; "student" and "sft" are
    # alpha-UMi's one-stage ablation and roles started from the single agent's SFT adapter.
    starts: list[str] = field(default_factory=lambda: ["backbone"])
    extra_seeds: list[int] = field(default_factory=list)  # beside `glpft.seed`, as `training.extra_seeds`

    def __post_init__(self) -> None:
        wrong = [start for start in self.starts if start not in GLPFT_STARTS]
        if wrong or not self.starts:
            raise ValueError(f"multi_agent.starts: {wrong or 'empty'}; each must be one of {GLPFT_STARTS}")
        if self.glpft.seed in self.extra_seeds or len(set(self.extra_seeds)) != len(self.extra_seeds):
            raise ValueError(f"multi_agent.extra_seeds {self.extra_seeds} repeats a seed (glpft.seed is {self.glpft.seed})")


# --------------------------------------------------------------------------- the tiny lab (a profile's `lab`)


@dataclass
class SFTSettings:
    """How `train_sft` trains: a fixed number of optimizer steps, so a build is reproducible.

    The defaults are the tiny lab's recipe: AdamW with betas (0.9, 0.95) and no weight decay, a
    short warmup then cosine decay to `min_lr_ratio` × `learning_rate`, gradient clipping at 1.0,
    fp32 (CPUs without bf16 units run bf16 autocast slower), loss on assistant turns only.
    """

    steps: int = 1000
    batch_size: int = 16
    learning_rate: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 1024
    threads: int = 2  # torch CPU threads while training
    seed: int = 0


@dataclass
class AnswerDrill:
    """Extra training after a lab model's SFT: gold chains of `tasks`, loss on the final answer turn only.

    A tiny student can compute a verdict (the last tool result) and still answer something else; the
    drill was meant to teach it to answer what it computed without more practice at the calls
    themselves. The steps start from the finished SFT model, with their own warmup and cosine
    schedule. On the shipped student it did not work (docs/tiny-lab.md, "An answer drill for the
    student"): no profile sets it.
    """

    tasks: list[str] = field(default_factory=list)  # empty: every task
    sft: SFTSettings = field(default_factory=lambda: SFTSettings(steps=50, learning_rate=1e-3, warmup_steps=5))


@dataclass
class ModelRecipe:
    """One tiny-lab model: its size, how many gold chains per task it learns from, how it trains."""

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int | None = None  # default 4 × hidden_size
    problems_per_task: int = 5000  # distinct gold chains per task (cycled if the steps need more)
    # Share of the training rows per task, e.g. {math: 3, fol: 1}; default: equal shares. Tasks
    # compete for a tiny model's capacity, and a hard task's loss can crowd out an easier one.
    task_weights: dict[str, float] | None = None
    sft: SFTSettings = field(default_factory=SFTSettings)
    seed: int = 0  # weight initialisation
    answer_drill: AnswerDrill | None = None  # after `sft`: answer-turn-only steps (see AnswerDrill)


@dataclass
class LabConfig:
    """How the tiny lab builds its tokenizer, teacher and student (a profile's `lab` section).

    Which tasks, functions, difficulty and call syntax the models learn come from the profile
    (`fcdpo.tinylab.profile_lab`) or the caller (`build_lab`), so the lab always trains on the exact prompts the
    agent will use. Training problems are drawn from `data_seed`, and any whose question is held out
    (the profile's train and eval problems) is skipped.
    """

    vocab_size: int = 1024
    # A folder (relative to the repository root) holding a built, shipped lab with its manifest.
    # When set, runs use it after checking its hashes and never rebuild unless asked (`make lab`).
    shipped: str | None = None
    whole_words: bool = False  # keep the tasks' names and concepts single tokens (see build_tokenizer)
    data_seed: int = 1000
    teacher: ModelRecipe = field(default_factory=ModelRecipe)
    student: ModelRecipe = field(
        default_factory=lambda: ModelRecipe(
            hidden_size=128, num_layers=2, num_heads=2, problems_per_task=500, sft=SFTSettings(steps=150)
        )
    )


# --------------------------------------------------------------------------- building sections from YAML data

# Counts that must be at least 1 (or at least 0), by section; a zero or negative one is a mistake.
_AT_LEAST = {
    "TaskConfig": {"train": 0, "eval": 0},
    "RolloutConfig": {"k": 1, "batch_size": 1},
    "PreferenceConfig": {"pairs_per_prompt": 1},
    "GRPOSettings": {"generations": 2, "problems": 1},
    "TrainingConfig": {"lora_r": 1, "max_steps": 0, "batch_size": 1, "grad_accumulation": 1, "max_length": 1,
                       "logging_steps": 1, "eval_steps": 0, "onpolicy_rounds": 1},
    "EvaluationConfig": {"samples": 1, "batch_size": 1, "resamples": 1},
    # the lab section (LabConfig, read with `build` by fcdpo.config and by the lab itself)
    "LabConfig": {"vocab_size": 1},
    "ModelRecipe": {"hidden_size": 1, "num_layers": 1, "num_heads": 1, "intermediate_size": 1,
                    "problems_per_task": 1},
    "SFTSettings": {"steps": 1, "batch_size": 1, "warmup_steps": 0, "max_length": 1, "threads": 1},
}


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
