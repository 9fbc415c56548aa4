# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
Benchmark v3: rollout reuse. Every run generates the same number of rollouts; what varies is K, the optimizer steps
each rollout serves. OPO's quadratic trust region should let it take more steps per generated token than ratio
clipping allows GRPO and GSPO. Phases, in order:

    python benchmarks/benchmark_v3.py budget            # truncated fraction of the untrained model at 32/48/64 tokens
    python benchmarks/benchmark_v3.py pilot             # model.generate against vLLM: rollout accuracy and cost
    python benchmarks/benchmark_v3.py plan              # hours of the whole grid, from the pilot
    python benchmarks/benchmark_v3.py runs [--jobs 2]   # every algorithm x K x seed, resumable, raw files committed

It reuses benchmark v2's machinery (a run is `python -m opo_trl.harness.run` in its own process; raw files are copied to
`docs/benchmark_v3/runs/` and committed as each run finishes; a finished run is never run again).

How a rollout serves K steps: `num_iterations = K` with `steps_per_generation = 1` and one rollout of
`PROMPTS_PER_ROLLOUT x G` completions per micro-batch, so each of the K optimizer steps sees the whole rollout (TRL's
`_prepare_inputs` regenerates every `steps_per_generation * num_iterations` steps and returns the buffered rollout in
between), and `max_steps = ROLLOUTS * K` keeps the number of generated completions fixed.
"""

import argparse
import json
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_v2 as v2  # noqa: E402


REPO = v2.REPO
DOCS = REPO / "docs" / "benchmark_v3"
TASK = "chain_sum"
LEARNING_RATE = 1e-5  # v2's tuned rate, the same for every algorithm: robustness to reuse at a fixed rate
K_VALUES = (1, 2, 4, 8)
ROLLOUTS = 32
PROMPTS_PER_ROLLOUT = 2
G = 6
SEEDS = (0, 1, 2)
BUDGETS = (32, 48, 64)
# name -> (algorithm, OPO overrides); the second OPO is the escort family's peak-seeking temperature.
ALGORITHMS = {
    "opo": ("opo", {}),
    "opo-temp0.3": ("opo", {"escort_temperature": 0.3}),
    "grpo": ("grpo", {}),
    "gspo": ("gspo", {}),
}
# Extra cells at the largest K: how much the stiffness matters when a rollout is reused most.
EXTRA_AT_LARGEST_K = {"opo-mu4": ("opo", {"mu": 4.0})}


def reuse_overrides(k: int, max_completion_length: int) -> dict:
    """The settings that make each rollout serve `k` optimizer steps at a fixed number of rollouts."""
    return {
        "num_iterations": k,
        "steps_per_generation": 1,
        "gradient_accumulation_steps": 1,
        "per_device_train_batch_size": PROMPTS_PER_ROLLOUT * G,
        "num_generations": G,
        "max_steps": ROLLOUTS * k,
        "max_completion_length": max_completion_length,
        "heldout_eval_steps": 0,  # no interim evaluations: at K = 8 there would be one every 16 of 256 steps
    }


def runs(max_completion_length: int) -> list[v2.Run]:
    cells = [(name, spec, k) for k in K_VALUES for name, spec in ALGORITHMS.items()]
    cells += [(name, spec, max(K_VALUES)) for name, spec in EXTRA_AT_LARGEST_K.items()]
    return [
        v2.Run(
            "reuse",
            TASK,
            f"{name}-K{k}",
            algorithm,
            seed,
            LEARNING_RATE,
            {**overrides, **reuse_overrides(k, max_completion_length)},
        )
        for seed in SEEDS
        for name, (algorithm, overrides), k in cells
    ]


# The pilot: OPO at K = 2 for PILOT_ROLLOUTS rollouts, generating with `model.generate` and with vLLM (CPU build), two
# at a time as the grid runs. Its rollouts come from a barely trained policy (lr 1e-5, a few steps): their reward is
# the untrained accuracy that both generators must agree on; steps that generate minus steps that do not give the
# cost of a rollout.
PILOT_ROLLOUTS = 12
PILOT_K = 2
PILOT_HELDOUT = 32
GENERATORS = {"generate": {}, "vllm": {"use_vllm": "true"}}


def pilot_runs(max_completion_length: int) -> list[v2.Run]:
    return [
        v2.Run(
            "pilot",
            TASK,
            f"opo-K{PILOT_K}-{generator}",
            "opo",
            0,
            LEARNING_RATE,
            {
                **reuse_overrides(PILOT_K, max_completion_length),
                "max_steps": PILOT_ROLLOUTS * PILOT_K,
                "heldout_max_samples": PILOT_HELDOUT,
                **settings,
            },
        )  # fmt: skip
        for generator, settings in GENERATORS.items()
    ]


def pilot_figures(files) -> dict:
    """A pilot run's rollout rewards and costs, from its raw files (`runfiles.RunFiles`)."""
    import statistics

    steps = [e for e in files.read_metrics() if "step_time" in e]
    generating = [e["step_time"] for e in steps if "reward" in e][1:]  # the first pays for warm-up
    reusing = [e["step_time"] for e in steps if "reward" not in e]
    evaluations = files.read_heldout()
    sequences = sum(e.problems * (len(e.sampled[0]) + (e.greedy is not None)) for e in evaluations)
    summary = files.read_summary()
    return {
        "rollout_rewards": [e["reward"] for e in steps if "reward" in e],
        "seconds_generating_step": statistics.median(generating),
        "seconds_reusing_step": statistics.median(reusing),
        "seconds_per_rollout": statistics.median(generating) - statistics.median(reusing),
        "eval_seconds_per_sequence": sum(e.seconds for e in evaluations) / sequences,
        "wall_seconds": summary.wall_seconds,
        "sampling_logp_difference": [e[k] for e in steps for k in e if k == "sampling/sampling_logp_difference/mean"],
    }


def minutes_per_run(figures: dict, k: int, heldout_sequences: int, evaluate_before: bool) -> float:
    """Wall minutes of one grid run at reuse `k`, from a pilot run's figures (same jobs at a time)."""
    rollouts = ROLLOUTS * (figures["seconds_generating_step"] + (k - 1) * figures["seconds_reusing_step"])
    evaluations = (2 if evaluate_before else 1) * heldout_sequences * figures["eval_seconds_per_sequence"]
    setup = 60.0  # imports, data, model (and engine) load
    return (setup + rollouts + evaluations) / 60


def plan(max_completion_length: int, jobs: int) -> dict:
    """Hours of the whole grid with each generator, from the pilot's raw files."""
    from opo_trl.harness.runfiles import RunFiles

    parsed_heldout = 256 * 3  # the recipe's 256 test problems x (2 samples + greedy)
    grid = runs(max_completion_length)
    out = {}
    for run in pilot_runs(max_completion_length):
        generator = run.name.rsplit("-", 1)[1]
        if not run.done:
            raise SystemExit(f"the pilot's {run.name} is missing: run `benchmark_v3.py pilot` first")
        figures = pilot_figures(RunFiles(run.docs_dir))
        seeds_seen, minutes = set(), 0.0
        for r in grid:
            k = r.overrides["num_iterations"]
            minutes += minutes_per_run(figures, k, parsed_heldout, evaluate_before=r.seed not in seeds_seen)
            seeds_seen.add(r.seed)
        out[generator] = {"figures": figures, "grid_hours": minutes / 60 / jobs, "runs": len(grid)}
    return out


def truncated_fractions(completion_lengths: list[int], ended: list[bool], budgets=BUDGETS) -> dict[int, float]:
    """
    Fraction of completions cut at each budget B, from completions sampled at the largest budget: a completion is cut
    at B when it has not ended (no EOS) within its first B tokens. Sampling token by token with the same seed, the first
    B tokens do not depend on the maximum length, so one generation measures every budget.
    """
    return {
        b: sum(1 for n, e in zip(completion_lengths, ended, strict=True) if not (e and n <= b)) / len(ended)
        for b in budgets
    }


def measure_budget(num_problems: int = 64, seed: int = 0) -> dict:
    """Sample one completion per test problem from the untrained model at the largest budget; fractions cut per budget."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opo_trl.harness.arguments import parse_command
    from opo_trl.harness.data import load_datasets
    from opo_trl.harness.evaluation import _encode
    from opo_trl.harness.models import resolve_model

    parsed = parse_command(["--config", str(v2.recipe(TASK)), "--output_dir", str(REPO / "runs" / "budget")])
    _, heldout = load_datasets(parsed.script_args, parsed.dataset_args, seed)
    problems = heldout["test"].select(range(num_problems))
    path = resolve_model(parsed.model_args.model_name_or_path)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    lengths, ended = [], []
    for start in range(0, num_problems, 16):
        encoded, _ = _encode(tokenizer, problems[start : start + 16]["prompt"], model.device)
        with torch.no_grad():
            out = model.generate(**encoded, max_new_tokens=max(BUDGETS), do_sample=True, top_k=0, top_p=1.0,
                                 temperature=parsed.training_args.temperature, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        for row in out[:, encoded["input_ids"].size(1) :].tolist():
            eos = [i for i, t in enumerate(row) if t == tokenizer.eos_token_id]
            lengths.append(eos[0] + 1 if eos else len(row))
            ended.append(bool(eos))
    fractions = truncated_fractions(lengths, ended)
    chosen = next((b for b in BUDGETS if fractions[b] < 0.2), max(BUDGETS))
    return {"problems": num_problems, "truncated": fractions, "chosen_max_completion_length": chosen}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=["budget", "pilot", "plan", "runs"])
    parser.add_argument("--jobs", type=int, default=2, help="Runs at a time (each gets cores / jobs threads).")
    parser.add_argument("--work_dir", default=str(REPO / "runs" / "benchmark_v3"), help="Where runs write.")
    parser.add_argument("--commit", action="store_true", help="Commit each finished run's raw files.")
    args = parser.parse_args(argv)
    v2.DOCS = DOCS  # v2's runs copy their raw files under DOCS/runs
    if args.phase == "budget":
        figures = measure_budget()
        DOCS.mkdir(parents=True, exist_ok=True)
        (DOCS / "budget.json").write_text(json.dumps(figures, indent=2) + "\n")
        print(json.dumps(figures, indent=2))
        return
    budget = DOCS / "budget.json"
    if not budget.exists():
        raise SystemExit(f"no {budget}: run `benchmark_v3.py budget` first")
    length = json.loads(budget.read_text())["chosen_max_completion_length"]
    if args.phase == "pilot":
        v2.run_phase(pilot_runs(length), args.jobs, Path(args.work_dir), args.commit)
    elif args.phase == "plan":
        figures = plan(length, args.jobs)
        (DOCS / "plan.json").write_text(json.dumps(figures, indent=2) + "\n")
        for generator, entry in figures.items():
            f = entry["figures"]
            print(f"{generator:8s}: rollout reward {sum(f['rollout_rewards']) / len(f['rollout_rewards']):.3f} "
                  f"({len(f['rollout_rewards'])} rollouts), {f['seconds_per_rollout']:.1f} s per rollout, "
                  f"{f['seconds_reusing_step']:.1f} s per reusing step, {f['eval_seconds_per_sequence']:.2f} s per "
                  f"evaluated sequence -> grid {entry['grid_hours']:.1f} h ({entry['runs']} runs, {args.jobs} at a time)")  # fmt: skip
    else:
        v2.run_phase(runs(length), args.jobs, Path(args.work_dir), args.commit)


if __name__ == "__main__":
    main()
