# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
`opo-trl compare`: OPO against GRPO, DAPO and GSPO through one code path.

    opo-trl compare --config recipes/compare_cpu.yaml --algorithms opo grpo dapo gspo --seeds 0 1 2 \\
        --output_dir runs/compare [--last_k 5] [--key value ...]

Every run is the training job of `opo-trl train --config <recipe> --algorithm <a> --seed <s>` in its own process (so peak memory is the
run's own), with the same task, model, generation budget and step count; only the algorithm differs. Finished runs
(a `summary.json` in their folder) are kept, so an interrupted comparison resumes where it stopped. Then writes:

- `steps.csv`: one row per (algorithm, seed, step) with training reward, held-out accuracy, grad norm, entropy,
  completion length, step time and the `opo/` diagnostics;
- `summary.md` / `summary.json`: mean and spread over seeds per algorithm;
- `reward.png`, `heldout.png`, `grad_norm.png`: one line per algorithm, a band over seeds.
"""

import argparse
import csv
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

from tqdm.auto import tqdm

from .run import HELDOUT_FILE


STEP_COLUMNS = {
    "reward": "reward",
    "reward_std": "reward_std",
    "heldout_accuracy": "heldout/accuracy",
    "grad_norm": "grad_norm",
    "entropy": "entropy",
    "completion_length": "completions/mean_length",
    "step_time": "step_time",
}


def run_comparison(config, algorithms, seeds, output_dir, extra_args=(), last_k=5, in_process=False):
    """Run every (seed, algorithm) pair not yet finished, then aggregate; returns the summary rows."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pairs = [(seed, algorithm) for seed in seeds for algorithm in algorithms]
    for seed, algorithm in tqdm(pairs, desc="comparison runs"):
        run_dir = output_dir / f"{algorithm}-seed{seed}"
        if (run_dir / "summary.json").exists():
            continue
        args = [
            "--config",
            str(config),
            "--algorithm",
            algorithm,
            "--seed",
            str(seed),
            "--output_dir",
            str(run_dir),
            *extra_args,
        ]
        # The initial model is the same for every algorithm of a seed: evaluate it once.
        before = _run_evaluated_before(output_dir, algorithms, seed)
        if before is not None:
            args += ["--heldout_before_from", str(before)]
        if in_process:
            from .run import main

            main(args)
        else:
            subprocess.run([sys.executable, "-m", "opo_trl.run", *args], check=True)
    return aggregate(output_dir, algorithms, seeds, last_k)


def _run_evaluated_before(output_dir, algorithms, seed):
    """A finished run of this seed that evaluated the initial model, if any."""
    for algorithm in algorithms:
        run_dir = output_dir / f"{algorithm}-seed{seed}"
        if (run_dir / "summary.json").exists() and (run_dir / HELDOUT_FILE).exists():
            return run_dir
    return None


def load_run(run_dir):
    """Per-step rows and the summary of one finished run."""
    summary = json.loads((run_dir / "summary.json").read_text())
    by_step = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "step" not in entry or "train_runtime" in entry:
            continue
        by_step.setdefault(entry["step"], {}).update(entry)
    return summary, [by_step[s] for s in sorted(by_step)]


def aggregate(output_dir, algorithms, seeds, last_k=5):
    output_dir = Path(output_dir)
    runs = {}
    for algorithm in algorithms:
        for seed in seeds:
            run_dir = output_dir / f"{algorithm}-seed{seed}"
            if (run_dir / "summary.json").exists():
                runs[algorithm, seed] = load_run(run_dir)
    _write_steps_csv(output_dir / "steps.csv", runs)
    rows = [
        _summary_row(algorithm, [runs[a, s] for a, s in runs if a == algorithm], last_k) for algorithm in algorithms
    ]
    rows = [r for r in rows if r is not None]
    (output_dir / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    (output_dir / "summary.md").write_text(summary_markdown(rows, last_k) + "\n" + per_run_markdown(runs, last_k))
    _plot(output_dir, runs, algorithms)
    return rows


def _write_steps_csv(path, runs):
    opo_keys = sorted({k for _, steps in runs.values() for e in steps for k in e if k.startswith("opo/")})
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["algorithm", "seed", "step", *STEP_COLUMNS, *opo_keys])
        for (algorithm, seed), (_, steps) in sorted(runs.items()):
            for e in steps:
                values = [e.get(key) for key in STEP_COLUMNS.values()] + [e.get(k) for k in opo_keys]
                writer.writerow([algorithm, seed, e["step"], *["" if v is None else v for v in values]])


def _mean_spread(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def _summary_row(algorithm, runs, last_k):
    if not runs:
        return None

    def per_run(fn):
        return _mean_spread([fn(summary, steps) for summary, steps in runs])

    def last_rewards(steps):
        rewards = [e["reward"] for e in steps if "reward" in e]
        return statistics.fmean(rewards[-last_k:]) if rewards else None

    def mean_of(steps, key):
        values = [e[key] for e in steps if key in e]
        return statistics.fmean(values) if values else None

    return {
        "algorithm": algorithm,
        "seeds": len(runs),
        "final_reward": per_run(lambda s, steps: last_rewards(steps)),
        "heldout_before": per_run(lambda s, steps: s.get("heldout_accuracy_before")),
        "heldout_after": per_run(lambda s, steps: s.get("heldout_accuracy_after")),
        "grad_norm": per_run(lambda s, steps: mean_of(steps, "grad_norm")),
        "seconds_per_step": per_run(lambda s, steps: s.get("seconds_per_step")),
        "peak_rss_mb": per_run(lambda s, steps: s.get("peak_rss_mb")),
    }


def summary_markdown(rows, last_k):
    def fmt(stat, digits=3):
        if stat is None:
            return "n/a"
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f} [{stat['min']:.{digits}f}, {stat['max']:.{digits}f}]"

    lines = [
        f"| algorithm | seeds | training reward (last {last_k} logged) | held-out acc. before | held-out acc. after | "
        "mean grad norm | s / step | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['algorithm']} | {r['seeds']} | {fmt(r['final_reward'])} | {fmt(r['heldout_before'])} | "
            f"{fmt(r['heldout_after'])} | {fmt(r['grad_norm'])} | {fmt(r['seconds_per_step'], 1)} | "
            f"{fmt(r['peak_rss_mb'], 0)} |"
        )
    lines.append("")
    lines.append("Each cell: mean ± std over seeds [min, max].")
    return "\n".join(lines) + "\n"


def per_run_markdown(runs, last_k):
    lines = [
        f"| algorithm | seed | held-out before | held-out after | training reward (last {last_k} logged) | s / step | "
        "peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (algorithm, seed), (summary, steps) in sorted(runs.items()):
        rewards = [e["reward"] for e in steps if "reward" in e]
        final = statistics.fmean(rewards[-last_k:]) if rewards else float("nan")
        lines.append(
            f"| {algorithm} | {seed} | {summary.get('heldout_accuracy_before', float('nan')):.3f} | "
            f"{summary.get('heldout_accuracy_after', float('nan')):.3f} | {final:.3f} | "
            f"{summary.get('seconds_per_step') or float('nan'):.1f} | {summary.get('peak_rss_mb', float('nan')):.0f} |"
        )
    return "\n".join(lines) + "\n"


def _plot(output_dir, runs, algorithms):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[opo-trl] matplotlib not installed: no plots (pip install opo-trl[plot])", file=sys.stderr)
        return
    for name, key, label in [
        ("reward", "reward", "training reward"),
        ("heldout", "heldout/accuracy", "held-out accuracy"),
        ("grad_norm", "grad_norm", "gradient norm"),
    ]:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for algorithm in algorithms:
            curves = [
                {e["step"]: e[key] for e in steps if key in e} for (a, _), (_, steps) in runs.items() if a == algorithm
            ]
            curves = [c for c in curves if c]
            if not curves:
                continue
            steps = sorted(set().union(*curves))
            values = [[c[s] for c in curves if s in c] for s in steps]
            mean = [statistics.fmean(v) for v in values]
            line = ax.plot(
                steps,
                mean,
                label=f"{algorithm} ({len(curves)} seeds)",
                marker="o" if key.startswith("held") else None,
                markersize=3,
            )
            ax.fill_between(
                steps, [min(v) for v in values], [max(v) for v in values], alpha=0.15, color=line[0].get_color()
            )
        ax.set(xlabel="step", ylabel=label, title=f"{label} (mean, band = min..max over seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(output_dir / f"{name}.png", dpi=120)
        plt.close(fig)


def main(argv):
    parser = argparse.ArgumentParser(prog="opo-trl compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="Recipe shared by every run.")
    parser.add_argument("--algorithms", nargs="+", default=["opo", "grpo", "dapo", "gspo"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--output_dir", default="runs/compare")
    parser.add_argument("--last_k", type=int, default=5, help="Steps averaged for the final training reward.")
    args, extra = parser.parse_known_args(argv)
    rows = run_comparison(args.config, args.algorithms, args.seeds, args.output_dir, extra, args.last_k)
    print(summary_markdown(rows, args.last_k))
    return 0
