"""fcdpo overrides a few of TRL's trainer methods; a TRL release that changes one must fail here, by name.

`AssistantOnlyDPOTrainer` (fcdpo.training) and `SharedPrefixSFTTrainer` (fcdpo.finetuning) override
these methods of TRL 1.16's `DPOTrainer` and `SFTTrainer`. pyproject.toml pins TRL to the minor
version tested; before widening the pin, this test names any override whose TRL signature moved.
"""

import inspect

import pytest

# (class, method, the parameter names fcdpo's override takes, in order)
SEAMS = [
    ("DPOTrainer", "_prepare_dataset", ["self", "dataset", "processing_class", "args", "dataset_name"]),
    ("DPOTrainer", "_set_signature_columns_if_needed", ["self"]),
    ("DPOTrainer", "_compute_loss", ["self", "model", "inputs", "return_outputs"]),
    ("DPOTrainer", "compute_ref_log_probs", ["self", "model", "inputs"]),
    ("DPOTrainer", "_precompute_ref_logps", ["self", "dataset", "name", "batch_size"]),
    ("SFTTrainer", "compute_loss", ["self", "model", "inputs", "return_outputs", "num_items_in_batch"]),
]


@pytest.mark.parametrize("cls, method, parameters", SEAMS, ids=[f"{c}.{m}" for c, m, _ in SEAMS])
def test_every_trl_method_fcdpo_overrides_still_has_the_signature_it_was_written_for(cls, method, parameters):
    import trl

    found = getattr(getattr(trl, cls), method, None)
    assert found is not None, f"TRL {trl.__version__} has no {cls}.{method}: fcdpo's override of it no longer runs"
    names = list(inspect.signature(found).parameters)
    assert names == parameters, (f"TRL {trl.__version__} changed {cls}.{method}{tuple(names)}; fcdpo's override "
                                 f"takes {tuple(parameters)}: update the override before widening the TRL pin")


def test_the_overrides_in_fcdpo_are_the_ones_listed_here():
    from fcdpo.finetuning import shared_prefix_sft_trainer_class
    from fcdpo.training import _dpo_trainer_class

    for trainer, base in ((_dpo_trainer_class(), "DPOTrainer"), (shared_prefix_sft_trainer_class(), "SFTTrainer")):
        own = {name for name, value in vars(trainer).items() if callable(value) and not name.startswith("__")}
        own.discard("_reference_weights")  # fcdpo's own helper, not an override
        assert own == {method for cls, method, _ in SEAMS if cls == base}, trainer.__name__


def test_trl_is_pinned_to_the_minor_version_tested():
    from pathlib import Path

    import tomllib
    import trl

    pins = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    [pin] = [p for p in pins if p.startswith("trl")]
    major, minor = trl.__version__.split(".")[:2]
    assert pin.split("#")[0].strip() == f"trl>={major}.{minor},<{major}.{int(minor) + 1}"
