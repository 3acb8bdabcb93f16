"""Rollouts: k sampled chains per problem, graded, written to append-only JSONL as they finish.

Layer: stages; imports the agent, the tasks, progress and safe_text.

A crash or Ctrl-C loses nothing already written: each finished chain is one flushed line, and a
rerun reads the file, skips the (problem, sample) pairs it holds and completes the rest. A line torn
by a crash mid-write is the only line ever dropped, and only if it is the last one; it is cut off in
place (the file is truncated after its last complete line, never rewritten), so a crash during the
repair loses nothing either.

Every chain records what produced it (`Trajectory.producer`: the model, the agent and its settings,
the temperature and the seed). A rerun with a different producer is refused rather than mixing its
chains with the old ones, or passing the old ones off as its own when none is left to add.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from fcdpo.agent import Agent, Trajectory
from fcdpo.progress import bar as progress_bar
from fcdpo.safe_text import scrub

if TYPE_CHECKING:
    from fcdpo.tasks import Problem


_BLANK = b"\n\r\t "


def _parse_line(raw: bytes) -> Trajectory:
    """One JSONL line as a trajectory; ValueError (or TypeError) if it is not one."""
    row = json.loads(raw.decode("utf-8"))
    if not isinstance(row, dict):
        raise ValueError(f"a JSON {type(row).__name__}, not an object")
    return Trajectory.from_dict(row)


def read_trajectories(path: str | Path) -> list[Trajectory]:
    """All trajectories in a JSONL file (an absent file holds none).

    A malformed line raises ValueError naming the file and line, except a torn last line (a crash
    mid-write, possibly inside a multi-byte character), which is dropped with a warning so the
    rollout can resume.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    trajectories = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            trajectories.append(_parse_line(line))
        except (ValueError, TypeError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            if index == last:
                print(f"warning: {path}:{index + 1}: dropping a torn last line ({exc})")
                continue
            raise ValueError(f"{path}:{index + 1}: not a trajectory record ({exc})") from exc
    return trajectories


def repair_tail(path: str | Path) -> None:
    """Make the file end with a complete line, in place, so appends start on a fresh line.

    A last line that is a whole record but lacks its newline gets it; a torn last line is cut off
    by truncating the file where it starts. Both are one system call each: a crash at any moment
    leaves either the file as it was or the repaired one, never less.
    """
    path = Path(path)
    if not path.exists():
        return
    with path.open("rb") as file:
        size = file.seek(0, os.SEEK_END)
        # Only the last line matters; read back from the end until a newline before it is found.
        tail, position = b"", size
        while position > 0:
            step = min(1 << 16, position)
            position -= step
            file.seek(position)
            tail = file.read(step) + tail
            if b"\n" in tail.rstrip(_BLANK):
                break
    body = tail.rstrip(_BLANK)
    if not body:
        return  # empty, or whitespace after the last line: appends still start on a fresh line
    line_start = position + body.rfind(b"\n") + 1
    last_line = body[body.rfind(b"\n") + 1:]
    try:
        _parse_line(last_line)
    except (ValueError, TypeError):
        os.truncate(path, line_start)  # the torn line goes, everything before it stays in place
        return
    if not tail.endswith(b"\n"):
        with path.open("ab") as file:  # a whole record that lost only its newline is kept
            file.write(b"\n")
            file.flush()
            os.fsync(file.fileno())


def producer_of(agent: Any, temperature: float, seed: int) -> dict[str, Any]:
    """What produces an agent's chains: model name, agent name and settings, temperature, seed."""
    backend = getattr(agent, "backend", None) or getattr(agent, "backends", None)
    config = getattr(agent, "config", None)
    settings = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None
    return json.loads(json.dumps({
        "model": getattr(backend, "name", None),
        "agent": getattr(agent, "name", None),
        "settings": settings,
        "temperature": temperature,
        "seed": seed,
    }, default=str))


def _check_producer(path: Path, trajectories: list[Trajectory], producer: dict[str, Any]) -> None:
    """ValueError unless every chain in the file was produced as the new ones would be.

    What the running agent cannot say (`None`: a stand-in with no model, as evaluation uses to read
    back chains all on disk without loading their model) is not compared; everything it says is."""
    for trajectory in trajectories:
        recorded = trajectory.producer or {"model": trajectory.model}  # files from before producers
        differing = sorted(key for key in recorded
                           if producer.get(key) is not None and recorded.get(key) != producer.get(key))
        if differing:
            details = "; ".join(f"{key}: {recorded.get(key)!r} in the file, {producer.get(key)!r} now"
                                for key in differing)
            raise ValueError(
                f"{path} holds chains produced differently from this run ({details}). Resuming would mix "
                f"them; write to another file, or delete this one to start over.")


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
    A file holding chains of another model or of other settings (see `producer_of`) is a ValueError,
    whether chains would be added to it or it already holds every one asked for: the old chains are
    never returned as this agent's.
    """
    if k < 1 or batch_size < 1:
        raise ValueError(f"k and batch_size must be at least 1, got k={k}, batch_size={batch_size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_tail(path)
    wanted = {(p.id, s) for p in problems for s in range(k)}
    on_disk = read_trajectories(path)
    existing = {(t.problem_id, t.sample): t for t in on_disk if (t.problem_id, t.sample) in wanted}
    todo = [(p, s) for s in range(k) for p in problems if (p.id, s) not in existing]
    producer = producer_of(agent, temperature, seed)
    # Checked even when every chain is there: chains of another model must never come back as this one's.
    _check_producer(path, on_disk, producer)

    correct = sum(t.correct for t in existing.values())
    bar = progress_bar(total=len(wanted), initial=len(existing), desc=f"rollouts {agent.task.name}", disable=not progress)
    with path.open("ab") as out:

        def write(trajectory: Trajectory) -> None:
            nonlocal correct
            trajectory.producer = producer
            # Model text is untrusted: lone surrogates (unencodable) become U+FFFD before writing.
            line = json.dumps(scrub(trajectory.to_dict()), ensure_ascii=False) + "\n"
            out.write(line.encode("utf-8"))
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

