"""Model loading is decided in one place (fcdpo.loading), and the gpu-smoke profile's stages run on CPU
with the real Qwen2.5 tokenizer and tiny random weights of its architecture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fcdpo import loading
from fcdpo.backends import _resolve_dtype
from fcdpo.config import load_profile
from fcdpo.training import compute_dtype as training_dtype

SOURCE = Path(loading.__file__).parent
FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "models"


@pytest.fixture
def gpu(monkeypatch):
    """Pretend to be on a CUDA GPU; `gpu(native_bf16)` picks a T4 (False) or an A100 (True)."""
    def pick(native_bf16: bool):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True: native_bf16 or including_emulation)
    return pick


def test_a_t4_computes_in_fp16_in_every_stage_never_in_emulated_bf16(gpu):
    gpu(native_bf16=False)
    assert loading.compute_dtype() == training_dtype() == _resolve_dtype(None, "cuda") == torch.float16
    assert loading.mixed_precision(loading.compute_dtype(), on_gpu=True) == {"bf16": False, "fp16": True}


def test_an_a100_computes_in_bf16_and_a_cpu_in_fp32(gpu):
    assert loading.compute_dtype("cpu") == _resolve_dtype(None, "cpu") == torch.float32
    gpu(native_bf16=True)
    assert loading.compute_dtype() == training_dtype() == torch.bfloat16
    assert loading.mixed_precision(torch.bfloat16, on_gpu=True) == {"bf16": True, "fp16": False}
    assert loading.mixed_precision(torch.float32, on_gpu=False) == {"bf16": False, "fp16": False}


def test_only_fcdpo_loading_decides_dtype_quantisation_and_lora():
    for path in SOURCE.glob("*.py"):
        if path.name == "loading.py":
            continue
        text = path.read_text()
        for decision in ("is_bf16_supported", "BitsAndBytesConfig(", "LoraConfig("):
            assert decision not in text, f"{path.name} decides {decision} itself"


def test_the_4bit_config_is_nf4_with_double_quantisation_in_the_compute_dtype():
    kwargs = loading.model_kwargs(load_in_4bit=True, dtype=torch.float16, device_map={"": 0})
    config = kwargs["quantization_config"]
    assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.float16 and kwargs["device_map"] == {"": 0}
    sharded = loading.model_kwargs(load_in_4bit=True, dtype=torch.bfloat16, device_map={"": 0}, sharded=True)
    assert "device_map" not in sharded and sharded["quantization_config"].bnb_4bit_quant_storage == torch.bfloat16
    with pytest.raises(ValueError, match="not a torch dtype"):
        loading.resolve_dtype("float17")


def test_the_gpu_smoke_profile_is_small_and_uses_a_hub_instruct_model():
    profile = load_profile("gpu-smoke")
    assert profile.student["model"] == "Qwen/Qwen2.5-0.5B-Instruct" and profile.training.load_in_4bit
    assert all(t.train <= 8 and t.eval <= 8 and t.source == "generated" for t in profile.tasks.values())
    assert profile.training.max_steps <= 5 and profile.multi_agent.glpft.backbone_steps <= 5


@pytest.mark.slow
@pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"the real tokenizer fixtures are absent ({FIXTURES})")
def test_the_gpu_smoke_stages_run_on_cpu_with_the_real_tokenizer_and_tiny_weights(tmp_path):
    """Every stage of the smoke run on CPU: problems, rollouts with the profile's agent, pairs, QLoRA DPO
    and SFT steps, both GLPFT stages, and the evaluation of every model the run made (the multi-LLM
    agent included) on the held-out problems."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from fcdpo.agent import Agent
    from fcdpo.backends import load_backend
    from fcdpo.evaluation import evaluate_run, run_models
    from fcdpo.glpft import glpft_adapters, glpft_role_backends, run_glpft
    from fcdpo.multi_agent import ROLES, MultiAgent
    from fcdpo.preferences import build_pairs, save_preferences, split_by_problem
    from fcdpo.rollouts import rollout
    from fcdpo.tasks import problem_sets
    from fcdpo.training import train_from_profile
    from tests.test_preferences import scripted_chains

    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "Qwen--Qwen2.5-0.5B-Instruct")
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    folder = tmp_path / "qwen"
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    spec = {"kind": "hf", "model": str(folder), "batch_size": 8}
    profile = load_profile("gpu-smoke", {"run_dir": str(tmp_path / "run"), "teacher": spec, "student": spec,
                                         "agent.max_new_tokens": 8})
    sets = problem_sets(profile)
    teacher = load_backend(profile.teacher)
    task = profile.task("math")
    chains = rollout(sets["math"]["train"][:2], Agent(task, teacher, profile.agent),
                     profile.run_path / "rollouts" / "math.jsonl", k=1, progress=False)
    assert len(chains) == 2 and all(c.steps >= 1 for c in chains)
    # The random teacher solves nothing, so the pairs come from scripted chains, as any run's would.
    rows, _ = build_pairs(scripted_chains("math", n=3), syntax="python")
    save_preferences(split_by_problem(rows, 0.0), profile.run_path / "preferences", {})
    result = train_from_profile(profile, "dpo")
    assert result.report["steps"] == profile.training.max_steps and result.report["load_in_4bit"]
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
    sft = train_from_profile(profile, "sft")
    assert sft.report["steps"] == profile.training.max_steps and (sft.adapter_dir / "adapter_model.safetensors").exists()

    # GLPFT reads the teacher's rollouts of every task: scripted ones again, written as notebook 01 would.
    for name in profile.tasks:
        lines = [json.dumps(c.to_dict(), ensure_ascii=False) for c in scripted_chains(name, n=3)]
        (profile.run_path / "rollouts" / f"teacher-{name}.jsonl").write_text("\n".join(lines) + "\n")
    glpft = run_glpft(profile, log=lambda _: None)
    assert glpft["config"]["load_in_4bit"] and set(glpft_adapters(profile.run_path / "training" / "glpft")) >= set(ROLES)

    models, notes = run_models(profile)
    assert set(models) == {"teacher", "student", "dpo", "sft"}, notes
    team = glpft_role_backends(profile)
    models["multi"] = lambda task: MultiAgent(task, team, profile.multi_agent.agent)
    evaluation = evaluate_run(profile, models, progress=False)
    assert sorted(set(evaluation.summary["model"])) == ["dpo", "multi", "sft", "student", "teacher"]
    assert (evaluation.summary["chains"] == profile.tasks["math"].eval).all()
