"""DPO and the SFT baseline on tiny models: assistant-only log-probabilities, length filter, adapters."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from fcdpo import prefix_attention
from fcdpo.config import TrainingConfig
from fcdpo.finetuning import _assistant_tokens_by_spans
from fcdpo.preferences import build_pairs, load_preferences, restore_messages, save_preferences, split_by_problem
from fcdpo.tinylab import IM_END, build_model, build_tokenizer
from fcdpo.training import (
    TrainingError,
    _dpo_trainer_class,
    assistant_tokens,
    chosen_conversations,
    load_trained,
    lora_config,
    merge_and_export,
    preference_collator,
    resolve_steps,
    student_reference,
    tokenize_pair,
    tokenize_preferences,
    train,
)
from tests.test_preferences import scripted_chains

TINY = TrainingConfig(max_steps=8, batch_size=2, learning_rate=1e-2, sft_learning_rate=1e-2, warmup=0,
                      logging_steps=1, lora_r=8, lora_alpha=16, max_length=2048)


# The tests that use `lab` are marked slow: building it takes seconds, and most of them train on it.
@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A tiny Qwen2 student and a preference dataset of math and logic pairs, on disk."""
    root = tmp_path_factory.mktemp("lab")
    chains = scripted_chains("math", n=4) + scripted_chains("fol", n=3)
    json_chains = scripted_chains("math", n=3, seed=5, syntax="json")
    texts = [m.get("content") or "" for t in chains + json_chains for m in t.messages]
    tokenizer = build_tokenizer(texts + ['{"name": "add", "arguments": {"a": 3}}'] * 3, vocab_size=800)
    model = build_model(tokenizer, hidden_size=64, num_layers=1, num_heads=2)
    model.save_pretrained(root / "student")
    tokenizer.save_pretrained(root / "student")
    rows, report = build_pairs(chains, syntax="python")
    save_preferences(split_by_problem(rows, 0.34, seed=0), root / "preferences", report)
    json_rows, _ = build_pairs(json_chains, syntax="json")
    return {"root": root, "student": root / "student", "tokenizer": tokenizer, "rows": rows,
            "json_rows": json_rows, "preferences": load_preferences(root / "preferences")}


@pytest.fixture(scope="module")
def dpo_run(lab):
    return train("dpo", lab["student"], lab["preferences"], TINY, lab["root"] / "dpo")


def assistant_text(messages: list[dict]) -> str:
    """What the model itself wrote in a chain: each assistant turn and its end-of-turn token."""
    parts = []
    for m in messages:
        if m["role"] == "assistant":
            calls = "".join(
                f'<tool_call>\n{{"name": "{c["function"]["name"]}", "arguments": '
                f'{json.dumps(c["function"]["arguments"])}}}\n</tool_call>' for c in m.get("tool_calls") or [])
            parts.append((m.get("content") or "") + calls + IM_END)
    return "".join(parts)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["rows", "json_rows"])
def test_the_assistant_mask_covers_exactly_the_models_own_turns(lab, which):
    tokenizer = lab["tokenizer"]
    for row in lab[which]:
        tokens = tokenize_pair(tokenizer, row)
        for side in ("chosen", "rejected"):
            kept = [t for t, m in zip(tokens[f"{side}_ids"], tokens[f"{side}_mask"]) if m]
            assert tokenizer.decode(kept) == assistant_text(restore_messages(row[side]))
            dropped = tokenizer.decode([t for t, m in zip(tokens[f"{side}_ids"], tokens[f"{side}_mask"]) if not m])
            for message in restore_messages(row[side]):
                if message["role"] == "tool":
                    assert message["content"] in dropped


@pytest.mark.slow
def test_masks_found_by_rendering_agree_with_generation_markers(lab):
    """Templates without `{% generation %}` (Qwen2.5's, Mistral's) get the masks marked ones give.

    TRL's marked copy of Qwen2.5's template also marks the newline after the role header (part of
    the generation prompt at inference) and the one after `<|im_end|>` (never generated); rendering
    leaves those out and agrees on every other token."""
    from trl.chat_template_utils import qwen2_5_chat_template, qwen2_5_training_chat_template

    tokenizer = lab["tokenizer"]
    rows = lab["rows"][:3] + lab["json_rows"][:3]
    for row in rows:
        messages = restore_messages(row["prompt"] + row["chosen"])
        tools = json.loads(row["tools"])
        assert _assistant_tokens_by_spans(tokenizer, messages, tools) == assistant_tokens(tokenizer, messages, tools)
    qwen = AutoTokenizer.from_pretrained(lab["student"])
    qwen.chat_template = qwen2_5_chat_template  # the real Qwen2.5 template: no generation markers
    marked = AutoTokenizer.from_pretrained(lab["student"])
    marked.chat_template = qwen2_5_training_chat_template  # TRL's copy with markers
    for row in rows:
        messages = restore_messages(row["prompt"] + row["rejected"])
        tools = json.loads(row["tools"])
        (ids, by_spans), (marked_ids, by_markers) = assistant_tokens(qwen, messages, tools), \
            assistant_tokens(marked, messages, tools)
        assert ids == marked_ids and sum(by_spans) > 0
        for token, span_bit, marker_bit in zip(ids, by_spans, by_markers):
            assert span_bit == marker_bit or (marker_bit and qwen.decode([token]).strip() == "")


def _dpo_log_probs(trainer, tokenizer, rows, stock_masks=False):
    """The reference log-probabilities DPO uses for (chosen, rejected) of each row."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    examples = [tokenize_pair(tokenizer, row) for row in rows]
    if stock_masks:  # TRL's own collator: every completion token counts
        collator = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)
        examples = [{k: e[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for e in examples]
    else:
        collator = preference_collator(tokenizer.pad_token_id)
    chosen, rejected = trainer.compute_ref_log_probs(trainer.model, collator(examples))
    return torch.stack([chosen, rejected])


def _with_tool_results(row, replace):
    row = json.loads(json.dumps(row))
    for side in ("chosen", "rejected"):
        for message in row[side]:
            if message["role"] == "tool":
                message["content"] = replace(message["content"])
    return row


@pytest.mark.slow
def test_tool_tokens_do_not_count_in_dpo_log_probabilities(lab, tmp_path):
    """With a context-free model (attention output zeroed: each token predicts the next from itself
    alone), a sequence's log-probability depends on the tool results only through the tool tokens'
    own log-probabilities. So changing the tool results must leave the DPO log-probabilities as they
    are, while changing the model's own calls must not."""
    tokenizer = lab["tokenizer"]
    model = AutoModelForCausalLM.from_pretrained(lab["student"])
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
    from trl import DPOConfig

    config = DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, activation_checkpointing=False,
                       report_to=[], max_length=None)
    rows = lab["rows"][:4]
    trainer = _dpo_trainer_class()(
        model=model, args=config, train_dataset=tokenize_preferences(Dataset.from_list(rows), tokenizer, 4096)[0],
        processing_class=tokenizer, data_collator=preference_collator(tokenizer.pad_token_id),
        peft_config=lora_config(TINY),
    )
    original = _dpo_log_probs(trainer, tokenizer, rows)
    other_results = [_with_tool_results(r, lambda c: "Error: the observation was replaced 98765") for r in rows]
    assert torch.allclose(_dpo_log_probs(trainer, tokenizer, other_results), original, atol=1e-4)

    other_calls = json.loads(json.dumps(rows))
    for row in other_calls:
        first_turn = next(m for m in row["chosen"] if m["role"] == "assistant")
        first_turn["content"] += " 7"
    changed = _dpo_log_probs(trainer, tokenizer, other_calls)
    assert (changed[0] - original[0]).abs().min() > 1e-2  # every chosen chain's log-probability moved
    assert torch.allclose(changed[1], original[1], atol=1e-4)

    # TRL's stock masks count the tool tokens: the same change of tool results moves them.
    stock = _dpo_log_probs(trainer, tokenizer, rows, stock_masks=True)
    stock_other = _dpo_log_probs(trainer, tokenizer, other_results, stock_masks=True)
    assert (stock_other - stock).abs().max() > 1e-2


@pytest.mark.slow
def test_the_saved_dataset_loads_into_trls_dpo_trainer(lab, tmp_path):
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(lab["student"])
    config = DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, activation_checkpointing=False,
                       report_to=[], max_length=None)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(lab["student"]), args=config,
                         train_dataset=lab["preferences"]["train"], processing_class=tokenizer,
                         peft_config=LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    ours = [tokenize_pair(tokenizer, row) for row in lab["preferences"]["train"]]
    assert trainer.train_dataset["prompt_ids"] == [t["prompt_ids"] for t in ours]
    assert trainer.train_dataset["chosen_ids"] == [t["chosen_ids"] for t in ours]
    assert trainer.train_dataset["rejected_ids"] == [t["rejected_ids"] for t in ours]


@pytest.mark.slow
def test_an_untokenized_dataset_is_refused_rather_than_masked_the_stock_way(lab, tmp_path):
    from trl import DPOConfig

    config = DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, activation_checkpointing=False,
                       report_to=[])
    with pytest.raises(TrainingError, match="tokenize_preferences"):
        _dpo_trainer_class()(model=AutoModelForCausalLM.from_pretrained(lab["student"]), args=config,
                             train_dataset=lab["preferences"]["train"], processing_class=lab["tokenizer"],
                             data_collator=preference_collator(0))


@pytest.mark.slow
def test_dpo_on_a_tiny_model_lowers_its_loss_and_saves_its_curves(dpo_run):
    losses = [row["loss"] for row in dpo_run.curves if "loss" in row]
    assert len(losses) == TINY.max_steps
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # a fresh adapter: the policy is the reference
    assert losses[-1] < losses[0] - 0.05
    last = [row for row in dpo_run.curves if "loss" in row][-1]
    assert last["rewards/margins"] > 0 and last["rewards/accuracies"] > 0.5
    header = (dpo_run.output_dir / "curves.csv").read_text().splitlines()[0].split(",")
    assert {"step", "loss", "rewards/margins", "rewards/accuracies"} <= set(header)
    assert json.loads((dpo_run.output_dir / "curves.json").read_text()) == dpo_run.curves
    report = json.loads((dpo_run.output_dir / "report.json").read_text())
    assert report["steps"] == TINY.max_steps and report["method"] == "dpo"
    assert "eval_rewards/margins" in report["final"]  # evaluated on the validation pairs


@pytest.mark.slow
def test_an_sft_term_adds_the_chosen_chains_negative_log_likelihood_to_dpo(lab, dpo_run):
    from dataclasses import replace

    rpo = train("dpo", lab["student"], lab["preferences"], replace(TINY, max_steps=2, loss_type=["sigmoid", "sft"]),
                lab["root"] / "rpo")
    first = next(row for row in rpo.curves if "loss" in row)
    # A fresh adapter: DPO's term is ln 2, and the rest is the chosen turns' mean NLL (several nats).
    assert first["loss"] > 0.6931 + 1.0
    plain = next(row for row in dpo_run.curves if "loss" in row)
    assert plain["loss"] == pytest.approx(0.6931, abs=1e-3)


@pytest.mark.slow
def test_the_reference_is_the_base_with_the_adapter_disabled_not_a_copy(dpo_run):
    assert dpo_run.trainer.ref_model is None
    assert list(dpo_run.trainer.model.peft_config) == ["default"]


@pytest.mark.slow
def test_a_saved_and_reloaded_adapter_gives_identical_logits(lab, dpo_run, tmp_path):
    tokenizer = lab["tokenizer"]
    row = lab["rows"][0]
    ids = torch.tensor([tokenize_pair(tokenizer, row)["prompt_ids"]])
    trained = dpo_run.trainer.model.eval()
    reloaded, reloaded_tokenizer = load_trained(lab["student"], dpo_run.adapter_dir)
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
        assert torch.equal(reloaded(input_ids=ids).logits, expected)
        base = AutoModelForCausalLM.from_pretrained(lab["student"])(input_ids=ids).logits
    assert not torch.allclose(base, expected)  # the adapter did change the model
    assert reloaded_tokenizer.chat_template == tokenizer.chat_template
    merged_dir = merge_and_export(lab["student"], dpo_run.adapter_dir, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-4)
    assert (merged_dir / "tokenizer_config.json").exists() and not (merged_dir / "adapter_config.json").exists()


@pytest.mark.slow
def test_pairs_longer_than_max_length_are_dropped_and_counted_per_task(lab):
    tokenizer = lab["tokenizer"]
    dataset = lab["preferences"]["train"]
    lengths = []
    for row in dataset:
        t = tokenize_pair(tokenizer, row)
        lengths.append((row["task"], len(t["prompt_ids"]) + max(len(t["chosen_ids"]), len(t["rejected_ids"]))))
    limit = sorted(n for _, n in lengths)[len(lengths) // 2]
    kept, dropped = tokenize_preferences(dataset, tokenizer, limit)
    expected = {}
    for task, n in lengths:
        if n > limit:
            expected[task] = expected.get(task, 0) + 1
    assert dropped == expected and sum(dropped.values()) > 0
    assert len(kept) == len(dataset) - sum(dropped.values())
    assert all(len(p) + max(len(c), len(r)) <= limit
               for p, c, r in zip(kept["prompt_ids"], kept["chosen_ids"], kept["rejected_ids"]))


@pytest.mark.slow
def test_training_with_every_pair_too_long_is_an_error_not_a_silent_truncation(lab, tmp_path):
    settings = TrainingConfig(**{**TINY.__dict__, "max_length": 16})
    with pytest.raises(TrainingError, match="max_length=16"):
        train("dpo", lab["student"], lab["preferences"], settings, tmp_path)


@pytest.mark.slow
def test_the_sft_baseline_trains_on_the_chosen_chains_with_the_same_budget(lab, dpo_run):
    result = train("sft", lab["student"], lab["preferences"], TINY, lab["root"] / "sft")
    assert result.report["steps"] == dpo_run.report["steps"]
    assert result.report["sequences_per_step"] == dpo_run.report["sequences_per_step"]
    distinct_chosen = {r["chosen_id"] for r in lab["preferences"]["train"]}
    assert result.report["examples"]["train"] == len(distinct_chosen)
    losses = [row["loss"] for row in result.curves if "loss" in row]
    assert len(losses) == TINY.max_steps and losses[-1] < losses[0]
    tokenizer = lab["tokenizer"]
    conversations = chosen_conversations(lab["preferences"]["train"])
    train_rows = result.trainer.train_dataset  # in order: SFT does not shuffle its dataset
    assert len(train_rows) == len(conversations)
    for conversation, ids, labels in zip(conversations, train_rows["input_ids"], train_rows["labels"]):
        trained_on = tokenizer.decode([i for i, label in zip(ids, labels) if label != -100])
        assert trained_on == assistant_text(restore_messages(conversation["messages"]))  # assistant turns only
    assert (result.adapter_dir / "adapter_config.json").exists()


def test_steps_come_from_max_steps_or_from_epochs_over_the_pairs():
    assert resolve_steps(TrainingConfig(max_steps=7), examples=1000) == 7
    assert resolve_steps(TrainingConfig(epochs=2, batch_size=4, grad_accumulation=2), examples=20) == 5
    assert resolve_steps(TrainingConfig(epochs=1, batch_size=4, grad_accumulation=1), examples=20, processes=2) == 3


def test_an_empty_student_spec_means_the_tiny_labs_student_in_the_run(tmp_path):
    from fcdpo.config import load_profile

    profile = load_profile("tiny-cpu", {"run_dir": str(tmp_path), "student": {}})
    (tmp_path / "lab" / "student").mkdir(parents=True)
    assert student_reference(profile) == str(tmp_path / "lab" / "student")
    hub = load_profile("tiny-cpu", {"run_dir": str(tmp_path), "student": {"kind": "hf", "model": "org/model"}})
    assert student_reference(hub) == "org/model"
    with pytest.raises(TrainingError, match="local model"):
        student_reference(load_profile("tiny-cpu", {"student": {"kind": "openai", "model": "m", "base_url": "u"}}))


def test_each_extra_seed_gets_its_own_label_and_folder():
    from fcdpo.config import TrainingConfig
    from fcdpo.training import TrainingError, seed_labels

    assert seed_labels("dpo", TrainingConfig(seed=0)) == {"dpo": 0}
    assert seed_labels("sft", TrainingConfig(seed=0, extra_seeds=[1, 2])) == {"sft": 0, "sft-s1": 1, "sft-s2": 2}
    with pytest.raises(TrainingError, match="repeats a seed"):
        seed_labels("dpo", TrainingConfig(seed=1, extra_seeds=[1]))


# --------------------------------------------------------------------------- the other arms


def _step_rows(rest_of_chain=True):
    from fcdpo.preferences import build_step_pairs

    chains = scripted_chains("math", n=4) + scripted_chains("fol", n=3)
    rows, _ = build_step_pairs(chains, syntax="python", rest_of_chain=rest_of_chain)
    return rows


def _loss_and_gradients(trainer, examples, collator):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, collator(examples))
    loss.backward()
    gradients = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.requires_grad])
    return loss.detach(), gradients


@pytest.mark.slow
def test_tool_tokens_carry_no_weight_in_the_step_dpo_loss(lab, tmp_path):
    """Step pairs that run to the end of each chain hold tool results in the prompt and inside both
    completions. With a context-free model (attention output zeroed), the tool tokens' own logits
    depend on them; the step-DPO loss (sigmoid + NLL on the chosen turns) and its gradients must
    not move when every tool result is replaced, while the model's own turns and TRL's stock
    masks (every completion token counted) do move them."""
    from trl import DPOConfig
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    tokenizer = lab["tokenizer"]
    model = AutoModelForCausalLM.from_pretrained(lab["student"])
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
    config = DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, activation_checkpointing=False,
                       report_to=[], max_length=None, loss_type=["sigmoid", "sft"], beta=0.1)
    def has_tool(messages):
        return any(m["role"] == "tool" for m in messages)

    step_rows = _step_rows()
    rows = ([r for r in step_rows if has_tool(r["chosen"]) and has_tool(r["rejected"])][:2]
            + [r for r in step_rows if has_tool(r["prompt"])][:2])  # tool results in completions, in the history
    assert len(rows) == 4
    trainer = _dpo_trainer_class()(
        model=model, args=config, train_dataset=tokenize_preferences(Dataset.from_list(rows), tokenizer, 4096)[0],
        processing_class=tokenizer, data_collator=preference_collator(tokenizer.pad_token_id),
        # No adapter on o_proj: its update would bring the attention (the context) back.
        peft_config=lora_config(TrainingConfig(lora_r=8, lora_alpha=16, lora_dropout=0.0,
                                               target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])),
    )
    torch.manual_seed(0)
    with torch.no_grad():  # a policy away from its reference, so the DPO term itself depends on the tokens
        for name, parameter in trainer.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    trainer.model.eval()

    def tool_swapped(row):
        row = json.loads(json.dumps(row))
        for part in ("prompt", "chosen", "rejected"):
            for message in row[part]:
                if message["role"] == "tool":
                    message["content"] = "Error: the observation was replaced 98765"
        return row

    ours = preference_collator(tokenizer.pad_token_id)
    examples = [tokenize_pair(tokenizer, row) for row in rows]
    swapped = [tokenize_pair(tokenizer, tool_swapped(row)) for row in rows]
    assert [e["chosen_ids"] for e in swapped] != [e["chosen_ids"] for e in examples]  # the tokens did change
    loss, gradients = _loss_and_gradients(trainer, examples, ours)
    assert abs(loss.item() - 0.6931) > 1e-3 and gradients.abs().max() > 0
    swapped_loss, swapped_gradients = _loss_and_gradients(trainer, swapped, ours)
    assert torch.allclose(swapped_loss, loss, atol=1e-5)
    assert torch.allclose(swapped_gradients, gradients, atol=1e-6)

    own_turn = json.loads(json.dumps(rows))
    for row in own_turn:
        row["chosen"][0]["content"] += " 7"
    moved_loss, _ = _loss_and_gradients(trainer, [tokenize_pair(tokenizer, r) for r in own_turn], ours)
    assert abs(moved_loss.item() - loss.item()) > 1e-3

    stock = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)
    keep = ("prompt_ids", "chosen_ids", "rejected_ids")
    _, stock_gradients = _loss_and_gradients(trainer, [{k: e[k] for k in keep} for e in examples], stock)
    _, stock_swapped = _loss_and_gradients(trainer, [{k: e[k] for k in keep} for e in swapped], stock)
    assert (stock_swapped - stock_gradients).abs().max() > 1e-4


@pytest.fixture(scope="module")
def arm_profile(lab, tmp_path_factory):
    """A profile whose run folder holds the teacher's scripted rollouts and the tiny student."""
    from fcdpo.config import load_profile

    run = tmp_path_factory.mktemp("arms")
    (run / "rollouts").mkdir()
    for task, chains in (("math", scripted_chains("math", n=4)), ("fol", scripted_chains("fol", n=3))):
        with (run / "rollouts" / f"teacher-{task}.jsonl").open("w") as out:
            out.writelines(json.dumps(t.to_dict()) + "\n" for t in chains)
    overrides = {
        "run_dir": str(run), "student": {"kind": "hf", "model": str(lab["student"])},
        "training.methods": ["dpo", "sft", "step_dpo", "onpolicy_dpo"], "training.max_steps": 2,
        "training.batch_size": 2, "training.eval_steps": 0, "training.logging_steps": 1,
        "training.lora_r": 8, "training.lora_alpha": 16, "preferences.validation": 0.0,
        "tasks.math.train": 2, "tasks.math.eval": 2, "tasks.math.dev": 0,
        "tasks.fol.train": 2, "tasks.fol.eval": 2, "tasks.fol.dev": 0, "rollouts.k": 2,
        "rollouts.temperature": 1.6, "training.onpolicy_temperature": 1.0,  # the student is not sampled as hot
    }
    return load_profile("tiny-cpu", overrides)


@pytest.mark.slow
def test_step_dpo_is_a_training_method_with_its_own_folder_that_the_evaluation_finds(arm_profile):
    from fcdpo.evaluation import run_models
    from fcdpo.training import train_from_profile

    result = train_from_profile(arm_profile, "step_dpo")
    run = arm_profile.run_path
    assert result.output_dir == run / "training" / "step_dpo" and result.report["method"] == "step_dpo"
    assert (result.adapter_dir / "adapter_config.json").exists() and result.report["steps"] == 2
    assert any("rewards/margins" in row for row in result.curves)  # trained as DPO
    step_pairs = load_preferences(run / "preferences-step")
    assert result.report["pairs"]["train"] == len(step_pairs["train"]) > 0
    specs, notes = run_models(arm_profile)
    assert specs["step_dpo"]["adapter"] == "training/step_dpo/adapter"
    noted = {note.split(":")[0] for note in notes}  # every method of training.methods is looked for
    assert {"sft", "dpo"} <= noted and "onpolicy_dpo" in noted | set(specs)


@pytest.mark.slow
def test_an_arm_trained_earlier_with_the_same_settings_is_kept_and_any_other_is_trained_again(arm_profile, capsys):
    """A long run resumes at the first unfinished arm; a setting of this arm, its pairs or a cut-short
    report make it train again, while settings only other arms read (GRPO's, the arms list) do not."""
    from dataclasses import replace as with_changes

    from fcdpo.preferences import method_preferences
    from fcdpo.training import finished_arm, train_from_profile

    first = train_from_profile(arm_profile, "step_dpo")
    report = json.loads((first.output_dir / "report.json").read_text())
    again = train_from_profile(arm_profile, "step_dpo")
    assert again.trainer is None and again.report == report and again.curves == first.curves
    assert "trained earlier with these settings, kept" in capsys.readouterr().out

    def with_training(**changes):
        return with_changes(arm_profile, training=with_changes(arm_profile.training, **changes))

    grpo = with_changes(arm_profile.training.grpo, learning_rate=0.123)
    assert finished_arm(with_training(grpo=grpo, methods=("dpo", "step_dpo"), extra_seeds=(4,)), "step_dpo") is not None
    assert finished_arm(with_training(beta=0.5), "step_dpo") is None
    # The SFT baseline's rate and the speed settings do not shape a DPO arm.
    fast = not arm_profile.training.shared_prefix
    assert finished_arm(with_training(sft_learning_rate=0.5, shared_prefix=fast, precompute_ref_log_probs=fast),
                        "step_dpo") is not None
    assert finished_arm(arm_profile, "step_dpo", seed=7) is None  # another seed has its own folder
    pairs = method_preferences(arm_profile, "step_dpo")
    assert finished_arm(arm_profile, "step_dpo", preferences=pairs) is not None
    assert finished_arm(arm_profile, "step_dpo", preferences=pairs.filter(lambda _, i: i > 0, with_indices=True)) is None

    (first.output_dir / "report.json").write_text(json.dumps(report)[:40])  # a crash while writing it
    assert finished_arm(arm_profile, "step_dpo") is None
    (first.output_dir / "report.json").write_text(json.dumps(report))


def test_an_arm_copied_with_its_run_folder_counts_as_trained_on_the_same_student(tmp_path):
    from fcdpo.training import same_student

    run = tmp_path / "runs" / "tiny-cpu-arms"
    assert same_student("/old/runs/tiny-cpu/lab/student", run / "lab" / "student", run)
    assert same_student("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", run)
    assert not same_student("/old/runs/tiny-cpu/lab/teacher", run / "lab" / "student", run)
    assert not same_student("/models/lab/student", "/other/lab/student", run)  # outside the run: the same path only


@pytest.mark.slow
def test_onpolicy_dpo_samples_the_student_and_trains_on_its_own_pairs(arm_profile):
    """The tiny student's own chains (sampled with the HF backend) are graded and written as rollouts
    on the training problems; pairs of graded student chains train the arm into its own folder."""
    from fcdpo.preferences import build_onpolicy_preference_dataset, student_rollouts
    from fcdpo.rollouts import read_trajectories
    from fcdpo.tasks import problem_sets
    from fcdpo.training import train_from_profile
    from tests.test_preferences import AlternatingStudent

    run = arm_profile.run_path
    train_problems = [p for splits in problem_sets(arm_profile).values() for p in splits["train"]]
    chains = student_rollouts(arm_profile)
    on_disk = [t for name in ("math", "fol") for t in read_trajectories(run / "rollouts" / f"student-{name}.jsonl")]
    assert len(chains) == len(on_disk) == 2 * 4  # k=2 chains of 2 problems per task
    assert sorted({t.problem_id for t in on_disk}) == sorted(p.id for p in train_problems)
    assert all(t.producer["model"] == chains[0].model and t.producer["temperature"] == 1.0 for t in on_disk)
    by_problem = {p.id: p for p in train_problems}
    tasks = {name: arm_profile.task(name) for name in ("math", "fol")}
    for chain in on_disk:  # graded by the task's own answer check
        gold = by_problem[chain.problem_id].answer
        assert chain.correct == (chain.answer is not None and tasks[chain.task].check(chain.answer, gold))

    # Student chains that are right on half the samples (a scripted student) give pairs that train the arm.
    for name in ("math", "fol"):
        (run / "rollouts" / f"student-{name}.jsonl").unlink()  # a file of another model is refused, not mixed
    dataset, report = build_onpolicy_preference_dataset(arm_profile, backend=AlternatingStudent(train_problems, arm_profile))
    result = train_from_profile(arm_profile, "onpolicy_dpo", preferences=dataset)
    assert result.output_dir == run / "training" / "onpolicy_dpo" and result.report["method"] == "onpolicy_dpo"
    assert result.report["pairs"]["train"] == report["pairs"] > 0


@pytest.mark.slow
def test_an_unknown_method_is_refused_by_the_profile_and_by_training(arm_profile):
    from fcdpo.config import ConfigError, load_profile
    from fcdpo.training import train_from_profile, trained_methods

    assert trained_methods(arm_profile.training) == ("sft", "dpo", "step_dpo", "onpolicy_dpo")
    assert trained_methods(TrainingConfig()) == ("sft", "dpo")
    with pytest.raises(ConfigError, match="ppo"):
        load_profile("tiny-cpu", {"training.methods": ["dpo", "ppo"]})
    with pytest.raises(TrainingError, match="method must be one of"):
        train_from_profile(arm_profile, "ppo")


@pytest.mark.slow
def test_a_second_onpolicy_round_samples_the_first_rounds_model_and_takes_it_as_reference(arm_profile):
    """Iterative RPO: round 2 samples the round-1 model, starts from its adapter and compares with it."""
    from dataclasses import replace as with_changes

    from safetensors.torch import load_file

    from fcdpo.tasks import problem_sets
    from fcdpo.training import train_onpolicy
    from tests.test_preferences import recording_students

    profile = with_changes(arm_profile, training=with_changes(arm_profile.training, onpolicy_rounds=2, seed=7))
    run = profile.run_path
    train_problems = [p for splits in problem_sets(profile).values() for p in splits["train"]]
    backend_for, sampled_with = recording_students(train_problems, arm_profile)

    for name in ("math", "fol"):  # round 1 shares the student's rollouts; start them afresh for this student
        (run / "rollouts" / f"student-{name}.jsonl").unlink(missing_ok=True)
    result = train_onpolicy(profile, backend_for=backend_for, seed=9)
    folder = run / "training" / "onpolicy_dpo-s9"
    assert result.output_dir == folder and (folder / "adapter" / "adapter_config.json").exists()
    assert sampled_with == [None, folder / "round1" / "adapter"]
    assert (run / "rollouts" / "onpolicy_dpo-s9-round1-math.jsonl").exists()
    assert (run / "preferences-onpolicy-onpolicy_dpo-s9-round2" / "dataset").is_dir()
    rounds = result.report["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["steps"] == 2 and r["pairs"]["train"] > 0 for r in rounds)
    assert rounds[1]["init_adapter"] == str(folder / "round1" / "adapter")
    # The reference of round 2 is the round-1 model: TRL's frozen "ref" adapter holds round 1's weights.
    round1 = load_file(folder / "round1" / "adapter" / "adapter_model.safetensors")
    model = result.trainer.model
    assert "ref" in model.peft_config
    for key, weight in round1.items():
        ref = model.get_parameter(key.replace(".weight", ".ref.weight"))
        assert torch.equal(ref.detach().cpu(), weight)
        assert not ref.requires_grad
    trained = load_file(folder / "adapter" / "adapter_model.safetensors")
    assert any(not torch.equal(trained[k], round1[k]) for k in round1)  # round 2 moved on from round 1


@pytest.mark.slow
def test_first_turns_run_once_give_the_plain_passes_log_probs_loss_and_gradients(lab, tmp_path, monkeypatch):
    """`shared_first_turn_outputs` is a speed-up only: the DPO loss, its gradients and the reference's
    log-probabilities equal those of the plain pass, on a batch mixing both tasks' system prompts and
    packing short rests into shared rows."""
    from fcdpo.finetuning import turn_end_id

    tokenizer = lab["tokenizer"]
    from trl import DPOConfig

    config = DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, activation_checkpointing=False,
                       report_to=[], max_length=None, loss_type=["sigmoid", "sft"])
    rows = [lab["rows"][0], lab["rows"][-1], lab["rows"][1]]
    # Two pairs whose rejected chain stops after its first turn: their rests are short enough to be
    # packed beside each other (`fcdpo.prefix_attention._pack`).
    rows += [{**row, "rejected": row["rejected"][:1]} for row in (lab["rows"][0], lab["rows"][1])]
    assert len({r["task"] for r in rows}) == 2
    packed = []
    original_pack = prefix_attention._pack
    monkeypatch.setattr(prefix_attention, "_pack", lambda *a: packed.append(len(a[-1])) or original_pack(*a))
    trainer = _dpo_trainer_class()(
        model=AutoModelForCausalLM.from_pretrained(lab["student"]), args=config,
        train_dataset=tokenize_preferences(Dataset.from_list(rows), tokenizer, 4096)[0], processing_class=tokenizer,
        data_collator=preference_collator(tokenizer.pad_token_id), peft_config=lora_config(TINY),
    )
    torch.manual_seed(0)
    with torch.no_grad():  # a fresh adapter is the identity (B = 0); make it change the model
        for name, parameter in trainer.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    collator = preference_collator(tokenizer.pad_token_id)
    examples = [tokenize_pair(tokenizer, row) for row in rows]
    trainer.model.train()
    plain_loss, plain_gradients = _loss_and_gradients(trainer, examples, collator)
    plain_reference = torch.stack(trainer.compute_ref_log_probs(trainer.model, collator(examples)))
    trainer.turn_end = turn_end_id(tokenizer)
    assert trainer.turn_end is not None
    shared_loss, shared_gradients = _loss_and_gradients(trainer, examples, collator)
    shared_reference = torch.stack(trainer.compute_ref_log_probs(trainer.model, collator(examples)))
    assert packed, "no batch was packed"
    assert shared_loss.item() == pytest.approx(plain_loss.item(), rel=1e-5)
    assert plain_gradients.abs().max() > 0
    assert torch.allclose(shared_gradients, plain_gradients, atol=1e-5)
    assert torch.allclose(shared_reference, plain_reference, atol=1e-4)


@pytest.mark.slow
def test_the_reference_log_probs_are_computed_once_for_every_seed_and_change_nothing(lab, monkeypatch):
    from trl import DPOTrainer

    computed = []
    original = DPOTrainer._precompute_ref_logps

    def counting(self, dataset, name, batch_size):
        computed.append(name)
        return original(self, dataset, name, batch_size)

    monkeypatch.setattr(DPOTrainer, "_precompute_ref_logps", counting)
    root = lab["root"] / "speed"
    fast = replace(TINY, shared_prefix=True, precompute_ref_log_probs=True)
    first = train("dpo", lab["student"], lab["preferences"], fast, root / "dpo")
    assert sorted(computed) == ["eval", "train"]
    again = train("dpo", lab["student"], lab["preferences"], replace(fast, seed=1), root / "dpo-s1")
    assert sorted(computed) == ["eval", "train"]  # the second seed read both splits back
    assert len(list((root / "reference_log_probs").glob("*.json"))) == 2
    assert again.curves != first.curves  # another seed: another adapter initialisation and data order

    plain = train("dpo", lab["student"], lab["preferences"], TINY, root / "plain")
    losses = [[row["loss"] for row in result.curves if "loss" in row] for result in (plain, first)]
    assert len(losses[0]) == TINY.max_steps
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert first.report["final"]["eval_rewards/margins"] == pytest.approx(
        plain.report["final"]["eval_rewards/margins"], rel=1e-3, abs=1e-5)


def test_without_the_rejected_answer_only_the_rejected_chains_final_answer_turn_leaves_the_mask(lab):
    tokenizer = lab["tokenizer"]
    row = next(r for r in lab["rows"] if r["rejected"][-1]["content"].startswith("Final answer"))
    full = tokenize_pair(tokenizer, row)
    kept = tokenize_pair(tokenizer, row, rejected_answer=False)
    assert kept["chosen_mask"] == full["chosen_mask"] and kept["rejected_ids"] == full["rejected_ids"]
    dropped = [i for i, (a, b) in enumerate(zip(full["rejected_mask"], kept["rejected_mask"])) if a != b]
    answer_turn = tokenizer(row["rejected"][-1]["content"], add_special_tokens=False)["input_ids"]
    assert len(dropped) == len(answer_turn) + 1  # the answer's tokens and its end-of-turn token
    assert dropped == list(range(dropped[0], dropped[-1] + 1)) and not any(kept["rejected_mask"][dropped[0]:])
    assert any(kept["rejected_mask"])  # the rejected chain's calls still count

    no_answer = {**row, "rejected": row["rejected"][:1]}  # a chain that stopped before answering
    assert tokenize_pair(tokenizer, no_answer, rejected_answer=False) == tokenize_pair(tokenizer, no_answer)

    # the agent reads an answer anywhere in a turn (`read_turn`), and so does the mask
    garbled = {**row, "rejected": row["rejected"][:-1] + [
        {**row["rejected"][-1], "content": "subtract" + row["rejected"][-1]["content"]}]}
    full, kept = tokenize_pair(tokenizer, garbled), tokenize_pair(tokenizer, garbled, rejected_answer=False)
    assert sum(full["rejected_mask"]) - sum(kept["rejected_mask"]) > len(answer_turn) + 1
    assert not any(kept["rejected_mask"][dropped[0]:]) and any(kept["rejected_mask"])

    # a rejected side that is only an answer (answered at once; a step pair cut at the answer) keeps it
    at_once = {**row, "rejected": row["rejected"][-1:]}
    assert tokenize_pair(tokenizer, at_once, rejected_answer=False) == tokenize_pair(tokenizer, at_once)
