"""The training arms: one record per arm, the one place that says what an arm is.

Layer: settings and formats; imports nothing of fcdpo.

An arm is a way of training the student from the run's data. Its record (`Arm`) says everything the
stages need to know about it, and every stage asks this registry rather than branching on an arm's name:

- what it trains on (`data`): the teacher's pairs (`preferences/`), step pairs cut from the teacher's
  chains (`preferences-step/`), pairs of the student's own chains (`preferences-onpolicy/`), or the
  training problems themselves (GRPO, rewarded by the answer check);
- how (`trainer`): TRL's DPO on the pairs (`AssistantOnlyDPOTrainer`), SFT on their distinct chosen
  chains, or GRPO;
- its recipe (`recipe`): training settings the arm fixes whatever the profile says (plain DPO is the
  sigmoid loss alone), on top of which a profile may set `training.arms.<name>` (a recipe chosen on dev);
- what it starts from (`start`): a fresh adapter on the student, or the adapter of another arm trained
  with the same seed, which is then also the reference (SFT, then DPO: Zephyr's recipe);
- whose tokens were sampled to make its data (`samples`), for the cost table;
- its label and colour in tables and figures.

Adding an arm is one `register(Arm(...))` call (`docs/extending.md`): nothing else in the package names
an arm, except the trainers themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# What an arm trains on, and the run folder's subfolder that holds those pairs (None: no pairs).
DATA_FOLDERS = {"teacher": "preferences", "step": "preferences-step", "student": "preferences-onpolicy",
                "problems": None}
# The trainers, and the training settings each of them reads (every other setting is read by every arm).
TRAINER_READS = {
    "dpo": ("beta", "loss_type", "loss_weights", "learning_rate", "rejected_answer_in_loss"),
    "sft": ("sft_learning_rate",),
    "grpo": ("grpo",),
}
# Whose sampled tokens made an arm's data: the teacher's chains (sampled once, for every arm and seed),
# the student's own (sampled once for every seed, then each later round), or the policy's during training.
SAMPLES = ("teacher", "student", "policy")


class ArmError(ValueError):
    """An arm that is not registered, or a record that does not hold together."""


@dataclass(frozen=True)
class Arm:
    name: str
    title: str  # the legend's label, "Student + SFT"
    colour: str  # one colour in every figure
    trainer: str  # a key of TRAINER_READS
    data: str  # a key of DATA_FOLDERS
    about: str = ""  # one line for tables and the guide
    recipe: dict[str, Any] = field(default_factory=dict)  # training settings the arm fixes
    reads: tuple[str, ...] = ()  # settings only this arm reads, beyond its trainer's
    start: str | None = None  # the arm (same seed) whose adapter it starts from and takes as reference
    rounds: bool = False  # whether `training.onpolicy_rounds` repeats sampling and training
    steps_of: tuple[str, ...] = ()  # train as many steps as these arms together (a control's budget)
    samples: str = "teacher"

    def __post_init__(self) -> None:
        if self.trainer not in TRAINER_READS:
            raise ArmError(f"arm {self.name!r}: trainer {self.trainer!r} is not one of {sorted(TRAINER_READS)}")
        if self.data not in DATA_FOLDERS:
            raise ArmError(f"arm {self.name!r}: data {self.data!r} is not one of {sorted(DATA_FOLDERS)}")
        if (self.trainer == "grpo") != (self.data == "problems"):
            raise ArmError(f"arm {self.name!r}: GRPO and only GRPO trains on the problems themselves")
        if self.samples not in SAMPLES:
            raise ArmError(f"arm {self.name!r}: samples {self.samples!r} is not one of {SAMPLES}")
        if self.start == self.name or self.name in self.steps_of:
            raise ArmError(f"arm {self.name!r} cannot start from, or take its budget from, itself")

    @property
    def folder(self) -> str | None:
        """The run folder's subfolder of the arm's pairs (None for an arm trained on problems)."""
        return DATA_FOLDERS[self.data]

    @property
    def pairs(self) -> bool:
        return self.folder is not None


_REGISTRY: dict[str, Arm] = {}


def register(arm: Arm, replace: bool = False) -> Arm:
    """Add `arm` to the registry (after the arm it starts from, so every chain of starts is registered)."""
    if arm.name in _REGISTRY and not replace:
        raise ArmError(f"an arm called {arm.name!r} is already registered")
    for other in (arm.start, *arm.steps_of):
        if other is not None and other not in _REGISTRY:
            raise ArmError(f"arm {arm.name!r} names {other!r}, which is not registered (register it first)")
    _REGISTRY[arm.name] = arm
    return arm


def unregister(name: str) -> None:
    """Remove an arm (a test's toy arm); the built-in arms stay."""
    if name in BUILT_IN:
        raise ArmError(f"{name!r} is a built-in arm")
    _REGISTRY.pop(name, None)


def get(name: str) -> Arm:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ArmError(f"unknown arm {name!r}; the arms are {names()}") from None


def names() -> tuple[str, ...]:
    """Every registered arm, in the order tables and figures show them."""
    return tuple(_REGISTRY)


def reads(name: str) -> tuple[str, ...]:
    """The arm-specific settings `name` reads: its trainer's, its own, and those of the arm it starts from."""
    arm = get(name)
    own = (*TRAINER_READS[arm.trainer], *arm.reads)
    return tuple(dict.fromkeys(own + (reads(arm.start) if arm.start else ())))


def arm_specific() -> set[str]:
    """Settings some arm reads and others do not; the rest are read by every arm."""
    keys = {key for keys in TRAINER_READS.values() for key in keys}
    return keys | {key for arm in _REGISTRY.values() for key in arm.reads}


def starts(name: str) -> list[str]:
    """The arms `name` starts from, nearest first (sft_dpo → ["sft"])."""
    chain, arm = [], get(name)
    while arm.start is not None:
        chain.append(arm.start)
        arm = get(arm.start)
    return chain


# --------------------------------------------------------------------------- the built-in arms
# Colours: Okabe & Ito's colour-blind-safe set first, then matplotlib's tab10.

_PLAIN_DPO = {"loss_type": ["sigmoid"], "loss_weights": None, "rejected_answer_in_loss": True}

for _arm in (
    Arm("sft", "Student + SFT", "#E69F00", "sft", "teacher",
        "SFT on the distinct chosen chains of the teacher's pairs (rejection-sampling fine-tuning)"),
    Arm("dpo", "Student + DPO", "#009E73", "dpo", "teacher",
        "the paper's DPO on the teacher's pairs: the sigmoid loss alone, the whole rejected chain in it",
        recipe=_PLAIN_DPO),
    Arm("rpo", "Student + RPO", "#0b6e4f", "dpo", "teacher",
        "DPO plus the chosen chains' NLL (RPO) on the teacher's pairs: the profile's loss_type and weights"),
    Arm("sft_dpo", "Student + SFT, then DPO", "#332288", "dpo", "teacher",
        "DPO (the profile's loss) from the SFT adapter of the same seed, with the SFT model as reference",
        start="sft"),
    Arm("sft_long", "Student + SFT (long)", "#b07800", "sft", "teacher",
        "SFT for as many steps as sft_dpo's two phases together: sft_dpo's control", steps_of=("sft", "sft_dpo")),
    Arm("step_dpo", "Student + step DPO", "#D55E00", "dpo", "step",
        "DPO on the teacher's chains cut where a right and a wrong one part ways (Step-DPO)"),
    Arm("onpolicy_dpo", "Student + on-policy DPO", "#56B4E9", "dpo", "student",
        "DPO on the student's own right and wrong chains; rounds > 1: iterative RPO",
        reads=("onpolicy_rounds", "onpolicy_temperature"), rounds=True, samples="student"),
    Arm("grpo", "Student + GRPO", "#8c564b", "grpo", "problems",
        "GRPO on the training problems, rewarded by the task's answer check", samples="policy"),
    Arm("sft_onpolicy", "Student + SFT, then on-policy RPO", "#88CCEE", "dpo", "student",
        "the SFT model's own right and wrong chains, from its adapter and with it as reference; rounds > 1: "
        "iterative RPO (Pang et al. 2024)", start="sft", reads=("onpolicy_rounds", "onpolicy_temperature"),
        rounds=True, samples="student"),
    Arm("sft_grpo", "Student + SFT, then GRPO", "#AA4499", "grpo", "problems",
        "GRPO from the SFT adapter of the same seed", start="sft", samples="policy"),
):
    register(_arm)
BUILT_IN = frozenset(_REGISTRY)

# Every method a profile may name; the registry itself is the list, so a registered arm is a method.
# (A function, not a tuple, so that an arm registered later counts.)
__all__ = ["Arm", "ArmError", "BUILT_IN", "DATA_FOLDERS", "TRAINER_READS", "arm_specific", "get", "names",
           "reads", "register", "starts", "unregister"]
