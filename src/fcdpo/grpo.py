"""GRPO with the task's functions: the student learns from its own chains, rewarded by the task's answer check.

Layer: stages; imports finetuning, the agent, backends, tasks, settings and the run folder's layout.

    result = train_grpo(profile)            # runs/<profile>/training/grpo/{adapter,curves.csv,report.json}
    result = train_from_profile(cfg, "grpo")  # the same, as one of fcdpo.training's methods

Built on TRL's `GRPOTrainer` with a `rollout_func`: TRL's own tool loop parses the chat template's tool
calls, not the paper's Python-call syntax (`add(a=3, b=4)`), so every group of chains is run by
fcdpo's `Agent` on the policy being trained (`HFBackend.from_loaded`), exactly as the evaluation runs
the student. Each chain is then rendered with the chat template into prompt tokens and completion tokens
(the model's turns with the tool results and feedback turns between them), and `env_mask` (TRL's
tool mask) is 1 on the model's own turns only: tool results and feedback carry no weight in the loss,
as in DPO (`fcdpo.finetuning.assistant_tokens` gives both masks).

Rewards (`answer_reward`, `format_reward`) read the chain the agent ran: 1 when the task's answer check
accepts its final answer, and a small term (`training.grpo.format_weight`) when the chain ended with a
final answer and no parse or call error.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from fcdpo import runs
from fcdpo.agent import Agent, Trajectory, prompt_messages
from fcdpo.finetuning import (
    TrainingError,
    TrainingResult,
    adapter_dtype_for_training,
    assistant_tokens,
    curve_writer,
    is_number,
    launched_processes,
    load_student,
    lora_config,
    memory_snapshot,
    resolve_steps,
    student_reference,
    trainer_arguments,
    write_curves,
)
from fcdpo.settings import TrainingConfig, arm_run

if TYPE_CHECKING:
    from datasets import Dataset

    from fcdpo.agent import AgentConfig
    from fcdpo.tasks import Problem, Task


def grpo_dataset(tasks: dict[str, "Task"], problems: dict[str, list["Problem"]], agent: "AgentConfig") -> "Dataset":
    """One row per training problem: `prompt` (the agent's opening messages), `task`, `problem_id`, `gold`."""
    from datasets import Dataset

    rows = []
    for name, items in problems.items():
        shots = Agent(tasks[name], backend=None, config=agent)._shots
        for problem in items:
            rows.append({"prompt": prompt_messages(problem, tasks[name], agent, shots), "task": name,
                         "problem_id": problem.id, "gold": problem.answer})
    if not rows:
        raise TrainingError("GRPO needs training problems; the profile has none")
    return Dataset.from_list(rows)


def chain_tokens(tokenizer: Any, trajectory: Trajectory, tools: list[dict] | None = None) -> dict[str, list[int]]:
    """A chain as GRPO inputs: `prompt_ids` (the opening, with the generation prompt), `completion_ids`
    (the rest of the chain as the chat template renders it) and `env_mask` (1 on the model's own turns).

    Raises TrainingError when the rendered prompt is not a token prefix of the rendered chain.
    """
    start = next(i for i, m in enumerate(trajectory.messages) if m["role"] == "assistant")
    prompt = trajectory.messages[:start]
    prompt_ids = list(tokenizer.apply_chat_template(prompt, tools=tools, tokenize=True, return_dict=True,
                                                    add_generation_prompt=True)["input_ids"])
    ids, mask = assistant_tokens(tokenizer, trajectory.messages, tools)
    if ids[: len(prompt_ids)] != prompt_ids:
        raise TrainingError(f"chain {trajectory.id!r}: the tokenized prompt is not a prefix of the chain")
    return {"prompt_ids": prompt_ids, "completion_ids": ids[len(prompt_ids):], "env_mask": mask[len(prompt_ids):]}


def agent_rollout_func(
    tasks: dict[str, "Task"], problems: dict[str, list["Problem"]], agent: "AgentConfig", temperature: float,
    seed: int = 0,
) -> Callable[[list, Any], dict[str, list]]:
    """TRL's `rollout_func`: one chain of fcdpo's agent per prompt, on the policy as it is now.

    The prompts TRL passes are the dataset's (each repeated once per generation of its group); each is
    matched to its problem, the chains of a task run in one batch at `temperature`, and the result
    gives TRL the tokens, the mask of the model's own tokens (`env_mask`), and per chain its `answer`,
    `stop`, `errors` and `generated_tokens` for the reward functions. The function's `totals` count
    its calls, the chains run, the correct ones and the tokens generated, over the whole training.
    """
    lookup: dict[str, tuple[str, "Problem"]] = {}
    for name, items in problems.items():
        shots = Agent(tasks[name], backend=None, config=agent)._shots
        for problem in items:
            lookup[json.dumps(prompt_messages(problem, tasks[name], agent, shots))] = (name, problem)

    def rollout_func(prompts: list, trainer: Any) -> dict[str, list]:
        from fcdpo.backends import HFBackend

        model = trainer.accelerator.unwrap_model(trainer.model)
        tokenizer = trainer.processing_class
        backend = HFBackend.from_loaded(model, tokenizer, name="grpo-policy")
        keys = [json.dumps([{k: m[k] for k in ("role", "content")} for m in prompt]) for prompt in prompts]
        missing = [key for key in keys if key not in lookup]
        if missing:
            raise TrainingError(f"a GRPO prompt matches no training problem: {missing[0][:200]}")
        chains: list[Trajectory | None] = [None] * len(prompts)
        call = rollout_func.totals["calls"]  # a new sampling seed for every generation batch
        rollout_func.totals["calls"] += 1
        for name in sorted({lookup[key][0] for key in keys}):
            where = [i for i, key in enumerate(keys) if lookup[key][0] == name]
            runner = Agent(tasks[name], backend, agent)
            done = runner.run([lookup[keys[i]][1] for i in where], samples=list(range(len(where))),
                              temperature=temperature, seed=seed + 1000 * call)
            for i, chain in zip(where, done):
                chains[i] = chain
        out: dict[str, list] = {"prompt_ids": [], "completion_ids": [], "logprobs": None, "env_mask": [],
                                "answer": [], "stop": [], "errors": [], "generated_tokens": []}
        for prompt, chain in zip(prompts, chains):
            assert chain is not None
            if chain.messages[: len(prompt)] != [dict(m) for m in prompt]:
                raise TrainingError(f"chain {chain.id!r} does not open with its dataset prompt")
            tools = chain.tools if agent.syntax == "json" else None
            tokens = chain_tokens(tokenizer, chain, tools)
            for key in ("prompt_ids", "completion_ids", "env_mask"):
                out[key].append(tokens[key])
            out["answer"].append(chain.answer)
            out["stop"].append(chain.stop)
            out["errors"].append(sum(chain.errors.values()))
            out["generated_tokens"].append(chain.tokens["completion"])
            rollout_func.totals["chains"] += 1
            rollout_func.totals["correct"] += int(chain.correct)
            rollout_func.totals["generated_tokens"] += chain.tokens["completion"]
        return out

    rollout_func.totals = {"calls": 0, "chains": 0, "correct": 0, "generated_tokens": 0}
    return rollout_func


def answer_reward(tasks: dict[str, "Task"]) -> Callable[..., list[float]]:
    """The reward of a chain: 1.0 when the task's answer check accepts its final answer, else 0.0."""

    def answer_correct(prompts, completions, task, gold, answer, **kwargs) -> list[float]:
        return [float(a is not None and tasks[t].check(a, g)) for t, g, a in zip(task, gold, answer)]

    return answer_correct


def format_reward(weight: float) -> Callable[..., list[float]]:
    """`weight` for a chain that stopped on a final answer without any parse or call error, else 0."""

    def well_formed(prompts, completions, stop, errors, **kwargs) -> list[float]:
        return [weight * float(s == "answer" and e == 0) for s, e in zip(stop, errors)]

    return well_formed


def grpo_trainer(
    model: Any,
    tokenizer: Any,
    tasks: dict[str, "Task"],
    problems: dict[str, list["Problem"]],
    agent: "AgentConfig",
    settings: TrainingConfig,
    output_dir: str | Path,
    progress: bool = False,
) -> Any:
    """TRL's `GRPOTrainer` on `model` (the LoRA adapter put on by the trainer), with fcdpo's agent as rollout.

    A step takes `settings.batch_size` problems × `settings.grpo.generations` chains each (per device
    and micro-batch); `max_steps` / `epochs` count steps as for the other methods.
    """
    from trl import GRPOConfig, GRPOTrainer

    grpo = settings.grpo
    dataset = grpo_dataset(tasks, problems, agent)
    steps = resolve_steps(settings, len(dataset), launched_processes())  # problems, as pairs elsewhere
    args = GRPOConfig(
        output_dir=str(Path(output_dir) / "trainer"),
        max_steps=steps,
        per_device_train_batch_size=settings.batch_size * grpo.generations,
        gradient_accumulation_steps=settings.grad_accumulation,
        num_generations=grpo.generations,
        learning_rate=grpo.learning_rate,
        beta=grpo.beta,
        temperature=grpo.temperature,
        **trainer_arguments(settings, progress),
        reward_weights=[1.0, 1.0],
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[answer_reward(tasks), format_reward(grpo.format_weight)],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        # A model that already carries an adapter (an arm that starts from another's) trains that one.
        peft_config=None if _has_adapter(model) else lora_config(settings),
        rollout_func=agent_rollout_func(tasks, problems, agent, grpo.temperature, settings.seed),
    )
    return trainer


def _has_adapter(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def train_grpo(profile: Any, progress: bool = False, seed: int | None = None, method: str = "grpo",
               init_adapter: str | Path | None = None) -> TrainingResult:
    """A GRPO arm of a profile: its student, its training problems, its agent; writes `training/<method>[-s<seed>]/`.

    With `init_adapter` (an arm that starts from another, e.g. the SFT model) training continues that
    adapter instead of a fresh one.

    Writes `adapter/` (evaluated by notebook 04 like the other arms), `curves.json` / `curves.csv`
    (loss, rewards per function, completion lengths) and `report.json` (settings, steps, seconds,
    chains and generated tokens).
    """
    from transformers import PrinterCallback

    from fcdpo.tasks import problem_sets

    settings, label = arm_run(profile.training, method, seed)
    output_dir = runs.training_dir(profile.run_path, label)
    started = time.perf_counter()
    model = student_reference(profile)
    base, tokenizer = load_student(model, settings)
    if init_adapter is not None:
        from fcdpo.loading import load_adapter

        base = load_adapter(base, init_adapter, trainable=True)
    tasks = {name: profile.task(name) for name in profile.tasks}
    problems = {name: splits["train"][: settings.grpo.problems] for name, splits in problem_sets(profile).items()}
    trainer = grpo_trainer(base, tokenizer, tasks, problems, profile.agent, settings, output_dir, progress)
    adapter_dtype_for_training(trainer.model)
    curves = curve_writer(output_dir)
    trainer.add_callback(curves)
    trainer.remove_callback(PrinterCallback)
    trained_at = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - trained_at
    adapter_dir = output_dir / "adapter"
    trainer.save_model(str(adapter_dir))
    report = {
        "method": method,
        "model": str(model),
        "init_adapter": None if init_adapter is None else str(init_adapter),
        "settings": asdict(settings),
        "problems": {name: len(items) for name, items in problems.items()},
        "steps": trainer.args.max_steps,
        "sequences_per_step": settings.batch_size * settings.grpo.generations * settings.grad_accumulation
        * trainer.accelerator.num_processes,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "rollouts": dict(trainer.rollout_func.totals),  # chains sampled, correct, tokens generated
        "seconds": round(time.perf_counter() - started, 1),
        "train_seconds": round(train_seconds, 1),
        "memory_after": memory_snapshot(),
        "final": {k: v for k, v in (curves.rows[-1] if curves.rows else {}).items() if is_number(v)},
    }
    if trainer.accelerator.is_main_process:
        write_curves(curves.rows, output_dir)
        runs.write_report(output_dir, report)
    return TrainingResult(output_dir, adapter_dir, curves.rows, report, trainer)
