# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
CPU speed: the quickstart (OPO, SmolLM2-135M-Instruct, 2-number addition, 16 steps) in each precision and generator
on 2 CPU cores: does it run faster, and does it learn as well as float32 `model.generate`?

    python benchmarks/cpu_speed.py profile [--configs ...]             # where one generating and one reusing step go
    python benchmarks/cpu_speed.py runs [--configs ...] [--seeds ...] [--commit]   # one run at a time, resumable
    python benchmarks/cpu_speed.py report                               # the table, from docs/cpu_speed/

The configurations (`CONFIGS`) differ only in the quickstart keys they override; everything else is the shipped
quickstart, its checkpoints included. `runs` goes seed by seed and, within
a seed, through every configuration, one run at a time (never two: this measures speed), so that a machine whose load
changes affects every configuration alike; each run's raw files and the load average around it are copied to
`docs/cpu_speed/runs/<config>-seed<N>/` and committed with `--commit`. A run with a `summary.json` there is done.

`report` prints, per configuration: held-out accuracy before and after (the seed-level paired difference against
`fp32`: `opo_trl.harness.stats.paired_difference` over seeds x problems), wall clock, seconds per generating and
per reusing step (TRL's `step_time`: the quickstart generates at odd steps and reuses at even ones), the held-out
evaluations' time, and peak RSS.

`profile` runs each configuration for 4 steps in this process, timing TRL's and opo-trl's own methods by wrapping them
(generation, the rollout's log-prob forward, the loss forward, backward, optimizer, the vLLM weight sync, the
held-out evaluation), and prints the second rollout's generating and reusing steps.
"""

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "cpu_speed"
WORK = REPO / "runs" / "cpu_speed"
SEEDS = (0, 1, 2, 3, 4)
# name -> quickstart overrides, each setting both keys (the quickstart's own default is vllm-bf16). vLLM's engine
# computes in the trainer's precision (opo_trl.vllm_cpu).
CONFIGS = {
    "fp32": {"bf16": False, "use_vllm": False},
    "bf16": {"bf16": True, "use_vllm": False},
    "vllm-fp32": {"bf16": False, "use_vllm": True},
    "vllm-bf16": {"bf16": True, "use_vllm": True},
}
BASELINE = "fp32"


def run_dir(config: str, seed: int) -> Path:
    return DOCS / "runs" / f"{config}-seed{seed}"


def command(config: str, seed: int) -> list[str]:
    overrides = [f"--{key}={str(value).lower()}" for key, value in CONFIGS[config].items()]
    return [
        sys.executable, "-m", "opo_trl.harness.cli", "train", "--config", "quickstart", "--seed", str(seed),
        "--output_dir", str(WORK / f"{config}-seed{seed}"), *overrides,
    ]  # fmt: skip


def execute(config: str, seed: int, commit: bool, code: Path = REPO) -> None:
    from opo_trl.harness.runfiles import RunFiles

    work = WORK / f"{config}-seed{seed}"
    load_before = os.getloadavg()
    start = time.perf_counter()
    log_path = WORK / f"{config}-seed{seed}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as out:
        # From `code`'s checkout: `python -m` imports from the working directory first.
        process = subprocess.run(command(config, seed), cwd=code, stdout=out, stderr=out)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        print(f"FAILED {config} seed {seed} (exit {process.returncode}): see {log_path}", flush=True)
        return
    target = run_dir(config, seed)
    summary = RunFiles(work).copy_raw_files(target).read_summary()
    shutil.rmtree(work)  # the trained model and the checkpoint (2 GB) are not raw results
    # The wall clock of the whole command (start-up and model load included) and the load around it: 1-minute load
    # averages, before and after; the run itself keeps about 2 busy.
    (target / "timing.json").write_text(
        json.dumps({"wall_seconds": wall, "loadavg_before": load_before, "loadavg_after": os.getloadavg()}) + "\n"
    )
    print(
        f"[{time.strftime('%H:%M:%S')}] {config} seed {seed}: {wall / 60:.1f} min, held-out "
        f"{summary.heldout_accuracy_before:.3f} -> {summary.heldout_accuracy_after:.3f}",
        flush=True,
    )
    if commit:
        rel = target.relative_to(REPO)
        subprocess.run(["git", "add", str(rel)], cwd=REPO, check=True)
        subprocess.run(["git", "commit", "-q", "-m", f"cpu speed: {config} seed {seed}", "--", str(rel)], cwd=REPO)


def runs(configs, seeds, commit: bool, code: Path = REPO) -> None:
    pending = [(c, s) for s in seeds for c in configs if not (run_dir(c, s) / "summary.json").exists()]
    print(f"{len(pending)} runs to go, one at a time, with the code of {code}", flush=True)
    for config, seed in pending:
        execute(config, seed, commit, code)


def load(config: str, seed: int) -> dict | None:
    from opo_trl.harness.runfiles import RunFiles

    files = RunFiles(run_dir(config, seed))
    if not files.finished:
        return None
    heldout = [r for r in files.read_heldout() if r.full]
    metrics = files.read_metrics()
    steps = {m["step"]: m["step_time"] for m in metrics if "step_time" in m and "step" in m}
    return {
        "summary": files.read_summary(),
        "before": [sum(s) / len(s) for s in heldout[0].sampled],
        "after": [sum(s) / len(s) for s in heldout[-1].sampled],
        "eval_seconds": [r.seconds for r in heldout],
        "generating": [t for step, t in steps.items() if step % 2 == 1],
        "reusing": [t for step, t in steps.items() if step % 2 == 0],
        "timing": json.loads((run_dir(config, seed) / "timing.json").read_text()),
    }


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def _median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def report() -> str:
    import numpy as np

    from opo_trl.harness import stats

    records = {c: {s: r for s in range(100) if (r := load(c, s)) is not None} for c in CONFIGS}
    base = records[BASELINE]
    # Each configuration against fp32 on the seeds both ran: one family of comparisons, Holm-adjusted.
    estimates = {}
    for config, runs_ in records.items():
        common = [s for s in sorted(runs_) if s in base]
        if config != BASELINE and common:
            estimates[config] = stats.paired_difference(
                np.array([runs_[s]["after"] for s in common]), np.array([base[s]["after"] for s in common])
            )
    estimates = dict(zip(estimates, stats.holm(list(estimates.values())), strict=True))
    lines = [
        f"Held-out accuracy after training against fp32: seed-level paired difference (95% t-interval over seeds x "
        f"problems), the smallest difference the seeds could have detected (80% power), and the verdict after Holm's "
        f"adjustment for the {len(estimates)} comparisons.",
        "",
        "Timings are medians (wall clock: over seeds, with the range; steps: over every step of every seed but each run's "
        "first, which warms up): a run that shared the machine with other work is an outlier, not a shift.",
        "",
        "| configuration | seeds | held-out before | after | after - fp32 [95% CI] | detectable | verdict (Holm) "
        "| wall (min) | s / generating step | s / reusing step | held-out eval (s, before / after) | peak RSS (GB) "
        "| load (1-min avg) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for config, runs_ in records.items():
        if not runs_:
            continue
        seeds = sorted(runs_)
        after = np.array([runs_[s]["after"] for s in seeds])
        before = np.array([runs_[s]["before"] for s in seeds])
        estimate = estimates.get(config)
        difference, detectable, verdict = "-", "-", "-"
        if estimate is not None:
            difference = f"{estimate.mean:+.3f} [{estimate.low:+.3f}, {estimate.high:+.3f}]"
            detectable = f"{estimate.detectable:.3f}" if estimate.detectable is not None else "-"
            verdict = estimate.adjusted_verdict
        walls = [runs_[s]["timing"]["wall_seconds"] / 60 for s in seeds]
        loads = [max(runs_[s]["timing"]["loadavg_before"][0], runs_[s]["timing"]["loadavg_after"][0]) for s in seeds]
        evals = [runs_[s]["eval_seconds"] for s in seeds]
        lines.append(
            f"| {config} | {len(seeds)} | {before.mean():.3f} | {after.mean():.3f} | {difference} | {detectable} "
            f"| {verdict} | {_median(walls):.2f} ({min(walls):.2f}-{max(walls):.2f}) "
            f"| {_median(t for s in seeds for t in runs_[s]['generating'][1:]):.1f} "
            f"| {_median(t for s in seeds for t in runs_[s]['reusing']):.1f} "
            f"| {_median(e[0] for e in evals):.0f} / {_median(e[-1] for e in evals):.0f} "
            f"| {_mean(runs_[s]['summary'].peak_rss_mb / 1024 for s in seeds):.1f} "
            f"| {min(loads):.1f}-{max(loads):.1f} |"
        )
    per_seed = ["", "Held-out accuracy after training, per seed:", ""]
    for config, runs_ in records.items():
        if runs_:
            per_seed.append(f"- {config}: " + ", ".join(f"{s}: {_mean(runs_[s]['after']):.3f}" for s in sorted(runs_)))
    return "\n".join(lines + per_seed)


# --- profile -----------------------------------------------------------------------------------------------------


class Phases:
    """Seconds per (global step, phase), from wrapped methods; a phase nested in another is subtracted from it."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.stack = []
        self.step = lambda: 0

    @contextlib.contextmanager
    def phase(self, name):
        start = time.perf_counter()
        self.stack.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            nested = self.stack.pop()
            self.seconds[self.step(), name] += elapsed - nested
            if self.stack:
                self.stack[-1] += elapsed

    def wrap(self, owner, attribute, name):
        original = getattr(owner, attribute)
        phases = self

        def wrapped(*args, **kwargs):
            with phases.phase(name() if callable(name) else name):
                return original(*args, **kwargs)

        setattr(owner, attribute, wrapped)


def profile(configs) -> str:
    """Each configuration's profile in its own process (a vLLM engine leaves process state behind), one at a time."""
    rows = []
    for config in configs:
        out = WORK / f"profile-{config}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, __file__, "profile-one", "--configs", config], cwd=REPO, check=True)
        seconds = {tuple(json.loads(k)): v for k, v in json.loads(out.read_text()).items()}
        names = sorted({name for _, name in seconds})
        for step, kind in ((3, "generating"), (4, "reusing")):
            rows.append((config, kind, {n: seconds.get((step, n), 0.0) for n in names if n != "held-out evaluation"}))
        evaluations = sum(v for (_, n), v in seconds.items() if n == "held-out evaluation")
        rows.append((config, "held-out evaluations, before + after", {"held-out evaluation": evaluations}))
    names = list(dict.fromkeys(name for _, _, split in rows for name in split))
    lines = ["| configuration | step | " + " | ".join(names) + " | total (s) |", "|---" * (len(names) + 3) + "|"]
    for config, kind, split in rows:
        cells = " | ".join(f"{split[n]:.1f}" if n in split else "" for n in names)
        lines.append(f"| {config} | {kind} | {cells} | {sum(split.values()):.1f} |")
    return "\n".join(lines)


def profile_one(config: str) -> None:
    """Run the quickstart for 4 steps (2 rollouts) with its phases timed; writes WORK/profile-<config>.json."""
    import torch

    from opo_trl.harness import evaluation
    from opo_trl.harness.arguments import parse_train_args
    from opo_trl.harness.run import train
    from opo_trl.trainer import OPOTrainer

    phases = Phases()
    in_loss = []
    original_init, original_loss = OPOTrainer.__init__, OPOTrainer._compute_loss

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        phases.step = lambda: self.state.global_step + 1
        if getattr(self, "vllm_generation", None) is not None:
            phases.wrap(self.vllm_generation, "sync_weights", "weight sync")

    def compute_loss(self, *args, **kwargs):
        in_loss.append(True)
        try:
            return original_loss(self, *args, **kwargs)
        finally:
            in_loss.pop()

    OPOTrainer.__init__, OPOTrainer._compute_loss = init, compute_loss
    # Outermost first: each phase's time excludes the phases nested in it.
    phases.wrap(OPOTrainer, "training_step", "backward and the rest")
    phases.wrap(OPOTrainer, "_compute_loss", "loss: the rest")
    phases.wrap(OPOTrainer, "_generate_single_turn", "generation")
    phases.wrap(OPOTrainer, "_calculate_rewards", "rewards")
    phases.wrap(OPOTrainer, "_get_per_token_logps_and_entropies",
                lambda: "loss forward" if in_loss else "rollout log-prob forward")  # fmt: skip
    phases.wrap(torch.optim.AdamW, "step", "optimizer")
    phases.wrap(evaluation, "evaluate_heldout", "held-out evaluation")
    argv = command(config, 0)[4:] + ["--max_steps", "4", "--save_strategy", "no"]
    argv += ["--output_dir", str(WORK / f"profile-{config}")]
    train(*parse_train_args(argv))
    out = {json.dumps(list(key)): value for key, value in phases.seconds.items()}
    (WORK / f"profile-{config}.json").write_text(json.dumps(out, indent=1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["profile", "runs", "report", "profile-one"])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--commit", action="store_true", help="Commit each finished run's raw files.")
    parser.add_argument(
        "--code",
        type=Path,
        default=REPO,
        help="runs: train with the opo_trl of this checkout (e.g. a frozen `git worktree`), so that editing this one "
        "while the benchmark runs changes nothing; the raw files still go to this checkout's docs/cpu_speed.",
    )
    args = parser.parse_args(argv)
    if args.phase == "runs":
        runs(args.configs, args.seeds, args.commit, args.code.resolve())
    elif args.phase == "report":
        text = report()
        DOCS.mkdir(parents=True, exist_ok=True)
        (DOCS / "report.md").write_text(text + "\n")
        print(text)
    elif args.phase == "profile-one":
        profile_one(args.configs[0])
    else:
        text = profile(args.configs)
        DOCS.mkdir(parents=True, exist_ok=True)
        (DOCS / "profile.md").write_text(text + "\n")
        print(text)


if __name__ == "__main__":
    main()
