"""GLPFT: alpha-UMi's two-stage fine-tuning of the planner, caller and summarizer (TRL SFT + PEFT LoRA).

Layer: stages; imports the multi-agent, its role data and the agent, rollouts, tasks, the profile, the student as `finetuning`
finds it, loading, messages, settings and the run folder's layout.

    report = run_glpft(profile)                       # teacher rollouts → <run>/training/glpft/*
    team = glpft_role_backends(profile)               # the student, loaded once, with the three adapters
    agent = MultiAgent(profile.task("math"), team, profile.multi_agent.agent)

    # the same, step by step
    data = glpft_data(teacher_trajectories(profile), profile_tasks(profile))
    report = train_glpft(student_reference(profile), data, runs.training_dir(profile.run_path, "glpft"), GLPFTConfig())

The data are the teacher's single-agent rollouts, the same ones the single agent's preference pairs
come from. Each correct, clean chain becomes a multi-agent chain (`fcdpo.roles.role_chain`):
before each call a planner turn `I will call <name> next.` / `Next: caller`, the caller's call (written
the canonical way), the observation; after the last one `I have the answer.` / `Next: conclusion` and
the summarizer's `Final answer: X`. Identical converted chains are kept once.

- Stage 1 (`backbone`): one LoRA adapter on the base, trained on whole multi-agent chains under the
  team's system prompt, loss on every role's turns (TRL `assistant_only_loss`).
- Stage 2 (`planner`, `caller`, `summarizer`): each role adapter starts as a copy of the backbone
  adapter and is trained on its role's samples only: the prompt is exactly what the agent sends the
  role (its own system prompt, the history as context), the completion is the role's turn, and only
  the completion carries loss (TRL prompt-completion data, `completion_only_loss`).

The base model is loaded once (4-bit NF4 on GPU when asked) and never changes; each stage adds its
adapter, trains it, saves it and removes it again (`PeftModel.unload`). Outputs:
`<output_dir>/{backbone,planner,caller,summarizer}` (PEFT adapter folders, each with the tokenizer
training used) and `report.json`.

Trainable parameters: a LoRA adapter of rank r on linear layers W (d_in → d_out) adds r·(d_in + d_out)
per layer, so one adapter has r · Σ (d_in + d_out) over the targeted layers (`lora_parameter_count`).
The multi-LLM agent runs three such adapters (3× one adapter) where the single agent runs one.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from fcdpo import runs
from fcdpo.config import student_spec
from fcdpo.finetuning import student_reference  # the student every arm trains, found one way
from fcdpo.messages import arrow_safe
from fcdpo.multi_agent import ROLES, MultiAgent, RoleBackends, load_adapter_role_backends
from fcdpo.roles import role_chain, role_samples
from fcdpo.settings import GLPFTConfig, MultiAgentConfig

if TYPE_CHECKING:
    import torch

    from fcdpo.agent import Trajectory
    from fcdpo.tasks import Task

STAGES = ("backbone", *ROLES)


# --------------------------------------------------------------------------- data


@dataclass
class GLPFTData:
    """Training rows for both stages, built from single-agent trajectories by `glpft_data`."""

    chains: list[list[dict[str, Any]]]  # stage 1: whole multi-agent chains (TRL conversational rows)
    samples: dict[str, list[dict[str, Any]]]  # stage 2: per role, TRL prompt-completion rows
    counts: dict[str, int]  # trajectories, correct, unclean and duplicates (skipped), chains, samples per role
    chain_tools: list[str | None] = field(default_factory=list)  # per chain: tool schemas (JSON) in json syntax


def glpft_data(trajectories: Iterable["Trajectory"], tasks: Mapping[str, "Task"],
               carry_results: bool = False) -> GLPFTData:
    """Multi-agent chains and role samples from single-agent trajectories, deterministically.

    Correct chains are converted with `role_chain` in the order given; chains it refuses (thoughts,
    errors, several calls per turn) are counted as `unclean`, repeats of an already converted chain
    as `duplicates`. `tasks` maps each trajectory's task name to its `Task` (the profile's configured
    tasks, so prompts list the same functions the agent offers). Chains in json syntax carry their
    tools' schemas (a `tools` column, which TRL passes to the chat template). With `carry_results`
    the planner's thoughts restate the last result (`MultiAgentConfig.carry_results`).
    """
    counts = {"trajectories": 0, "correct": 0, "unclean": 0, "duplicates": 0, "chains": 0}
    chains: list[list[dict[str, Any]]] = []
    chain_tools: list[str | None] = []
    samples: dict[str, list[dict[str, Any]]] = {role: [] for role in ROLES}
    seen: set[str] = set()
    for trajectory in trajectories:
        counts["trajectories"] += 1
        if not trajectory.correct:
            continue
        counts["correct"] += 1
        task = tasks.get(trajectory.task)
        if task is None:
            raise ValueError(f"trajectory {trajectory.id} is of task {trajectory.task!r}, which is not among "
                             f"the tasks given ({sorted(tasks)})")
        chain = role_chain(trajectory, task, carry_results)
        if chain is None:
            counts["unclean"] += 1
            continue
        key = json.dumps(chain, sort_keys=True, ensure_ascii=False)
        if key in seen:
            counts["duplicates"] += 1
            continue
        seen.add(key)
        tools = json.dumps(task.functions().schemas()) if any(m.get("tool_calls") for m in chain) else None
        chains.append(chain)
        chain_tools.append(tools)
        for role, rows in role_samples(chain, task).items():
            samples[role].extend(rows if tools is None else [{**row, "tools": tools} for row in rows])
    counts["chains"] = len(chains)
    for role in ROLES:
        counts[f"{role}_samples"] = len(samples[role])
    return GLPFTData(chains, samples, counts, chain_tools)


def _unnamed(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages without the role names of assistant turns ("planner", "caller", ...), which chat
    templates do not render; training text is the same with or without them."""
    return [{k: v for k, v in m.items() if not (k == "name" and m.get("role") == "assistant")} for m in messages]


def _rows(data: GLPFTData, stage: str) -> list[dict[str, Any]]:
    if stage == "backbone":
        rows = [{"messages": arrow_safe(_unnamed(chain)), "tools": tools}
                for chain, tools in zip(data.chains, data.chain_tools)]
    else:
        rows = [{"prompt": arrow_safe(_unnamed(s["prompt"])), "completion": arrow_safe(_unnamed(s["completion"])),
                 "tools": s.get("tools")} for s in data.samples[stage]]
    if all(row["tools"] is None for row in rows):  # python syntax: the functions are in the prompt text
        for row in rows:
            del row["tools"]
    return rows


# --------------------------------------------------------------------------- training


def lora_parameter_count(model: "torch.nn.Module", r: int, target_modules: Iterable[str]) -> int:
    """r · Σ (d_in + d_out) over the linear layers whose name ends in one of `target_modules`.

    This is the number of parameters one LoRA adapter of rank `r` on those layers trains (A is
    r × d_in, B is d_out × r), computed from the model before any adapter is added.
    """
    import torch

    targets = set(target_modules)
    return sum(
        r * (module.in_features + module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets
    )


def _trainable(model: "torch.nn.Module") -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def stage_epochs(stage: str, config: GLPFTConfig) -> float:
    """The passes over its rows `stage` trains for, 0 where the config gives a step count instead."""
    return config.backbone_epochs if stage == "backbone" else config.role_epochs.get(stage, 0.0)


def stage_steps(stage: str, rows: int, config: GLPFTConfig) -> int:
    """Optimizer steps of `stage` over `rows` training rows: `stage_epochs` passes of
    `batch_size × gradient_accumulation_steps` rows each, rounded up, or the config's step count."""
    epochs = stage_epochs(stage, config)
    if epochs <= 0:
        return config.backbone_steps if stage == "backbone" else config.role_steps
    return max(1, math.ceil(epochs * rows / (config.batch_size * config.gradient_accumulation_steps)))


def stage_trainer(stage: str, model: Any, tokenizer: Any, data: GLPFTData, config: GLPFTConfig,
                  output_dir: str | Path) -> Any:
    """The TRL `SFTTrainer` of one stage, its dataset tokenized and labelled, ready to `train()`.

    `stage` is "backbone" (whole chains, loss on every assistant turn) or a role (prompt-completion
    rows, loss on the completion only); `model` is the PEFT model whose active adapter trains. Rows
    whose trained tokens all lie beyond `max_length` are dropped by TRL; none left is a ValueError.
    """
    import datasets
    from trl import SFTConfig, SFTTrainer

    from fcdpo.finetuning import shared_prefix_sft_trainer_class
    from fcdpo.loading import trainer_basics
    from fcdpo.progress import quiet_bars

    if stage not in STAGES:
        raise ValueError(f"unknown GLPFT stage {stage!r}; expected one of {STAGES}")
    rows = _rows(data, stage)
    if not rows:
        raise ValueError(f"no {stage} rows: the teacher rollouts hold no clean correct chain to learn from")
    steps = stage_steps(stage, len(rows), config)
    whole_chains = stage == "backbone"
    args = SFTConfig(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=min(10, steps // 10),
        max_length=config.max_length,
        # Stage 1 learns every role's turns of a whole chain; stage 2 only its role's turn.
        assistant_only_loss=whole_chains,
        completion_only_loss=not whole_chains,
        # mixed precision in the compute dtype: fp16 on a T4, never its emulated bf16
        **trainer_basics(config.seed, max(1, steps // 10), checkpointing=config.gradient_checkpointing),
    )
    with quiet_bars():
        trainer_class = shared_prefix_sft_trainer_class() if config.shared_prefix else SFTTrainer
        trainer = trainer_class(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                                processing_class=tokenizer)
    if not len(trainer.train_dataset):
        raise ValueError(f"every one of the {len(rows)} {stage} rows has its trained turns beyond "
                         f"max_length={config.max_length} tokens; raise glpft.max_length")
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # a raw dict per log; each stage ends with one line of its own
    return trainer


def _train_stage(stage: str, model: Any, tokenizer: Any, data: GLPFTData, config: GLPFTConfig) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        trainer = stage_trainer(stage, model, tokenizer, data, config, scratch)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return {
        "steps": trainer.args.max_steps,
        "epochs": stage_epochs(stage, config) or None,
        "rows": len(data.chains) if stage == "backbone" else len(data.samples[stage]),
        "rows_kept": len(trainer.train_dataset),
        "seconds": round(seconds, 1),
        "first_loss": round(losses[0], 4) if losses else None,
        "loss": round(losses[-1], 4) if losses else None,
    }


def train_glpft(
    model: str | Path,
    data: GLPFTData,
    output_dir: str | Path,
    config: GLPFTConfig | None = None,
    *,
    start_adapter: str | Path | None = None,
    on_stage_start: Callable[[str, Any], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """GLPFT's stages on the base `model` (a folder or hub id); writes an adapter per stage.

    `config.start` says what each role adapter starts from: a copy of the backbone adapter that
    stage 1 trains first ("backbone", the four stages of `STAGES`), a fresh LoRA ("student", the three
    roles only), or a copy of `start_adapter` ("sft": the single agent's SFT adapter, which must
    be given). `on_stage_start(stage, peft_model)` is called before each stage trains, with the
    adapter in its initial state.

    Returns (and writes to `<output_dir>/report.json`) the config, the data counts, per stage its
    trainable parameters, rows, steps, seconds and losses, and `trainable_parameters`: one adapter's
    count and the multi-LLM agent's total (three role adapters).
    """
    import torch
    from peft import get_peft_model

    from fcdpo.loading import load_adapter, load_base, load_tokenizer, lora_config

    config = config or GLPFTConfig()
    if config.start == "sft" and start_adapter is None:
        raise ValueError("glpft.start 'sft' needs the single agent's SFT adapter (start_adapter); train the sft arm first")
    stages = STAGES if config.start == "backbone" else ROLES
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    model_ref = str(model)
    # The single agent's training loads it the same way: the configured template, a pad token.
    tokenizer = load_tokenizer(model_ref, config.chat_template, "multi_agent.glpft.chat_template")
    base = load_base(model_ref, config.load_in_4bit, trainable=True,
                     gradient_checkpointing=config.gradient_checkpointing)
    expected = lora_parameter_count(base, config.lora_r, config.target_modules)
    report: dict[str, Any] = {"base": model_ref, "config": asdict(config), "data": dict(data.counts), "stages": {}}
    started = time.perf_counter()
    for stage in stages:
        torch.manual_seed(config.seed)  # the same LoRA initialisation for the same seed
        if stage == "backbone" or config.start == "student":
            lora = lora_config(config.lora_r, config.lora_alpha, config.lora_dropout, config.target_modules)
            peft_model = get_peft_model(base, lora)
        else:
            source = output / "backbone" if config.start == "backbone" else Path(start_adapter)
            peft_model = load_adapter(base, source, trainable=True)
        trainable = _trainable(peft_model)
        if on_stage_start is not None:
            on_stage_start(stage, peft_model)
        stats = _train_stage(stage, peft_model, tokenizer, data, config)
        stats["trainable_parameters"] = trainable
        report["stages"][stage] = stats
        log(f"glpft {stage}: {stats['rows_kept']} rows, {stats['steps']} steps, {trainable:,} trainable "
            f"parameters, loss {stats['first_loss']} → {stats['loss']} in {stats['seconds']:.0f} s")
        peft_model.save_pretrained(str(output / stage))
        tokenizer.save_pretrained(str(output / stage))  # with its chat template, read back at inference
        base = peft_model.unload()  # the base without LoRA layers, for the next stage
    report["start"] = config.start if config.start != "sft" else f"sft: {start_adapter}"
    report["total_steps"] = sum(stats["steps"] for stats in report["stages"].values())
    one = report["stages"][stages[0]]["trainable_parameters"]
    report["trainable_parameters"] = {
        "per_adapter": one,
        "formula": f"r · Σ(d_in + d_out) over {list(config.target_modules)} = {expected}",
        "multi_agent": sum(report["stages"][role]["trainable_parameters"] for role in ROLES),
        "base": base.num_parameters(),  # counts 4-bit packed weights at their full size
    }
    report["seconds"] = round(time.perf_counter() - started, 1)
    runs.write_report(output, report)
    return report


def glpft_adapters(output_dir: str | Path) -> dict[str, Path]:
    """The role adapter folders `train_glpft` writes under `output_dir`."""
    return {role: Path(output_dir) / role for role in ROLES}


# --------------------------------------------------------------------------- profile level


def teacher_trajectories(profile: Any) -> list["Trajectory"]:
    """The teacher's rollouts of every task of the profile (`<run>/rollouts/teacher-<task>.jsonl`)."""
    from fcdpo.rollouts import read_trajectories

    trajectories = []
    for name in profile.tasks:
        path = runs.rollouts_file(profile.run_path, name)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no teacher rollouts for task {name!r}; run notebook 01 first")
        trajectories.extend(read_trajectories(path))
    return trajectories


def profile_tasks(profile: Any) -> dict[str, "Task"]:
    """The profile's tasks as configured (its function subsets when it sets them)."""
    from fcdpo.tasks import get_task

    return {name: profile.task(name) if hasattr(profile, "task") else get_task(name) for name in profile.tasks}


# The multi-LLM variants of alpha-UMi's Table 1, by `glpft.start`: the training folder's name and the
# evaluation's model label (each with `-s<seed>` at a seed other than the section's own).
VARIANTS = {"backbone": ("glpft", "multi"), "student": ("glpft_one_stage", "multi_one_stage"),
            "sft": ("glpft_sft", "multi_sft")}


def glpft_settings(profile: Any, config: GLPFTConfig | None = None, *, seed: int | None = None,
                   start: str | None = None) -> GLPFTConfig:
    """The GLPFT settings a profile trains with: `config` (default: the profile's `multi_agent.glpft`),
    the student spec's `load_in_4bit` and `training.chat_template` where the config leaves them unset,
    then `seed` and `start` when given."""
    if config is None:
        section = getattr(profile, "multi_agent", None)
        config = getattr(section, "glpft", None) or GLPFTConfig()
    changes: dict[str, Any] = {}
    if profile.student.get("load_in_4bit") and not config.load_in_4bit:
        changes["load_in_4bit"] = True
    training = getattr(profile, "training", None)
    if config.chat_template is None and getattr(training, "chat_template", None):
        changes["chat_template"] = training.chat_template
    if seed is not None:
        changes["seed"] = seed
    if start is not None:
        changes["start"] = start
    return GLPFTConfig(**{**asdict(config), **changes}) if changes else config


def _default_seed(profile: Any) -> int:
    section = getattr(profile, "multi_agent", None)
    return getattr(getattr(section, "glpft", None), "seed", GLPFTConfig().seed)


def glpft_label(profile: Any, start: str = "backbone", seed: int | None = None, *, model: bool = False) -> str:
    """The training folder's name (`glpft`, `glpft_one_stage-s1`, ...) of a variant and seed, or with
    `model` its evaluation label (`multi`, `multi_one_stage-s1`, ...)."""
    if start not in VARIANTS:
        raise ValueError(f"unknown GLPFT start {start!r}; expected one of {tuple(VARIANTS)}")
    default = _default_seed(profile)
    return runs.seed_label(VARIANTS[start][1 if model else 0], default if seed is None else seed, default)


def _carry_results(profile: Any) -> bool:
    return bool(getattr(getattr(getattr(profile, "multi_agent", None), "agent", None), "carry_results", False))


def run_glpft(profile: Any, config: GLPFTConfig | None = None, log: Callable[[str], None] = print, *,
              seed: int | None = None, start: str | None = None) -> dict[str, Any]:
    """GLPFT for a profile: teacher rollouts → role data → `<run>/training/<glpft_label>/*` adapters + report.

    Settings as `glpft_settings`. With `start: sft` the roles start from the sft arm's adapter of the
    same seed (`training/sft[-s<seed>]`), which must be trained first. The role data follow the
    profile's `multi_agent.agent.carry_results`.
    """
    config = glpft_settings(profile, config, seed=seed, start=start)
    start_adapter = None
    if config.start == "sft":
        sft = runs.seed_label("sft", config.seed, profile.training.seed)
        start_adapter = runs.trained_adapter(profile.run_path, sft)
        if start_adapter is None:
            raise FileNotFoundError(f"glpft.start 'sft' needs the sft arm's adapter {sft!r} in "
                                    f"{runs.training_dir(profile.run_path, sft)}; train it first (notebook 03)")
    data = glpft_data(teacher_trajectories(profile), profile_tasks(profile), _carry_results(profile))
    log(f"glpft data: {data.counts}")
    output = runs.training_dir(profile.run_path, glpft_label(profile, config.start, config.seed))
    return train_glpft(student_reference(profile), data, output, config, start_adapter=start_adapter, log=log)


def train_multi_llm(profile: Any, starts: Iterable[str] | None = None, seeds: Iterable[int] | None = None,
                    log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Every multi-LLM variant and seed the profile asks for (`multi_agent.starts` × the section's seed and
    `multi_agent.extra_seeds`, or the given ones), each trained once: a variant whose `report.json` is
    on disk is read back, so a stopped run resumes at the first one missing. Returns the reports by
    training folder name."""
    section = getattr(profile, "multi_agent", None)
    starts = list(starts if starts is not None else getattr(section, "starts", ["backbone"]))
    default = _default_seed(profile)
    seeds = list(seeds if seeds is not None else [default, *getattr(section, "extra_seeds", [])])
    reports: dict[str, dict[str, Any]] = {}
    for start in starts:
        for seed in seeds:
            label = glpft_label(profile, start, seed)
            done = runs.training_dir(profile.run_path, label) / "report.json"
            if done.exists():
                reports[label] = json.loads(done.read_text())
                log(f"{label}: trained already ({done}); kept")
                continue
            reports[label] = run_glpft(profile, log=log, seed=seed, start=start)
    return reports


def glpft_role_backends(profile: Any, output_dir: str | Path | None = None) -> RoleBackends:
    """The student base loaded once with the three GLPFT role adapters (for every task's agent).

    The student spec's hf options (load_in_4bit, device, dtype, batch_size) apply; adapters are read
    from `output_dir` (default `<run>/training/glpft`).
    """
    options = {k: v for k, v in student_spec(profile).items() if k in ("load_in_4bit", "device", "dtype", "batch_size")}
    adapters = glpft_adapters(output_dir or runs.training_dir(profile.run_path, "glpft"))
    return load_adapter_role_backends(student_reference(profile), adapters, **options)


def glpft_agent(profile: Any, task: "Task", config: MultiAgentConfig | None = None,
                output_dir: str | Path | None = None, backends: RoleBackends | None = None) -> MultiAgent:
    """The trained multi-LLM agent for `task` (`backends` default: `glpft_role_backends(profile, output_dir)`).

    `config` defaults to the profile's `multi_agent.agent` section, or the defaults when it has none.
    Pass `backends` to share one loaded base between the agents of several tasks.
    """
    if config is None:
        config = getattr(getattr(profile, "multi_agent", None), "agent", None) or MultiAgentConfig()
    return MultiAgent(task, backends or glpft_role_backends(profile, output_dir), config)


def multi_agent_models(profile: Any) -> dict[str, tuple[Callable[["Task"], MultiAgent], int]]:
    """Notebook 04's multi-LLM agents: for every trained variant and seed (`glpft_label`, a
    `report.json` on disk), its evaluation label → (a factory `task -> MultiAgent` over its adapters,
    one base with three LoRA adapters switched per role, and the parameters it counts as: the
    student's base). Empty when notebook 03 trained none."""
    config = getattr(getattr(profile, "multi_agent", None), "agent", None) or MultiAgentConfig()
    found: dict[str, tuple[Callable[["Task"], MultiAgent], int]] = {}
    model_names = dict(VARIANTS.values())  # training folder name → evaluation label
    for folder in runs.glpft_dirs(profile.run_path):
        name, _, seed = folder.name.partition("-s")
        if name not in model_names or (seed and not seed.isdigit()) or not (folder / "report.json").exists():
            continue
        base_parameters = json.loads((folder / "report.json").read_text())["trainable_parameters"]["base"]
        found[model_names[name] + (f"-s{seed}" if seed else "")] = (_team_factory(profile, folder, config),
                                                                    base_parameters)
    return found


def _team_factory(profile: Any, folder: Path, config: MultiAgentConfig) -> Callable[["Task"], MultiAgent]:
    """`task -> MultiAgent` over the adapters in `folder`, loading them at the first call (a run with
    many variants loads only those it evaluates) and sharing that load between tasks."""
    team: list[RoleBackends] = []

    def agent(task: "Task") -> MultiAgent:
        if not team:
            team.append(glpft_role_backends(profile, folder))
        return MultiAgent(task, team[0], config)

    return agent


def multi_agent_model(profile: Any) -> tuple[Any, int] | None:
    """The default variant at its own seed from `multi_agent_models` (label `multi`), or None."""
    return multi_agent_models(profile).get("multi")
