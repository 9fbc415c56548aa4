# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
Which reasoning-gym tasks suit a small model: its accuracy on each candidate before any training.

    python benchmarks/screen_tasks.py [--model smollm2] [--num_problems 64] [--out docs/benchmark_v2/screen]

A task suits RL on a small model when the model already solves some problems but not most: the benchmark keeps tasks
whose sampled accuracy (temperature 0.7, the training temperature) lies between 5% and 60%. Each candidate is scored
on `--num_problems` validation problems (data seed 0; never the test split) with 2 samples each and greedy decoding.
Prints a table and writes `screen.json` and `screen.md`.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from opo_trl.harness.data import load_reasoning_gym, make_arithmetic_dataset  # noqa: E402
from opo_trl.harness.evaluation import evaluate_heldout  # noqa: E402
from opo_trl.harness.rewards import accuracy_reward, reasoning_gym_reward  # noqa: E402
from opo_trl.harness.testing import model_path  # noqa: E402


# (name, task, options): small instances of the tasks RL-for-reasoning work uses, plus the addition preset.
CANDIDATES = [
    ("addition (preset)", "arithmetic", {}),
    ("chain_sum 2 terms, 1-2 digits", "chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}),
    ("chain_sum 3-4 terms, 1 digit", "chain_sum", {"min_terms": 3, "max_terms": 4, "min_digits": 1, "max_digits": 1}),
    ("basic_arithmetic 2-3 terms, 1 digit", "basic_arithmetic",
     {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1, "operators": ["+", "-", "*"],
      "allow_parentheses": False, "allow_negation": False}),
    ("leg_counting 1-2 animals, 1-3 each", "leg_counting",
     {"min_animals": 1, "max_animals": 2, "min_instances": 1, "max_instances": 3}),
    ("leg_counting 2-3 animals, 1-5 each", "leg_counting",
     {"min_animals": 2, "max_animals": 3, "min_instances": 1, "max_instances": 5}),
    ("gsm_symbolic", "gsm_symbolic", {}),
    ("countdown 3 numbers", "countdown", {"min_numbers": 3, "max_numbers": 3}),
]  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--num_problems", type=int, default=64)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--only", nargs="*", help="Screen only the candidates whose task is listed.")
    parser.add_argument("--out", default="runs/screen")
    args = parser.parse_args(argv)

    path = model_path(args.model, args.out)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, task, options in CANDIDATES:
        if args.only and task not in args.only:
            continue
        if task == "arithmetic":
            data, reward = make_arithmetic_dataset(0, args.num_problems, seed=0)["test"], accuracy_reward
        else:
            data = load_reasoning_gym(task, {"validation": args.num_problems}, seed=0, options=options)["validation"]
            reward = reasoning_gym_reward
        start = time.perf_counter()
        result = evaluate_heldout(
            model, tokenizer, data, reward, num_samples=2, greedy=True, max_new_tokens=args.max_new_tokens,
            temperature=args.temperature, batch_size=32, seed=0, desc=name,
        )  # fmt: skip
        row = {"name": name, "task": task, "options": options, "problems": len(data),
               "sampled_accuracy": result.pass_at_1, "greedy_accuracy": result.greedy_accuracy,
               "seconds": time.perf_counter() - start, "suits": 0.05 <= result.pass_at_1 <= 0.60}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / "screen.json").write_text(json.dumps(rows, indent=2) + "\n")

    lines = [
        "| candidate | options | sampled acc. (2 samples) | greedy acc. | in [5%, 60%] | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | `{json.dumps(r['options'])}` | {r['sampled_accuracy']:.3f} | "
            f"{r['greedy_accuracy']:.3f} | {'yes' if r['suits'] else 'no'} | {r['seconds']:.0f} |"
        )
    table = "\n".join(lines) + "\n"
    (out / "screen.md").write_text(table)
    print(table)


if __name__ == "__main__":
    sys.exit(main())
