# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
Benchmark v3, rollout reuse: every run generates the same number of rollouts; what varies is K, the optimizer steps
each rollout serves. OPO's quadratic trust region should let it take more steps per generated token than ratio
clipping allows GRPO and GSPO. Phases, in order:

    python benchmarks/rollout_reuse.py budget            # truncated fraction of the untrained model at 32/48/64 tokens
    python benchmarks/rollout_reuse.py pilot             # model.generate against vLLM: rollout accuracy and cost
    python benchmarks/rollout_reuse.py plan              # hours of the whole grid, from the pilot
    python benchmarks/rollout_reuse.py runs [--jobs 2]   # every algorithm x K x seed, resumable, raw files committed
    python benchmarks/rollout_reuse.py report            # the tables and the plot of the finished runs

(`python benchmarks/benchmark_v3.py PHASE` runs the same.) Runs are launched, resumed and committed by
`benchmarking.py`: a run is `python -m opo_trl.harness.run` in its own process; its raw files are copied to
`docs/benchmark_v3/runs/` and committed as it finishes; a finished run is never run again.

How a rollout serves K steps: `num_iterations = K` with `steps_per_generation = 1` and one rollout of
`PROMPTS_PER_ROLLOUT x G` completions per micro-batch, so each of the K optimizer steps sees the whole rollout (TRL's
`_prepare_inputs` regenerates every `steps_per_generation * num_iterations` steps and returns the buffered rollout in
between), and `max_steps = ROLLOUTS * K` keeps the number of generated completions fixed.
"""

import argparse
import json
from pathlib import Path

import benchmarking
from benchmarking import REPO, Run


DOCS = REPO / "docs" / "benchmark_v3"
TASK = "chain_sum"
LEARNING_RATE = 1e-5  # v2's tuned rate, the same for every algorithm: robustness to reuse at a fixed rate
# The grid was cut to about 7 hours two runs at a time from the pilot's and an idle machine's timings (RESULTS,
# "Benchmark v3"): 12 rollouts (the pilot's number, over which its OPO run gained 0.14 held-out) and K = 2 left out
# (benchmark v2 ran every algorithm at K = 2).
K_VALUES = (1, 4, 8)
ROLLOUTS = 12
PROMPTS_PER_ROLLOUT = 2
G = 6
SEEDS = (0, 1, 2)
BUDGETS = (32, 48, 64)
# name -> (algorithm, OPO overrides). OPO's escort is its default: no other form separated from it in the escort
# family's screen (RESULTS 1.8), so none is the "best form" to add.
ALGORITHMS = {
    "opo": ("opo", {}),
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


def runs(max_completion_length: int) -> list[Run]:
    """
    The grid in the order it runs, so that an interrupted grid leaves whole cells (every seed) behind, the most telling
    first: the largest K (where the trust regions should differ most), then no reuse (the reference), then the rest;
    the extra cells last.
    """
    ks = sorted(K_VALUES)
    ks = [ks[-1], *ks[:-1]] if len(ks) > 1 else ks
    cells = [(name, spec, k) for k in ks for name, spec in ALGORITHMS.items()]
    cells += [(name, spec, max(K_VALUES)) for name, spec in EXTRA_AT_LARGEST_K.items()]
    return [
        Run(
            DOCS,
            "reuse",
            TASK,
            f"{name}-K{k}",
            algorithm,
            seed,
            LEARNING_RATE,
            {**overrides, **reuse_overrides(k, max_completion_length)},
        )
        for name, (algorithm, overrides), k in cells
        for seed in SEEDS
    ]


# The pilot: OPO at K = 2 for PILOT_ROLLOUTS rollouts, generating with `model.generate` and with vLLM (CPU build), two
# at a time as the grid runs. Its rollouts come from a barely trained policy (lr 1e-5, a few steps): their reward is
# the untrained accuracy that both generators must agree on; steps that generate minus steps that do not give the
# cost of a rollout.
PILOT_ROLLOUTS = 12
PILOT_K = 2
PILOT_HELDOUT = 32
GENERATORS = {"generate": {}, "vllm": {"use_vllm": "true"}}


def pilot_runs(max_completion_length: int) -> list[Run]:
    return [
        Run(
            DOCS,
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
    """A pilot run's rollout rewards and costs, from its raw files (`runfiles.RunFiles`): `benchmarking.step_costs`."""
    return benchmarking.step_costs(files)


def minutes_per_run(figures: dict, k: int, heldout_sequences: int, evaluate_before: bool) -> float:
    """Wall minutes of one grid run at reuse `k`, from a pilot run's figures (same jobs at a time), 60 s of setup."""
    return benchmarking.minutes_per_run(figures, k, ROLLOUTS, heldout_sequences, evaluate_before)


def plan(max_completion_length: int, jobs: int) -> dict:
    """Hours of the whole grid with each generator, from the pilot's raw files."""
    from opo_trl.harness.runfiles import RunFiles

    parsed_heldout = 256 * 3  # the recipe's 256 test problems x (2 samples + greedy)
    grid = runs(max_completion_length)
    out = {}
    for run in pilot_runs(max_completion_length):
        generator = run.name.rsplit("-", 1)[1]
        if not run.done:
            raise SystemExit(f"the pilot's {run.name} is missing: run `rollout_reuse.py pilot` first")
        figures = pilot_figures(RunFiles(run.docs_dir))
        seeds_seen, minutes = set(), 0.0
        for r in grid:
            k = r.overrides["num_iterations"]
            minutes += minutes_per_run(figures, k, parsed_heldout, evaluate_before=r.seed not in seeds_seen)
            seeds_seen.add(r.seed)
        out[generator] = {"figures": figures, "grid_hours": minutes / 60 / jobs, "runs": len(grid)}
    return out


def run_figures(record, k: int) -> dict:
    """What one finished grid run did (`record`: a `compare.RunRecord`): `benchmarking.reuse_figures`."""
    return benchmarking.reuse_figures(record, k, PROMPTS_PER_ROLLOUT * G)


def report(max_completion_length: int) -> str:
    """The tables of the finished grid runs (pass@1 per K and algorithm, OPO minus each baseline per K, what reuse did
    to each algorithm, what reuse did to training) and the plot of pass@1 against K, into `DOCS`; returns the
    markdown."""

    records = {}
    for run, record in benchmarking.load_records(runs(max_completion_length)).items():
        name, k = run.name.rsplit("-K", 1)
        records.setdefault((name, int(k)), []).append(record)
    names = [n for n in [*ALGORITHMS, *EXTRA_AT_LARGEST_K] if any(key[0] == n for key in records)]

    spread = benchmarking.median_cell

    lines = [
        "| K | algorithm | seeds | held-out pass@1 [95% CI] | greedy [95% CI] | gain per 1k generated tokens | gain per "
        "training minute | clip fraction at last reuse | KL to rollout policy at last reuse | share of closed-form step "
        "at last reuse | zero-gradient steps with a signal | entropy, last quarter |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    curves = {}
    for k in K_VALUES:
        for name in names:
            group = sorted(records.get((name, k), []), key=lambda r: r.seed)
            if not group:
                continue
            estimate, greedy = benchmarking.accuracy_cell(group), benchmarking.accuracy_cell(group, greedy=True)
            curves.setdefault(name, []).append((k, estimate))
            figures = [run_figures(r, k) for r in group]
            zero = [f["zero_gradient_steps"] for f in figures]
            lines.append(
                f"| {k} | {name} | {len(group)} | {estimate} | {greedy if greedy is not None else 'n/a'} | "
                f"{spread([f['gain_per_1k_tokens'] for f in figures], 4)} | "
                f"{spread([f['gain_per_minute'] for f in figures], 4)} | "
                f"{spread([f['clip_fraction'] for f in figures])} | {spread([f['rollout_kl'] for f in figures], 4)} | "
                f"{spread([f['closed_form_fraction'] for f in figures], 2)} | "
                f"{sum(z for z, _ in zero)} of {sum(s for _, s in zero)} | "
                f"{spread([f['entropy_late'] for f in figures], 2)} |"
            )
    text = "## Held-out pass@1 and what reuse did, per K (medians over seeds unless an interval is given)\n\n"
    text += "\n".join(lines) + "\n"
    text += (
        "\nLast reuse: the last optimizer step on each rollout that carried a signal (not every group tied), median over "
        "those rollouts, then over seeds. Share of the closed-form step: mean |Delta| / mean |g / mu| over tokens.\n"
    )

    rows = [
        ((str(k), f"{ours} - {baseline}"), benchmarking.paired_on_common_seeds(records[ours, k], records[baseline, k]))
        for k in K_VALUES
        for ours in [n for n in names if n.startswith("opo")]
        for baseline in [n for n in names if not n.startswith("opo")]
        if (ours, k) in records and (baseline, k) in records
    ]
    text += "\n## OPO minus each baseline, per K (paired on common seeds and the same problems)\n\n"
    text += benchmarking.comparison_table(rows, ("K", "comparison"))

    # What reuse does to each algorithm: each K against no reuse, on the same seeds (so the same first rollout and the
    # same evaluation samples) and problems.
    lowest = min(K_VALUES)
    rows = [
        (
            (name, f"K = {k} - K = {lowest}"),
            benchmarking.paired_on_common_seeds(records[name, k], records[name, lowest]),
        )
        for name in names
        for k in sorted(K_VALUES)[1:]
        if (name, k) in records and (name, lowest) in records
    ]
    text += f'\n## Each algorithm with reuse minus without (K = {lowest}), paired ("ahead": reuse scores higher)\n\n'
    text += benchmarking.comparison_table(rows, ("algorithm", "comparison"))
    text += "\n" + benchmarking.STATISTICS_NOTE + "\n"
    (DOCS / "report.md").write_text("# Benchmark v3: rollout reuse\n\n" + text)
    plot_reuse(curves, DOCS / "reuse.png")
    return text


def plot_reuse(curves: dict, path) -> None:
    """Held-out pass@1 against K, one line per algorithm with its 95% interval as a band."""
    benchmarking.plot_against_k(curves, path, K_VALUES, f"held-out pass@1 after {ROLLOUTS} rollouts")


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
    from opo_trl.harness.evaluation import encode_prompts
    from opo_trl.harness.models import resolve_model

    parsed = parse_command(["--config", str(benchmarking.recipe(TASK)), "--output_dir", str(REPO / "runs" / "budget")])
    _, heldout = load_datasets(parsed.script_args, parsed.dataset_args, seed)
    problems = heldout["test"].select(range(num_problems))
    path = resolve_model(parsed.model_args.model_name_or_path)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    lengths, ended = [], []
    for start in range(0, num_problems, 16):
        encoded, _ = encode_prompts(tokenizer, problems[start : start + 16]["prompt"], model.device)
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
    parser.add_argument("phase", choices=["budget", "pilot", "plan", "runs", "report"])
    benchmarking.add_run_arguments(parser, REPO / "runs" / "benchmark_v3")
    parser.add_argument(
        "--only", nargs="+", metavar="CELL", help="`runs`: only these cells, in this order, e.g. `opo-K1 gspo-K8`."
    )
    args = parser.parse_args(argv)
    if args.phase == "budget":
        figures = measure_budget()
        DOCS.mkdir(parents=True, exist_ok=True)
        (DOCS / "budget.json").write_text(json.dumps(figures, indent=2) + "\n")
        print(json.dumps(figures, indent=2))
        return
    budget = DOCS / "budget.json"
    if not budget.exists():
        raise SystemExit(f"no {budget}: run `rollout_reuse.py budget` first")
    length = json.loads(budget.read_text())["chosen_max_completion_length"]
    if args.phase == "pilot":
        benchmarking.run_side_by_side(
            pilot_runs(length), args.jobs, Path(args.work_dir), args.commit, threads=args.threads
        )
    elif args.phase == "plan":
        figures = plan(length, args.jobs)
        (DOCS / "plan.json").write_text(json.dumps(figures, indent=2) + "\n")
        for generator, entry in figures.items():
            f = entry["figures"]
            print(f"{generator:8s}: rollout reward {sum(f['rollout_rewards']) / len(f['rollout_rewards']):.3f} "
                  f"({len(f['rollout_rewards'])} rollouts), {f['seconds_per_rollout']:.1f} s per rollout, "
                  f"{f['seconds_reusing_step']:.1f} s per reusing step, {f['eval_seconds_per_sequence']:.2f} s per "
                  f"evaluated sequence -> grid {entry['grid_hours']:.1f} h ({entry['runs']} runs, {args.jobs} at a time)")  # fmt: skip
    elif args.phase == "report":
        print(report(length))
    else:
        grid = runs(length)
        unknown = set(args.only or []) - {r.name for r in grid}
        if unknown:
            raise SystemExit(
                f"--only: no cell {', '.join(sorted(unknown))} in the grid ({', '.join(dict.fromkeys(r.name for r in grid))})"
            )
        if args.only:  # the named cells, in the order named
            grid = sorted((r for r in grid if r.name in args.only), key=lambda r: args.only.index(r.name))
        benchmarking.run_phase(grid, args.jobs, Path(args.work_dir), args.commit, threads=args.threads)


if __name__ == "__main__":
    main()
