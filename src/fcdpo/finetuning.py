"""Fine-tuning the student: what every training arm shares (DPO and SFT in `fcdpo.training`, GRPO in `fcdpo.grpo`).

Layer: stages; imports the profile and the bottom layer, no other stage.

- The student loaded for training (`load_student`: the base, 4-bit NF4 and ready for k-bit training
  when asked, and its tokenizer with the configured chat template) and where it is (`student_reference`).
- `assistant_tokens`: a conversation's token ids under the chat template, and the mask of the model's
  own turns, the only tokens any arm trains on.
- What every TRL trainer of fcdpo is given alike (`trainer_arguments`, `lora_config`, `resolve_steps`),
  and what a run leaves: curves written as it goes, memory, `TrainingResult`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fcdpo import loading
from fcdpo.chat_templates import ChatTemplateError
from fcdpo.config import student_spec
from fcdpo.loading import (  # compute: bf16 on GPUs with native bf16, fp16 on others, fp32 on CPU
    compute_dtype,
    trainer_basics,
)
from fcdpo.prefix_attention import first_turn_passes
from fcdpo.progress import headless
from fcdpo.settings import TrainingConfig

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


class TrainingError(ValueError):
    """Data, settings or a model that training cannot use; the message says what and where."""


# --------------------------------------------------------------------------- the student, loaded for training


def launched_processes() -> int:
    """Processes of this run as the launcher (`accelerate launch`, `torchrun`) set them.

    Read from the environment: creating accelerate's shared state this early would fix it before
    the trainer's arguments (`use_cpu`, the backend) are known.
    """
    return int(os.environ.get("WORLD_SIZE", "1"))


def load_student(model: str | Path, settings: TrainingConfig) -> tuple[Any, Any]:
    """The base model to train and its tokenizer.

    The base is `fcdpo.loading.load_base` (as GLPFT loads it): with `settings.load_in_4bit`
    NF4 with double quantisation, computed in `compute_dtype()` and ready for k-bit training.
    `settings.chat_template` replaces the tokenizer's template (a name in
    `fcdpo.chat_templates.CHAT_TEMPLATES` or a .jinja file).
    """
    base = load_base(model, settings.load_in_4bit, trainable=True, gradient_checkpointing=_gradient_checkpointing(settings))
    return base, load_tokenizer(model, settings)


def load_base(model: str | Path, load_in_4bit: bool = False, **options: bool) -> Any:
    """The student's weights (`fcdpo.loading.load_base`, `options` passed on); a TrainingError names a
    model that cannot be read."""
    try:
        return loading.load_base(model, load_in_4bit, **options)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot load the student {str(model)!r}: {exc}") from exc


def load_tokenizer(model: str | Path, settings: TrainingConfig) -> Any:
    """The student's tokenizer as training uses it: `settings.chat_template` applied, a pad token set
    (`fcdpo.loading.load_tokenizer`); a template that refuses tool turns or rewrites earlier turns is a
    TrainingError naming its replacement."""
    try:
        return loading.load_tokenizer(model, settings.chat_template, "training.chat_template")
    except ChatTemplateError as exc:
        raise TrainingError(str(exc)) from exc
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot load the tokenizer of {str(model)!r}: {exc}") from exc


def _gradient_checkpointing(settings: TrainingConfig) -> bool:
    import torch

    if settings.gradient_checkpointing is None:
        return torch.cuda.is_available()
    return settings.gradient_checkpointing


def lora_config(settings: TrainingConfig) -> Any:
    """The PEFT LoRA configuration of every arm (`fcdpo.loading.lora_config`)."""
    return loading.lora_config(settings.lora_r, settings.lora_alpha, settings.lora_dropout, settings.target_modules)


def adapter_dtype_for_training(model: Any) -> None:
    """Trainable (LoRA) weights in fp32 unless the run computes in bf16.

    TRL casts the adapter of a quantised model to bf16 (the QLoRA recipe). fp16 mixed precision
    (GPUs without bf16) needs fp32 master weights, and CPUs compute in fp32.
    """
    import torch

    if compute_dtype() == torch.bfloat16:
        return
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()


def student_reference(profile: Any) -> str:
    """The student's model as `from_pretrained` takes it: a folder in the run (the tiny lab's) or a hub id."""
    spec = student_spec(profile)
    if spec.get("kind") != "hf" or not spec.get("model"):
        raise TrainingError(f"profile {profile.name!r}: the student must be a local model (kind: hf, model: ...) "
                            f"to be trained, got {spec!r}")
    model = str(spec["model"])
    in_run = profile.run_path / model
    return str(in_run) if in_run.exists() else model


# --------------------------------------------------------------------------- tokens the model is trained on


def assistant_tokens(
    tokenizer: "PreTrainedTokenizerBase", messages: list[dict[str, Any]], tools: list[dict] | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of a conversation under the chat template, and a mask that is 1 on the model's own turns.

    The mask covers each assistant turn's content (and native tool calls) up to and including its
    end-of-turn token; system, user and tool turns and the template's role headers are 0.

    Templates with `{% generation %}` markers (the tiny lab's, TRL's training templates) give the mask
    directly (`return_assistant_tokens_mask`). For others, each assistant turn is located by rendering
    the conversation up to it (with the generation prompt) and through it: the turn is the text in
    between, cut after the tokenizer's EOS. That needs a prefix-preserving template (each rendered
    prefix begins the full rendering); one that is not raises TrainingError.
    """
    from trl.chat_template_utils import has_generation_markers

    template = tokenizer.chat_template
    if template is None:
        raise TrainingError(f"the tokenizer of {tokenizer.name_or_path!r} has no chat template "
                            "(set training.chat_template)")
    if has_generation_markers(template if isinstance(template, str) else template["default"]):
        out = tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        return list(out["input_ids"]), list(out["assistant_masks"])
    return _assistant_tokens_by_spans(tokenizer, messages, tools)


def _assistant_tokens_by_spans(
    tokenizer: "PreTrainedTokenizerBase", messages: list[dict[str, Any]], tools: list[dict] | None
) -> tuple[list[int], list[int]]:
    def render(part: list[dict[str, Any]], generation_prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(part, tools=tools, tokenize=False, add_generation_prompt=generation_prompt)

    text = render(messages)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(messages[:index], generation_prompt=True)
        through = render(messages[: index + 1])
        if not (through.startswith(before) and text.startswith(through)):
            raise TrainingError(
                f"the chat template of {tokenizer.name_or_path!r} is not prefix-preserving at message {index}: "
                "the assistant turns cannot be located; use a template with {% generation %} markers "
                "(training.chat_template)"
            )
        end = len(through)
        eos = tokenizer.eos_token
        cut = through.rfind(eos, len(before)) if eos else -1
        if cut >= 0:  # what the template writes after the end-of-turn token is not generated by the model
            end = cut + len(eos)
        spans.append((len(before), end))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(start <= first < end for start, end in spans)) for first, _ in encoded["offset_mapping"]]
    return list(encoded["input_ids"]), mask


# --------------------------------------------------------------------------- trainers and runs


def trainer_arguments(settings: TrainingConfig, progress: bool) -> dict[str, Any]:
    """The TRL config arguments of the single agent's arms: `loading.trainer_basics` with the training
    section's seed, logging and checkpointing, a cosine schedule after `warmup`, and progress (lines
    instead of a bar in a headless run)."""
    return dict(lr_scheduler_type="cosine", warmup_steps=settings.warmup,
                activation_checkpointing_kwargs={"use_reentrant": False},
                **trainer_basics(settings.seed, settings.logging_steps, checkpointing=_gradient_checkpointing(settings),
                                 progress=progress and not headless()))


@dataclass
class TrainingResult:
    """What a training run leaves: its folder, the adapter, the curves and the report."""

    output_dir: Path
    adapter_dir: Path
    curves: list[dict[str, Any]]
    report: dict[str, Any]
    trainer: Any = field(default=None, repr=False)  # the TRL trainer, its model still in memory


def memory_snapshot() -> dict[str, float]:
    """Memory in GB now: GPU allocated / peak / reserved when CUDA is in use, else this process's RSS and peak RSS."""
    import torch

    if torch.cuda.is_available():
        return {
            "gpu_allocated_gb": round(torch.cuda.memory_allocated() / 2**30, 3),
            "gpu_peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3),
            "gpu_reserved_gb": round(torch.cuda.memory_reserved() / 2**30, 3),
        }
    pages = int(Path("/proc/self/statm").read_text().split()[1]) if Path("/proc/self/statm").exists() else 0
    return {
        "rss_gb": round(pages * os.sysconf("SC_PAGE_SIZE") / 2**30, 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),  # KB on Linux
    }


def curve_writer(output_dir: Path) -> Any:
    from transformers import TrainerCallback

    class CurveWriter(TrainerCallback):
        """Rewrites `curves.json` and `curves.csv` at every log, so a long run can be watched as it goes."""

        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or not state.is_world_process_zero:
                return
            self.rows.append({"step": state.global_step, **{k: v for k, v in logs.items() if is_number(v)}})
            write_curves(self.rows, output_dir)

    return CurveWriter()


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


CURVES_FILE = "curves.json"  # in a trained arm's folder, beside curves.csv, report.json and adapter/


def write_curves(rows: list[dict[str, Any]], output_dir: str | Path) -> None:
    """Training curves as `curves.json` (a list of rows) and `curves.csv` (one column per metric)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / CURVES_FILE).write_text(json.dumps(rows, indent=1))
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with (output_dir / "curves.csv").open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def read_curves(output_dir: str | Path) -> list[dict[str, Any]]:
    """The rows written by `write_curves`."""
    return json.loads((Path(output_dir) / CURVES_FILE).read_text())


def resolve_steps(settings: TrainingConfig, examples: int, processes: int = 1) -> int:
    """Optimizer steps of a run: `max_steps`, or `epochs` passes over `examples` training pairs.

    Both methods use this with the number of *pairs*, so the SFT baseline gets the same budget as DPO:
    the same steps of the same batch size.
    """
    if settings.max_steps > 0:
        return settings.max_steps
    per_step = settings.batch_size * settings.grad_accumulation * processes
    return max(1, math.ceil(settings.epochs * examples / per_step))


# --------------------------------------------------------------------------- first turns run once

TURN_END = "<|im_end|>"  # the end of a turn in ChatML templates (the tiny lab's, Qwen's)


def turn_end_id(tokenizer: "PreTrainedTokenizerBase") -> int | None:
    """The id of the token that ends a chat turn, or None when the tokenizer has none fcdpo knows."""
    token_id = tokenizer.convert_tokens_to_ids(TURN_END)
    return None if token_id is None or token_id == tokenizer.unk_token_id else int(token_id)


def shared_prefix_loss(
    model: Any,
    input_ids: "torch.Tensor",
    attention_mask: "torch.Tensor",
    labels: "torch.Tensor",
    turn_end_id: int,
    num_items_in_batch: "int | torch.Tensor | None" = None,
    pack: bool = True,
) -> "torch.Tensor | None":
    """The causal-LM loss of a right-padded batch, running each distinct first turn only once.

    Every conversation of a task opens with its system prompt (hundreds of tokens, the bulk of each
    row of the tiny lab), and those tokens carry no loss. Causal attention means a prefix's keys and values do
    not depend on what follows, so each distinct first turn (up to and including the first
    `turn_end_id`) is run once, its key/value cache is shared by every row that starts with it, and
    only the rest of each row is run per row. Gradients flow through the shared cache, so loss and
    gradients equal those of the plain forward pass (sliding-window layers included) while a batch
    of 16 rows of one task costs about a quarter of the compute.

    With `pack`, the rests of rows short enough to share a row are packed into one
    (`fcdpo.prefix_attention.first_turn_passes`): the same loss, fewer padding tokens run.

    Returns None when the batch does not fit the pattern (a row without `turn_end_id`, or a
    labelled token inside a first turn or right after it); the caller then uses the plain pass.
    """
    import torch

    passes = first_turn_passes(model, input_ids, attention_mask, labels, turn_end_id, pack=pack)
    if passes is None:
        return None
    total = labels.new_zeros((), dtype=torch.float32)
    count = 0
    for group in passes:  # packed or not, position i of a pass predicts its label i + 1
        logits = group.output.logits[:, :-1].float()
        targets = group.labels[:, 1:]
        total = total + torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
        )
        count += int((targets != -100).sum())
    denominator = count if num_items_in_batch is None else num_items_in_batch
    return total / torch.as_tensor(denominator, device=total.device).clamp(min=1)


def shared_prefix_sft_trainer_class(pack: bool = True) -> type:
    """`SFTTrainer` whose training loss runs shared first turns once (see `shared_prefix_loss`), packing
    short rests into shared rows unless `pack` is false."""
    from trl import SFTTrainer

    class SharedPrefixSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not return_outputs and model.training and "attention_mask" in inputs and turn_end_id(self.processing_class) is not None:
                loss = shared_prefix_loss(
                    model,
                    inputs["input_ids"],
                    inputs["attention_mask"],
                    inputs["labels"],
                    turn_end_id(self.processing_class),
                    num_items_in_batch,
                    pack=pack,
                )
                if loss is not None:
                    return loss
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return SharedPrefixSFTTrainer
