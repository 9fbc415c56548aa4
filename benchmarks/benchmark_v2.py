# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
Benchmark v2: OPO against GRPO, DAPO and GSPO on reasoning-gym tasks, with tuned learning rates, 5 seeds, and
confidence intervals. The phases, in order:

    python benchmarks/benchmark_v2.py plan                 # every run of every phase, with the time estimate
    python benchmarks/benchmark_v2.py tune     [--jobs 2]  # learning rate per algorithm, on the validation split
    python benchmarks/benchmark_v2.py main     [--jobs 2]  # the main table, at the chosen rates
    python benchmarks/benchmark_v2.py variants [--jobs 2]  # OPO's own options: escort forms, mu_target_chi2
    python benchmarks/benchmark_v2.py report               # tables, paired statistics and plots into docs/

Every run is `python -m opo_trl.harness.run --config benchmarks/recipes/benchmark_<task>.yaml --algorithm A --seed S ...` in its own
process. A run's small raw files (summary.json, metrics.jsonl, heldout.jsonl) are copied to
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
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from opo_trl.harness.runfiles import RunFiles


REPO = Path(__file__).resolve().parents[1]
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
    "opo-selfnorm-temp0.3": {"escort_temperature": 0.3, "escort_normalization": "mean"},
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


@dataclass(frozen=True)
class Run:
    phase: str
    task: str
    name: str  # what the tables call it: the algorithm, or an OPO variant
    algorithm: str
    seed: int
    learning_rate: float
    overrides: dict = field(default_factory=dict, hash=False)

    @property
    def key(self) -> str:
        return f"{self.name}-lr{self.learning_rate:g}-seed{self.seed}"

    @property
    def docs_dir(self) -> Path:
        return DOCS / "runs" / self.phase / self.task / self.key

    def work_dir(self, root: Path) -> Path:
        return root / self.phase / self.task / self.key

    @property
    def done(self) -> bool:
        return RunFiles(self.docs_dir).finished


def recipe(task: str) -> Path:
    return REPO / "benchmarks" / "recipes" / f"benchmark_{task}.yaml"


def tune_runs() -> list[Run]:
    return [
        Run("tune", TUNE_TASK, algorithm, algorithm, seed, lr, TUNE_OVERRIDES)
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
        Run("main", task, algorithm, algorithm, seed, rates[algorithm])
        for task in TASKS
        for seed in range(5)
        for algorithm, seeds in MAIN_SEEDS.items()
        if seed in seeds
    ]
    return runs


def variant_runs(rates: dict[str, float] | None = None) -> list[Run]:
    rate = (rates or chosen_learning_rates())["opo"]
    return [
        Run("variants", VARIANT_TASK, name, "opo", seed, rate, overrides)
        for seed in VARIANT_SEEDS
        for name, overrides in VARIANTS.items()
    ]


def command(run: Run, work_root: Path, before_from: Path | None) -> list[str]:
    args = [sys.executable, "-m", "opo_trl.harness.run", "--config", str(recipe(run.task)), "--algorithm", run.algorithm,
            "--seed", str(run.seed), "--learning_rate", str(run.learning_rate),
            "--output_dir", str(run.work_dir(work_root))]  # fmt: skip
    for key, value in run.overrides.items():
        args += [f"--{key}", str(value)]
    if before_from is not None:
        args += ["--heldout_before_from", str(before_from)]
    return args


def evaluated_before(run: Run, work_root: Path) -> Path | None:
    """
    A finished run of the same task and seed whose evaluation of the initial model can be reused: of the same phase,
    or for a variant, of the main table (whose OPO runs the variants are compared with).
    """
    phases = [run.phase] + (["main"] if run.phase == "variants" else [])
    for phase in phases:
        for sibling in sorted((DOCS / "runs" / phase / run.task).glob(f"*-seed{run.seed}")):
            files = RunFiles(sibling)
            if files.finished and files.heldout_path.exists():
                return sibling
    return None


def execute(run: Run, work_root: Path, threads: int, commit: bool, log) -> None:
    work = run.work_dir(work_root)
    if work.exists():
        shutil.rmtree(work)  # an interrupted attempt: start it again
    work.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    with (work / "run.log").open("w") as out:
        process = subprocess.run(
            command(run, work_root, evaluated_before(run, work_root)), cwd=REPO, env=env, stdout=out, stderr=out
        )
    wall = time.perf_counter() - start
    if process.returncode != 0:
        log(
            f"FAILED {run.phase}/{run.task}/{run.key} after {wall:.0f} s (exit {process.returncode}): see {work}/run.log"
        )
        return
    # The run's own files, as the job wrote them (its summary records its wall time and threads); the run's name,
    # phase, task and overrides are its folder and this script's tables.
    summary = RunFiles(work).copy_raw_files(run.docs_dir).read_summary()
    for path in work.glob("*.safetensors"):
        path.unlink()  # checkpoints are not raw results
    log(f"done {run.phase}/{run.task}/{run.key} in {wall / 60:.1f} min: held-out {summary.heldout_accuracy_before:.3f}"
        f" -> {summary.heldout_accuracy_after:.3f}")  # fmt: skip
    if commit:
        _commit(run)


def _commit(run: Run) -> None:
    top = Path(
        subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=DOCS, capture_output=True, text=True
        ).stdout.strip()
    )
    rel = run.docs_dir.relative_to(top)
    for _ in range(10):  # another commit may hold the index lock for a moment
        added = subprocess.run(["git", "add", str(rel)], cwd=top, capture_output=True)
        done = subprocess.run(["git", "commit", "-q", "-m", f"{DOCS.name.replace('_', ' ')}: {run.phase}/{run.task}/{run.key}",
                               "--", str(rel)], cwd=top, capture_output=True)  # fmt: skip
        if added.returncode == 0 and done.returncode == 0:
            return
        time.sleep(5)


def run_phase(runs: list[Run], jobs: int, work_root: Path, commit: bool) -> None:
    threads = max(1, (os.cpu_count() or 2) // jobs)

    def log(message):
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    pending = [r for r in runs if not r.done]
    log(f"{len(runs) - len(pending)} of {len(runs)} runs already done; {len(pending)} to go, {jobs} at a time")
    # Task by task, so that an interrupted phase leaves whole tasks behind. Within a task, the first run of each seed
    # evaluates the initial model and the others of that seed reuse it, so those first runs go first.
    for task in dict.fromkeys(r.task for r in pending):
        firsts = {}
        for r in pending:
            if r.task == task and r.seed not in firsts and evaluated_before(r, work_root) is None:
                firsts[r.seed] = r
        rest = [r for r in pending if r.task == task and r not in firsts.values()]
        with ThreadPoolExecutor(jobs) as pool:
            started = {seed: pool.submit(execute, r, work_root, threads, commit, log) for seed, r in firsts.items()}
            others = [pool.submit(_run_after, started.get(r.seed), r, work_root, threads, commit, log) for r in rest]
            for future in [*started.values(), *others]:
                future.result()


def _run_after(first, run: Run, *args) -> None:
    # Only a run whose seed's first run is still going waits (for that run's evaluation of the initial model); the
    # others take the slots as they free up.
    if first is not None:
        first.result()
    execute(run, *args)


def measure(work_root: Path) -> dict:
    """
    Time a short OPO and a short GRPO run (6 steps, 64 test problems) one after the other with 2 threads, then both
    at once with 1 thread each; the plan's estimates come from these figures.
    """
    short = {"max_steps": 6, "num_test_samples": 64, "heldout_eval_steps": 0}
    runs = [Run("measure", TUNE_TASK, a, a, 0, LEARNING_RATES[1], short) for a in TUNE_ALGORITHMS]
    figures = {}
    for jobs in (1, 2):
        root, threads = work_root / f"measure-jobs{jobs}", max(1, (os.cpu_count() or 2) // jobs)
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
        subprocess.run(command(run, root, None), cwd=REPO, env=env, stdout=out, stderr=out, check=True)
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
        raise SystemExit(f"no {measured}: run `benchmark_v2.py measure` first")
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
    sys.path.insert(0, str(REPO))
    from opo_trl.harness.compare import load_run, outcome_matrix, write_report
    from opo_trl.harness.stats import mean_ci, paired_difference

    sections = []
    tuned = [r for r in tune_runs() if r.done]
    if tuned:
        records = {r: load_run(r.docs_dir, r.name, r.seed) for r in tuned}
        lines = ["| algorithm | learning rate | seeds | validation accuracy [95% CI] |", "|---|---|---|---|"]
        matrices = {}
        for algorithm in TUNE_ALGORITHMS:
            for lr in LEARNING_RATES:
                group = [records[r] for r in tuned if r.algorithm == algorithm and r.learning_rate == lr]
                matrix = outcome_matrix(group, sorted(x.seed for x in group))
                if matrix is not None:
                    matrices[algorithm, lr] = matrix
                    lines.append(f"| {algorithm} | {lr:g} | {len(group)} | {mean_ci(matrix)} |")
        lines += ["", "| learning rate | opo - grpo on validation [95% CI], p | verdict |", "|---|---|---|"]
        for lr in LEARNING_RATES:
            a, b = matrices.get(("opo", lr)), matrices.get(("grpo", lr))
            if a is not None and b is not None and a.shape == b.shape:
                diff = paired_difference(a, b)
                lines.append(f"| {lr:g} | {diff} | {diff.verdict} |")
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
        runs = [r for r in main_runs_if_tuned() if r.task == task and r.done]
        if runs:
            out = DOCS / "main" / task
            records = [load_run(r.docs_dir, r.name, r.seed) for r in runs]
            write_report(records, out, title=f"main table, {task}")
            sections.append(f"## Main table: {task}\n\n" + (out / "summary.md").read_text().split("\n", 2)[2])
            (out / "paper.md").write_text(paper_table(records))
            sections.append(f"## The paper's figures beside ours: {task}\n\n" + (out / "paper.md").read_text())
            (out / "resampling.md").write_text(resampling_table(records))
            sections.append(f"## Seeds or problems alone: {task}\n\n" + (out / "resampling.md").read_text())
    variants = [r for r in variant_runs_if_tuned() if r.done]
    if variants:
        default = [
            r for r in main_runs_if_tuned() if r.task == VARIANT_TASK and r.name == "opo" and r.seed in VARIANT_SEEDS
        ]
        runs = [load_run(r.docs_dir, r.name, r.seed) for r in default + variants if r.done]
        out = DOCS / "variants"
        write_report(runs, out, title=f"OPO variants, {VARIANT_TASK}")
        sections.append(f"## OPO's variants: {VARIANT_TASK}\n\n" + (out / "summary.md").read_text().split("\n", 2)[2])
        mechanics = variant_mechanics(runs)
        (out / "mechanics.md").write_text(mechanics)
        sections.append(f"## What OPO's variants did to training: {VARIANT_TASK}\n\n" + mechanics)
    text = "\n".join(sections)
    (DOCS / "report.md").write_text("# Benchmark v2: tables\n\n" + text)
    return text


def resampling_table(records, reference: str = "opo") -> str:
    """
    OPO minus each baseline with both the seeds and the problems resampled (the benchmark's intervals) beside the
    problems resampled alone (every seed kept once), and how far apart the seeds of one algorithm land.
    """
    from opo_trl.harness.compare import outcome_matrix
    from opo_trl.harness.stats import paired_difference

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
        a, b = outcome_matrix(ours, seeds), outcome_matrix(theirs, seeds)
        both, alone = paired_difference(a, b), paired_difference(a, b, variation="problems")
        lines.append(
            f"| {name} | {len(seeds)} | {both.mean:+.3f} [{both.low:+.3f}, {both.high:+.3f}] | "
            f"{alone.mean:+.3f} [{alone.low:+.3f}, {alone.high:+.3f}] | {spread(ours, seeds)} | {spread(theirs, seeds)} |"
        )
    return "\n".join(lines) + "\n"


def paper_table(records) -> str:
    """The paper's figures beside ours for the same algorithms (`records`: the RunRecords of one task's main table)."""
    import numpy as np

    from opo_trl.harness.compare import late_steps, outcome_matrix, shared_steps, step_matrix
    from opo_trl.harness.stats import mean_ci

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
            f"{median:.3f} [{q1:.3f}, {q3:.3f}] | {accuracy} | {mean_ci(outcome_matrix(group, seeds))} |"
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
    parser.add_argument("--jobs", type=int, default=2, help="Runs at a time (each gets cores / jobs threads).")
    parser.add_argument("--work_dir", default=str(REPO / "runs" / "benchmark_v2"), help="Where runs write.")
    parser.add_argument("--docs_dir", default=str(DOCS), help="Where the raw files of finished runs go.")
    parser.add_argument("--commit", action="store_true", help="Commit each finished run's raw files.")
    parser.add_argument(
        "--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="main: run only these tasks (default: all)."
    )
    args = parser.parse_args(argv)
    DOCS = Path(args.docs_dir).resolve()
    work_root = Path(args.work_dir)
    if args.phase == "measure":
        figures = measure(work_root)
        DOCS.mkdir(parents=True, exist_ok=True)
        (DOCS / "measure.json").write_text(json.dumps(figures, indent=2) + "\n")
        print(json.dumps(figures, indent=2))
    elif args.phase == "plan":
        plan(args.jobs)
    elif args.phase == "tune":
        run_phase(tune_runs(), args.jobs, work_root, args.commit)
    elif args.phase == "main":
        run_phase([r for r in main_runs() if r.task in args.tasks], args.jobs, work_root, args.commit)
    elif args.phase == "variants":
        run_phase(variant_runs(), args.jobs, work_root, args.commit)
    else:
        print(report())


if __name__ == "__main__":
    main()
