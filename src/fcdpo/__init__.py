"""fcdpo: teaching small language models to reason by calling functions.

The package is built in layers, listed in `LAYERS` from the bottom up. A module imports only from its
own layer and the layers below it, never from one above, and no modules import each other in a circle;
`tests/test_layers.py` holds every import to this, those inside functions included. Each module's
docstring says its layer and what it imports.
"""

import logging
import warnings

# Two messages from libraries, not from fcdpo's use of them, that every executed notebook would repeat:
# - PEFT 0.21 asks each model it wraps for `is_gradient_checkpointing`, which transformers 5.2x deprecates
#   for `is_activation_checkpointing`: one FutureWarning per adapter loaded or trained.
# - bitsandbytes, imported by PEFT, tries on CPUs with AVX512-BF16 to download a 4-bit kernel with the
#   `kernels` package and logs a warning when it cannot; fcdpo quantises only on GPUs, and runs offline.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

LAYERS = (
    # What a run is made of, in plain data: its settings and its folder's layout, text and messages as
    # stored, chat templates, how models are loaded, the attention kernel.
    ("settings and formats", ("arms", "settings", "runs", "stats", "ledger", "safe_text", "progress", "chat_templates", "messages", "loading",
                              "prefix_attention")),
    # The function engine and the tasks: problems, the functions that solve them, the FOL task's formulas
    # and prover, benchmark files.
    ("functions and tasks", ("functions", "tasks", "tasks.base", "tasks.logic", "tasks.calculator", "tasks.records",
                             "tasks.math", "tasks.fol", "tasks.prontoqa", "tasks.sources")),
    # Models that complete chats, local or over HTTP.
    ("models", ("backends",)),
    # A run's profile: its settings read from configs/, checked against the tasks and backends.
    ("the profile", ("config",)),
    # The agents that run a problem's chain of calls on a model; the multi-LLM agent's role data and step metrics.
    ("agents", ("agent", "multi_agent", "roles", "step_metrics")),
    # The pipeline's stages, each one step of the experiment.
    ("stages", ("rollouts", "preferences", "finetuning", "grpo", "training", "glpft", "costs", "evaluation", "tinylab",
                "plots", "report")),
    # What is run from the command line.
    ("commands", ("pipeline", "tasks.__main__")),
)
