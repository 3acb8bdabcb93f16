"""Rollouts are append-only and resumable: an interruption loses nothing already written."""

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fcdpo.agent import Agent, AgentConfig
from fcdpo.rollouts import read_trajectories, repair_tail, rollout, summarize
from fcdpo.tasks import get_task
from tests.scripted import ScriptedBackend

ROOT = Path(__file__).resolve().parents[1]


def scripts_for(problems):
    """Solve every problem with its gold chain, then answer."""
    from fcdpo.functions import Call

    return {p.question: [Call.from_dict(s).to_python() for s in p.gold_chain] + [f"Final answer: {p.answer}"]
            for p in problems}


def test_rollout_writes_k_graded_chains_per_problem(tmp_path):
    task = get_task("math")
    problems = task.generate(5, seed=1)
    agent = Agent(task, ScriptedBackend(scripts_for(problems)), AgentConfig())
    out = rollout(problems, agent, tmp_path / "t.jsonl", k=3, progress=False)
    assert len(out) == 15 and all(t.correct for t in out)
    assert sorted((t.problem_id, t.sample) for t in read_trajectories(tmp_path / "t.jsonl")) == sorted(
        (p.id, s) for p in problems for s in range(3))
    [row] = summarize(out)
    assert row["accuracy"] == 1.0 and row["valid_call_rate"] == 1.0 and row["chains"] == 15


KILLABLE = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from fcdpo.agent import Agent, AgentConfig
    from fcdpo.rollouts import rollout
    from fcdpo.tasks import get_task
    from tests.scripted import ScriptedBackend
    from tests.test_rollouts import scripts_for

    class Slow(ScriptedBackend):
        def complete(self, chats, **kw):
            time.sleep(0.05)
            return super().complete(chats, **kw)

    task = get_task("math")
    problems = task.generate(12, seed=2)
    agent = Agent(task, Slow(scripts_for(problems)), AgentConfig())
    rollout(problems, agent, sys.argv[1], k=2, batch_size=4, progress=False)
""")


@pytest.mark.slow
def test_a_killed_rollout_resumes_keeping_every_finished_chain_once(tmp_path):
    path = tmp_path / "t.jsonl"
    script = tmp_path / "run.py"
    script.write_text(KILLABLE.format(root=str(ROOT)))
    process = subprocess.Popen([sys.executable, str(script), str(path)], cwd=ROOT)
    deadline = time.time() + 60
    while time.time() < deadline and (not path.exists() or len(path.read_text().splitlines()) < 5):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = read_trajectories(path)
    assert 5 <= len(before) < 24, "the rollout should have been killed midway"

    task = get_task("math")
    problems = task.generate(12, seed=2)
    backend = ScriptedBackend(scripts_for(problems))
    after = rollout(problems, Agent(task, backend, AgentConfig()), path, k=2, batch_size=4, progress=False)

    on_disk = read_trajectories(path)
    keys = [(t.problem_id, t.sample) for t in on_disk]
    assert len(keys) == len(set(keys)) == 24
    assert {(t.problem_id, t.sample) for t in before} <= set(keys)
    finished_before = {(t.problem_id, t.sample): t.seconds for t in before}
    assert all(finished_before[(t.problem_id, t.sample)] == t.seconds for t in on_disk
               if (t.problem_id, t.sample) in finished_before), "finished chains must not be redone"
    turns = {p.id: len(p.gold_chain) + 1 for p in problems}
    redone = [(pid, s) for pid, s in keys if (pid, s) not in finished_before]
    assert sum(backend.calls) == sum(turns[pid] for pid, _ in redone), "only unfinished chains run again"
    assert len(after) == 24


def test_a_torn_last_line_is_dropped_and_redone(tmp_path):
    task = get_task("math")
    problems = task.generate(2, seed=3)
    path = tmp_path / "t.jsonl"
    agent = Agent(task, ScriptedBackend(scripts_for(problems)), AgentConfig())
    rollout(problems[:1], agent, path, k=1, progress=False)
    with path.open("a") as f:
        f.write('{"id": "torn')
    out = rollout(problems, agent, path, k=1, progress=False)
    assert len(out) == 2 and len(read_trajectories(path)) == 2
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_a_malformed_line_in_the_middle_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("not json\n{}\n")
    with pytest.raises(ValueError, match="t.jsonl:1"):
        read_trajectories(path)


# --------------------------------------------------------------------------- torn tails, kills, producers


def finished_chain_file(tmp_path, n=2, **options):
    task = get_task("math")
    problems = task.generate(n, seed=3)
    agent = Agent(task, ScriptedBackend(scripts_for(problems)), AgentConfig())
    path = tmp_path / "t.jsonl"
    rollout(problems, agent, path, k=1, progress=False, **options)
    return task, problems, agent, path


def test_a_torn_line_ending_inside_a_multibyte_character_is_dropped_and_redone(tmp_path):
    task, problems, agent, path = finished_chain_file(tmp_path, n=1)
    with path.open("ab") as f:  # a write torn after two of the three bytes of "€"
        f.write('{"id": "p/0", "messages": [{"content": "3 €'.encode()[:-1])
    assert len(read_trajectories(path)) == 1
    more = task.generate(2, seed=3)
    out = rollout(more, Agent(task, ScriptedBackend(scripts_for(more)), AgentConfig()), path, k=1, progress=False)
    assert len(out) == 2 and len(read_trajectories(path)) == 2
    assert all(json.loads(line) for line in path.read_bytes().decode("utf-8").splitlines())


def test_tail_repair_truncates_in_place_and_keeps_a_whole_record_missing_its_newline(tmp_path):
    task, problems, agent, path = finished_chain_file(tmp_path)
    good = path.read_bytes()
    inode = path.stat().st_ino
    with path.open("ab") as f:
        f.write(b'{"id": "torn", "mess')
    repair_tail(path)
    assert path.read_bytes() == good and path.stat().st_ino == inode  # cut back, not rewritten
    path.write_bytes(good[:-1])  # the last record lost only its newline: it is a finished chain
    repair_tail(path)
    assert path.read_bytes() == good
    calls_before = len(agent.backend.calls)
    rollout(problems, agent, path, k=1, progress=False)
    assert len(agent.backend.calls) == calls_before and path.read_bytes() == good  # nothing redone


def test_resuming_with_another_model_or_other_settings_is_refused(tmp_path):
    task, problems, agent, path = finished_chain_file(tmp_path, n=1, temperature=0.7, seed=5)
    [chain] = read_trajectories(path)
    assert chain.producer["model"] == "scripted" and chain.producer["temperature"] == 0.7
    assert chain.producer["settings"]["max_new_tokens"] == AgentConfig().max_new_tokens
    more = task.generate(2, seed=3)
    backend = ScriptedBackend(scripts_for(more))
    with pytest.raises(ValueError, match=r"t.jsonl holds chains produced differently from this run "
                                         r"\(temperature: 0.7 in the file, 1.0 now\)"):
        rollout(more, Agent(task, backend, AgentConfig()), path, k=1, seed=5, progress=False)
    with pytest.raises(ValueError, match=r"seed: 5 in the file, 0 now"):
        rollout(more, Agent(task, backend, AgentConfig()), path, k=1, temperature=0.7, progress=False)
    with pytest.raises(ValueError, match=r"settings: "):
        rollout(more, Agent(task, backend, AgentConfig(max_new_tokens=50)), path, k=1, temperature=0.7, seed=5,
                progress=False)
    backend.name = "another-teacher"
    with pytest.raises(ValueError, match=r"model: 'scripted' in the file, 'another-teacher' now"):
        rollout(more, Agent(task, backend, AgentConfig()), path, k=1, temperature=0.7, seed=5, progress=False)
    assert backend.calls == [] and read_trajectories(path) == [chain]  # nothing ran, nothing changed
    # Chains that are all there are checked too: another model's chains never come back as its own.
    with pytest.raises(ValueError, match=r"model: 'scripted' in the file, 'another-teacher' now"):
        rollout(problems, Agent(task, backend, AgentConfig()), path, k=1, temperature=0.7, seed=5, progress=False)
    assert backend.calls == []
    backend.name = "scripted"
    assert len(rollout(more, Agent(task, backend, AgentConfig()), path, k=1, temperature=0.7, seed=5,
                       progress=False)) == 2


@pytest.mark.parametrize("change", ["model", "temperature", "seed", "settings"])
def test_a_resume_with_nothing_left_to_do_is_refused_for_another_producer(tmp_path, change):
    task, problems, agent, path = finished_chain_file(tmp_path, n=2, temperature=0.7, seed=5)
    backend = ScriptedBackend(scripts_for(problems))
    backend.name = "another-teacher" if change == "model" else "scripted"
    config = AgentConfig(max_new_tokens=50) if change == "settings" else AgentConfig()
    decoding = {"temperature": 1.0 if change == "temperature" else 0.7, "seed": 6 if change == "seed" else 5}
    with pytest.raises(ValueError, match=rf"holds chains produced differently from this run \({change}: "):
        rollout(problems, Agent(task, backend, config), path, k=1, progress=False, **decoding)
    assert backend.calls == []
    # The same producer reads them back without running anything.
    backend.name = "scripted"
    again = rollout(problems, Agent(task, backend, AgentConfig()), path, k=1, temperature=0.7, seed=5, progress=False)
    assert sorted(again, key=lambda t: t.id) == sorted(read_trajectories(path), key=lambda t: t.id)
    assert backend.calls == []


def test_a_file_from_before_producers_were_recorded_is_checked_by_model_name(tmp_path):
    task, problems, agent, path = finished_chain_file(tmp_path, n=1)
    row = json.loads(path.read_text())
    del row["producer"]
    path.write_text(json.dumps(row) + "\n")
    more = task.generate(2, seed=3)
    backend = ScriptedBackend(scripts_for(more))
    backend.name = "another-teacher"
    with pytest.raises(ValueError, match=r"model: 'scripted' in the file, 'another-teacher' now"):
        rollout(more, Agent(task, backend, AgentConfig()), path, k=1, progress=False)
    backend.name = "scripted"
    assert len(rollout(more, Agent(task, backend, AgentConfig()), path, k=1, progress=False)) == 2


KILLED_AT_RANDOM = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from fcdpo.agent import Agent, AgentConfig
    from fcdpo.rollouts import rollout
    from fcdpo.tasks import get_task
    from tests.scripted import ScriptedBackend
    from tests.test_rollouts import scripts_for

    class Slow(ScriptedBackend):
        def complete(self, chats, **kw):
            time.sleep(0.005)
            return super().complete(chats, **kw)

    task = get_task("math")
    problems = task.generate(12, seed=2)
    agent = Agent(task, Slow(scripts_for(problems)), AgentConfig())
    print("ready", flush=True)
    rollout(problems, agent, sys.argv[1], k=2, batch_size=4, progress=False)
    print("done", flush=True)
""")


def complete_lines(path):
    data = path.read_bytes()
    return [_ for _ in data[: data.rfind(b"\n") + 1].split(b"\n") if _]


@pytest.mark.slow
def test_kills_at_random_moments_lose_duplicate_and_corrupt_no_finished_chain(tmp_path):
    import random

    from fcdpo.rollouts import _parse_line

    rng = random.Random(18)
    path = tmp_path / "t.jsonl"
    script = tmp_path / "run.py"
    script.write_text(KILLED_AT_RANDOM.format(root=str(ROOT)))
    finished: dict = {}  # (problem, sample) -> the record's bytes, once a complete line holds it
    torn_tails = [b'{"id": "p', b'{"id": "x", "messages": [{"content": "\xe2\x82', b"\xf0\x9f", b""]
    for round_ in range(6):
        if path.exists():
            with path.open("ab") as f:  # a write torn by the last kill, sometimes inside a character
                f.write(torn_tails[round_ % len(torn_tails)])
        process = subprocess.Popen([sys.executable, str(script), str(path)], cwd=ROOT, stdout=subprocess.PIPE)
        assert process.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0, 0.15))  # before, during or after the tail repair and the writes
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close()
        lines = complete_lines(path)
        records = [_parse_line(line) for line in lines]  # no complete line is corrupt
        keys = [(t.problem_id, t.sample) for t in records]
        assert len(keys) == len(set(keys)), "a finished chain was written twice"
        by_key = dict(zip(keys, lines))
        for key, line in finished.items():
            assert by_key.get(key) == line, f"finished chain {key} was lost or changed"
        finished.update(by_key)
    process = subprocess.run([sys.executable, str(script), str(path)], cwd=ROOT, capture_output=True, timeout=120)
    assert process.stdout.endswith(b"done\n"), process.stderr.decode()[-2000:]
    records = read_trajectories(path)
    keys = [(t.problem_id, t.sample) for t in records]
    assert len(keys) == len(set(keys)) == 24 and path.read_bytes().endswith(b"\n")
    lines = dict(zip(keys, complete_lines(path)))
    assert all(lines[key] == line for key, line in finished.items())
