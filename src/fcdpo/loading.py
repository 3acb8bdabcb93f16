"""One place that decides how models are loaded for every stage: compute dtype, 4-bit quantisation,
device map, LoRA and the tokenizer.

Layer: settings and formats; imports only `fcdpo.chat_templates`.

    dtype = compute_dtype()                    # bf16 on GPUs with native bf16, fp16 on others (a T4), fp32 on CPU
    kwargs = model_kwargs(load_in_4bit=True)   # for AutoModelForCausalLM.from_pretrained
    lora = lora_config(16, 32, 0.05, ["q_proj", "v_proj"])
    tokenizer = load_tokenizer("runs/tiny-cpu/lab/student", chat_template=None)

Rollouts and evaluation (`fcdpo.backends`), DPO / SFT (`fcdpo.training`) and GLPFT (`fcdpo.glpft`) all
take these from here, so no stage trains or generates in a dtype another stage would not choose (a
T4 reports bf16 support, but only through slow emulation: only native support counts).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fcdpo.chat_templates import check_chat_template, named_chat_template

if TYPE_CHECKING:
    import torch


def compute_dtype(device: str | None = None) -> "torch.dtype":
    """bf16 on CUDA devices with native bf16, fp16 on other CUDA devices, fp32 on CPU.

    `device` None means CUDA when it is available."""
    import torch

    on_gpu = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    if not on_gpu:
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def resolve_dtype(dtype: "str | torch.dtype | None", device: str | None = None) -> "torch.dtype":
    """A dtype given by name or as a torch dtype, or `compute_dtype(device)` for None."""
    import torch

    if dtype is None:
        return compute_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"dtype {dtype!r} is not a torch dtype (e.g. 'bfloat16', 'float16', 'float32')")
    return resolved


def mixed_precision(dtype: "torch.dtype", on_gpu: bool) -> dict[str, bool]:
    """The trainer's `bf16` / `fp16` flags for a compute dtype: mixed precision only on a GPU."""
    import torch

    return {"bf16": on_gpu and dtype == torch.bfloat16, "fp16": on_gpu and dtype == torch.float16}


def trainer_basics(seed: int, logging_steps: int, *, checkpointing: bool, progress: bool = False,
                   mixed: bool = True) -> dict[str, Any]:
    """The arguments every TRL config of fcdpo shares (DPO, SFT, GRPO, GLPFT, the lab): seeds, device,
    precision (mixed on a GPU in the compute dtype, unless `mixed` is off: the lab trains in fp32),
    activation checkpointing, logging, no checkpoint saved, no reporting, and bars only with
    `progress`. Each caller adds its own schedule, rate and steps."""
    import torch

    on_gpu = torch.cuda.is_available()
    precision = mixed_precision(compute_dtype(), on_gpu) if mixed else {"bf16": False, "fp16": False}
    return dict(seed=seed, data_seed=seed, **precision, activation_checkpointing=checkpointing,
                use_cpu=not on_gpu, logging_steps=logging_steps, save_strategy="no", report_to=[],
                disable_tqdm=not progress, dataloader_num_workers=0)


def quantization_config(dtype: "torch.dtype", storage: "torch.dtype | None" = None) -> Any:
    """QLoRA's 4-bit base: NF4 with double quantisation, computing in `dtype`; `storage` keeps the packed
    weights in another dtype (FSDP and DeepSpeed shard them in the compute dtype)."""
    from transformers import BitsAndBytesConfig

    settings: dict[str, Any] = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": dtype}
    if storage is not None:
        settings["bnb_4bit_quant_storage"] = storage
    return BitsAndBytesConfig(**settings)


def model_kwargs(*, load_in_4bit: bool = False, dtype: "torch.dtype | None" = None,
                 device_map: Any = None, sharded: bool = False) -> dict[str, Any]:
    """Keyword arguments of `from_pretrained`: the dtype, the 4-bit config if asked, a device map.

    `sharded` (FSDP / DeepSpeed) stores 4-bit weights in the compute dtype and places nothing."""
    dtype = dtype if dtype is not None else compute_dtype()
    kwargs: dict[str, Any] = {"dtype": dtype}
    if load_in_4bit:
        kwargs["quantization_config"] = quantization_config(dtype, storage=dtype if sharded else None)
    if device_map is not None and not sharded:
        kwargs["device_map"] = device_map
    return kwargs


def sharded_launch() -> bool:
    """Whether `accelerate launch` runs this process under FSDP or DeepSpeed (the model must not be placed)."""
    import os

    return any(os.environ.get(k, "").lower() == "true" for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"))


def load_model(model: str | Path, **options: Any) -> Any:
    """A causal LM from a folder or hub id, `options` as `from_pretrained` takes them (`model_kwargs`
    builds them for 4-bit, dtype and device). Every model fcdpo loads goes through here or `load_base`."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model), **options)


def load_adapter(model: Any, adapter: str | Path, *, trainable: bool = False, name: str | None = None) -> Any:
    """A saved LoRA adapter put on `model` (a PeftModel): frozen for inference, or `trainable` to go on
    training it (an arm that starts from another, a later on-policy round, GLPFT's roles), under `name`."""
    from peft import PeftModel

    options: dict[str, Any] = {"is_trainable": trainable}
    if name is not None:
        options["adapter_name"] = name
    return PeftModel.from_pretrained(model, str(adapter), **options)


def saved_tokenizer(folder: str | Path) -> Any:
    """The tokenizer saved in a model or adapter folder, exactly as saved (no template or pad token set)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def load_base(model: str | Path, load_in_4bit: bool = False, *, trainable: bool = False,
              gradient_checkpointing: bool = False) -> Any:
    """A base model to put LoRA adapters on, loaded the same way by every stage that trains or reloads one.

    In `compute_dtype()`; with `load_in_4bit`, QLoRA's NF4 base on this process's device (the GPU of
    its rank, the CPU without one, where bitsandbytes 0.50 also runs 4-bit layers), and when it is to
    be `trainable` made ready by `prepare_model_for_kbit_training` (norms in fp32, input gradients
    for checkpointing). Under FSDP
    or DeepSpeed the 4-bit weights are stored in the compute dtype and not placed. Raises
    `OSError` / `ValueError` from transformers when the model cannot be read.
    """
    import os

    import torch
    from transformers import AutoModelForCausalLM

    device_map = None
    if load_in_4bit:  # each process holds its whole (quantised) model on its own device
        device_map = {"": int(os.environ.get("LOCAL_RANK", "0")) if torch.cuda.is_available() else "cpu"}
    kwargs = model_kwargs(load_in_4bit=load_in_4bit, dtype=compute_dtype(), device_map=device_map,
                          sharded=load_in_4bit and sharded_launch())
    loaded = AutoModelForCausalLM.from_pretrained(str(model), **kwargs)
    if load_in_4bit and trainable:
        from peft import prepare_model_for_kbit_training

        loaded = prepare_model_for_kbit_training(loaded, use_gradient_checkpointing=gradient_checkpointing,
                                                 gradient_checkpointing_kwargs={"use_reentrant": False})
    return loaded


def lora_config(r: int, alpha: int, dropout: float, target_modules: list[str]) -> Any:
    """The LoRA adapter of every trained stage (no bias, causal LM)."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                      bias="none", task_type="CAUSAL_LM")


def load_tokenizer(model: str | Path, chat_template: str | None = None, setting: str = "chat_template") -> Any:
    """The tokenizer of `model` as training takes it: `chat_template` (a name in
    `fcdpo.chat_templates.CHAT_TEMPLATES` or a .jinja file) in place of its own when given, a pad token set.

    Raises:
        ChatTemplateError: the template is unknown, or cannot be trained with (tool turns it refuses,
            earlier turns it rewrites); the message names the replacement to set as `setting`.
        OSError, ValueError: transformers cannot load the tokenizer.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    if chat_template:
        tokenizer.chat_template = named_chat_template(chat_template)
    check_chat_template(tokenizer, str(model), setting)
    if tokenizer.pad_token is None:  # Mistral has none; padding sits under a zero attention mask
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
