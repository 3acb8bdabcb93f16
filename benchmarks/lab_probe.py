"""Probe a tiny-lab recipe on one task before paying for a whole `make lab`: train a teacher-sized model
from scratch on gold chains and score it on 100 dev problems (greedy, through the agent) as it trains.

    python benchmarks/lab_probe.py text 1200 --every 300        # logic, text-order chain
    python benchmarks/lab_probe.py reasoning 1200 --every 300   # logic, reasoning-order chain
    python benchmarks/lab_probe.py text 600 --every 150 --echo-next           # statements handed out
    python benchmarks/lab_probe.py text 600 --every 150 --echo-next --pieces  # ... and names as word pieces

The problems are the `tiny-cpu` logic settings (1–2 hops, one distractor) with the brief prompt and
single-token names (`--pieces`: word pieces); training problems come from seed 1000, dev problems from
seed 777, and no dev question is trained on. Each line gives the dev accuracy and, per position in the
gold chain, how many chains made exactly the gold call there: whether the model copies at all shows
there long before it shows in the accuracy (a model that copies nothing still guesses a third right).
Not part of the pipeline: a way to compare recipes cheaply on a dev split.
"""

from __future__ import annotations

import argparse
import json
import time

from fcdpo.agent import Agent, AgentConfig, gold_messages
from fcdpo.backends import load_backend
from fcdpo.functions import Call
from fcdpo.tasks import get_task
from fcdpo.tinylab import SFTSettings, _interleave, build_model, build_tokenizer, train_sft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chain", choices=["text", "reasoning"], help="the logic task's gold chain")
    parser.add_argument("steps", type=int)
    parser.add_argument("--every", type=int, default=300, help="score on the dev problems every this many steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pieces", action="store_true", help="names and concepts as learned word pieces, not whole tokens")
    parser.add_argument("--echo-next", action="store_true", help="each record's result hands out the next statement")
    parser.add_argument("--out", default="runs/lab-probe")
    args = parser.parse_args()
    task = get_task("fol", ["add_fact", "add_rule", "query"], function_examples=False, brief_prompt=True,
                    echo_next=args.echo_next)
    settings = dict(min_hops=1, max_hops=2, distractors=1, chain=args.chain)
    dev = task.generate(100, seed=777, **settings)
    held = {p.question for p in dev}
    train = [p for p in task.generate(6000, seed=1000, **settings) if p.question not in held][:5000]
    chats = [gold_messages(p, task, "python") for p in train]
    tokenizer = build_tokenizer([m.get("content") or "" for c in chats for m in c], 1024, words=() if args.pieces else task.vocabulary())
    model = build_model(tokenizer, hidden_size=256, num_layers=4, num_heads=4)
    rows = _interleave({"fol": chats}, 5000, seed=0, rows=args.steps * 16)  # shuffled, as the lab does
    started, done = time.perf_counter(), 0
    while done < args.steps:
        n = min(args.every, args.steps - done)
        last = done + n >= args.steps
        recipe = SFTSettings(steps=n, batch_size=16, learning_rate=2e-3, warmup_steps=50 if done == 0 else 0,
                             min_lr_ratio=0.1 if last else 1.0, threads=args.threads)
        stats = train_sft(model, tokenizer, rows[done * 16:(done + n) * 16], recipe)
        done += n
        model.save_pretrained(args.out)
        tokenizer.save_pretrained(args.out)
        backend = load_backend({"kind": "hf", "model": args.out, "batch_size": 64})
        chains = Agent(task, backend, AgentConfig(max_steps=8, max_errors=3, max_new_tokens=32, token_budget=256)).run(dev)
        exact: dict[int, int] = {}
        for chain, problem in zip(chains, dev):
            made = [m["content"] for m in chain.messages[2:] if m["role"] == "assistant"]
            for i, step in enumerate(problem.gold_chain):
                exact[i] = exact.get(i, 0) + (i < len(made) and made[i] == Call.from_dict(step).to_python())
        print(json.dumps({"chain": args.chain, "echo_next": args.echo_next, "pieces": args.pieces, "step": done,
                          "loss": stats["loss"], "dev_accuracy": sum(c.correct for c in chains) / len(chains),
                          "exact_call_by_position": [exact[i] for i in sorted(exact)],
                          "seconds": round(time.perf_counter() - started)}), flush=True)


if __name__ == "__main__":
    main()
