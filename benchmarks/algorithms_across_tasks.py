# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
Benchmark v2, algorithms across tasks: OPO against GRPO, DAPO and GSPO on reasoning-gym tasks, with tuned learning
rates, 5 seeds, and seed-level intervals; and OPO's own options. The phases, in order:

    python benchmarks/algorithms_across_tasks.py measure                # seconds per step and per evaluation
    python benchmarks/algorithms_across_tasks.py plan                   # every run of every phase, with the time estimate
    python benchmarks/algorithms_across_tasks.py tune     [--jobs 2]    # learning rate per algorithm, validation split
    python benchmarks/algorithms_across_tasks.py main     [--jobs 2]    # the main table, at the chosen rates
    python benchmarks/algorithms_across_tasks.py variants [--jobs 2]    # OPO's own options: escort forms, mu_target_chi2
    python benchmarks/algorithms_across_tasks.py report                 # tables, paired statistics and plots into docs/

(`python benchmarks/benchmark_v2.py PHASE` runs the same.) Every run is `python -m opo_trl.harness.run --config
benchmarks/recipes/benchmark_<task>.yaml --algorithm A --seed S ...` in its own process, launched, resumed and
committed by `benchmarking.py`: a run's small raw files (summary.json, metrics.jsonl, heldout.jsonl) are copied to
`docs/benchmark_v2/runs/<phase>/<task>/<run>/` as soon as it finishes and, with `--commit`, committed; a finished run
(its raw files present there) is never run again, so an interrupted phase resumes where it stopped. Runs of the same
task and seed share the evaluation of the initial model (`--heldout_before_from`).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import benchmarking
from benchmarking import REPO, Run

from opo_trl.harness.runfiles import RunFiles


DOCS = REPO / "docs" / "benchmark_v2"

TASKS = ("chain_sum", "basic_arithmetic")
TUNE_TASK = "chain_sum"
LEARNING_RATES = (3e-6, 1e-5, 3e-5)
TUNE_SEEDS = (100, 101)
TUNE_ALGORITHMS = ("opo", "grpo")
# The tuning runs: half the steps, no evaluations during training, the validation split without greedy decoding.
TUNE_OVERRIDES = {"max_steps": 32, "heldout_split": "validation", "heldout_greedy": False, "heldout_eval_steps": 0}
MAIN_SEEDS = {"opo": (0, 1, 2, 3, 4), "grpo": (0, 1, 2, 3, 4), "dapo": (0, 1, 2), "gspo": (0, 1, 2)}
VARIANT_TASK = "chain_sum"
VARIANT_SEEDS = (0, 1, 2)
# OPO's own options against the main table's OPO (escort_reference none, fixed mu = 1).
VARIANTS = {
    "opo-ref-mean": {"escort_reference": "mean"},
    "opo-ref-sum": {"escort_reference": "sum"},
    "opo-mu-chi2": {"mu_target_chi2": 0.01},
    # The escort family (OPO_SPEC, "What the benchmark found"): a peak-seeking temperature, the self-normalised ratio
    # at that temperature, and the authors' released softmax mixture with the values of their opo_qwen3_math.yaml.
    "opo-temp0.3": {"escort_temperature": 0.3},
    "opo-selfnorm-temp0.3": {"escort_temperature": 0.3, "escort_normalization": "divide_by_mean"},
    "opo-softmax-mixture": {
        "escort_form": "softmax_mixture",
        "alpha": 0.75,
        "mu": 0.5,
        "direction_scale": 1.33,
        "reward_temperature": 0.15,
        "ratio_temperature": 0.5,
        "log_ratio_clip": 5.0,
    },
}

# The paper's table (Qwen3-1.7B, MATH level 3, verl; see shared OPO_SPEC): mean training reward over the last 20 of
# 224 steps, gradient norm, validation accuracy of its second run (100 MATH level-4 problems). Not rerun here.
PAPER = {
    "opo": ("0.756", "0.90", "48%"),
    "grpo": ("0.686", "0.61", "44%"),
    "dapo": ("~0.67 (noisy)", "0.22", "44%"),
    "gspo": ("0.713", "0.50", "48%"),
}


def tune_runs() -> list[Run]:
    return [
        Run(DOCS, "tune", TUNE_TASK, algorithm, algorithm, seed, lr, TUNE_OVERRIDES)
        for seed in TUNE_SEEDS
        for lr in LEARNING_RATES
        for algorithm in TUNE_ALGORITHMS
    ]


def chosen_learning_rates() -> dict[str, float]:
    """Per algorithm, the rate of the best mean validation accuracy over the tuning seeds; DAPO and GSPO use GRPO's."""
    scores: dict[tuple[str, float], list[float]] = {}
    for run in tune_runs():
        if not run.done:
            raise SystemExit(
                f"tuning is not finished ({run.key} of {run.task} is missing): run the `tune` phase first"
            )
        summary = RunFiles(run.docs_dir).read_summary()
        scores.setdefault((run.algorithm, run.learning_rate), []).append(summary.heldout_accuracy_after)
    chosen = {}
    for algorithm in TUNE_ALGORITHMS:
        means = {lr: sum(scores[algorithm, lr]) / len(scores[algorithm, lr]) for lr in LEARNING_RATES}
        # Ties go to the smaller rate: it is the safer choice for a longer run.
        chosen[algorithm] = max(LEARNING_RATES, key=lambda lr: (means[lr], -lr))
    chosen["dapo"] = chosen["gspo"] = chosen["grpo"]
    return chosen


def main_runs(rates: dict[str, float] | None = None) -> list[Run]:
    rates = rates or chosen_learning_rates()
    runs = [
        Run(DOCS, "main", task, algorithm, algorithm, seed, rates[algorithm])
        for task in TASKS
        for seed in range(5)
        for algorithm, seeds in MAIN_SEEDS.items()
        if seed in seeds
    ]
    return runs


def variant_runs(rates: dict[str, float] | None = None) -> list[Run]:
    rate = (rates or chosen_learning_rates())["opo"]
    return [
        # The variants are compared with the main table's OPO, whose evaluation of the initial model they reuse.
        Run(DOCS, "variants", VARIANT_TASK, name, "opo", seed, rate, overrides, shares_before_with=("main",))
        for seed in VARIANT_SEEDS
        for name, overrides in VARIANTS.items()
    ]


def measure(work_root: Path) -> dict:
    """
    Time a short OPO and a short GRPO run (6 steps, 64 test problems) one after the other with 2 threads, then both
    at once with 1 thread each; the plan's estimates come from these figures.
    """
    short = {"max_steps": 6, "num_test_samples": 64, "heldout_eval_steps": 0}
    runs = [Run(DOCS, "measure", TUNE_TASK, a, a, 0, LEARNING_RATES[1], short) for a in TUNE_ALGORITHMS]
    figures = {}
    for jobs in (1, 2):
        root, threads = work_root / f"measure-jobs{jobs}", benchmarking.threads_per_run(jobs)
        start = time.perf_counter()
        with ThreadPoolExecutor(jobs) as pool:
            walls = list(pool.map(lambda r, root=root, threads=threads: _timed(r, root, threads), runs))
        for run, wall in zip(runs, walls, strict=True):
            files = RunFiles(run.work_dir(root))
            step_times = [e["step_time"] for e in files.read_metrics() if "step_time" in e][1:]  # the first: warm-up
            evals = files.read_heldout()
            sequences = sum(e.problems * (len(e.sampled[0]) + (e.greedy is not None)) for e in evals)
            figures[f"{run.algorithm}-jobs{jobs}"] = {
                "seconds_per_step": sum(step_times) / len(step_times),
                "eval_seconds_per_sequence": sum(e.seconds for e in evals) / sequences,
                "wall_seconds": wall,
            }
        figures[f"jobs{jobs}_wall_seconds"] = time.perf_counter() - start
    return figures


def _timed(run: Run, root: Path, threads: int) -> float:
    work = run.work_dir(root)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    with (work / "run.log").open("w") as out:
        subprocess.run(benchmarking.command(run, root, None), cwd=REPO, env=env, stdout=out, stderr=out, check=True)
    return time.perf_counter() - start


def minutes_per_run(figures: dict, jobs: int) -> dict[str, float]:
    """Wall minutes per run of each phase, 'jobs' runs at a time, from the measured figures."""
    step = statistics.mean(figures[f"{a}-jobs{jobs}"]["seconds_per_step"] for a in TUNE_ALGORITHMS)
    per_sequence = statistics.mean(figures[f"{a}-jobs{jobs}"]["eval_seconds_per_sequence"] for a in TUNE_ALGORITHMS)
    overhead = 30.0  # loading the model and the data
    # main/variants: 64 steps; evaluations after training (256 x (2 samples + greedy)), at steps 16, 32, 48 (64 x 1),
    # and before training for the first run of each seed (shared by the others: counted as 1/3 of one).
    main = 64 * step + per_sequence * (256 * 3 + 3 * 64 + 256 * 3 / 3) + overhead
    # tune: 32 steps; the validation split (128 x 2 samples) before and after training.
    tune = 32 * step + per_sequence * (128 * 2 * 2) + overhead
    return {"tune": tune / 60, "main": main / 60, "variants": main / 60}


def plan(jobs: int) -> None:
    measured = DOCS / "measure.json"
    if not measured.exists():
        raise SystemExit(f"no {measured}: run `algorithms_across_tasks.py measure` first")
    minutes = minutes_per_run(json.loads(measured.read_text()), jobs)
    phases = {"tune": tune_runs()}
    try:
        rates = chosen_learning_rates()
    except SystemExit:
        rates = dict.fromkeys(MAIN_SEEDS, LEARNING_RATES[1])
    phases["main"], phases["variants"] = main_runs(rates), variant_runs(rates)
    total = 0.0
    for phase, runs in phases.items():
        hours = len(runs) * minutes[phase] / jobs / 60
        total += hours
        done = sum(r.done for r in runs)
        print(f"{phase:9s} {len(runs):3d} runs ({done} done), ~{minutes[phase]:.1f} min each -> ~{hours:.1f} h")
    print(f"total ~{total:.1f} h with {jobs} run(s) at a time")


def report() -> str:
    """The tables of every finished phase, with intervals, and the plots, into `DOCS`; returns them as markdown."""
    from opo_trl.harness.compare import write_report

    sections = []
    tuned = benchmarking.load_records(tune_runs())
    if tuned:
        groups = {}
        for run, record in tuned.items():
            groups.setdefault((run.algorithm, run.learning_rate), []).append(record)
        lines = ["| algorithm | learning rate | seeds | validation accuracy [95% CI] |", "|---|---|---|---|"]
        for (algorithm, lr), group in sorted(
            groups.items(), key=lambda item: (TUNE_ALGORITHMS.index(item[0][0]), item[0][1])
        ):
            lines.append(f"| {algorithm} | {lr:g} | {len(group)} | {benchmarking.accuracy_cell(group)} |")
        rows = [((f"{lr:g}",), benchmarking.paired_on_common_seeds(groups.get(("opo", lr), []), groups.get(("grpo", lr), [])))
                for lr in LEARNING_RATES]  # fmt: skip
        table = benchmarking.comparison_table([row for row in rows if row[1] is not None], ("learning rate",))
        lines += ["", "OPO minus GRPO on the validation split:", "", table.rstrip()]
        try:
            chosen = chosen_learning_rates()
            lines += [
                "",
                "Chosen: " + ", ".join(f"{a} {lr:g}" for a, lr in chosen.items()) + " (DAPO and GSPO: GRPO's).",
            ]
        except SystemExit:
            pass
        sections.append("## Learning rates (tuning, validation split)\n\n" + "\n".join(lines) + "\n")
        (DOCS / "tune.md").write_text(sections[-1])
    for task in TASKS:
        records = list(benchmarking.load_records(r for r in main_runs_if_tuned() if r.task == task).values())
        if records:
            out = DOCS / "main" / task
            write_report(records, out, title=f"main table, {task}")
            sections.append(f"## Main table: {task}\n\n" + (out / "summary.md").read_text().split("\n", 2)[2])
            (out / "paper.md").write_text(paper_table(records))
            sections.append(f"## The paper's figures beside ours: {task}\n\n" + (out / "paper.md").read_text())
            (out / "resampling.md").write_text(resampling_table(records))
            sections.append(f"## Seeds or problems alone: {task}\n\n" + (out / "resampling.md").read_text())
    variants = benchmarking.load_records(variant_runs_if_tuned())
    if variants:
        default = benchmarking.load_records(
            r for r in main_runs_if_tuned() if r.task == VARIANT_TASK and r.name == "opo" and r.seed in VARIANT_SEEDS
        )
        records = [*default.values(), *variants.values()]
        out = DOCS / "variants"
        write_report(records, out, title=f"OPO variants, {VARIANT_TASK}")
        sections.append(f"## OPO's variants: {VARIANT_TASK}\n\n" + (out / "summary.md").read_text().split("\n", 2)[2])
        differences = variant_differences(records)
        (out / "differences.md").write_text(differences)
        sections.append(f"## Each variant minus the default: {VARIANT_TASK}\n\n" + differences)
        mechanics = variant_mechanics(records)
        (out / "mechanics.md").write_text(mechanics)
        sections.append(f"## What OPO's variants did to training: {VARIANT_TASK}\n\n" + mechanics)
    text = "\n".join(sections)
    (DOCS / "report.md").write_text("# Benchmark v2: tables\n\n" + text)
    return text


def variant_differences(records, default: str = "opo") -> str:
    """Each OPO variant minus the default on their common seeds and the same problems (held-out pass@1 and greedy), one
    family of comparisons per measure."""
    by_name = {n: [r for r in records if r.name == n] for n in dict.fromkeys(r.name for r in records)}
    names = [n for n in by_name if n != default]
    text = ""
    for title, greedy in (("Held-out pass@1", False), ("Greedy accuracy", True)):
        rows = [((name,), benchmarking.paired_on_common_seeds(by_name[name], by_name.get(default, []), greedy=greedy))
                for name in names]  # fmt: skip
        text += f"{title}, variant minus the default:\n\n" + benchmarking.comparison_table(rows, ("variant",)) + "\n"
    return text + benchmarking.STATISTICS_NOTE + "\n"


def resampling_table(records, reference: str = "opo") -> str:
    """
    OPO minus each baseline with the variation of both the seeds and the problems counted (the benchmark's intervals)
    beside the problems' alone (every seed kept as it is), and how far apart the seeds of one algorithm land.
    """
    by_name = {n: [r for r in records if r.name == n] for n in dict.fromkeys(r.name for r in records)}
    ours = by_name.get(reference, [])
    lines = [
        f"| baseline | seeds | {reference} - baseline, seeds and problems [95% CI] | problems alone [95% CI] | "
        f"{reference}'s seeds (min..max) | baseline's seeds (min..max) |",
        "|---|---|---|---|---|---|",
    ]

    def spread(group, seeds):
        values = [r.summary.heldout_accuracy_after for r in group if r.seed in seeds]
        return f"{min(values):.3f}..{max(values):.3f}"

    for name, theirs in by_name.items():
        seeds = sorted({r.seed for r in ours} & {r.seed for r in theirs})
        if name == reference or not seeds:
            continue
        both = benchmarking.paired_on_common_seeds(ours, theirs)
        alone = benchmarking.paired_on_common_seeds(ours, theirs, variation="problems")
        lines.append(
            f"| {name} | {len(seeds)} | {both.interval()} | {alone.interval()} | {spread(ours, seeds)} | "
            f"{spread(theirs, seeds)} |"
        )
    return "\n".join(lines) + "\n"


def paper_table(records) -> str:
    """The paper's figures beside ours for the same algorithms (`records`: the RunRecords of one task's main table)."""
    import numpy as np

    from opo_trl.harness.compare import late_steps, shared_steps, step_matrix

    lines = [
        "| algorithm | paper: training reward, last 20 of 224 steps | ours: training reward, last quarter of 64 steps "
        "(mean [min, max] over seeds) | paper: grad norm | ours: median grad norm [IQR] | paper: validation accuracy | "
        "ours: held-out pass@1 after 64 steps [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for algorithm, (reward, grad, accuracy) in PAPER.items():
        group = [r for r in records if r.name == algorithm]
        if not group:
            continue
        seeds = sorted(r.seed for r in group)
        matrix = step_matrix(group, seeds, "reward", late_steps(shared_steps(group, "reward")))
        per_seed = None if matrix is None else matrix.mean(axis=1)
        late = (
            "too few steps"
            if per_seed is None
            else f"{per_seed.mean():.3f} [{per_seed.min():.3f}, {per_seed.max():.3f}]"
        )
        norms = [g for r in group for g in r.values("grad_norm")]
        q1, median, q3 = np.quantile(norms, [0.25, 0.5, 0.75])
        lines.append(
            f"| {algorithm} | {reward} | {late} | {grad} | "
            f"{median:.3f} [{q1:.3f}, {q3:.3f}] | {accuracy} | {benchmarking.accuracy_cell(group)} |"
        )
    return "\n".join(lines) + "\n"


def variant_mechanics(records) -> str:
    """
    What each OPO variant did to the training dynamics (`records`: RunRecords, the default named "opo"): how many
    rollouts had every group tied (no reward signal), the drive OPO still gave those, and entropy, completion length
    and gradient norm early against late (the last quarter of the steps). Means over seeds, except the medians.
    """
    import numpy as np

    lines = [
        "| variant | seeds | held-out after, per seed | rollouts with every group tied "
        "| median mean abs(drive) on those | entropy, step 1 -> last quarter "
        "| completion length, first rollout -> last quarter | median grad norm |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r.name for r in records):
        group = sorted((r for r in records if r.name == name), key=lambda r: r.seed)
        rollouts = [e for r in group for e in r.steps if "frac_reward_zero_std" in e]
        tied = [e for e in rollouts if e["frac_reward_zero_std"] == 1.0]
        drive = [e["opo/drive/abs_mean"] for e in tied if "opo/drive/abs_mean" in e]
        grad_norm = np.median([g for r in group for g in r.values("grad_norm")])
        heldout = ", ".join(f"{o.mean():.3f}" for o in (r.outcomes() for r in group) if o is not None)
        lines.append(
            f"| {name} | {len(group)} | {heldout} | {len(tied)} of {len(rollouts)} | "
            f"{np.median(drive) if drive else float('nan'):.3g} | {_early_late(group, 'entropy')} | "
            f"{_early_late(group, 'completions/mean_length')} | {grad_norm:.3g} |"
        )
    return "\n".join(lines) + "\n"


def _early_late(group, key: str) -> str:
    """A logged figure at its first step -> its mean over the last quarter of the steps, each averaged over seeds."""
    from opo_trl.harness.compare import late_steps

    early, late = [], []
    for r in group:
        logged = r.logged(key)
        steps = sorted(logged)
        if not late_steps(steps):
            return "too few steps"
        early.append(logged[steps[0]])
        late.append(statistics.fmean(logged[t] for t in late_steps(steps)))
    return f"{statistics.fmean(early):.2f} -> {statistics.fmean(late):.2f}"


def main_runs_if_tuned() -> list[Run]:
    try:
        return main_runs()
    except SystemExit:
        return []


def variant_runs_if_tuned() -> list[Run]:
    try:
        return variant_runs()
    except SystemExit:
        return []


def main(argv=None):
    global DOCS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=["measure", "plan", "tune", "main", "variants", "report"])
    benchmarking.add_run_arguments(parser, REPO / "runs" / "benchmark_v2")
    parser.add_argument("--docs_dir", default=str(DOCS), help="Where the raw files of finished runs go.")
    parser.add_argument(
        "--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="main: run only these tasks (default: all)."
    )
    args = parser.parse_args(argv)
    DOCS = Path(args.docs_dir).resolve()
    work_root = Path(args.work_dir)
    if args.phase == "measure":
        if args.threads is not None:
            raise SystemExit("--threads: `measure` times runs of 2 threads and of 1 thread itself")
        figures = measure(work_root)
        DOCS.mkdir(parents=True, exist_ok=True)
        (DOCS / "measure.json").write_text(json.dumps(figures, indent=2) + "\n")
        print(json.dumps(figures, indent=2))
    elif args.phase == "plan":
        plan(args.jobs)
    elif args.phase == "tune":
        benchmarking.run_phase(tune_runs(), args.jobs, work_root, args.commit, threads=args.threads)
    elif args.phase == "main":
        runs = [r for r in main_runs() if r.task in args.tasks]
        benchmarking.run_phase(runs, args.jobs, work_root, args.commit, threads=args.threads)
    elif args.phase == "variants":
        benchmarking.run_phase(variant_runs(), args.jobs, work_root, args.commit, threads=args.threads)
    else:
        print(report())


if __name__ == "__main__":
    main()
