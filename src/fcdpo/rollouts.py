"""Rollouts: k sampled chains per problem, graded, written to append-only JSONL as they finish.

A crash or Ctrl-C loses nothing already written: each finished chain is one flushed line, and a
rerun reads the file, skips the (problem, sample) pairs it holds and completes the rest. A line torn
by a crash mid-write is the only line ever dropped, and only if it is the last one.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable


from fcdpo.progress import bar as progress_bar
from fcdpo.agent import Agent, Trajectory

if TYPE_CHECKING:
    from fcdpo.tasks import Problem


def read_trajectories(path: str | Path) -> list[Trajectory]:
    """All trajectories in a JSONL file (an absent file holds none).

    A malformed line raises ValueError naming the file and line, except a torn last line (a crash
    mid-write), which is dropped with a warning so the rollout can resume.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    trajectories = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            trajectories.append(Trajectory.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError) as exc:
            if number == len(lines):
                print(f"warning: {path}:{number}: dropping a torn last line ({exc})")
                continue
            raise ValueError(f"{path}:{number}: not a trajectory record ({exc})") from exc
    return trajectories


def _drop_torn_tail(path: Path) -> None:
    """Cut the file back to its last complete line so appends start on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def rollout(
    problems: list["Problem"],
    agent: Agent,
    path: str | Path,
    k: int = 4,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = True,
) -> list[Trajectory]:
    """Run `k` chains per problem with `agent`, appending each finished chain to `path`.

    Chains are batched `batch_size` at a time (the agent advances a batch in lockstep). Pairs already
    in the file are skipped, so calling this again after an interruption finishes the job without
    duplicates. Returns every trajectory for these problems, old and new, in (problem, sample) order.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wanted = {(p.id, s) for p in problems for s in range(k)}
    existing = {(t.problem_id, t.sample): t for t in read_trajectories(path) if (t.problem_id, t.sample) in wanted}
    todo = [(p, s) for s in range(k) for p in problems if (p.id, s) not in existing]
    _drop_torn_tail(path)

    correct = sum(t.correct for t in existing.values())
    bar = progress_bar(total=len(wanted), initial=len(existing), desc=f"rollouts {agent.task.name}", disable=not progress)
    with path.open("a") as out:

        def write(trajectory: Trajectory) -> None:
            nonlocal correct
            out.write(json.dumps(trajectory.to_dict(), ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
            existing[(trajectory.problem_id, trajectory.sample)] = trajectory
            correct += trajectory.correct
            bar.update(1)
            bar.set_postfix(accuracy=f"{correct / max(bar.n, 1):.1%}")

        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            agent.run(
                [p for p, _ in batch],
                samples=[s for _, s in batch],
                temperature=temperature,
                seed=seed + start,
                on_finish=write,
            )
    bar.close()
    return [existing[(p.id, s)] for p in problems for s in range(k)]


def summarize(trajectories: Iterable[Trajectory]) -> list[dict[str, Any]]:
    """One row per (model, task): chains, accuracy, valid-call rate, mean steps, tokens per second.

    Tokens per second is generated tokens over the summed chain time; chains of one batch overlap in
    time, so it measures the throughput a chain saw, not the whole batch's.
    """
    groups: dict[tuple[str, str], list[Trajectory]] = defaultdict(list)
    for t in trajectories:
        groups[(t.model, t.task)].append(t)
    rows = []
    for (model, task), group in sorted(groups.items()):
        calls = sum(t.calls for t in group)
        bad = sum(t.errors.get(k, 0) for t in group for k in ("unknown_function", "bad_arguments"))
        parse_errors = sum(t.errors.get("parse_error", 0) for t in group)
        attempts = calls + parse_errors
        seconds = sum(t.seconds for t in group)
        rows.append({
            "model": model,
            "task": task,
            "chains": len(group),
            "problems": len({t.problem_id for t in group}),
            "accuracy": sum(t.correct for t in group) / len(group),
            "valid_call_rate": (attempts - bad - parse_errors) / attempts if attempts else float("nan"),
            "mean_steps": sum(t.steps for t in group) / len(group),
            "chain_tokens_per_s": sum(t.tokens["completion"] for t in group) / seconds if seconds else float("nan"),
        })
    return rows

