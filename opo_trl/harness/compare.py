# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
`opo-trl compare`: OPO against GRPO, DAPO and GSPO through one code path, with confidence intervals.

    opo-trl compare --config recipes/compare_cpu.yaml --algorithms opo grpo dapo gspo --seeds 0 1 2 \\
        --output_dir runs/compare [--learning_rates opo=3e-5 grpo=1e-5] [--last_k 5] [--key value ...]

Every run is the training job of `opo-trl train --config <recipe> --algorithm <a> --seed <s>` in its own process (so
peak memory is the run's own), with the same task, model, generation budget and step count; only the algorithm (and,
if given, its learning rate) differs. Finished runs (a `summary.json` in their folder) are kept, so an interrupted
comparison resumes where it stopped. The runs of one seed share the evaluation of the initial model. Every run's
`summary.json` records its answer checker (`opo_trl.harness.rewards.answer_checker`: math-verify and its version): runs
scored by different checkers are never compared, and a comparison whose finished runs were scored otherwise than this
install scores refuses to start. Then writes:

- `steps.csv`: one row per (algorithm, seed, step) with training reward, held-out accuracy, grad norm, entropy,
  completion length, the baselines' handicaps and the `opo/` diagnostics;
- `summary.md` / `summary.json`: the answer checker, held-out accuracy after training with 95% t-intervals over seeds
  and problems (`opo_trl.harness.stats`), OPO against each baseline as a paired difference (interval, p-value, the
  smallest difference it could have detected, verdict, and the verdict after Holm's adjustment for the other
  baselines), the same pairing over training steps (late training reward, median gradient norm) and interim
  evaluations, and the other figures;
- `curves.png`: held-out accuracy, training reward, gradient norm, entropy, completion length and OPO's chi-square,
  equilibrium gap and mu over the steps, with bands over seeds (see `opo_trl.harness.plots`).
"""

import argparse
import csv
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import stats
from .rewards import answer_checker
from .runfiles import HeldoutRecord, RunFiles, RunSummary


STEP_COLUMNS = {
    "reward": "reward",
    "reward_std": "reward_std",
    "heldout_accuracy": "heldout/accuracy",
    "heldout_interim_accuracy": "heldout/interim_accuracy",
    "heldout_greedy_accuracy": "heldout/greedy_accuracy",
    "grad_norm": "grad_norm",
    "entropy": "entropy",
    "completion_length": "completions/mean_length",
    "truncated_frac": "completions/clipped_ratio",
    "clip_frac": "clip_ratio/region_mean",
    "step_time": "step_time",
}


# The answer checker of run files written before it was recorded: pairs only with other such runs.
UNKNOWN_CHECKER = "unknown"


@dataclass
class RunRecord:
    """One finished run: its summary, its logged steps and its held-out evaluations."""

    name: str
    seed: int
    summary: RunSummary
    steps: list[dict]
    heldout: list[HeldoutRecord]

    def outcomes(self, greedy: bool = False, before: bool = False, step: int | None = None) -> np.ndarray | None:
        """Per-problem outcomes of the evaluation before (step 0) or after training, or of the interim evaluation (the
        first problems of the held-out set) at `step`: the fraction of correct samples, or greedy decoding's 0/1."""
        if step is not None:
            record = next((r for r in self.heldout if r.step == step and not r.full), None)
        else:
            full = [r for r in self.heldout if r.full]
            record = None if not full or (not before and len(full) < 2) else full[0] if before else full[-1]
        if record is None:
            return None
        if greedy:
            return None if record.greedy is None else np.asarray(record.greedy, dtype=np.float64)
        return np.asarray([sum(s) / len(s) for s in record.sampled], dtype=np.float64)

    @property
    def answer_checker(self) -> str:
        return self.summary.answer_checker or UNKNOWN_CHECKER

    def values(self, key: str) -> list[float]:
        return [e[key] for e in self.steps if e.get(key) is not None]

    def logged(self, key: str) -> dict[int, float]:
        """`{step: value}` of a logged figure."""
        return {e["step"]: e[key] for e in self.steps if e.get(key) is not None}

    def zero_gradient_steps(self) -> tuple[int, int]:
        """
        Optimizer steps whose gradient was exactly zero although their rollout had a learning signal (a group whose
        rewards differ), and how many steps had a signal. With every group tied the gradient is zero for any
        algorithm; with a signal, an exactly-zero gradient means the loss itself cut it off (a clipped ratio).
        """
        zero = signal = 0
        no_signal = 1.0  # the fraction of tied groups of the rollout the step uses, logged when it was generated
        for entry in self.steps:
            no_signal = entry.get("frac_reward_zero_std", no_signal)
            if "grad_norm" in entry and no_signal < 1.0:
                signal += 1
                zero += entry["grad_norm"] == 0
        return zero, signal


def load_run(run_dir: Path, name: str | None = None, seed: int | None = None) -> RunRecord:
    """Read a finished run's files (`runfiles`): its summary, its logged steps and its held-out evaluations."""
    files = RunFiles(run_dir)
    summary = files.read_summary()
    by_step = {}
    for entry in files.read_metrics():
        if "step" not in entry or "train_runtime" in entry:
            continue
        by_step.setdefault(entry["step"], {}).update(entry)
    return RunRecord(
        name=name or summary.algorithm,
        seed=summary.seed if seed is None else seed,
        summary=summary,
        steps=[by_step[s] for s in sorted(by_step)],
        heldout=files.read_heldout(),
    )


def run_comparison(
    config, algorithms, seeds, output_dir, extra_args=(), last_k=5, in_process=False, learning_rates=None
):
    """Run every (seed, algorithm) pair not yet finished, then write the report; returns its summary rows."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    learning_rates = learning_rates or {}
    pairs = [(seed, algorithm) for seed in seeds for algorithm in algorithms]
    # Before any training: the runs still to do will be scored by this install's checker, if their rewards use it.
    expected = answer_checker() if "accuracy" in _reward_names(config, extra_args) else UNKNOWN_CHECKER
    checkers = {}
    for seed, algorithm in pairs:
        files = RunFiles(output_dir / f"{algorithm}-seed{seed}")
        if files.finished:
            checker = files.read_summary().answer_checker or UNKNOWN_CHECKER
            checkers.setdefault(checker, []).append(f"{algorithm}-seed{seed}")
        else:
            checkers.setdefault(expected, []).append(f"{algorithm}-seed{seed} (to run)")
    common_answer_checker(checkers)
    for seed, algorithm in tqdm(pairs, desc="comparison runs"):
        run_dir = output_dir / f"{algorithm}-seed{seed}"
        if RunFiles(run_dir).finished:
            continue
        args = ["--config", str(config), "--algorithm", algorithm, "--seed", str(seed), "--output_dir", str(run_dir)]
        if algorithm in learning_rates:
            args += ["--learning_rate", str(learning_rates[algorithm])]
        args += list(extra_args)
        # The initial model is the same for every algorithm of a seed: evaluate it once.
        before = _run_evaluated_before(output_dir, algorithms, seed)
        if before is not None:
            args += ["--heldout_before_from", str(before)]
        if in_process:
            from .run import main

            main(args)
        else:
            subprocess.run([sys.executable, "-m", "opo_trl.harness.run", *args], check=True)
    runs = [
        load_run(output_dir / f"{a}-seed{s}", a, s)
        for s in seeds
        for a in algorithms
        if RunFiles(output_dir / f"{a}-seed{s}").finished
    ]
    return write_report(runs, output_dir, last_k=last_k)


def _reward_names(config, extra_args) -> list[str]:
    """The reward functions the runs will use: the recipe's `reward_funcs` (default `accuracy`), or the command line's."""
    from .arguments import load_recipe

    args = list(extra_args)
    if "--reward_funcs" in args:
        values = args[args.index("--reward_funcs") + 1 :]
        return list(values[: next((i for i, v in enumerate(values) if v.startswith("--")), len(values))])
    return list(load_recipe(str(config)).get("reward_funcs", ["accuracy"]))


def common_answer_checker(checkers: dict[str, list[str]]) -> str | None:
    """
    The one answer checker of `{checker: [run names]}`; a one-line ValueError if there are several, since runs
    scored by different checkers (say, with and without math-verify) give accuracies that are not comparable.
    """
    if len(checkers) > 1:
        listed = "; ".join(f"{', '.join(names)} by {checker!r}" for checker, names in checkers.items())
        raise ValueError(
            f"runs scored by different answer checkers cannot be compared: {listed}. Rerun one side in the other's "
            "environment (or move its runs out of the output folder)."
        )
    return next(iter(checkers), None)


def _run_evaluated_before(output_dir, algorithms, seed):
    """A finished run of this seed that evaluated the initial model, if any."""
    for algorithm in algorithms:
        run_dir = output_dir / f"{algorithm}-seed{seed}"
        files = RunFiles(run_dir)
        if files.finished and files.heldout_path.exists():
            return run_dir
    return None


def outcome_matrix(runs: list[RunRecord], seeds: list[int], **kwargs) -> np.ndarray | None:
    """`outcomes[seed, problem]` of the runs of the given seeds, in that order (`kwargs`: those of
    [`RunRecord.outcomes`]); `None` if any is missing."""
    by_seed = {r.seed: r for r in runs}
    rows = [by_seed[s].outcomes(**kwargs) if s in by_seed else None for s in seeds]
    if not rows or any(r is None for r in rows) or len({len(r) for r in rows}) != 1:
        return None
    return np.stack(rows)


def step_matrix(runs: list[RunRecord], seeds: list[int], key: str, steps: list[int]) -> np.ndarray | None:
    """
    `values[seed, step]` of a logged figure at `steps`; `None` if a seed or a step is missing.

    Runs of the same seed train on the same prompts in the same order (TRL's sampler is seeded by `seed`), so the
    matrices of two algorithms pair step by step, as held-out outcomes pair problem by problem.
    """
    by_seed = {r.seed: r.logged(key) for r in runs}
    if not seeds or not steps or any(s not in by_seed or not set(steps) <= set(by_seed[s]) for s in seeds):
        return None
    return np.array([[by_seed[s][t] for t in steps] for s in seeds])


def shared_steps(runs: list[RunRecord], key: str) -> list[int]:
    """The steps at which every run logged `key`."""
    return sorted(set.intersection(*(set(r.logged(key)) for r in runs))) if runs else []


# Fewest steps in the late window: a "late" figure of one or two steps is one rollout's luck.
LATE_MIN_STEPS = 4


def late_steps(steps: list[int]) -> list[int]:
    """
    The late window of the logged `steps`, where the paper reads its final training reward: their last quarter,
    widened to `LATE_MIN_STEPS` when the quarter is shorter, as long as that stays within the second half; empty when
    fewer than `2 * LATE_MIN_STEPS` steps were logged. (A run that generates every other step logs its reward on half
    its steps: the CPU preset's 16 steps log 8, whose last 4 are the window.)
    """
    size = max(len(steps) // 4, LATE_MIN_STEPS)
    return steps[-size:] if size <= len(steps) // 2 else []


def too_few_steps(logged: int) -> str:
    """The table's words for a late window that `logged` steps cannot hold."""
    return f"too few steps ({logged} logged; the late window needs {2 * LATE_MIN_STEPS})"


def _estimate(a, b, **kwargs) -> stats.Estimate | None:
    """The paired difference of two matrices, or `None` when one is missing or their shapes differ."""
    if a is None or b is None or a.shape != b.shape:
        return None
    return stats.paired_difference(a, b, **kwargs)


def _cell(estimate: stats.Estimate | None, score: bool = True) -> dict | None:
    """A paired difference as a summary cell; `score=False` for figures that are not scores (neutral words)."""
    if estimate is None:
        return None
    verdict = estimate.verdict if score else estimate.direction
    adjusted = estimate.adjusted_verdict if score else estimate.adjusted_direction
    return vars(estimate) | {"str": str(estimate), "verdict": verdict, "adjusted_verdict": adjusted}


def summary_rows(runs: list[RunRecord], last_k: int = 5, reference: str = "opo") -> dict:
    """Per algorithm: accuracies with intervals and the other figures; per baseline: the paired difference to OPO."""
    checkers = {}
    for r in runs:
        checkers.setdefault(r.answer_checker, []).append(f"{r.name}-seed{r.seed}")
    checker = common_answer_checker(checkers)
    names = list(dict.fromkeys(r.name for r in runs))
    by_name = {n: sorted((r for r in runs if r.name == n), key=lambda r: r.seed) for n in names}
    rows = []
    for name, group in by_name.items():
        seeds = [r.seed for r in group]
        row = {
            "algorithm": name,
            "seeds": seeds,
            "learning_rate": _common(r.summary.learning_rate for r in group),
        }
        for key, kwargs in (("before", {"before": True}), ("after", {}), ("greedy_after", {"greedy": True})):
            matrix = outcome_matrix(group, seeds, **kwargs)
            row[key] = None if matrix is None else vars(stats.mean_ci(matrix)) | {"str": str(stats.mean_ci(matrix))}
        row["final_reward"] = _spread(
            [statistics.fmean(r.values("reward")[-last_k:]) for r in group if r.values("reward")]
        )
        grad_norms = [g for r in group for g in r.values("grad_norm")]
        row["grad_norm"] = _quartiles(grad_norms)
        row["steps"] = len(grad_norms)
        counts = [r.zero_gradient_steps() for r in group]
        row["zero_grad_steps"], row["steps_with_signal"] = sum(c[0] for c in counts), sum(c[1] for c in counts)
        row["truncated_frac"] = _spread(
            [
                statistics.fmean(r.values("completions/clipped_ratio"))
                for r in group
                if r.values("completions/clipped_ratio")
            ]
        )
        row["clip_frac"] = _spread(
            [statistics.fmean(r.values("clip_ratio/region_mean")) for r in group if r.values("clip_ratio/region_mean")]
        )
        row["seconds_per_step"] = _spread([r.summary.seconds_per_step for r in group])
        row["wall_minutes"] = _spread([r.summary.wall_seconds / 60 for r in group if r.summary.wall_seconds])
        rows.append(row)
    paired = []
    if reference in by_name:
        for name in names:
            if name == reference:
                continue
            seeds = sorted({r.seed for r in by_name[reference]} & {r.seed for r in by_name[name]})
            entry = {"baseline": name, "seeds": seeds}
            ours, theirs = by_name[reference], by_name[name]
            for key, kwargs in (("after", {}), ("greedy_after", {"greedy": True})):
                entry[key] = _estimate(outcome_matrix(ours, seeds, **kwargs), outcome_matrix(theirs, seeds, **kwargs))
            # The paper's claims are about late training reward and gradient norm, and about how the held-out
            # accuracy moves during training: the same pairing, over training steps and interim evaluations.
            both = [r for r in ours + theirs if r.seed in seeds]
            rewarded, normed = shared_steps(both, "reward"), shared_steps(both, "grad_norm")
            late = late_steps(rewarded)
            entry["reward_late"] = _estimate(*(step_matrix(g, seeds, "reward", late) for g in (ours, theirs)))
            entry["reward_late_steps"] = [late[0], late[-1]] if late else None
            entry["reward_steps"] = len(rewarded)
            entry["grad_norm_median"] = _estimate(
                *(step_matrix(g, seeds, "grad_norm", normed) for g in (ours, theirs)), statistic="median"
            )
            interim_steps = sorted({h.step for r in ours + theirs for h in r.heldout if not h.full})
            entry["interim"] = {
                step: _estimate(outcome_matrix(ours, seeds, step=step), outcome_matrix(theirs, seeds, step=step))
                for step in interim_steps
            }
            paired.append(entry)
    # Each figure asks the same question of every baseline: Holm's adjustment over those comparisons.
    for key in ("after", "greedy_after", "reward_late", "grad_norm_median"):
        for entry, estimate in zip(paired, stats.holm([e[key] for e in paired]), strict=True):
            entry[key] = _cell(estimate, score=key != "grad_norm_median")
    for step in sorted({t for e in paired for t in e["interim"]}):
        for entry, estimate in zip(paired, stats.holm([e["interim"].get(step) for e in paired]), strict=True):
            if step in entry["interim"]:
                entry["interim"][step] = _cell(estimate)
    return {"algorithms": rows, "paired": paired, "reference": reference, "answer_checker": checker}  # fmt: skip


def summary_markdown(summary: dict, last_k: int = 5) -> str:
    def ci(cell):
        return "n/a" if cell is None else cell["str"]

    def spread(cell, digits=3):
        return "n/a" if cell is None else f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"

    def quartiles(cell):
        return "n/a" if cell is None else f"{cell['median']:.3f} [{cell['q1']:.3f}, {cell['q3']:.3f}]"

    lines = [
        "| algorithm | seeds | learning rate | held-out before | held-out after [95% CI] | greedy after [95% CI] | "
        f"training reward (last {last_k}) | grad norm median [IQR] | zero grad with signal | truncated | clip frac | "
        "s / step | wall min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["algorithms"]:
        lines.append(
            f"| {r['algorithm']} | {len(r['seeds'])} | {r['learning_rate'] if r['learning_rate'] is not None else '-'} | "
            f"{ci(r['before'])} | {ci(r['after'])} | {ci(r['greedy_after'])} | {spread(r['final_reward'])} | "
            f"{quartiles(r['grad_norm'])} | {r['zero_grad_steps']}/{r['steps_with_signal']} | {spread(r['truncated_frac'])} | "
            f"{spread(r['clip_frac'])} | {spread(r['seconds_per_step'], 1)} | {spread(r['wall_minutes'], 1)} |"
        )
    lines += [
        "",
        "Held-out accuracy: pass@1 over the held-out problems (the mean over the samples of each problem), mean over "
        "seeds and problems with a 95% t-interval counting both. Training reward, truncated fraction and clip "
        "fraction: mean ± std over seeds of each run's mean. Grad norm: over every logged step of every seed. Zero grad "
        "with signal: optimizer steps whose gradient was exactly 0 although some group of their rollout had unequal "
        "rewards (the loss cut the gradient off), out of the steps with such a group. Truncated: completions cut at the "
        "length limit (DAPO masks them out of its loss).",
        "",
        f"Answer checker of every run (how the `accuracy` reward compares answers): {_checker_text(summary)}.",
    ]
    if summary["paired"]:
        reference = summary["reference"]
        families = len(summary["paired"])
        lines += [
            "",
            f"| {reference} vs | common seeds | Δ held-out [95% CI], p, detectable | verdict | Holm | "
            "Δ greedy [95% CI], p, detectable | verdict | Holm |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in summary["paired"]:
            lines.append(
                f"| {p['baseline']} | {len(p['seeds'])} | {_verdict_cells(p['after'])} | "
                f"{_verdict_cells(p['greedy_after'])} |"
            )
        lines += [
            "",
            f"Δ = {reference} minus the baseline on the same seeds and problems, with a 95% t-interval whose variance "
            "counts both the seeds and the problems (`opo_trl.harness.stats`: about one degree of freedom per seed when "
            "the seeds disagree more than the problems). A verdict says 'ahead' or 'behind' only when the interval "
            f"excludes 0 (p < 0.05), and only with at least {stats.MIN_SEEDS} common seeds: with fewer, the interval "
            "is labelled with what it covers ('problems only' for one seed). Detectable: the smallest true difference "
            "the comparison would have found with 80% power, from its standard error; 'not separated' means no more "
            f"than that a difference under it would likely not have been seen. Holm: the verdict adjusted for the "
            f"{families} comparison{'s' if families != 1 else ''} of its column (one per baseline), Holm's method.",
        ]
        interim_steps = sorted({int(t) for p in summary["paired"] for t in p.get("interim", {})})
        lines += [
            "",
            f"| {reference} vs | figure | Δ [95% CI], p, detectable | verdict | Holm |",
            "|---|---|---|---|---|",
        ]
        for p in summary["paired"]:
            late = p.get("reward_late_steps")
            interim = {int(t): v for t, v in p.get("interim", {}).items()}
            if late:
                late_row = f"training reward, steps {late[0]}-{late[1]} | {_verdict_cells(p.get('reward_late'))}"
            else:
                words = too_few_steps(p["reward_steps"]) if p.get("reward_steps") else "n/a"
                late_row = f"training reward, late steps | {words} | | "
            rows = [late_row, f"median grad norm | {_verdict_cells(p.get('grad_norm_median'))}"]
            rows += [f"interim held-out, step {t} | {_verdict_cells(interim.get(t))}" for t in interim_steps]
            lines += [f"| {p['baseline']} | {row} |" for row in rows]
        lines += [
            "",
            "Paired over training steps: on the same seed every algorithm trains on the same prompts in the same order, "
            "so the training reward and the gradient norm of a step pair across algorithms (the interval counts seeds "
            "and steps as it counts seeds and problems). Late steps: the last quarter of the steps that logged a "
            f"reward, at least {LATE_MIN_STEPS} of them and at most half (a run must log its reward on "
            f"{2 * LATE_MIN_STEPS} steps). The gradient norm (before clipping) compares medians, since single steps "
            "reach 10x the median: per seed the difference of the two runs' medians, then the t over seeds. Each loss "
            "has its own scale, so a larger norm is not by itself a better update: it is 'higher' or 'lower', never "
            "'ahead' or 'behind'. Interim held-out: the first problems of the held-out set, one sample each, during "
            "training. Holm: over the baselines, for each figure.",
        ]
    return "\n".join(lines) + "\n"


def _checker_text(summary: dict) -> str:
    checker = summary.get("answer_checker")
    if checker == UNKNOWN_CHECKER:
        return "not recorded (the run files predate its record, or the runs' rewards do not use it)"
    return "n/a" if checker is None else checker


def _verdict_cells(cell) -> str:
    """Three table cells: the difference with its interval, p-value and detectable difference; the verdict; Holm's."""
    if cell is None:
        return "n/a | | "
    return f"{cell['str']} | {cell['verdict']} | {cell.get('adjusted_verdict', cell['verdict'])}"


def per_run_markdown(runs: list[RunRecord], last_k: int = 5) -> str:
    lines = [
        f"| algorithm | seed | held-out before | held-out after | greedy after | training reward (last {last_k}) | "
        "s / step | wall min | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: (r.name, r.seed)):
        s = r.summary
        rewards = r.values("reward")
        final = statistics.fmean(rewards[-last_k:]) if rewards else float("nan")
        lines.append(
            f"| {r.name} | {r.seed} | {_fmt(s.heldout_accuracy_before)} | {_fmt(s.heldout_accuracy_after)} "
            f"| {_fmt(s.heldout_greedy_after)} | {final:.3f} | {_fmt(s.seconds_per_step, 1)} | "
            f"{_fmt(s.wall_seconds / 60 if s.wall_seconds else None, 1)} | {_fmt(s.peak_rss_mb, 0)} |"
        )
    return "\n".join(lines) + "\n"


def write_report(runs: list[RunRecord], output_dir, last_k: int = 5, title: str | None = None) -> dict:
    """steps.csv, summary.json, summary.md and curves.png of `runs` into `output_dir`; returns the summary."""
    from .plots import plot_curves

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_steps_csv(output_dir / "steps.csv", runs)
    summary = summary_rows(runs, last_k)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = summary_markdown(summary, last_k) + "\n" + per_run_markdown(runs, last_k)
    (output_dir / "summary.md").write_text((f"# {title}\n\n" if title else "") + text)
    plot_curves(runs, output_dir / "curves.png", title=title)
    return summary


def _write_steps_csv(path, runs):
    opo_keys = sorted({k for r in runs for e in r.steps for k in e if k.startswith("opo/")})
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["algorithm", "seed", "step", *STEP_COLUMNS, *opo_keys])
        for r in sorted(runs, key=lambda r: (r.name, r.seed)):
            for e in r.steps:
                values = [e.get(key) for key in STEP_COLUMNS.values()] + [e.get(k) for k in opo_keys]
                writer.writerow([r.name, r.seed, e["step"], *["" if v is None else v for v in values]])


def _spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}  # fmt: skip


def _quartiles(values):
    if not values:
        return None
    q1, median, q3 = np.quantile(values, [0.25, 0.5, 0.75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3), "n": len(values)}


def _common(values):
    values = set(values)
    return values.pop() if len(values) == 1 else None


def _fmt(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}f}"


HELP_EPILOG = f"""\
statistics (opo_trl.harness.stats): 95% t-intervals whose variance counts seeds and problems; a verdict
('ahead'/'behind') only when the interval excludes 0 and with at least {stats.MIN_SEEDS} common seeds; beside each
difference the smallest one it could have detected (80% power), and the verdict after Holm's adjustment for the
other baselines.

how long a run must be: the late training reward is read over the last quarter of the steps that log a reward, at
least {LATE_MIN_STEPS} of them and at most half, so a run must log its reward on at least {2 * LATE_MIN_STEPS} steps; a run that
generates every other optimizer step (the compare_cpu preset) logs it on half its steps and needs
{4 * LATE_MIN_STEPS} steps, the preset's length."""


def main(argv):
    parser = argparse.ArgumentParser(
        prog="opo-trl compare", description=__doc__.split("\n\n")[0], epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--config", required=True, help="Recipe shared by every run.")
    parser.add_argument("--algorithms", nargs="+", default=["opo", "grpo", "dapo", "gspo"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--output_dir", default="runs/compare")
    parser.add_argument(
        "--learning_rates", nargs="*", default=[], help="Per-algorithm learning rates, e.g. opo=3e-5 grpo=1e-5."
    )
    parser.add_argument("--last_k", type=int, default=5, help="Steps averaged for the final training reward.")
    args, extra = parser.parse_known_args(argv)
    try:
        rates = {k: float(v) for k, v in (item.split("=", 1) for item in args.learning_rates)}
    except ValueError:
        parser.error(f"--learning_rates takes algorithm=rate pairs, e.g. opo=3e-5; got {args.learning_rates}")
    summary = run_comparison(
        args.config, args.algorithms, args.seeds, args.output_dir, extra, args.last_k, learning_rates=rates
    )
    print(summary_markdown(summary, args.last_k))
    return 0
