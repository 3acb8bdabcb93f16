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
from fcdpo.rollouts import read_trajectories, rollout, summarize
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
