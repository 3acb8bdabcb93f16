"""GRPO with the task's functions on tiny models: rewards from the answer check, tool tokens out of the loss."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM

from fcdpo.agent import AgentConfig
from fcdpo.config import GRPOSettings, TrainingConfig
from fcdpo.grpo import answer_reward, chain_tokens, format_reward, grpo_dataset, grpo_trainer
from fcdpo.tasks import get_task
from tests.test_preferences import scripted_chains
from tests.test_training import assistant_text, lab  # noqa: F401  (the tiny student and its tokenizer)

TASKS = {"math": get_task("math"), "fol": get_task("fol")}
AGENT = AgentConfig(syntax="python", max_steps=3, max_new_tokens=8, token_budget=24)
SETTINGS = TrainingConfig(max_steps=1, batch_size=2, warmup=0, logging_steps=1, lora_r=8, lora_alpha=16,
                          lora_dropout=0.0, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                          grpo=GRPOSettings(generations=2, learning_rate=1e-3))


def test_the_answer_reward_is_the_tasks_own_check_not_string_equality():
    tasks, golds, answers = ["math", "math", "math", "fol", "fol", "math"], ["5", "5", "5", "True", "True", "5"], \
        ["5.0", "The answer is 5", "five", "true", "Unknown", None]
    rewards = answer_reward(TASKS)(prompts=[None] * 6, completions=[None] * 6, task=tasks, gold=golds, answer=answers)
    expected = [float(a is not None and TASKS[t].check(a, g)) for t, g, a in zip(tasks, golds, answers)]
    assert rewards == expected == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    formats = format_reward(0.1)(prompts=[None] * 3, completions=[None] * 3, stop=["answer", "answer", "max_steps"],
                                 errors=[0, 2, 0])
    assert formats == [0.1, 0.0, 0.0]


@pytest.mark.slow
def test_a_chains_tokens_mask_exactly_the_models_own_turns(lab):  # noqa: F811
    tokenizer = lab["tokenizer"]
    for chain in scripted_chains("math", n=3)[:6]:
        tokens = chain_tokens(tokenizer, chain)
        kept = [t for t, m in zip(tokens["completion_ids"], tokens["env_mask"]) if m]
        assert tokenizer.decode(kept) == assistant_text(chain.messages)
        dropped = tokenizer.decode([t for t, m in zip(tokens["completion_ids"], tokens["env_mask"]) if not m])
        for message in chain.messages[2:]:
            if message["role"] == "tool":
                assert message["content"] in dropped


def _grpo_inputs(tokenizer, chains, advantages):
    from trl.trainer.utils import pad

    tokens = [chain_tokens(tokenizer, chain) for chain in chains]
    completion_mask = pad([torch.ones(len(t["completion_ids"]), dtype=torch.long) for t in tokens], padding_value=0,
                          padding_side="right")
    tool_mask = pad([torch.tensor(t["env_mask"]) for t in tokens], padding_value=1, padding_side="right")
    return {
        "prompt_ids": pad([torch.tensor(t["prompt_ids"]) for t in tokens], padding_value=tokenizer.pad_token_id,
                          padding_side="left"),
        "prompt_mask": pad([torch.ones(len(t["prompt_ids"]), dtype=torch.long) for t in tokens], padding_value=0,
                           padding_side="left"),
        "completion_ids": pad([torch.tensor(t["completion_ids"]) for t in tokens],
                              padding_value=tokenizer.pad_token_id, padding_side="right"),
        "completion_mask": completion_mask,
        "tool_mask": tool_mask,
        "advantages": torch.tensor(advantages, dtype=torch.float),
        "num_items_in_batch": (completion_mask * tool_mask).sum(),
    }


@pytest.mark.slow
def test_tool_results_carry_no_weight_in_the_grpo_loss(lab, tmp_path):  # noqa: F811
    """A context-free model (attention output zeroed, no adapter on o_proj): the logits at a tool token
    depend on that token. Replacing every tool result must leave the GRPO loss and its gradients as
    they are with fcdpo's mask, and move them without it (every completion token counted)."""
    tokenizer = lab["tokenizer"]
    model = AutoModelForCausalLM.from_pretrained(lab["student"])
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
    problems = {"math": [p for p in get_task("math").generate(2, seed=1)]}
    trainer = grpo_trainer(model, tokenizer, TASKS, problems, AGENT, SETTINGS, tmp_path)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in trainer.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    trainer.model.eval()
    chains = [c for c in scripted_chains("math", n=4) if any(m["role"] == "tool" for m in c.messages)][:4]
    swapped = []
    for chain in chains:
        messages = [dict(m, content="Error: the observation was replaced 98765") if m["role"] == "tool" else m
                    for m in json.loads(json.dumps(chain.messages))]
        swapped.append(replace(chain, messages=messages))
    advantages = [1.0, -0.5, 0.5, -1.0]

    def loss_and_gradients(inputs):
        trainer.model.zero_grad()
        loss = trainer._compute_loss(trainer.model, inputs)
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.requires_grad])

    inputs, swapped_inputs = _grpo_inputs(tokenizer, chains, advantages), _grpo_inputs(tokenizer, swapped, advantages)
    assert not torch.equal(inputs["completion_ids"], swapped_inputs["completion_ids"][:, : inputs["completion_ids"].size(1)])
    loss, gradients = loss_and_gradients(inputs)
    swapped_loss, swapped_gradients = loss_and_gradients(swapped_inputs)
    assert gradients.abs().max() > 0
    assert torch.allclose(swapped_loss, loss, atol=1e-6) and torch.allclose(swapped_gradients, gradients, atol=1e-6)
    for batch in (inputs, swapped_inputs):  # without the mask, tool tokens count
        del batch["tool_mask"]
        batch["num_items_in_batch"] = inputs["num_items_in_batch"]
    _, unmasked = loss_and_gradients(inputs)
    _, unmasked_swapped = loss_and_gradients(swapped_inputs)
    assert (unmasked - unmasked_swapped).abs().max() > 1e-4


@pytest.mark.slow
def test_one_grpo_step_runs_the_agent_and_rewards_its_chains_by_the_answer_check(lab, tmp_path):  # noqa: F811
    tokenizer = lab["tokenizer"]
    model = AutoModelForCausalLM.from_pretrained(lab["student"])
    problems = {"math": get_task("math").generate(2, seed=3), "fol": get_task("fol").generate(1, seed=3)}
    assert len(grpo_dataset(TASKS, problems, AGENT)) == 3
    trainer = grpo_trainer(model, tokenizer, TASKS, problems, AGENT, SETTINGS, tmp_path)
    seen = []
    rollout = trainer.rollout_func

    def spy(prompts, trainer_):
        out = rollout(prompts, trainer_)
        seen.append((prompts, out))
        return out

    trainer.rollout_func = spy
    trainer.train()
    assert seen, "the agent's rollout was never called"
    prompts, out = seen[0]
    assert len(out["completion_ids"]) == len(prompts) == SETTINGS.batch_size * SETTINGS.grpo.generations
    by_question = {p.question: (name, p) for name, items in problems.items() for p in items}
    checks = []
    for prompt, answer, mask, ids in zip(prompts, out["answer"], out["env_mask"], out["completion_ids"]):
        name, problem = by_question[prompt[-1]["content"]]
        checks.append(float(answer is not None and TASKS[name].check(answer, problem.answer)))
        assert len(mask) == len(ids) and sum(mask) > 0
    logged = next(row for row in trainer.state.log_history if "rewards/answer_correct/mean" in row)
    assert logged["rewards/answer_correct/mean"] == pytest.approx(sum(checks) / len(checks))


@pytest.mark.slow
def test_grpo_is_a_training_method_whose_adapter_the_evaluation_finds(lab, tmp_path):  # noqa: F811
    from fcdpo.config import load_profile
    from fcdpo.evaluation import run_models
    from fcdpo.training import train_from_profile

    profile = load_profile("tiny-cpu", {
        "run_dir": str(tmp_path), "student": {"kind": "hf", "model": str(lab["student"])},
        "training.methods": ["dpo", "sft", "grpo"], "training.max_steps": 1, "training.batch_size": 1,
        "training.lora_r": 8, "training.lora_alpha": 16, "training.grpo": {"generations": 2, "problems": 1},
        "agent.max_steps": 2, "agent.max_new_tokens": 8, "agent.token_budget": 16,
        "tasks.math.train": 2, "tasks.math.eval": 2, "tasks.math.dev": 0,
        "tasks.fol.train": 2, "tasks.fol.eval": 2, "tasks.fol.dev": 0})
    result = train_from_profile(profile, "grpo")
    assert result.output_dir == tmp_path / "training" / "grpo" and result.report["method"] == "grpo"
    assert result.report["problems"] == {"math": 1, "fol": 1} and result.report["steps"] == 1
    assert result.report["rollouts"]["chains"] == 2 and result.report["rollouts"]["generated_tokens"] > 0
    assert (result.adapter_dir / "adapter_config.json").exists() and (result.output_dir / "curves.csv").exists()
    specs, _ = run_models(profile)
    assert specs["grpo"]["adapter"] == "training/grpo/adapter"
