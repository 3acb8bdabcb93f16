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
