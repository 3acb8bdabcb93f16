"""The tiny lab: a tokenizer and small Qwen2-architecture models trained from scratch on the tasks.

Layer: stages; imports the agent, the profile, backends, tasks and the bottom layer.

The offline `tiny-cpu` profile cannot download weights, so it builds its own teacher and student
from a seed: a byte-level BPE tokenizer trained on the task corpus (one token per digit), a
Qwen2-style chat template that the rest of the pipeline uses like any hub model's, and
`Qwen2ForCausalLM` models trained with TRL's `SFTTrainer` on gold chains (loss on assistant turns
only). The results are ordinary Hugging Face folders (`from_pretrained` works on them).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from fcdpo import runs
from fcdpo.chat_templates import packaged_template
from fcdpo.finetuning import shared_prefix_sft_trainer_class
from fcdpo.loading import load_model, saved_tokenizer
from fcdpo.messages import arrow_safe
from fcdpo.progress import quiet_bars, trainer_callback
from fcdpo.settings import LabConfig, ModelRecipe, SFTSettings

if TYPE_CHECKING:
    from fcdpo.config import Profile
    from fcdpo.tasks import Problem, Task

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # end of every turn; the chat EOS
END_OF_TEXT = "<|endoftext|>"
PAD = "<|pad|>"  # distinct from EOS so padding never teaches or hides the end of a turn
TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END, PAD, TOOL_CALL_START, TOOL_CALL_END]
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2-style ChatML. Differences from Qwen2.5's template, on purpose: tool results are a short
# `tool` turn (`<|im_start|>tool\n12<|im_end|>`), tool schemas are rendered in a compact block, and
# `{% generation %}` marks each assistant turn's content and its end-of-turn token, so
# `return_assistant_tokens_mask` (TRL's `assistant_only_loss`) trains on the model's own turns and
# teaches it to stop. Tool-call arguments may be a dict or an already serialised JSON string.
CHAT_TEMPLATE = packaged_template("tiny-lab")


def build_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1024,
    min_frequency: int = 2,
    model_max_length: int = 2048,
    words: Sequence[str] = (),
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`, with the chat template and special tokens.

    Every digit is its own token: tiny models copy and compute numbers far better that way.
    Byte-level coverage means any (NFC-normalised) text encodes and decodes back unchanged, with no
    unknown token. Training is deterministic: the same texts give the same vocabulary, so no seed
    is needed.

    Args:
        texts: Training text, e.g. the system prompts, questions and turns of gold chains.
        vocab_size: Upper bound on the vocabulary, special tokens and the 256 bytes included.
        min_frequency: A merge must occur at least this often in `texts`.
        model_max_length: The longest sequence callers may ask for.
        words: Names to keep as single tokens wherever they stand, so that a name reads the same in a
            sentence (`Wren is a lempus`, `Lempuses are ...`) and inside a call (`entity="Wren"`).
            BPE would give ` lempus` after a space and `lempus` after a quote two unrelated spellings,
            and a tiny model must then learn each pair separately before it can copy a name.
            A plural or capitalised form not listed is the listed word plus its ending (`lempus` + `es`).
    """
    tokenizer = Tokenizer(models.BPE())
    # Exactly the pipeline `Qwen2Tokenizer` rebuilds when a saved Qwen2 model folder is loaded with
    # `AutoTokenizer`, so the tokenizer trained here and the one loaded later split text the same way.
    # Its pattern isolates every digit (`\p{N}`), like a `Digits(individual_digits=True)` step.
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if words:
        from tokenizers import AddedToken

        tokenizer.add_tokens([AddedToken(w, single_word=False, normalized=True) for w in dict.fromkeys(words)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=None,
        bos_token=None,
        additional_special_tokens=[IM_START, END_OF_TEXT, TOOL_CALL_START, TOOL_CALL_END],
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        padding_side="left",  # batched generation continues every row from its last token
        clean_up_tokenization_spaces=False,
    )


def build_model(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 2048,
    rope_theta: float = 10000.0,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """A freshly initialised Qwen2-architecture model sized for `tokenizer`, the same for the same seed.

    Embeddings are tied to the output layer (as in small Qwen2 models); `intermediate_size`
    defaults to 4 × `hidden_size` and `num_kv_heads` to `num_heads`. The model's config and
    generation config know the tokenizer's EOS (`<|im_end|>`, plus `<|endoftext|>`) and pad ids.
    """
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
    num_kv_heads = num_kv_heads or num_heads
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    end_of_text_id = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        rope_theta=rope_theta,
        tie_word_embeddings=True,
        bos_token_id=end_of_text_id,
        eos_token_id=eos_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state untouched
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[eos_id, end_of_text_id],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=end_of_text_id,
    )
    return model


def _sft_config(settings: SFTSettings, output_dir: str, saving: bool) -> Any:
    """TRL's `SFTConfig` of a lab model: cosine schedule to a floor, Adam betas (0.9, 0.95), loss on
    assistant turns only, the caller's row order, fp32, a checkpoint every 10% of the steps when `saving`."""
    from trl import SFTConfig

    from fcdpo.loading import trainer_basics

    return SFTConfig(
        output_dir=output_dir,  # the caller saves the model itself
        max_steps=settings.steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": settings.min_lr_ratio},
        warmup_steps=settings.warmup_steps,
        weight_decay=settings.weight_decay,
        adam_beta1=0.9,
        adam_beta2=0.95,
        max_grad_norm=settings.max_grad_norm,
        max_length=settings.max_length,
        assistant_only_loss=True,
        train_sampling_strategy="sequential",  # the caller's order is the order trained on
        # fp32, and no activation checkpointing (on by default in TRL; tiny models need no memory saving);
        # a loss row every 5% of the steps, every 10% goes to `log`
        **{**trainer_basics(settings.seed, max(1, settings.steps // 20), checkpointing=False, mixed=False),
           "save_strategy": "steps" if saving else "no"},
        save_steps=max(1, settings.steps // 10),
        save_total_limit=1,
    )


def train_sft(
    model: Qwen2ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    conversations: Sequence[list[dict[str, Any]]],
    settings: SFTSettings | None = None,
    log: Callable[[str], Any] | None = None,
    checkpoint_dir: str | Path | None = None,
    answer_only: bool = False,
) -> dict[str, Any]:
    """Train `model` in place on chat conversations with TRL's `SFTTrainer`; returns training stats.

    With `checkpoint_dir`, the trainer saves its state there every 10% of the steps (the last
    checkpoint only) and a later call with the same arguments resumes from it, so a long build that
    is interrupted loses at most a tenth of its work.

    Batches take the conversations in the order given (cycling when `steps × batch_size` exceeds
    them), so the caller decides the mix and order. Only assistant turns (their content and
    end-of-turn token) carry loss; system, user and tool turns are context. With `answer_only`, only
    the last turn carries loss (TRL's prompt-completion rows: the rest of the chat is the prompt),
    which `AnswerDrill` uses to teach answering the last result. Each batch runs its
    shared system prompts once (see `shared_prefix_loss`), which gives the same gradients as the
    plain forward pass at a fraction of the cost. `log`, if given, receives a progress line about
    every 10% of the steps.

    Returns:
        `{"seconds", "steps", "examples", "tokens", "loss_tokens", "tokens_per_second", "loss"}`:
        `tokens` is the total length of the training rows (system prompts included, as in the plain
        pass), `loss_tokens` how many of them carry loss, and
        `loss` is the mean training loss over the last 10% of steps.
    """
    import datasets
    from transformers import PrinterCallback

    settings = settings or SFTSettings()
    if not conversations:
        raise ValueError("train_sft needs at least one conversation")
    needed = settings.steps * settings.batch_size
    chats = [arrow_safe(conversations[i % len(conversations)]) for i in range(needed)]
    if answer_only:
        if any(not chat or chat[-1].get("role") != "assistant" for chat in chats):
            raise ValueError("answer_only training needs conversations that end with an assistant turn")
        rows = [{"prompt": chat[:-1], "completion": chat[-1:]} for chat in chats]
    else:
        rows = [{"messages": chat} for chat in chats]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        with quiet_bars(), tempfile.TemporaryDirectory() as scratch:
            saving = checkpoint_dir is not None
            config = _sft_config(settings, str(checkpoint_dir) if saving else scratch, saving)
            # Unpacked, as the shipped lab was built: packing changes the rounding of the sums.
            trainer = shared_prefix_sft_trainer_class(pack=False)(
                model=model, args=config, train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer
            )
            trainer.remove_callback(PrinterCallback)  # progress goes to `log`, in one line per report
            if log is not None:
                trainer.add_callback(trainer_callback(log, "", every=2 * config.logging_steps))
            tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
            loss_tokens = sum(sum(label != -100 for label in row) for row in trainer.train_dataset["labels"])
            started = time.perf_counter()
            resume = saving and any(Path(checkpoint_dir).glob("checkpoint-*"))
            if resume and log is not None:
                log(f"resuming from {max(Path(checkpoint_dir).glob('checkpoint-*'), key=lambda p: int(p.name.split('-')[1]))}")
            trainer.train(resume_from_checkpoint=True if resume else None)
            seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(previous_threads)
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    tail = losses[-max(1, len(losses) // 10):] if losses else [float("nan")]
    model.eval()
    return {
        "seconds": round(seconds, 1),
        "steps": settings.steps,
        "examples": needed,
        "tokens": tokens,
        "loss_tokens": loss_tokens,
        "tokens_per_second": round(tokens / seconds) if seconds else 0,
        "loss": round(sum(tail) / len(tail), 4),
    }


# ------------------------------------------------------------------------------------------------
# The lab: tokenizer + teacher + student, built once per configuration and cached

LAB_FORMAT = 2  # bump when a change here changes what a build produces for the same config


@dataclass
class Lab:
    """A built lab: Hugging Face folders loadable with `from_pretrained` (each holds its tokenizer)."""

    path: Path
    teacher_path: Path
    student_path: Path
    report: dict[str, Any]  # key, config, gold chains per task, per-model training stats, build seconds
    reused: bool  # True when the cache already held this build
    data_key: str = ""  # what it was trained on, without library versions (set by `profile_lab`)


def lab_conversations(
    config: LabConfig,
    tasks: dict[str, "Task"],
    difficulty: dict[str, dict[str, Any]],
    syntax: str = "python",
    held_out: Iterable[str] = (),
) -> dict[str, list[list[dict[str, Any]]]]:
    """Gold-chain conversations per task, as many as the larger recipe needs.

    Each is exactly what the agent would see for that problem (`fcdpo.agent.gold_messages`): the
    task's system prompt with its offered functions, the question, then calls, results and the
    final answer. Questions in `held_out` are skipped, and so are repeated questions.
    """
    from fcdpo.agent import gold_messages
    from fcdpo.tasks import lab_problems

    problems = lab_problems(config, tasks, difficulty, held_out)
    return {name: [gold_messages(p, tasks[name], syntax) for p in kept] for name, kept in problems.items()}


def lab_key(
    config: LabConfig,
    conversations: dict[str, list[list[dict[str, Any]]]],
    words: Sequence[str] = (),
    versions: bool = True,
) -> str:
    """The cache key: a hash of the config, the training conversations and the library versions.

    Hashing the conversations (not only the settings) means a change in a task's generator, prompt
    or offered functions rebuilds the lab instead of reusing models trained on other data. Without
    `versions`, the key leaves the library versions out: it names what a shipped lab was trained
    on, which another machine's libraries do not change.
    """
    return _digest(_settings(config), conversations, words, versions)


def _settings(config: LabConfig) -> dict[str, Any]:
    """The config as hashed: without where the lab is kept (not what it is), and without an unset
    answer drill, so that labs built before the drill existed keep their keys."""
    settings = asdict(config)
    settings.pop("shipped", None)
    for role in ("teacher", "student"):
        if settings[role].get("answer_drill", "unset") is None:
            del settings[role]["answer_drill"]
    return settings


def _digest(settings: dict[str, Any], conversations: dict[str, list[list[dict[str, Any]]]],
            words: Sequence[str], versions: bool) -> str:
    import tokenizers
    import transformers
    import trl

    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True).encode())
    libraries = [torch.__version__, transformers.__version__, trl.__version__, tokenizers.__version__]
    digest.update(json.dumps([LAB_FORMAT, *(libraries if versions else [])]).encode())
    if words:
        digest.update(json.dumps(list(words)).encode())
    for name in sorted(conversations):
        digest.update(name.encode())
        for chat in conversations[name]:
            digest.update(json.dumps(chat, sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


def _model_key(config: LabConfig, role: str, conversations: dict[str, list[list[dict[str, Any]]]],
               words: Sequence[str], versions: bool = True) -> str:
    """The key of one model of a lab: its recipe, plus what its tokenizer and data depend on, so a
    change to the student's recipe keeps the teacher (and back). The other role's recipe matters
    only through how many conversations are drawn, which are hashed themselves."""
    settings = _settings(config)
    settings.pop("student" if role == "teacher" else "teacher")
    return f"{role}-{_digest({'role': role, **settings}, conversations, words, versions=versions)}"


def build_lab(
    config: LabConfig,
    cache_dir: str | Path,
    conversations: dict[str, list[list[dict[str, Any]]]],
    log: Callable[[str], Any] = print,
    words: Sequence[str] = (),
) -> Lab:
    """Build (or reuse) the tokenizer, teacher and student under `cache_dir/<lab_key>/`.

    `conversations` are the gold chains per task (see `lab_conversations`); the teacher learns from
    the first `teacher.problems_per_task` of each task and the student from the first
    `student.problems_per_task`, tasks shuffled together. The build is deterministic for the same
    config, data and library versions. It is written to `.<key>.partial/` and renamed into place only
    when complete, so an interrupted build never leaves a half-written cache. Each trained model is
    also kept in `models/<its own key>/` (its recipe, the tokenizer's settings and the data), so a
    rerun after an interruption, or a build that changes only the student's recipe, reuses a
    finished teacher; a model in training resumes from its last checkpoint.
    `report.json` there records the config, the data counts and, per model, its parameters,
    steps, seconds, tokens per second and final loss.
    """
    key = lab_key(config, conversations, words)
    root = Path(cache_dir)
    path = root / key
    if (path / "report.json").exists():
        report = json.loads((path / "report.json").read_text())
        log(f"tiny lab {key}: reusing {path}")
        return Lab(path, path / "teacher", path / "student", report, reused=True)

    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    building = root / f".{key}.partial"
    building.mkdir(exist_ok=True)
    texts = [m.get("content") or "" for chats in conversations.values() for chat in chats for m in chat]
    tokenizer = build_tokenizer(texts, vocab_size=config.vocab_size, words=words)
    # The partial folder stays on an error or an interruption, so that a rerun resumes from it.
    report: dict[str, Any] = {
        "key": key,
        "config": asdict(config),
        "conversations": {name: len(chats) for name, chats in conversations.items()},
        "vocab_size": len(tokenizer),
        "models": {},
    }
    for role in ("teacher", "student"):
        recipe: ModelRecipe = getattr(config, role)
        kept = root / "models" / _model_key(config, role, conversations, words)
        finished = kept / "stats.json"
        if finished.exists():
            report["models"][role] = json.loads(finished.read_text())
            log(f"tiny lab {key}: the {role} was trained by an earlier build ({kept.name}); reused")
            shutil.copytree(kept, building / role, dirs_exist_ok=True, ignore=shutil.ignore_patterns("stats.json"))
            continue
        # Without a drill, this is the model itself; with one, the SFT model it starts from, kept
        # under the drill-less key so that trying another drill reuses it.
        base = root / "models" / _model_key(_without_drill(config, role), role, conversations, words)
        if (base / "stats.json").exists():
            stats = json.loads((base / "stats.json").read_text())
            model = load_model(base)
            log(f"tiny lab {key}: the {role}'s SFT was trained by an earlier build ({base.name}); reused")
        else:
            model = build_model(
                tokenizer,
                hidden_size=recipe.hidden_size,
                num_layers=recipe.num_layers,
                num_heads=recipe.num_heads,
                intermediate_size=recipe.intermediate_size,
                seed=recipe.seed,
            )
            log(
                f"tiny lab {key}: training the {role} ({_count_parameters(model):,} parameters, "
                f"{recipe.sft.steps} steps of {recipe.sft.batch_size})"
            )
            rows = _interleave(conversations, recipe.problems_per_task, seed=recipe.sft.seed,
                               rows=recipe.sft.steps * recipe.sft.batch_size, weights=recipe.task_weights)
            stats = {"parameters": _count_parameters(model),
                     **train_sft(model, tokenizer, rows, recipe.sft, log, checkpoint_dir=_checkpoints(base))}
            log(
                f"tiny lab {key}: {role} trained in {stats['seconds']:.0f} s "
                f"({stats['tokens_per_second']} tokens/s, final loss {stats['loss']})"
            )
            _keep(model, tokenizer, base, stats)
        drill = recipe.answer_drill
        if drill is not None:
            tasks = drill.tasks or sorted(conversations)
            unknown = sorted(set(tasks) - set(conversations))
            if unknown:
                raise ValueError(f"{role}.answer_drill.tasks: unknown task(s) {unknown}; the lab has {sorted(conversations)}")
            log(f"tiny lab {key}: answer drill for the {role} ({drill.sft.steps} steps of {drill.sft.batch_size}, "
                f"{', '.join(tasks)}; loss on the final answer only)")
            rows = _interleave(conversations, recipe.problems_per_task, seed=drill.sft.seed,
                               rows=drill.sft.steps * drill.sft.batch_size, weights={t: 1.0 for t in tasks})
            drilled = train_sft(model, tokenizer, rows, drill.sft, log, checkpoint_dir=_checkpoints(kept),
                                answer_only=True)
            stats = {**stats, "seconds": round(stats["seconds"] + drilled["seconds"], 1), "answer_drill": drilled}
            log(f"tiny lab {key}: {role}'s answer drill done in {drilled['seconds']:.0f} s (final loss {drilled['loss']})")
            _keep(model, tokenizer, kept, stats)
        report["models"][role] = stats
        shutil.copytree(kept, building / role, dirs_exist_ok=True, ignore=shutil.ignore_patterns("stats.json"))
    report["seconds"] = round(time.perf_counter() - started, 1)  # this run's share of the build
    report["train_seconds"] = round(sum(m["seconds"] for m in report["models"].values()), 1)
    runs.write_report(building, report)
    if path.exists():  # left by a concurrent build; ours is complete
        shutil.rmtree(path)
    building.rename(path)
    return Lab(path, path / "teacher", path / "student", report, reused=False)


def _without_drill(config: LabConfig, role: str) -> LabConfig:
    """The lab config with `role`'s answer drill unset: what names the SFT model a drill starts from."""
    return replace(config, **{role: replace(getattr(config, role), answer_drill=None)})


def _checkpoints(kept: Path) -> Path:
    return kept.parent / f".{kept.name}.checkpoints"


def _keep(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast, kept: Path, stats: dict[str, Any]) -> None:
    """Save a trained lab model to the build cache; `stats.json`, written last, marks it complete."""
    model.save_pretrained(kept)
    tokenizer.save_pretrained(kept)
    (kept / "stats.json").write_text(json.dumps(stats, indent=2))
    shutil.rmtree(_checkpoints(kept), ignore_errors=True)


def profile_lab(profile: "Profile", log: Callable[[str], Any] = print, rebuild: bool = False) -> Lab:
    """The lab a profile's `lab` section describes, published at `<run>/lab/`.

    The models learn the profile's tasks with their offered functions, difficulty and call syntax,
    on problems outside the profile's train, eval and dev splits. When the section names a
    `shipped` lab, that one is used once its manifest's hashes check out and it was trained on what
    this profile describes; otherwise (or with `rebuild`) the lab is built, cached in
    `<run>/lab/builds/<key>/`. The models are copied to `<run>/lab/teacher` and `<run>/lab/student`,
    the paths the profile's backends load.

    Raises:
        ValueError: when the profile has no `lab` section.
        fcdpo.config.ConfigError: for an unknown or mistyped key in it.
        LabError: when the shipped lab's files do not match its manifest, or it was built from
            other settings or data than the profile's.
    """
    from fcdpo.settings import build

    if profile.lab is None:
        raise ValueError(f"profile {profile.name!r} has no `lab` section; only tiny-lab profiles build models")
    config = build(LabConfig, profile.lab, where=f"profile {profile.name!r}: lab")
    tasks = {name: profile.task(name) for name in profile.tasks}
    difficulty = {name: dict(settings.difficulty) for name, settings in profile.tasks.items()}
    held_out = {p.question for splits in _held_out_sets(profile).values() for ps in splits.values() for p in ps}
    conversations = lab_conversations(config, tasks, difficulty, profile.agent.syntax, held_out)
    words = [w for name in sorted(tasks) for w in tasks[name].vocabulary()] if config.whole_words else []
    lab_dir = runs.lab_dir(profile.run_path)
    if config.shipped and not rebuild:
        lab = _shipped(config, conversations, words, log)
    else:
        _reuse_shipped_models(config, conversations, words, lab_dir / "builds", log)
        lab = build_lab(config, lab_dir / "builds", conversations, log=log, words=words)
    lab.data_key = lab_key(config, conversations, words, versions=False)
    for role, source in (("teacher", lab.teacher_path), ("student", lab.student_path)):
        target = lab_dir / role
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)
    return lab


def _interleave(
    conversations: dict[str, list[list[dict[str, Any]]]],
    per_task: int,
    seed: int,
    rows: int | None = None,
    weights: dict[str, float] | None = None,
) -> list[list[dict[str, Any]]]:
    """Training rows: the first `per_task` conversations of every task, shuffled together with `seed`.

    With `rows`, exactly that many, each task's share in proportion to `weights` (equal without
    them), its conversations cycled as needed. Mixing tasks row by row keeps batches from being all
    one template, which stalls training.
    """
    names = sorted(conversations)
    if weights is not None:
        unknown = sorted(set(weights) - set(names))
        if unknown or any(w < 0 for w in weights.values()) or not sum(weights.get(n, 0) for n in names):
            raise ValueError(f"task_weights {weights} must give non-negative shares to the tasks {names}")
    if rows is None:
        chosen = [chat for name in names for chat in conversations[name][:per_task]]
    else:
        shares = {name: (weights or {}).get(name, 0 if weights else 1) for name in names}
        total = sum(shares.values())
        counts = {name: round(rows * share / total) for name, share in shares.items()}
        counts[max(names, key=lambda n: shares[n])] += rows - sum(counts.values())  # rounding
        chosen = []
        for name in names:
            pool = conversations[name][:per_task]
            chosen += [pool[i % len(pool)] for i in range(counts[name])] if pool else []
    random.Random(seed).shuffle(chosen)
    return chosen


def _count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _held_out_sets(profile: "Profile") -> dict[str, dict[str, list["Problem"]]]:
    """The profile's eval, train and dev problems per task: the lab never trains on any of them."""
    from fcdpo.tasks import held_out_sets

    return held_out_sets(profile)


# ------------------------------------------------------------------------------------------------
# Shipped labs: a build exported with a manifest, committed, checked before every use


MANIFEST = "manifest.json"


class LabError(ValueError):
    """A shipped lab that cannot be used: a file missing or changed, or built from other settings."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _repository_root() -> Path:
    from fcdpo.settings import CONFIG_DIR

    return CONFIG_DIR.parent


def _source_state() -> tuple[str, str]:
    """The repository's commit, and the state of the code that builds a lab (`src/`, `configs/`)
    against it: "clean", or "changed: <path>, ..." naming each file that differs from the commit.
    ("unknown", "unknown") outside git."""
    import subprocess

    root = _repository_root()
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--", "src", "configs"], cwd=root,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown", "unknown"
    changed = sorted(line[3:].strip() for line in status.stdout.splitlines() if line.strip())
    return head.stdout.strip(), ("changed: " + ", ".join(changed)) if changed else "clean"


def _repository_relative(path: str | Path) -> str:
    """`path` relative to the repository root when it lies inside it (`lab/tiny-cpu/teacher`), so a
    manifest names no folder of the machine that built it; a path outside stays as given."""
    try:
        return Path(path).resolve().relative_to(_repository_root().resolve()).as_posix()
    except ValueError:
        return str(path)


def _relative_models(models: Any) -> Any:
    """A lab report's per-model stats with `reused_from` made repository-relative (build caches written
    before it was recorded so keep an absolute path)."""
    if not isinstance(models, dict):
        return models
    return {role: ({**stats, "reused_from": _repository_relative(stats["reused_from"])}
                   if isinstance(stats, dict) and stats.get("reused_from") else stats)
            for role, stats in models.items()}


def export_lab(lab: Lab, destination: str | Path, data_key: str,
               dev_accuracy: Callable[[Path, Path], dict[str, Any]] | None = None,
               dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """Write `lab`'s teacher and student to `destination` for committing, with a manifest.

    Weights are stored as safetensors in `dtype` (half the size of fp32; loaders compute in fp32
    on CPU), each model folder with its tokenizer. `manifest.json` records the lab config, its key
    (`data_key`: settings and training data, without library versions), the commit of the code
    that built it and whether `src/` and `configs/` matched it (`tree`: "clean", or "changed: ..."
    naming the files that did not, with a warning: such a lab cannot be rebuilt from the commit
    alone), build time, library versions, the held-out accuracy `dev_accuracy(teacher_dir,
    student_dir)` returns for the exported weights, and the sha256 of every file. Paths in it are
    relative to the repository. Returns the manifest.
    """
    import tokenizers
    import transformers
    import trl

    destination = Path(destination)
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    for role, source in (("teacher", lab.teacher_path), ("student", lab.student_path)):
        load_model(source, dtype=dtype).save_pretrained(destination / role)
        saved_tokenizer(source).save_pretrained(destination / role)
    files = sorted(p for p in destination.rglob("*") if p.is_file())
    accuracy = dev_accuracy(destination / "teacher", destination / "student") if dev_accuracy else None
    commit, tree = _source_state()
    if tree.startswith("changed"):
        warnings.warn(f"exporting a lab built from uncommitted code ({tree}); its manifest records commit "
                      f"{commit[:12]} with tree '{tree}': commit the changes and rebuild for a lab the commit "
                      "reproduces", stacklevel=2)
    manifest = {
        "format": LAB_FORMAT,
        "key": data_key,
        "build_key": lab.report.get("key"),
        "config": lab.report.get("config"),
        "commit": commit,
        "tree": tree,
        "built": time.strftime("%Y-%m-%d", time.gmtime()),
        "build_seconds": lab.report.get("train_seconds", lab.report.get("seconds")),
        "models": _relative_models(lab.report.get("models")),
        "conversations": lab.report.get("conversations"),
        "libraries": {"torch": torch.__version__, "transformers": transformers.__version__,
                      "trl": trl.__version__, "tokenizers": tokenizers.__version__},
        "weights_dtype": str(dtype).removeprefix("torch."),
        "dev_accuracy": accuracy,
        "files": {str(p.relative_to(destination)): _sha256(p) for p in files},
        "megabytes": round(sum(p.stat().st_size for p in files) / 1e6, 2),
    }
    (destination / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def verify_shipped(folder: str | Path) -> dict[str, Any]:
    """The manifest of the shipped lab in `folder`, once every file it lists has its recorded sha256.

    Raises:
        LabError: naming the folder and the first file that is missing or differs, or a manifest
            that is absent or unreadable.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("it lists no files")
    except FileNotFoundError:
        raise LabError(f"no shipped lab at {folder}: {MANIFEST} is missing (build one with `make lab`)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise LabError(f"{path} is not a valid lab manifest: {exc}") from None
    for name, expected in sorted(files.items()):
        file = folder / name
        if not file.is_file():
            raise LabError(f"shipped lab {folder}: {name} is missing (listed in {MANIFEST})")
        actual = _sha256(file)
        if actual != expected:
            raise LabError(f"shipped lab {folder}: {name} has sha256 {actual[:16]}…, the manifest says "
                           f"{str(expected)[:16]}…; restore it (git checkout -- {folder}) or rebuild with `make lab`")
    return manifest


def _shipped_folder(config: LabConfig) -> Path:
    folder = Path(config.shipped)
    return folder if folder.is_absolute() else _repository_root() / folder


def _shipped(config: LabConfig, conversations: dict[str, list[list[dict[str, Any]]]], words: Sequence[str],
             log: Callable[[str], Any]) -> Lab:
    folder = _shipped_folder(config)
    manifest = verify_shipped(folder)
    key = lab_key(config, conversations, words, versions=False)
    if manifest.get("key") != key:
        raise LabError(
            f"the shipped lab in {folder} was trained on lab key {manifest.get('key')}, but this profile's lab "
            f"settings, tasks and prompts give {key}: rebuild it with `make lab`, or unset lab.shipped to build "
            "into the run folder"
        )
    log(f"tiny lab {key}: using the shipped lab in {folder} (built {manifest.get('built')} at "
        f"{str(manifest.get('commit'))[:12]}, hashes checked)")
    return Lab(folder, folder / "teacher", folder / "student", manifest, reused=True)


def _reuse_shipped_models(config: LabConfig, conversations: dict[str, list[list[dict[str, Any]]]],
                          words: Sequence[str], cache_dir: Path, log: Callable[[str], Any]) -> None:
    """Put the shipped lab's teacher or student into the build cache when this build would train that
    very model (or start an answer drill from it): same recipe, tokenizer settings and data. A
    rebuild that changes only the student then skips the teacher's ~20 minutes, and a drill starts
    from the shipped student, not from a retrained one that other library versions may round
    differently. Its exported weights are the shipped ones again (fp16
    saved as fp32 and back is exact), and its stats keep the library versions it was built with;
    anything that does not check out is rebuilt."""
    from fcdpo.settings import build

    if not config.shipped:
        return
    folder = _shipped_folder(config)
    try:
        manifest = verify_shipped(folder)
        shipped = build(LabConfig, manifest["config"], where=f"{folder / MANIFEST}: config")
    except (LabError, ValueError, KeyError, TypeError) as exc:
        log(f"the shipped lab in {folder} is not reused: {exc}")
        return
    if manifest.get("key") != lab_key(shipped, conversations, words, versions=False):
        return  # trained on other data than this profile's
    for role in ("teacher", "student"):
        # the model itself, or the SFT model its answer drill starts from
        target = _without_drill(config, role)
        kept = cache_dir / "models" / _model_key(target, role, conversations, words)
        stats = (manifest.get("models") or {}).get(role)
        same = _model_key(shipped, role, conversations, words, versions=False) == _model_key(
            target, role, conversations, words, versions=False)
        if not same or not stats or (kept / "stats.json").exists():
            continue
        model = load_model(folder / role, dtype=torch.float32)
        tokenizer = saved_tokenizer(folder / role)
        _keep(model, tokenizer, kept, {**stats, "reused_from": _repository_relative(folder / role),
                                       "libraries": manifest.get("libraries")})
        log(f"the shipped {role} in {folder / role} has this build's recipe and data; reused ({kept.name})")


def dev_accuracy(profile: "Profile", teacher: Path, student: Path, log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Greedy accuracy of `teacher` and `student` on the profile's dev split, per task, through the agent,
    with what their chains computed against what they answered (`fcdpo.evaluation.result_rates`)."""
    from fcdpo.agent import Agent
    from fcdpo.backends import load_backend
    from fcdpo.evaluation import result_rates

    sets = _held_out_sets(profile)
    result: dict[str, Any] = {}
    for role, folder in (("teacher", teacher), ("student", student)):
        backend = load_backend({"kind": "hf", "model": str(folder), "batch_size": 64})
        for name, splits in sets.items():
            problems = splits["dev"]
            if not problems:
                continue
            chains = Agent(profile.task(name), backend, profile.agent).run(problems)
            right = sum(c.correct for c in chains)
            rates = {key: round(value, 4) for key, value in result_rates(chains).items()
                     if not math.isnan(value)}
            result.setdefault(role, {})[name] = {"problems": len(chains), "correct": right,
                                                 "accuracy": round(right / len(chains), 4), **rates}
            log(f"dev {role} {name}: {right}/{len(chains)}"
                + "".join(f", {key} {value:.1%}" for key, value in rates.items()))
    return result


def main(argv: list[str] | None = None) -> None:
    """`make lab`: build a profile's tiny lab from its seed, measure it on the dev split, export it."""
    import argparse

    from fcdpo.config import build, load_profile, parse_overrides

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--profile", default="tiny-cpu")
    parser.add_argument("--out", help="where to export (default: the profile's lab.shipped)")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a dotted profile key, e.g. lab.teacher.seed=1 (YAML value), repeatable")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.override)
    except ValueError as exc:
        parser.error(str(exc))
    profile = load_profile(args.profile, overrides)
    config = build(LabConfig, profile.lab or {}, where=f"profile {profile.name!r}: lab")
    out = args.out or config.shipped
    if not out:
        parser.error(f"profile {profile.name!r} names no lab.shipped folder; give --out")
    stamp = lambda message: print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)  # noqa: E731
    lab = profile_lab(profile, log=stamp, rebuild=True)
    destination = Path(out) if Path(out).is_absolute() else _repository_root() / out
    manifest = export_lab(lab, destination, lab.data_key,
                          dev_accuracy=lambda t, s: dev_accuracy(profile, t, s, log=stamp))
    stamp(f"exported to {destination} ({manifest['megabytes']} MB): dev accuracy {json.dumps(manifest['dev_accuracy'])}")


if __name__ == "__main__":
    main()
