"""Training the student on preference pairs: DPO with a LoRA adapter (QLoRA on GPUs), and an SFT baseline.

    result = train_from_profile(cfg, "dpo")   # runs/<profile>/training/dpo/{adapter,curves.csv,report.json}
    result = train_from_profile(cfg, "sft")   # the baseline: SFT on the same pairs' chosen chains
    merge_and_export(base, result.adapter_dir, "merged/")

DPO runs on TRL's `DPOTrainer` with a PEFT LoRA adapter. The reference model is the same network with
the adapter disabled (`ref_model=None` and a `peft_config`), so no second copy of the weights is held.
On GPU profiles the frozen base is loaded in 4-bit NF4 with double quantisation (bitsandbytes), computing
in bf16 where the GPU supports it and fp16 otherwise, and prepared with `prepare_model_for_kbit_training`.

**Only the model's own turns count.** A chosen or rejected chain interleaves the model's turns with tool
results (and feedback turns). Those are context the model never wrote: they must not count in the
policy's or the reference's log-probabilities, or DPO would reward the policy for "predicting" a tool's
output. TRL's DPO collator marks every completion token; here each pair is tokenized with a per-token
assistant mask (`assistant_tokens`) and `AssistantOnlyPreferenceCollator` builds TRL's
`completion_mask` from it, so `DPOTrainer` computes both log-probabilities over assistant tokens only
(content and end-of-turn token). The SFT baseline uses the same masks as `assistant_masks`.

Pairs longer than `max_length` tokens are dropped before training and counted per task, never
truncated (a truncated chain would lose its final answer, the very thing the pair is about).
"""

from __future__ import annotations

import csv
import json
import math
import os
import resource
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fcdpo import loading
from fcdpo.chat_templates import ChatTemplateError
from fcdpo.messages import restore_messages, restore_tools
from fcdpo.progress import headless, trainer_callback
from fcdpo.settings import METHODS, TrainingConfig

if TYPE_CHECKING:
    import torch
    from datasets import Dataset, DatasetDict
    from transformers import PreTrainedTokenizerBase

DPO_METHODS = ("dpo", "step_dpo", "onpolicy_dpo")

class TrainingError(ValueError):
    """Data, settings or a model that training cannot use; the message says what and where."""


# --------------------------------------------------------------------------- tokenization with masks


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


def tokenize_pair(tokenizer: "PreTrainedTokenizerBase", row: dict[str, Any]) -> dict[str, list[int]]:
    """One preference row as DPO inputs: `prompt_ids`, `chosen_ids`, `rejected_ids` and their assistant masks.

    The prompt is rendered with the generation prompt (the assistant header), exactly as the agent
    renders it at inference; it must be an exact token prefix of prompt + chosen and of prompt +
    rejected, else TrainingError names the problem (a completion must never change its prompt's tokens).
    """
    tools = restore_tools(row.get("tools"))
    prompt = restore_messages(row["prompt"])
    prompt_ids = list(tokenizer.apply_chat_template(
        prompt, tools=tools, tokenize=True, return_dict=True, add_generation_prompt=True
    )["input_ids"])
    out: dict[str, list[int]] = {"prompt_ids": prompt_ids}
    for side in ("chosen", "rejected"):
        ids, mask = assistant_tokens(tokenizer, prompt + restore_messages(row[side]), tools)
        if ids[: len(prompt_ids)] != prompt_ids:
            raise TrainingError(
                f"pair {row.get('problem_id')!r}: the tokenized prompt is not a prefix of prompt + {side} "
                "under this chat template"
            )
        out[f"{side}_ids"] = ids[len(prompt_ids):]
        out[f"{side}_mask"] = mask[len(prompt_ids):]
        if not any(out[f"{side}_mask"]):
            raise TrainingError(f"pair {row.get('problem_id')!r}: the {side} chain has no assistant token")
    return out


def tokenize_preferences(
    dataset: "Dataset", tokenizer: "PreTrainedTokenizerBase", max_length: int
) -> tuple["Dataset", dict[str, int]]:
    """DPO inputs for every pair that fits in `max_length` tokens; returns (dataset, dropped per task).

    A pair fits when prompt + chosen and prompt + rejected both have at most `max_length` tokens.
    The dataset keeps `task` and `problem_id` beside the token columns.
    """
    from datasets import Dataset

    rows, dropped = [], Counter()
    for row in dataset:
        tokens = tokenize_pair(tokenizer, row)
        longest = len(tokens["prompt_ids"]) + max(len(tokens["chosen_ids"]), len(tokens["rejected_ids"]))
        if longest > max_length:
            dropped[row["task"]] += 1
            continue
        rows.append({**tokens, "task": row["task"], "problem_id": row["problem_id"]})
    columns = ["prompt_ids", "chosen_ids", "rejected_ids", "chosen_mask", "rejected_mask", "task", "problem_id"]
    return Dataset.from_dict({c: [r[c] for r in rows] for c in columns}), dict(sorted(dropped.items()))


def chosen_conversations(dataset: "Dataset") -> list[dict[str, Any]]:
    """The distinct chosen chains of the pairs, as whole conversations (prompt + chosen) for SFT."""
    seen, rows = set(), []
    for row in dataset:
        key = (row["task"], row["chosen_id"])
        if key not in seen:
            seen.add(key)
            rows.append({"messages": row["prompt"] + row["chosen"], "tools": row["tools"],
                         "task": row["task"], "problem_id": row["problem_id"]})
    return rows


def tokenize_conversations(
    rows: list[dict[str, Any]], tokenizer: "PreTrainedTokenizerBase", max_length: int
) -> tuple["Dataset", dict[str, int]]:
    """SFT inputs (`input_ids`, `assistant_masks`) for conversations of at most `max_length` tokens.

    Returns the dataset and the number of conversations dropped for length, per task.
    """
    from datasets import Dataset

    kept, dropped = {"input_ids": [], "assistant_masks": [], "task": []}, Counter()
    for row in rows:
        ids, mask = assistant_tokens(tokenizer, restore_messages(row["messages"]), restore_tools(row["tools"]))
        if len(ids) > max_length:
            dropped[row["task"]] += 1
            continue
        kept["input_ids"].append(ids)
        kept["assistant_masks"].append(mask)
        kept["task"].append(row["task"])
    return Dataset.from_dict(kept), dict(sorted(dropped.items()))


# --------------------------------------------------------------------------- the DPO trainer


def _preference_collator_class() -> type:
    from transformers.data.data_collator import DataCollatorMixin
    from trl.trainer.utils import pad

    @dataclass
    class AssistantOnlyPreferenceCollator(DataCollatorMixin):
        """Batches of [chosen rows; rejected rows], right-padded, whose `completion_mask` is 1 on assistant tokens only.

        Rows come from `tokenize_preferences`. `DPOTrainer` sums log-probabilities where
        `completion_mask` is 1, for the policy and the reference alike, so prompt, tool and feedback
        tokens carry no weight in either.
        """

        pad_token_id: int
        return_tensors: str = "pt"

        def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
            import torch

            sequences, masks = [], []
            for side in ("chosen", "rejected"):
                for example in examples:
                    sequences.append(example["prompt_ids"] + example[f"{side}_ids"])
                    masks.append([0] * len(example["prompt_ids"]) + list(example[f"{side}_mask"]))
            output = {
                "input_ids": pad([torch.tensor(s) for s in sequences], padding_value=self.pad_token_id,
                                 padding_side="right"),
                "attention_mask": pad([torch.ones(len(s), dtype=torch.long) for s in sequences], padding_value=0,
                                      padding_side="right"),
                "completion_mask": pad([torch.tensor(m, dtype=torch.long) for m in masks], padding_value=0,
                                       padding_side="right"),
            }
            for key in ("ref_chosen_logps", "ref_rejected_logps"):
                if key in examples[0]:
                    output[key] = torch.tensor([example[key] for example in examples])
            return output

    return AssistantOnlyPreferenceCollator


def preference_collator(pad_token_id: int) -> Any:
    """The collator of `AssistantOnlyDPOTrainer` (see `_preference_collator_class`)."""
    return _preference_collator_class()(pad_token_id=pad_token_id)


def _dpo_trainer_class() -> type:
    from trl import DPOTrainer

    class AssistantOnlyDPOTrainer(DPOTrainer):
        """`DPOTrainer` on rows tokenized by `tokenize_preferences`, with assistant-only completion masks.

        Pass `data_collator=preference_collator(pad_id)`; datasets must already be tokenized (TRL's own
        tokenization would mark tool tokens as completion).
        """

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            missing = {"prompt_ids", "chosen_ids", "rejected_ids", "chosen_mask", "rejected_mask"} - set(
                dataset.column_names
            )
            if missing:
                raise TrainingError(f"the {dataset_name} dataset is not tokenized with assistant masks (missing "
                                    f"{sorted(missing)}): pass it through fcdpo.training.tokenize_preferences")
            return dataset

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            self._signature_columns = list(self._signature_columns) + ["chosen_mask", "rejected_mask"]

    return AssistantOnlyDPOTrainer


# --------------------------------------------------------------------------- models


def compute_dtype() -> "torch.dtype":
    """bf16 on GPUs that support it natively, fp16 on other GPUs (a T4), fp32 on CPU (`fcdpo.loading`)."""
    from fcdpo.loading import compute_dtype as decide

    return decide()


def _launched_processes() -> int:
    """Processes of this run as the launcher (`accelerate launch`, `torchrun`) set them.

    Read from the environment: creating accelerate's shared state this early would fix it before
    the trainer's arguments (`use_cpu`, the backend) are known.
    """
    return int(os.environ.get("WORLD_SIZE", "1"))


def _sharded_launch() -> bool:
    """Whether `accelerate launch` runs this process under FSDP or DeepSpeed (the model must not be placed)."""
    return any(os.environ.get(k, "").lower() == "true" for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"))


def load_student(model: str | Path, settings: TrainingConfig) -> tuple[Any, Any]:
    """The base model to train and its tokenizer.

    With `settings.load_in_4bit` the linear layers are quantised to NF4 with double quantisation and
    computed in `compute_dtype()`, then `prepare_model_for_kbit_training` makes the model trainable
    (norms in fp32, input gradients for checkpointing). Under FSDP or DeepSpeed the 4-bit weights are
    stored in the compute dtype so they can be sharded. `settings.chat_template` replaces the
    tokenizer's template (a name in CHAT_TEMPLATES or a .jinja file).
    """
    loaded = _load_base(model, settings)
    if settings.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        loaded = prepare_model_for_kbit_training(
            loaded,
            use_gradient_checkpointing=_gradient_checkpointing(settings),
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    return loaded, load_tokenizer(model, settings)


def _load_base(model: str | Path, settings: TrainingConfig) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    from fcdpo.loading import model_kwargs

    device_map = None
    if settings.load_in_4bit:  # each process holds its whole (quantised) model on its own device
        device_map = {"": int(os.environ.get("LOCAL_RANK", "0")) if torch.cuda.is_available() else "cpu"}
    kwargs = model_kwargs(load_in_4bit=settings.load_in_4bit, dtype=compute_dtype(), device_map=device_map,
                          sharded=settings.load_in_4bit and _sharded_launch())
    try:
        return AutoModelForCausalLM.from_pretrained(str(model), **kwargs)
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


def pair_lengths(dataset: "Dataset", tokenizer: "PreTrainedTokenizerBase") -> list[dict[str, Any]]:
    """Token counts of every pair: `prompt`, `chosen` and `rejected` (completions), and `longest`
    (prompt + the longer completion, what `max_length` is compared with), with `task`."""
    rows = []
    for row in dataset:
        tokens = tokenize_pair(tokenizer, row)
        prompt, chosen, rejected = (len(tokens[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids"))
        rows.append({"task": row["task"], "prompt": prompt, "chosen": chosen, "rejected": rejected,
                     "longest": prompt + max(chosen, rejected)})
    return rows


def _gradient_checkpointing(settings: TrainingConfig) -> bool:
    import torch

    if settings.gradient_checkpointing is None:
        return torch.cuda.is_available()
    return settings.gradient_checkpointing


def lora_config(settings: TrainingConfig) -> Any:
    """The PEFT LoRA configuration of both methods (`fcdpo.loading.lora_config`)."""
    from fcdpo.loading import lora_config as make

    return make(settings.lora_r, settings.lora_alpha, settings.lora_dropout, settings.target_modules)


def _adapter_dtype_for_training(model: Any) -> None:
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


# --------------------------------------------------------------------------- runs


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


def _curve_writer(output_dir: Path) -> Any:
    from transformers import TrainerCallback

    class CurveWriter(TrainerCallback):
        """Rewrites `curves.json` and `curves.csv` at every log, so a long run can be watched as it goes."""

        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or not state.is_world_process_zero:
                return
            self.rows.append({"step": state.global_step, **{k: v for k, v in logs.items() if _is_number(v)}})
            write_curves(self.rows, output_dir)

    return CurveWriter()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def write_curves(rows: list[dict[str, Any]], output_dir: str | Path) -> None:
    """Training curves as `curves.json` (a list of rows) and `curves.csv` (one column per metric)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "curves.json").write_text(json.dumps(rows, indent=1))
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with (output_dir / "curves.csv").open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def read_curves(output_dir: str | Path) -> list[dict[str, Any]]:
    """The rows written by `write_curves`."""
    return json.loads((Path(output_dir) / "curves.json").read_text())


def resolve_steps(settings: TrainingConfig, examples: int, processes: int = 1) -> int:
    """Optimizer steps of a run: `max_steps`, or `epochs` passes over `examples` training pairs.

    Both methods use this with the number of *pairs*, so the SFT baseline gets the same budget as DPO:
    the same steps of the same batch size.
    """
    if settings.max_steps > 0:
        return settings.max_steps
    per_step = settings.batch_size * settings.grad_accumulation * processes
    return max(1, math.ceil(settings.epochs * examples / per_step))


def train(
    method: str,
    model: str | Path,
    preferences: "DatasetDict",
    settings: TrainingConfig,
    output_dir: str | Path,
    progress: bool = False,
    init_adapter: str | Path | None = None,
) -> TrainingResult:
    """Train a LoRA adapter on `model` with `method` (one of METHODS) and save it under `output_dir`.

    `preferences` is the DatasetDict of `fcdpo.preferences` (`train`, optionally `validation`). The
    DPO methods (DPO_METHODS) train on the pairs, whichever chains they were built from; SFT on the
    distinct chosen chains of the same pairs, for the same number of optimizer steps of the same batch
    size (`resolve_steps` on the pair count).

    Writes `output_dir/adapter/` (the adapter and the tokenizer: `HFBackend(model, adapter=...)` loads
    it), `curves.json` / `curves.csv` (one row per logging step: loss, and for DPO rewards/margins and
    rewards/accuracies), and `report.json` (settings, data counts, pairs dropped for length per task,
    steps, seconds, memory, final validation metrics). Returns them, with the trainer. `progress`
    shows a progress bar; the logged metrics go to the curves, not to the output.

    With `init_adapter`, training starts from that adapter instead of a fresh one, and the DPO
    methods take the model with it (a frozen copy, TRL's "ref" adapter) as the reference: a later
    round of iterative DPO.

    Raises TrainingError for an unknown method, no training pair, or every example over `max_length`.
    """
    import datasets as hf_datasets
    from transformers import PrinterCallback

    if method not in METHODS:
        raise TrainingError(f"method must be one of {METHODS}, got {method!r}")
    if method == "grpo":
        raise TrainingError("grpo trains on problems, not preference pairs: use fcdpo.grpo.train_grpo "
                            "(or train_from_profile(profile, 'grpo'))")
    if len(preferences["train"]) == 0:
        raise TrainingError("the preference dataset has no training pairs")
    output_dir = Path(output_dir)
    steps = resolve_steps(settings, len(preferences["train"]), _launched_processes())
    memory_before = memory_snapshot()
    started = time.perf_counter()
    base, tokenizer = load_student(model, settings)
    if init_adapter is not None:
        from peft import PeftModel

        base = PeftModel.from_pretrained(base, str(init_adapter), is_trainable=True)
    bars_were_enabled = hf_datasets.is_progress_bar_enabled()
    hf_datasets.disable_progress_bars()  # one bar per tokenizing pass would flood a notebook
    try:
        data, dropped = _tokenized_splits(method, preferences, tokenizer, settings.max_length)
        trainer = _trainer(method, base, tokenizer, data, settings, steps, output_dir, progress)
    finally:
        if bars_were_enabled:
            hf_datasets.enable_progress_bars()
    curves = _curve_writer(output_dir)
    trainer.add_callback(curves)
    trainer.remove_callback(PrinterCallback)  # one printed dict per log would flood a notebook
    trained_at = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - trained_at
    final_metrics = trainer.evaluate() if "validation" in data else {}
    adapter_dir = output_dir / "adapter"
    trainer.save_model(str(adapter_dir))  # the adapter and the tokenizer (with the template used)
    report = {
        "method": method,
        "model": str(model),
        "settings": asdict(settings),
        "examples": {name: len(data[name]) if name in data else 0 for name in ("train", "validation")},
        "pairs": {name: len(preferences[name]) if name in preferences else 0 for name in ("train", "validation")},
        "dropped_too_long": dropped,
        "steps": steps,
        "batch_size": settings.batch_size,
        "grad_accumulation": settings.grad_accumulation,
        "processes": trainer.accelerator.num_processes,
        "sequences_per_step": settings.batch_size * settings.grad_accumulation * trainer.accelerator.num_processes,
        "init_adapter": None if init_adapter is None else str(init_adapter),
        "load_in_4bit": settings.load_in_4bit,
        "compute_dtype": str(compute_dtype()).removeprefix("torch."),
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "seconds": round(time.perf_counter() - started, 1),
        "train_seconds": round(train_seconds, 1),
        "memory_before": memory_before,
        "memory_after": memory_snapshot(),
        "final": {k: v for k, v in final_metrics.items() if _is_number(v)},
    }
    if trainer.accelerator.is_main_process:
        write_curves(curves.rows, output_dir)
        (output_dir / "report.json").write_text(json.dumps(report, indent=2))
    return TrainingResult(output_dir, adapter_dir, curves.rows, report, trainer)


def _tokenized_splits(
    method: str, preferences: "DatasetDict", tokenizer: "PreTrainedTokenizerBase", max_length: int
) -> tuple[dict[str, "Dataset"], dict[str, dict[str, int]]]:
    """The method's inputs per split (an empty validation split is left out) and the drops for length."""
    data, dropped = {}, {}
    for name in ("train", "validation"):
        if name not in preferences or len(preferences[name]) == 0:
            continue
        if method in DPO_METHODS:
            data[name], dropped[name] = tokenize_preferences(preferences[name], tokenizer, max_length)
        else:
            rows = chosen_conversations(preferences[name])
            data[name], dropped[name] = tokenize_conversations(rows, tokenizer, max_length)
            data[name] = data[name].remove_columns("task")
    if len(data["train"]) == 0:
        raise TrainingError(f"every training example is longer than max_length={max_length} tokens "
                            f"(dropped per task: {dropped['train']})")
    if "validation" in data and len(data["validation"]) == 0:
        del data["validation"]
    return data, dropped


def _trainer(
    method: str,
    base: Any,
    tokenizer: "PreTrainedTokenizerBase",
    data: dict[str, "Dataset"],
    settings: TrainingConfig,
    steps: int,
    output_dir: Path,
    progress: bool,
) -> Any:
    """TRL's trainer for `method`, the LoRA adapter put on `base` by the trainer itself."""
    from peft import PeftModel

    # A model that already carries an adapter (`init_adapter`) trains that one; otherwise the trainer adds it.
    peft_config = None if isinstance(base, PeftModel) else lora_config(settings)
    evaluate_during = "validation" in data and settings.eval_steps > 0
    common = dict(
        output_dir=str(output_dir / "trainer"),
        max_steps=steps,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accumulation,
        learning_rate=settings.learning_rate if method in DPO_METHODS else settings.sft_learning_rate,
        max_length=settings.max_length,
        **trainer_arguments(settings, progress),
        eval_strategy="steps" if evaluate_during else "no",
        eval_steps=settings.eval_steps if evaluate_during else None,
        ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient at every step
    )
    if method in DPO_METHODS:
        from trl import DPOConfig

        trainer = _dpo_trainer_class()(
            model=base,
            ref_model=None,  # the reference is the base itself, the adapter disabled
            args=DPOConfig(beta=settings.beta, loss_type=list(settings.loss_type), loss_weights=settings.loss_weights,
                           **common),
            train_dataset=data["train"],
            eval_dataset=data.get("validation"),
            processing_class=tokenizer,
            data_collator=preference_collator(tokenizer.pad_token_id),
            peft_config=peft_config,
        )
    else:
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(
            model=base,
            args=SFTConfig(assistant_only_loss=False, **common),  # the masks come with the data (`assistant_masks`)
            train_dataset=data["train"],
            eval_dataset=data.get("validation"),
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    _adapter_dtype_for_training(trainer.model)
    if progress and headless():
        every = settings.logging_steps * max(1, steps // (10 * settings.logging_steps))  # about 10 lines, on logged steps
        trainer.add_callback(trainer_callback(print, f"{method} {output_dir.name}: ", every))
    return trainer


def trainer_arguments(settings: TrainingConfig, progress: bool) -> dict[str, Any]:
    """The TRL config arguments every fcdpo trainer shares: schedule, seeds, precision, checkpointing,
    device, logging, no checkpoints saved, and progress (lines instead of a bar in a headless run)."""
    import torch

    on_gpu = torch.cuda.is_available()
    dtype = compute_dtype()
    return dict(
        lr_scheduler_type="cosine",
        warmup_steps=settings.warmup,
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=on_gpu and dtype == torch.bfloat16,
        fp16=on_gpu and dtype == torch.float16,
        activation_checkpointing=_gradient_checkpointing(settings),
        activation_checkpointing_kwargs={"use_reentrant": False},
        use_cpu=not on_gpu,
        logging_steps=settings.logging_steps,
        save_strategy="no",
        report_to=[],
        disable_tqdm=not progress or headless(),
        dataloader_num_workers=0,
    )


TINY_LAB_STUDENT = {"kind": "hf", "model": "lab/student"}  # what the tiny lab builds in the run folder


def student_spec(profile: Any) -> dict[str, Any]:
    """The profile's student backend spec; an empty one means the tiny lab's student in the run folder."""
    return dict(profile.student or TINY_LAB_STUDENT)


def student_reference(profile: Any) -> str:
    """The student's model as `from_pretrained` takes it: a folder in the run (the tiny lab's) or a hub id."""
    spec = student_spec(profile)
    if spec.get("kind") != "hf" or not spec.get("model"):
        raise TrainingError(f"profile {profile.name!r}: the student must be a local model (kind: hf, model: ...) "
                            f"to be trained, got {spec!r}")
    model = str(spec["model"])
    in_run = profile.run_path / model
    return str(in_run) if in_run.exists() else model


def trained_methods(settings: TrainingConfig) -> tuple[str, ...]:
    """The methods a run trains and evaluates: sft and dpo (the paper's comparison), then the other
    arms named in `training.methods`, in their order."""
    unknown = [m for m in settings.methods if m not in METHODS]
    if unknown:
        raise TrainingError(f"training.methods {unknown} unknown; the methods are {list(METHODS)}")
    return tuple(dict.fromkeys(["sft", "dpo", *settings.methods]))


def seed_labels(method: str, settings: TrainingConfig) -> dict[str, int]:
    """The run labels of `method` and their seeds: `method` for `settings.seed`, then `method-s<seed>`
    for each of `settings.extra_seeds` (each label names a folder under `training/` and a model in
    the evaluation)."""
    labels = {method: settings.seed}
    for seed in settings.extra_seeds:
        if seed == settings.seed or f"{method}-s{seed}" in labels:
            raise TrainingError(f"training.extra_seeds {settings.extra_seeds} repeats a seed (training.seed is {settings.seed})")
        labels[f"{method}-s{seed}"] = seed
    return labels


def train_from_profile(
    profile: Any, method: str, preferences: "DatasetDict | None" = None, progress: bool = False,
    seed: int | None = None,
) -> TrainingResult:
    """Notebook 03 in one call: train the profile's student with `method` on the run's preference pairs.

    Takes the method's pairs unless given (`fcdpo.preferences.method_preferences`: `preferences/` for
    dpo and sft, step pairs of the teacher's rollouts for step_dpo, pairs of the student's own
    rollouts for onpolicy_dpo, sampling them first) and writes `training/<method>/`, or with a `seed`
    other than `training.seed`, `training/<method>-s<seed>/` with that seed. grpo trains on the
    training problems themselves (`fcdpo.grpo.train_grpo`; `preferences` is not used).
    """
    from fcdpo.preferences import method_preferences

    if method not in METHODS:
        raise TrainingError(f"method must be one of {METHODS}, got {method!r}")
    if method == "grpo":
        from fcdpo.grpo import train_grpo

        return train_grpo(profile, progress=progress, seed=seed)
    if method == "onpolicy_dpo" and preferences is None and profile.training.onpolicy_rounds > 1:
        return train_onpolicy(profile, progress=progress, seed=seed)
    run = profile.run_path
    preferences = preferences if preferences is not None else method_preferences(profile, method, progress)
    settings = profile.training
    label = method
    if seed is not None and seed != settings.seed:
        settings, label = replace(settings, seed=seed), f"{method}-s{seed}"
    return train(method, student_reference(profile), preferences, settings, run / "training" / label,
                 progress=progress)


def train_onpolicy(
    profile: Any, progress: bool = False, seed: int | None = None, backend_for: Any = None,
) -> TrainingResult:
    """The onpolicy_dpo arm over `training.onpolicy_rounds` rounds (iterative RPO, Pang et al. 2024).

    Round 1 is the one-round arm: the student's pairs (`preferences-onpolicy/`), a fresh adapter,
    the student as reference. Round r > 1 samples the model of round r − 1 (its chains in
    `rollouts/<label>-round<r-1>-<task>.jsonl`, its pairs in `preferences-onpolicy-<label>-round<r>/`),
    starts from that round's adapter and takes it as the reference. Each round gets the same steps;
    earlier rounds are kept in `training/<label>/round<r>/`, the last one is `training/<label>/` (what
    the evaluation reads), its report listing every round's pairs, steps and sampling cost.

    `backend_for(adapter_dir)` gives the backend that samples a round (adapter_dir is None for the
    student); by default the profile's student with that adapter.
    """
    import gc

    from fcdpo.backends import load_backend
    from fcdpo.preferences import PREFERENCE_FOLDERS, build_onpolicy_preference_dataset

    settings, label = profile.training, "onpolicy_dpo"
    if seed is not None and seed != settings.seed:
        settings, label = replace(settings, seed=seed), f"onpolicy_dpo-s{seed}"
    if _launched_processes() > 1 and settings.onpolicy_rounds > 1:
        raise TrainingError("later rounds of onpolicy_dpo sample the trained model: run them in one process")
    run = profile.run_path
    folder = run / "training" / label
    adapter: Path | None = None
    rounds: list[dict[str, Any]] = []
    result = None
    for number in range(1, settings.onpolicy_rounds + 1):
        if backend_for is not None:
            backend = backend_for(adapter)
        elif adapter is None:
            backend = None  # the profile's student
        else:
            backend = load_backend({**student_spec(profile), "adapter": str(adapter)}, root=run)
        dataset, pairs = build_onpolicy_preference_dataset(
            profile, backend=backend, progress=progress,
            name="student" if number == 1 else f"{label}-round{number - 1}",
            folder=run / (PREFERENCE_FOLDERS["onpolicy_dpo"] + ("" if number == 1 else f"-{label}-round{number}")),
        )
        del backend
        last = number == settings.onpolicy_rounds
        result = train("onpolicy_dpo", student_reference(profile), dataset, settings,
                       folder if last else folder / f"round{number}", progress=progress, init_adapter=adapter)
        rounds.append({"round": number, "init_adapter": None if adapter is None else str(adapter),
                       "pairs": result.report["pairs"], "steps": result.report["steps"],
                       "train_seconds": result.report["train_seconds"], "rollouts": pairs.get("rollouts", {})})
        adapter = result.adapter_dir
        if not last:
            result.trainer = None
            gc.collect()
    assert result is not None
    result.report["rounds"] = rounds
    if result.trainer.accelerator.is_main_process:
        (result.output_dir / "report.json").write_text(json.dumps(result.report, indent=2))
    return result


def load_trained(base: str | Path, adapter_dir: str | Path, load_in_4bit: bool = False) -> tuple[Any, Any]:
    """A trained adapter on its base, for inference: (PeftModel in eval mode, the adapter's tokenizer)."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    model = _load_base(base, TrainingConfig(load_in_4bit=load_in_4bit))
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    return PeftModel.from_pretrained(model, str(adapter_dir)).eval(), tokenizer


def merge_and_export(
    base: str | Path, adapter_dir: str | Path, output_dir: str | Path, dtype: "str | torch.dtype | None" = None
) -> Path:
    """Merge the adapter into an unquantised copy of the base and save it (with the adapter's tokenizer).

    The base is loaded in `dtype` (default `compute_dtype()`), never in 4-bit: merging into quantised
    weights would round the update away. The result is a plain model folder that any server (vLLM,
    `transformers serve`) or `HFBackend` loads without PEFT. Returns `output_dir`.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype or compute_dtype())
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    output_dir = Path(output_dir)
    merged.save_pretrained(str(output_dir))
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(output_dir))
    return output_dir


def main(argv: list[str] | None = None) -> None:
    """`python -m fcdpo.training --profile P --method dpo` (or under `accelerate launch`)."""
    import argparse

    from fcdpo.config import load_profile, parse_overrides

    parser = argparse.ArgumentParser(description="Train the student of a profile on its run's preference pairs.")
    parser.add_argument("--profile", default="tiny-cpu", help="a name from configs/ or a YAML path")
    parser.add_argument("--method", choices=METHODS, default="dpo")
    parser.add_argument("--seed", type=int, help="train with this seed into training/<method>-s<seed>/")
    parser.add_argument("-o", "--override", action="append", default=[],
                        help="dotted profile key=value (YAML value), repeatable, e.g. training.max_steps=10")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.override)
    except ValueError as exc:
        parser.error(str(exc))
    result = train_from_profile(load_profile(args.profile, overrides), args.method, seed=args.seed)
    if result.trainer.accelerator.is_main_process:
        # grpo drops nothing for length (it has no pairs) and reports what its rollouts cost instead
        print(json.dumps({k: result.report[k] for k in ("method", "steps", "seconds", "dropped_too_long", "rollouts")
                          if k in result.report}))


if __name__ == "__main__":
    main()
