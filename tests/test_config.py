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

    full = {"tasks.math.brief_prompt": False}  # the brief prompt has no examples at all
    with_examples = load_profile("tiny-cpu", {**full, "tasks.math.function_examples": True}).task("math")
    without = load_profile("tiny-cpu", {**full, "tasks.math.function_examples": False}).task("math")
    assert "Example: add(a=3, b=4)" in with_examples.system_prompt()
    assert "Example:" not in without.system_prompt()
    assert without.system_prompt().replace("add(a=", "") != with_examples.system_prompt().replace("add(a=", "")
    for text in (prompt_messages(without.generate(1)[0], without, AgentConfig())[0]["content"],
                 role_prompt(without, "caller")):
        assert "Example:" not in text and "divide(a: float, b: float) -> float" in text


# --------------------------------------------------------------------------- mistakes named by file and key


def profile_file(tmp_path, text, name="bad.yaml", data=None):
    path = tmp_path / name
    path.write_bytes(data if data is not None else text.encode("utf-8"))
    return path


@pytest.mark.parametrize("text, fragments", [
    ("name: bad\ntasks:\n  math:\n    difficulty:\n      max_stpes: 3\n",
     ["tasks.math.difficulty", "max_stpes", "max_steps"]),
    ("name: bad\nagent:\n  syntax: yaml\n", ["agent", "syntax must be one of", "'yaml'"]),
    ("name: bad\nteacher:\n  kind: openai\n  model: m\n  base_url: http://x/v1\n  time_out: 5\n",
     ["teacher", "time_out", "'timeout'"]),
    ("name: bad\nstudent:\n  kind: hf\n", ["student", "needs ['model']"]),
    ("name: bad\nrun_dir: runs/{name}-{seed}\n", ["run_dir", "unknown placeholder(s) ['seed']"]),
    ("name: bad\nrun_dir: runs/{name\n", ["run_dir", "not a valid pattern"]),
    ("name: bad\nrollouts:\n  k: -3\n", ["rollouts:k", "must be at least 1, got -3"]),
    ("name: bad\nevaluation:\n  samples: 0\n", ["evaluation:samples", "at least 1"]),
    ("name: bad\ntasks:\n  math:\n    train: -1\n", ["tasks.math:train", "at least 0"]),
    ("name: bad\nagent:\n  max_errors: 0\n", ["agent", "max_errors must be a whole number of at least 1"]),
    ("name: bad\nmulti_agent:\n  agent:\n    token_budget: 0\n",
     ["multi_agent:agent", "token_budget must be a whole number of at least 1, got 0"]),
    ("name: bad\nmulti_agent:\n  agent:\n    max_errors: -2\n",
     ["multi_agent:agent", "max_errors must be a whole number of at least 1, got -2"]),
    ("name: bad\nmulti_agent:\n  glpft:\n    role_steps: 0\n", ["multi_agent:glpft", "role_steps must be at least 1"]),
    ("name: bad\nlab:\n  vocab_size: 0\n", ["lab:vocab_size", "must be at least 1, got 0"]),
    ("name: bad\nlab:\n  teacher:\n    num_layers: -1\n", ["lab:teacher:num_layers", "must be at least 1, got -1"]),
    ("name: bad\nlab:\n  student:\n    sft: {steps: 0}\n", ["lab:student:sft:steps", "must be at least 1, got 0"]),
    ("name: bad\nlab:\n  teacher:\n    hidden_sise: 64\n", ["lab:teacher", "hidden_sise", "valid keys"]),
    ("name: bad\nseed: 1\nseed: 2\n", ["key 'seed' is given twice", "line 2"]),
    ("name: bad\nrollouts:\n  k: 2\n  temperature: 1.0\n  k: 3\n", ["key 'k' is given twice"]),
    ("", ["the profile is empty"]),
    ("# only a comment\n", ["the profile is empty"]),
    ("{}\n", ["the profile is empty"]),
    ("name: ../../etc\n", ["name", "'../../etc' must be letters"]),
    ("name: a/b\n", ["name", "'a/b' must be letters"]),
])
def test_a_mistake_in_a_profile_is_an_error_naming_the_file_and_key(tmp_path, text, fragments):
    with pytest.raises(ConfigError) as info:
        load_profile(profile_file(tmp_path, text))
    message = str(info.value)
    assert "bad.yaml" in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_a_profile_that_is_not_utf8_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"bad.yaml: not UTF-8 text \(byte 9"):
        load_profile(profile_file(tmp_path, None, data="name: caf\u00e9\n".encode("latin-1")))


@pytest.mark.parametrize("name", ["../tiny-cpu", "../../configs/tiny-cpu", "a/../tiny-cpu", "..", "/etc/passwd"])
def test_a_profile_name_cannot_reach_outside_configs(name):
    with pytest.raises(ConfigError, match="must be letters, digits"):
        load_profile(name)


def test_valid_difficulty_and_backend_keys_still_load(tmp_path):
    path = profile_file(tmp_path, "name: good\nrun_dir: runs/x-{name}\ntasks:\n  math:\n    difficulty:\n"
                                  "      max_steps: 3\n  fol:\n    difficulty:\n      max_hops: 2\n"
                                  "teacher:\n  kind: openai\n  model: m\n  base_url: http://127.0.0.1:1/v1\n"
                                  "  timeout: 5\n  max_response_bytes: 1000\n", name="good.yaml")
    profile = load_profile(path)
    assert profile.tasks["math"].difficulty == {"max_steps": 3} and profile.run_path.name == "x-good"


def test_command_line_overrides_are_read_as_yaml_and_a_missing_equals_sign_is_an_error():
    from fcdpo.config import parse_overrides

    assert parse_overrides(["training.max_steps=10", "lab.shipped=null", "tasks.fol.functions=[query]"]) == {
        "training.max_steps": 10, "lab.shipped": None, "tasks.fol.functions": ["query"]}
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_overrides(["training.max_steps"])


def test_a_profile_extends_another_section_by_section(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: tiny-cpu\nname: child\ntraining:\n  methods: [dpo, sft, grpo]\n  grpo: {problems: 5}\n"
                     "tasks:\n  math: {train: 7}\n")
    base, profile = load_profile("tiny-cpu"), load_profile(child)
    assert profile.name == "child" and profile.run_path.name == "child"
    assert profile.training.methods == ["dpo", "sft", "grpo"] and profile.training.grpo.problems == 5
    assert profile.training.learning_rate == base.training.learning_rate  # the rest of a section is kept
    assert profile.tasks["math"].train == 7 and profile.tasks["math"].eval == base.tasks["math"].eval
    assert profile.tasks["fol"] == base.tasks["fol"] and profile.lab == base.lab
    arms = load_profile("tiny-cpu-arms")
    assert set(arms.training.methods) == {"dpo", "sft", "rpo", "step_dpo", "onpolicy_dpo", "grpo"}
    assert arms.evaluation.split == "eval" and base.evaluation.split == "test"  # only tiny-cpu scores the sealed splits
    assert arms.tasks == base.tasks and arms.lab == base.lab  # the same lab, problems and splits


@pytest.mark.parametrize("text, fragment", [
    ("extends: tiny-cpu\ntraining: {methods: [dpo]}\n", "needs its own `name`"),
    ("extends: nowhere\nname: x\n", "no profile 'nowhere'"),
    ("extends: [tiny-cpu]\nname: x\n", "extends: expected a profile name"),
    ("extends: tiny-cpu\nname: x\ntraining: {lerning_rate: 1}\n", "lerning_rate"),
])
def test_a_bad_extends_is_an_error_naming_the_file(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="bad.yaml") as error:
        load_profile(path)
    assert fragment in str(error.value)


def test_profiles_that_extend_each_other_in_a_circle_are_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text(f"extends: {tmp_path / 'b.yaml'}\nname: a\n")
    (tmp_path / "b.yaml").write_text(f"extends: {tmp_path / 'a.yaml'}\nname: b\n")
    with pytest.raises(ConfigError, match="in a circle"):
        load_profile(tmp_path / "a.yaml")


def test_one_override_value_given_for_two_sections_stays_two_sections():
    tiny = {"hidden_size": 32, "num_layers": 1, "num_heads": 2}
    profile = load_profile("tiny-cpu", {"lab.teacher": tiny, "lab.student": tiny, "lab.student.seed": 1})
    assert profile.lab["student"]["seed"] == 1 and "seed" not in profile.lab["teacher"]
    assert tiny == {"hidden_size": 32, "num_layers": 1, "num_heads": 2}
