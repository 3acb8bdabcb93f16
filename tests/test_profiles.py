"""The GPU profiles load, and their training code path runs on CPU with tiny models of the same families."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM

from fcdpo.chat_templates import CHAT_TEMPLATES, named_chat_template
from fcdpo.config import load_profile
from fcdpo.preferences import build_pairs, restore_messages, save_preferences, split_by_problem
from fcdpo.tinylab import build_model, build_tokenizer
from fcdpo.training import assistant_tokens, train_from_profile
from tests.test_preferences import scripted_chains

# Enough to run the code path, not to learn anything: the profiles' own model, LoRA and QLoRA settings.
SHORT_RUN = {"training.max_steps": 2, "training.batch_size": 1, "training.grad_accumulation": 1,
             "training.max_length": 4096, "training.eval_steps": 0, "training.logging_steps": 1}


def test_the_colab_profile_trains_a_small_qwen_in_4bit_with_a_7b_teacher():
    profile = load_profile("colab-t4")
    assert profile.student["model"].startswith("Qwen/Qwen2.5-") and profile.training.load_in_4bit
    assert profile.teacher["model"] == "Qwen/Qwen2.5-7B-Instruct" and profile.teacher["load_in_4bit"]


def test_the_a100_profile_trains_mistral_with_a_70b_class_teacher_behind_an_endpoint():
    profile = load_profile("a100")
    assert profile.student["model"] == "mistralai/Mistral-7B-Instruct-v0.2" and profile.training.load_in_4bit
    assert profile.teacher["kind"] == "openai" and profile.teacher["base_url"].startswith("http")
    assert "72B" in profile.teacher["model"] or "70B" in profile.teacher["model"]
    assert named_chat_template(profile.training.chat_template) == CHAT_TEMPLATES["mistral-tools"]


@pytest.fixture(scope="module")
def run_template(tmp_path_factory):
    """A run folder with preference pairs, and a tokenizer for the stand-in models."""
    root = tmp_path_factory.mktemp("run")
    chains = scripted_chains("math", n=3) + scripted_chains("fol", n=3)
    tokenizer = build_tokenizer([m.get("content") or "" for t in chains for m in t.messages], vocab_size=800)
    rows, report = build_pairs(chains, syntax="python")
    save_preferences(split_by_problem(rows, 0.0), root / "preferences", report)
    return root, tokenizer


def _run_folder(run_template, tmp_path, model):
    root, tokenizer = run_template
    shutil.copytree(root / "preferences", tmp_path / "preferences")
    model.save_pretrained(tmp_path / "student")
    tokenizer.save_pretrained(tmp_path / "student")
    return {"run_dir": str(tmp_path), "student": {"kind": "hf", "model": "student"}, **SHORT_RUN}


def _check_qlora_run(result):
    import bitsandbytes as bnb

    model = result.trainer.model
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())  # the base is in 4-bit
    quantization = model.get_base_model().config.quantization_config
    assert quantization.bnb_4bit_quant_type == "nf4" and quantization.bnb_4bit_use_double_quant
    assert result.report["load_in_4bit"] and result.report["steps"] == 2
    losses = [row["loss"] for row in result.curves if "loss" in row]
    assert len(losses) == 2 and all(loss == loss for loss in losses)  # ran, and no NaN
    assert (result.adapter_dir / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_the_colab_code_path_runs_on_a_tiny_qwen2_in_4bit(run_template, tmp_path):
    _, tokenizer = run_template
    qwen = build_model(tokenizer, hidden_size=64, num_layers=1, num_heads=2)  # 4-bit on CPU needs 64-wide inputs
    profile = load_profile("colab-t4", _run_folder(run_template, tmp_path, qwen))
    result = train_from_profile(profile, "dpo")
    _check_qlora_run(result)
    assert result.report["settings"]["target_modules"] == profile.training.target_modules


@pytest.mark.slow
def test_the_a100_code_path_runs_on_a_tiny_mistral_in_4bit_with_its_tool_template(run_template, tmp_path):
    _, tokenizer = run_template
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    profile = load_profile("a100", _run_folder(run_template, tmp_path, MistralForCausalLM(config)))
    result = train_from_profile(profile, "dpo")
    _check_qlora_run(result)
    saved = json.loads((result.adapter_dir / "tokenizer_config.json").read_text())
    template = saved.get("chat_template") or (result.adapter_dir / "chat_template.jinja").read_text()
    assert template == CHAT_TEMPLATES["mistral-tools"]  # evaluation renders chains as training did


def test_the_mistral_tool_template_shows_tool_results_as_instructions_and_masks_only_answers(run_template, tmp_path):
    from transformers import AutoTokenizer

    run_template[1].save_pretrained(tmp_path)
    mistral = AutoTokenizer.from_pretrained(tmp_path)
    mistral.chat_template = CHAT_TEMPLATES["mistral-tools"]
    chain = next(t for t in scripted_chains("math", n=3) if t.correct and t.calls)
    text = mistral.apply_chat_template(chain.messages, tokenize=False)
    observation = next(m["content"] for m in chain.messages if m["role"] == "tool")
    assert f" [INST] Result: {observation} [/INST]" in text
    assert text.count("[INST]") == 1 + sum(m["role"] == "tool" for m in chain.messages)
    ids, mask = assistant_tokens(mistral, restore_messages(chain.messages))
    written = mistral.decode([i for i, m in zip(ids, mask) if m])
    turns = [m["content"] for m in chain.messages if m["role"] == "assistant"]
    assert written == "".join(f" {turn}{mistral.eos_token}" for turn in turns)
