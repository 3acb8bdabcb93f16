"""Profiles load into dataclasses and refuse what they do not know."""

import pytest

from fcdpo.config import CONFIG_DIR, ConfigError, Profile, load_profile


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_profile_loads(path):
    profile = load_profile(path)
    assert isinstance(profile, Profile)
    assert profile.name == path.stem


def test_unknown_key_names_the_file_and_the_valid_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ntasks:\n  math:\n    trian: 3\n")
    with pytest.raises(ConfigError) as info:
        load_profile(bad)
    message = str(info.value)
    assert "bad.yaml" in message and "trian" in message and "train" in message


def test_wrong_type_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nseed: three\n")
    with pytest.raises(ConfigError, match="seed"):
        load_profile(bad)


def test_overrides_are_checked_like_the_file():
    profile = load_profile("tiny-cpu", {"tasks.math.train": 7})
    assert profile.tasks["math"].train == 7
    with pytest.raises(ConfigError, match="valid keys"):
        load_profile("tiny-cpu", {"tasks.math.trian": 7})


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match="tiny-cpu"):
        load_profile("no-such-profile")


def test_a_profile_can_offer_a_subset_of_a_tasks_functions():
    profile = load_profile("tiny-cpu", {"tasks.math.functions": ["add", "subtract"]})
    assert profile.task("math").functions().names == ["add", "subtract"]
    assert "multiply(" not in profile.task("math").system_prompt()
    with pytest.raises(ValueError, match="unknown function"):
        load_profile("tiny-cpu", {"tasks.math.functions": ["add", "plus"]}).task("math")


def test_a_profile_can_leave_the_example_calls_out_of_the_prompt():
    from fcdpo.agent import AgentConfig, prompt_messages
    from fcdpo.multi_agent import role_prompt

    with_examples = load_profile("tiny-cpu", {"tasks.math.function_examples": True}).task("math")
    without = load_profile("tiny-cpu", {"tasks.math.function_examples": False}).task("math")
    assert "Example: add(a=3, b=4)" in with_examples.system_prompt()
    assert "Example:" not in without.system_prompt()
    assert without.system_prompt().replace("add(a=", "") != with_examples.system_prompt().replace("add(a=", "")
    for text in (prompt_messages(without.generate(1)[0], without, AgentConfig())[0]["content"],
                 role_prompt(without, "caller")):
        assert "Example:" not in text and "divide(a: float, b: float) -> float" in text
