"""Training the student on preference pairs: DPO with a LoRA adapter (QLoRA on GPUs), and an SFT baseline.

Layer: stages; imports preferences, finetuning and grpo, and the layers below.

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

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fcdpo import arms, runs
from fcdpo.agent import FINAL_ANSWER
from fcdpo.config import student_spec
from fcdpo.finetuning import (  # what every training arm shares
    CURVES_FILE,
    TrainingError,
    TrainingResult,
    adapter_dtype_for_training,
    assistant_tokens,
    curve_writer,
    is_number,
    launched_processes,
    load_base,
    load_student,
    load_tokenizer,  # noqa: F401 - notebooks 02 and 03 take the student's tokenizer from here
    lora_config,
    memory_snapshot,
    read_curves,
    resolve_steps,
    shared_prefix_sft_trainer_class,
    student_reference,
    trainer_arguments,
    turn_end_id,
    write_curves,
)
from fcdpo.loading import compute_dtype, load_adapter, load_model, resolve_dtype, saved_tokenizer
from fcdpo.messages import restore_messages, restore_tools
from fcdpo.prefix_attention import first_turn_passes
from fcdpo.progress import headless, quiet_bars, trainer_callback
from fcdpo.settings import TrainingConfig, arm_run

if TYPE_CHECKING:
    import torch
    from datasets import Dataset, DatasetDict
    from transformers import PreTrainedTokenizerBase

REFERENCE_CACHE = "reference_log_probs"  # beside the arms' folders: the reference's log-probs, shared by seeds

# --------------------------------------------------------------------------- tokenization with masks


def tokenize_pair(tokenizer: "PreTrainedTokenizerBase", row: dict[str, Any],
                  rejected_answer: bool = True) -> dict[str, list[int]]:
    """One preference row as DPO inputs: `prompt_ids`, `chosen_ids`, `rejected_ids` and their assistant masks.

    The prompt is rendered with the generation prompt (the assistant header), exactly as the agent
    renders it at inference; it must be an exact token prefix of prompt + chosen and of prompt +
    rejected, else TrainingError names the problem (a completion must never change its prompt's tokens).
    Without `rejected_answer`, a rejected chain that ends in a final answer has that last turn masked
    out (`training.rejected_answer_in_loss`), unless the answer is all the rejected side has (a chain
    that answered at once, or a step pair cut where one chain answers): the pair keeps it then, since
    a rejected side with no token would leave no preference to learn.
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
        if side == "rejected" and not rejected_answer and _ends_in_answer(row[side]):
            rest = _without_last_turn(out[f"{side}_mask"])
            if any(rest):
                out[f"{side}_mask"] = rest
        if not any(out[f"{side}_mask"]):
            raise TrainingError(f"pair {row.get('problem_id')!r}: the {side} chain has no assistant token")
    return out


def _ends_in_answer(messages: list[dict[str, Any]]) -> bool:
    """Whether a chain's last assistant turn is its final answer, read as the agent reads it: the phrase
    anywhere in the turn (`fcdpo.agent.read_turn`), so a garbled turn such as `subtractFinal answer: True`
    counts as the answer it was taken for."""
    turns = [m for m in messages if m.get("role") == "assistant"]
    return bool(turns) and FINAL_ANSWER.search(turns[-1].get("content") or "") is not None


def _without_last_turn(mask: list[int]) -> list[int]:
    """`mask` with its last run of ones (the last assistant turn) set to zero."""
    end = max((i for i, m in enumerate(mask) if m), default=-1) + 1
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return mask[:start] + [0] * (end - start) + mask[end:]


def tokenize_preferences(
    dataset: "Dataset", tokenizer: "PreTrainedTokenizerBase", max_length: int, rejected_answer: bool = True
) -> tuple["Dataset", dict[str, int]]:
    """DPO inputs for every pair that fits in `max_length` tokens; returns (dataset, dropped per task).

    A pair fits when prompt + chosen and prompt + rejected both have at most `max_length` tokens.
    The dataset keeps `task` and `problem_id` beside the token columns. `rejected_answer`: see
    `tokenize_pair`.
    """
    from datasets import Dataset

    rows, dropped = [], Counter()
    for row in dataset:
        tokens = tokenize_pair(tokenizer, row, rejected_answer)
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


def shared_first_turn_outputs(
    model: Any, input_ids: "torch.Tensor", attention_mask: "torch.Tensor", labels: "torch.Tensor", turn_end_id: int
) -> Any:
    """TRL's fused per-token outputs of a right-padded batch, each distinct first turn run once; None if it does not fit.

    What `model(input_ids=..., attention_mask=..., labels=..., fused_lm_head=True)` returns (a model
    patched by TRL's `add_fused_lm_head`, as `DPOTrainer` patches the student): `log_probs`,
    `entropy`, `mean_logits`, ... of shape batch × (length − 1), zero where the label is -100. Each
    group of rows that share a first turn (`fcdpo.prefix_attention.first_turn_groups`) runs that turn
    once and the rest of its rows on its keys and values, so the values equal the plain pass's and
    gradients flow to the adapter through both. None when the batch does not fit the pattern.
    """
    import torch
    from trl.trainer.utils import FusedCausalLMOutput

    passes = first_turn_passes(model, input_ids, attention_mask, labels, turn_end_id, fused=True)
    if passes is None:
        return None
    width_all = input_ids.shape[1] - 1
    fields = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
    rows_of: dict[str, list[Any]] = {name: [None] * len(input_ids) for name in fields}
    for group in passes:
        prefix = group.prefix
        for name in fields:
            values = getattr(group.output, name)
            if values is None:
                continue
            values = group.unpack(values)  # the group's rows, each in its own layout
            # The suffix's position i predicts token prefix + i + 1, as the whole row's position prefix + i
            # does; position prefix − 1 predicts the suffix's first token, never labelled (first_turn_groups).
            for k, r in enumerate(group.rows):
                rows_of[name][r] = torch.cat([values.new_zeros(prefix), values[k],
                                              values.new_zeros(width_all - prefix - values.shape[1])])
    outputs = {name: torch.stack(v) if v[0] is not None else None for name, v in rows_of.items()}
    label_mask = labels[:, 1:] != -100
    loss = -outputs["log_probs"].sum() / label_mask.sum().clamp(min=1)
    return FusedCausalLMOutput(loss=loss, label_mask=label_mask, aux_loss=None, **outputs)


class _FirstTurnsOnce:
    """`model` as DPOTrainer calls it, running fused passes through `shared_first_turn_outputs`."""

    def __init__(self, model: Any, turn_end: int) -> None:
        self.model, self.turn_end = model, turn_end

    def __call__(self, input_ids=None, attention_mask=None, labels=None, fused_lm_head=False, **kwargs):
        if fused_lm_head and labels is not None and attention_mask is not None and set(kwargs) <= {"use_cache"}:
            outputs = shared_first_turn_outputs(self.model, input_ids, attention_mask, labels, self.turn_end)
            if outputs is not None:
                return outputs
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                          fused_lm_head=fused_lm_head, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def reference_fingerprint(model: Any) -> str:
    """sha256 of the reference's weights: the frozen parameters (the base, and a frozen "ref" adapter)."""
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        if not parameter.requires_grad:
            digest.update(name.encode())
            digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _dpo_trainer_class() -> type:
    from trl import DPOTrainer

    class AssistantOnlyDPOTrainer(DPOTrainer):
        """`DPOTrainer` on rows tokenized by `tokenize_preferences`, with assistant-only completion masks.

        Pass `data_collator=preference_collator(pad_id)`; datasets must already be tokenized (TRL's own
        tokenization would mark tool tokens as completion). With `turn_end` (a token id), the policy's
        and the precomputed reference's passes run each batch's first turns once
        (`shared_first_turn_outputs`). With `reference_cache` (a folder) and `precompute_ref_log_probs`,
        the reference's log-probabilities of a split are kept there, keyed by the split's tokens and the
        reference's weights, and read back by every later run on the same pairs (the other seeds).
        """

        def __init__(self, *args: Any, turn_end: int | None = None, reference_cache: Path | None = None,
                     **kwargs: Any) -> None:
            self.turn_end, self.reference_cache = turn_end, reference_cache
            super().__init__(*args, **kwargs)

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

        def _compute_loss(self, model, inputs, return_outputs):
            if self.turn_end is not None:
                model = _FirstTurnsOnce(model, self.turn_end)
            return super()._compute_loss(model, inputs, return_outputs)

        def compute_ref_log_probs(self, model, inputs):
            if self.turn_end is not None:
                model = _FirstTurnsOnce(model, self.turn_end)
            return super().compute_ref_log_probs(model, inputs)

        def _precompute_ref_logps(self, dataset, name, batch_size):
            if self.reference_cache is None:
                return super()._precompute_ref_logps(dataset, name, batch_size)
            columns = ["prompt_ids", "chosen_ids", "rejected_ids", "chosen_mask", "rejected_mask"]
            content = json.dumps([self._reference_weights(), [list(dataset[c]) for c in columns]])
            path = Path(self.reference_cache) / f"{hashlib.sha256(content.encode()).hexdigest()[:24]}.json"
            if path.exists():
                try:
                    kept = json.loads(path.read_text())
                    if len(kept["chosen"]) == len(kept["rejected"]) == len(dataset):
                        return dataset.add_column("ref_chosen_logps", kept["chosen"]).add_column(
                            "ref_rejected_logps", kept["rejected"])
                except (ValueError, KeyError, TypeError):
                    pass  # an unreadable copy is computed again and overwritten
            result = super()._precompute_ref_logps(dataset, name, batch_size)
            if self.accelerator.is_main_process:
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_suffix(".partial")  # a run stopped mid-write leaves no half file
                partial.write_text(json.dumps({"split": name, "chosen": list(result["ref_chosen_logps"]),
                                               "rejected": list(result["ref_rejected_logps"])}))
                partial.replace(path)
            return result

        def _reference_weights(self) -> str:
            if not hasattr(self, "_reference_weights_hash"):
                self._reference_weights_hash = reference_fingerprint(self.model)
            return self._reference_weights_hash

    return AssistantOnlyDPOTrainer


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


# --------------------------------------------------------------------------- runs


def train(
    method: str,
    model: str | Path,
    preferences: "DatasetDict",
    settings: TrainingConfig,
    output_dir: str | Path,
    progress: bool = False,
    init_adapter: str | Path | None = None,
    steps: int | None = None,
) -> TrainingResult:
    """Train a LoRA adapter on `model` with `method` (an arm of `fcdpo.arms`) and save it under `output_dir`.

    `preferences` is the DatasetDict of `fcdpo.preferences` (`train`, optionally `validation`). Arms
    whose trainer is "dpo" train on the pairs, whichever chains they were built from; "sft" arms on the
    distinct chosen chains of the same pairs, for the same number of optimizer steps of the same batch
    size (`resolve_steps` on the pair count). `settings` are the arm's own (`fcdpo.settings.arm_run`).

    Writes `output_dir/adapter/` (the adapter and the tokenizer: `HFBackend(model, adapter=...)` loads
    it), `curves.json` / `curves.csv` (one row per logging step: loss, and for DPO rewards/margins and
    rewards/accuracies), and `report.json` (settings, data counts, pairs dropped for length per task,
    steps, seconds, memory, final validation metrics). Returns them, with the trainer. `progress`
    shows a progress bar; the logged metrics go to the curves, not to the output.

    With `init_adapter`, training starts from that adapter instead of a fresh one, and the DPO
    methods take the model with it (a frozen copy, TRL's "ref" adapter) as the reference: a later
    round of iterative DPO, or DPO after SFT. `steps` sets the optimizer steps (default: `resolve_steps`).

    Raises TrainingError for an unknown method, no training pair, or every example over `max_length`.
    """
    from transformers import PrinterCallback

    kind = _trainer_kind(method)
    if kind == "grpo":
        raise TrainingError(f"{method} trains on problems, not preference pairs: use fcdpo.grpo.train_grpo "
                            f"(or train_from_profile(profile, {method!r}))")
    if len(preferences["train"]) == 0:
        raise TrainingError("the preference dataset has no training pairs")
    output_dir = Path(output_dir)
    steps = steps or resolve_steps(settings, len(preferences["train"]), launched_processes())
    memory_before = memory_snapshot()
    started = time.perf_counter()
    base, tokenizer = load_student(model, settings)
    if init_adapter is not None:
        base = load_adapter(base, init_adapter, trainable=True)
    with quiet_bars(tqdm=not progress or headless()):  # TRL's bar over the reference's log-probabilities
        data, dropped = _tokenized_splits(method, preferences, tokenizer, settings.max_length,
                                          settings.rejected_answer_in_loss)
        trainer = _trainer(method, base, tokenizer, data, settings, steps, output_dir, progress)
    curves = curve_writer(output_dir)
    trainer.add_callback(curves)
    trainer.remove_callback(PrinterCallback)  # one printed dict per log would flood a notebook
    trained_at = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - trained_at
    final_metrics = final_evaluation(trainer) if "validation" in data else {}
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
        "final": {k: v for k, v in final_metrics.items() if is_number(v)},
    }
    if trainer.accelerator.is_main_process:
        write_curves(curves.rows, output_dir)
        runs.write_report(output_dir, report)
    return TrainingResult(output_dir, adapter_dir, curves.rows, report, trainer)


def final_evaluation(trainer: Any) -> dict[str, Any]:
    """The validation metrics after training: those the trainer logged at its last step, else a new evaluation.

    With `eval_steps`, the trainer evaluates at its last step too; evaluating again would only repeat it.
    """
    last = trainer.state.global_step
    for row in reversed(trainer.state.log_history):
        if "eval_loss" in row and row.get("step") == last:
            return {k: v for k, v in row.items() if k != "step"}
    return trainer.evaluate()


def _tokenized_splits(
    method: str, preferences: "DatasetDict", tokenizer: "PreTrainedTokenizerBase", max_length: int,
    rejected_answer: bool = True,
) -> tuple[dict[str, "Dataset"], dict[str, dict[str, int]]]:
    """The method's inputs per split (an empty validation split is left out) and the drops for length."""
    data, dropped = {}, {}
    for name in ("train", "validation"):
        if name not in preferences or len(preferences[name]) == 0:
            continue
        if _trainer_kind(method) == "dpo":
            data[name], dropped[name] = tokenize_preferences(preferences[name], tokenizer, max_length, rejected_answer)
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
        learning_rate=settings.learning_rate if _trainer_kind(method) == "dpo" else settings.sft_learning_rate,
        max_length=settings.max_length,
        **trainer_arguments(settings, progress),
        eval_strategy="steps" if evaluate_during else "no",
        eval_steps=settings.eval_steps if evaluate_during else None,
        ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient at every step
    )
    if _trainer_kind(method) == "dpo":
        from trl import DPOConfig

        trainer = _dpo_trainer_class()(
            model=base,
            ref_model=None,  # the reference is the base itself, the adapter disabled
            args=DPOConfig(beta=settings.beta, loss_type=list(settings.loss_type), loss_weights=settings.loss_weights,
                           precompute_ref_log_probs=settings.precompute_ref_log_probs, **common),
            turn_end=turn_end_id(tokenizer) if settings.shared_prefix else None,
            reference_cache=output_dir.parent / REFERENCE_CACHE if settings.precompute_ref_log_probs else None,
            train_dataset=data["train"],
            eval_dataset=data.get("validation"),
            processing_class=tokenizer,
            data_collator=preference_collator(tokenizer.pad_token_id),
            peft_config=peft_config,
        )
    else:
        from trl import SFTConfig, SFTTrainer

        trainer_class = shared_prefix_sft_trainer_class() if settings.shared_prefix else SFTTrainer
        trainer = trainer_class(
            model=base,
            args=SFTConfig(assistant_only_loss=False, **common),  # the masks come with the data (`assistant_masks`)
            train_dataset=data["train"],
            eval_dataset=data.get("validation"),
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    adapter_dtype_for_training(trainer.model)
    if progress and headless():
        every = settings.logging_steps * max(1, steps // (10 * settings.logging_steps))  # about 10 lines, on logged steps
        trainer.add_callback(trainer_callback(print, f"{method} {output_dir.name}: ", every))
    return trainer


def _trainer_kind(method: str) -> str:
    """The trainer of arm `method` ("dpo", "sft" or "grpo"); TrainingError for an unknown arm."""
    try:
        return arms.get(method).trainer
    except arms.ArmError as error:
        raise TrainingError(str(error)) from None


def trained_methods(settings: TrainingConfig) -> tuple[str, ...]:
    """The methods a run trains and evaluates: sft and dpo (the paper's comparison), then the other
    arms named in `training.methods`, in their order, each after the arms it starts from."""
    unknown = [m for m in settings.methods if m not in arms.names()]
    if unknown:
        raise TrainingError(f"training.methods {unknown} unknown; the methods are {list(arms.names())}")
    ordered: list[str] = []
    for method in ["sft", "dpo", *settings.methods]:
        ordered += [*reversed(arms.starts(method)), method]
    return tuple(dict.fromkeys(ordered))


def seed_labels(method: str, settings: TrainingConfig) -> dict[str, int]:
    """The run labels of `method` and their seeds: `method` for `settings.seed`, then `method-s<seed>`
    for each of `settings.extra_seeds` (each label names a folder under `training/` and a model in
    the evaluation)."""
    labels = {method: settings.seed}
    for seed in settings.extra_seeds:
        if seed == settings.seed or runs.seed_label(method, seed, settings.seed) in labels:
            raise TrainingError(f"training.extra_seeds {settings.extra_seeds} repeats a seed (training.seed is {settings.seed})")
        labels[runs.seed_label(method, seed, settings.seed)] = seed
    return labels


def train_from_profile(
    profile: Any, method: str, preferences: "DatasetDict | None" = None, progress: bool = False,
    seed: int | None = None,
) -> TrainingResult:
    """Notebook 03 in one call: train the profile's student with arm `method` (`fcdpo.arms`).

    Takes the arm's pairs unless given (`fcdpo.preferences.method_preferences`: the teacher's pairs,
    step pairs of its rollouts, or pairs of the student's own chains, sampling them first) and writes
    `training/<method>/`, or with a `seed` other than `training.seed`, `training/<method>-s<seed>/`
    with that seed. The arm's settings are `fcdpo.settings.arm_run`'s. An arm that starts from another
    (`Arm.start`) trains that one first (or keeps it, trained earlier) and starts from its adapter at
    the same seed, which is then its reference; an arm with a step budget of others (`Arm.steps_of`)
    trains as many steps as they do together. A GRPO arm trains on the training problems themselves
    (`fcdpo.grpo.train_grpo`; `preferences` is not used).
    """
    from fcdpo.preferences import method_preferences

    arm = arms.get(method) if method in arms.names() else None
    if arm is None:
        raise TrainingError(f"method must be one of {list(arms.names())}, got {method!r}")
    finished = finished_arm(profile, method, seed, preferences)
    if finished is not None:
        print(f"{finished.output_dir}: trained earlier with these settings, kept "
              f"(delete the folder to train it again)")
        return finished
    init = None
    if arm.start is not None:
        shares_data = preferences is not None and arms.get(arm.start).data == arm.data
        start = train_from_profile(profile, arm.start, preferences if shares_data else None, progress, seed)
        init, start.trainer = start.adapter_dir, None
    if arm.trainer == "grpo":
        from fcdpo.grpo import train_grpo

        return train_grpo(profile, progress=progress, seed=seed, method=method, init_adapter=init)
    settings, label = arm_run(profile.training, method, seed)
    if arm.data == "student" and preferences is None and (settings.onpolicy_rounds > 1 or init is not None):
        return train_onpolicy(profile, progress=progress, seed=seed, method=method, init_adapter=init)
    preferences = preferences if preferences is not None else method_preferences(profile, method, progress)
    steps = budget_steps(profile, method, len(preferences["train"]), seed)
    return train(method, student_reference(profile), preferences, settings, runs.training_dir(profile.run_path, label),
                 progress=progress, init_adapter=init, steps=steps)


def train_arms(profile: Any, progress: bool = False, preferences: "DatasetDict | None" = None,
               methods: "list[str] | tuple[str, ...] | None" = None) -> list[dict[str, Any]]:
    """Notebook 03's loop: every arm of the run (`trained_methods`) at every seed (`seed_labels`).

    An arm trained earlier with these settings is kept (`finished_arm`), so a stopped run resumes at
    the first arm not finished. An arm that cannot be trained (no pairs, say) is reported and the
    others still train; notebook 04 notes the gap. `preferences` (the teacher's pairs) are passed to
    the arms that train on them. Returns one row per label: its method, seed, pairs, steps, seconds
    and final validation metrics, or why it was not trained.
    """
    import gc

    rows = []
    for method in methods or trained_methods(profile.training):
        shares = preferences if arms.get(method).data == "teacher" else None
        for label, seed in seed_labels(method, profile.training).items():
            gc.collect()
            try:
                result = train_from_profile(profile, method, shares, progress=progress, seed=seed)
            except TrainingError as error:
                print(f"{label}: not trained: {error}")
                rows.append({"label": label, "method": method, "seed": seed, "not trained": str(error)})
                continue
            final = result.report.get("final", {})
            rows.append({"label": label, "method": method, "seed": seed,
                         "pairs": result.report.get("pairs", {}).get("train"), "steps": result.report["steps"],
                         "train seconds": result.report.get("train_seconds"),
                         "validation loss": final.get("eval_loss"),
                         "validation reward accuracy": final.get("eval_rewards/accuracies")})
            result.trainer = None
    return rows


def budget_steps(profile: Any, method: str, pairs: int, seed: int | None = None) -> int | None:
    """The optimizer steps of an arm whose budget is that of other arms together (`Arm.steps_of`), each
    counted on `pairs` training pairs with its own settings; None for an arm that counts its own."""
    parts = arms.get(method).steps_of
    if not parts:
        return None
    return sum(resolve_steps(arm_run(profile.training, part, seed)[0], pairs, launched_processes()) for part in parts)


# Which arms and seeds a run trains, and how fast, not what a model learns (the speed settings give the
# same losses: tests/test_training.py), and `eval_steps`, how often the validation pairs are scored. The
# per-arm section (`arms`) is already folded into each arm's settings.
_RUN_SETTINGS = ("methods", "extra_seeds", "arms", "shared_prefix", "precompute_ref_log_probs", "eval_steps")


def _arm_settings(settings: TrainingConfig, method: str) -> dict[str, Any]:
    """The settings that shape `method`'s model: all but the run's (`_RUN_SETTINGS`) and those only other
    arms read (`fcdpo.arms.reads`: an SFT arm trained earlier is kept when DPO's beta changes)."""
    specific, own = arms.arm_specific(), arms.reads(method)
    return {k: v for k, v in asdict(settings).items()
            if (k not in specific or k in own) and k not in _RUN_SETTINGS}


def same_student(earlier: str | Path, model: str | Path, run: str | Path) -> bool:
    """Whether a report's student is `model`: the same path or hub id, or, for a student in the run
    folder (the tiny lab's `lab/student`), the same place in the run folder the report came from."""
    earlier, model, run = Path(earlier), Path(model), Path(run)
    if earlier == model:
        return True
    if not model.is_relative_to(run):
        return False
    inside = model.relative_to(run).parts
    return earlier.parts[-len(inside):] == inside


def finished_arm(
    profile: Any, method: str, seed: int | None = None, preferences: "DatasetDict | None" = None,
) -> TrainingResult | None:
    """The arm `method` (at `seed`) as an earlier run of this profile left it, or None to train it.

    A long run (`make experiments`) that stops part-way resumes at the first arm not finished: an arm
    is finished when its folder has `adapter/`, `curves.json` and `report.json`, and the report's
    method, student (the same path, or the run folder's own `lab/student` in a run folder that was
    copied) and settings are this profile's, leaving aside settings only other arms read, and the arm
    it starts from, if any, is finished too. When `preferences` are given, the report's pair counts
    must be theirs too. The result has no trainer.
    """
    settings, label = arm_run(profile.training, method, seed)
    start = arms.get(method).start
    if start is not None and finished_arm(profile, start, seed) is None:
        return None
    folder = runs.training_dir(profile.run_path, label)
    paths = [folder / "adapter", folder / "report.json", folder / CURVES_FILE]
    if not all(path.exists() for path in paths):
        return None
    try:
        report = json.loads(paths[1].read_text())
        curves = read_curves(folder)
    except (OSError, ValueError):
        return None  # a report cut short by a crash: train the arm again
    if not isinstance(report, dict) or report.get("method") != method:
        return None
    if not same_student(str(report.get("model")), student_reference(profile), profile.run_path):
        return None
    wanted = json.loads(json.dumps(_arm_settings(settings, method)))  # as a report stores them: lists, not tuples
    if {k: v for k, v in dict(report.get("settings") or {}).items() if k in wanted} != wanted:
        return None
    if preferences is not None and report.get("pairs") != {name: len(preferences[name]) if name in preferences else 0
                                                           for name in ("train", "validation")}:
        return None
    return TrainingResult(folder, paths[0], curves, report, None)


def train_onpolicy(
    profile: Any, progress: bool = False, seed: int | None = None, backend_for: Any = None,
    method: str = "onpolicy_dpo", init_adapter: str | Path | None = None,
) -> TrainingResult:
    """An arm on the student's own chains over `training.onpolicy_rounds` rounds (iterative RPO, Pang et al. 2024).

    Round 1 samples the student (or, with `init_adapter`, the student with that adapter, which the
    round then starts from and takes as reference); the plain student's pairs are shared by every seed
    (`preferences-onpolicy/`). Round r > 1 samples the model of round r − 1 (its chains in
    `rollouts/<label>-round<r-1>-<task>.jsonl`, its pairs in `preferences-onpolicy-<label>-round<r>/`),
    starts from that round's adapter and takes it as the reference. Each round gets the same steps;
    earlier rounds are kept in `training/<label>/round<r>/`, the last one is `training/<label>/` (what
    the evaluation reads), its report listing every round's pairs, steps and sampling cost.

    `backend_for(adapter_dir)` gives the backend that samples a round (adapter_dir is None for the
    student); by default the profile's student with that adapter.
    """
    import gc

    from fcdpo.backends import load_backend
    from fcdpo.preferences import build_onpolicy_preference_dataset

    settings, label = arm_run(profile.training, method, seed)
    if launched_processes() > 1 and (settings.onpolicy_rounds > 1 or init_adapter is not None):
        raise TrainingError(f"{method} samples a trained model: run it in one process")
    run = profile.run_path
    folder = runs.training_dir(run, label)
    adapter: Path | None = None if init_adapter is None else Path(init_adapter)
    rounds: list[dict[str, Any]] = []
    result = None
    for number in range(1, settings.onpolicy_rounds + 1):
        if backend_for is not None:
            backend = backend_for(adapter)
        elif adapter is None:
            backend = None  # the profile's student
        else:
            backend = load_backend({**student_spec(profile), "adapter": str(adapter)}, root=run)
        sampled = "student" if adapter is None else f"{label}-start" if number == 1 else f"{label}-round{number - 1}"
        dataset, pairs = build_onpolicy_preference_dataset(
            profile, backend=backend, progress=progress, name=sampled,
            folder=runs.onpolicy_round_dir(run, label, number, shared=adapter is None),
        )
        del backend
        last = number == settings.onpolicy_rounds
        result = train(method, student_reference(profile), dataset, settings,
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
        runs.write_report(result.output_dir, result.report)
    return result


def load_trained(base: str | Path, adapter_dir: str | Path, load_in_4bit: bool = False) -> tuple[Any, Any]:
    """A trained adapter on its base, for inference: (PeftModel in eval mode, the adapter's tokenizer)."""
    model = load_base(base, load_in_4bit)
    return load_adapter(model, adapter_dir).eval(), saved_tokenizer(adapter_dir)


def merge_and_export(
    base: str | Path, adapter_dir: str | Path, output_dir: str | Path, dtype: "str | torch.dtype | None" = None
) -> Path:
    """Merge the adapter into an unquantised copy of the base and save it (with the adapter's tokenizer).

    The base is loaded in `dtype` (default `compute_dtype()`), never in 4-bit: merging into quantised
    weights would round the update away. The result is a plain model folder that any server (vLLM,
    `transformers serve`) or `HFBackend` loads without PEFT. Returns `output_dir`.
    """
    model = load_model(base, dtype=resolve_dtype(dtype))
    merged = load_adapter(model, adapter_dir).merge_and_unload()
    output_dir = Path(output_dir)
    merged.save_pretrained(str(output_dir))
    saved_tokenizer(adapter_dir).save_pretrained(str(output_dir))
    return output_dir


def main(argv: list[str] | None = None) -> None:
    """`python -m fcdpo.training --profile P --method dpo` (or under `accelerate launch`)."""
    import argparse

    from fcdpo.config import load_profile, parse_overrides

    parser = argparse.ArgumentParser(description="Train the student of a profile on its run's preference pairs.")
    parser.add_argument("--profile", default="tiny-cpu", help="a name from configs/ or a YAML path")
    parser.add_argument("--method", choices=arms.names(), default="dpo")
    parser.add_argument("--seed", type=int, help="train with this seed into training/<method>-s<seed>/")
    parser.add_argument("-o", "--override", action="append", default=[],
                        help="dotted profile key=value (YAML value), repeatable, e.g. training.max_steps=10")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.override)
    except ValueError as exc:
        parser.error(str(exc))
    result = train_from_profile(load_profile(args.profile, overrides), args.method, seed=args.seed)
    # An arm trained earlier comes back without a trainer (`finished_arm`); it has one process, this one.
    if result.trainer is None or result.trainer.accelerator.is_main_process:
        # grpo drops nothing for length (it has no pairs) and reports what its rollouts cost instead
        print(json.dumps({k: result.report[k] for k in ("method", "steps", "seconds", "dropped_too_long", "rollouts")
                          if k in result.report}))


if __name__ == "__main__":
    main()
