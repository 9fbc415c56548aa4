# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
Benchmark v4, rollout reuse with power: benchmark v3's question (does OPO's quadratic trust region let it take more
optimizer steps per generated rollout than ratio clipping lets GRPO and GSPO?) at a size built to be answered:
rollouts of 8 prompts x 6 completions, at least 8 seeds a cell, OPO at two stiffnesses and with a chi-square budget
per rollout, and GSPO at a clip range that does not cut off every reuse step. Phases, in order:

    python benchmarks/reuse_powered.py tune  --jobs 2 --commit   # OPO's mu_target_chi2, GSPO's clip: validation split
    python benchmarks/reuse_powered.py pilot --jobs 2 --commit   # OPO mu = 1 and GRPO at K = 4, 3 seeds: time, spread
    python benchmarks/reuse_powered.py plan --hours H [--seeds N] [--jobs 2]   # hours, detectable difference, the cut
    python benchmarks/reuse_powered.py runs --jobs 2 --commit [--only CELL ...]   # the planned grid, resumable
    python benchmarks/reuse_powered.py report                    # docs/benchmark_v4/report.md and reuse.png

Runs are launched, resumed and committed by `benchmarking.py` (as v3's): each is `python -m opo_trl.harness.run` in its
own process, two at a time; its raw files go to `docs/benchmark_v4/runs/<phase>/chain_sum/<run>/` and, with
`--commit`, are committed as it finishes; a run whose raw files are there is never run again. `pilot.json`,
`plan.json`, `tune.md` and `report.md` are written next to them (commit them by hand).

The task is v3's, reasoning-gym `chain_sum` (the recipe's 2000 training, 128 validation, 256 test problems): its
untrained accuracy (0.16-0.18 held-out) leaves room to learn and to lose, v2 and v3 measured it, and v3's trouble was
power, not the task (RESULTS, "Benchmark v3": only 4-7 of 12 rollouts of 2 prompts carried a signal; rollouts of 8
prompts carry one far more often).

A rollout serves K optimizer steps (v3's mechanism): `num_iterations = K`, with the rollout of 48 completions split
into `MICRO_BATCHES` micro-batches of 12 (`steps_per_generation = gradient_accumulation_steps = MICRO_BATCHES`), so
every one of the K steps accumulates the whole rollout; `max_steps = ROLLOUTS * K` keeps the generated completions the
same at every K. Every algorithm at v2's learning rate 1e-5, `TRAINING_OVERRIDES` on every run.

Cells (`CELLS`, in the order of `PRIORITY`): OPO at mu = 1 and mu = 0.25 and with the tuned `mu_target_chi2`; GRPO
(TRL's `loss_type="grpo"`, epsilon 0.2); GSPO at the tuned clip range; each at K = 4 and K = 8. At K = 1 two cells
stand for all: there every importance ratio is 1 on the only step of a rollout, so OPO's quadratic term has no gradient
whatever mu (or chi-square budget) is, and GSPO's sequence ratio has GRPO's gradient (in v3 GSPO and GRPO gave the
same held-out answer to every problem on every seed at K = 1): `opo-K1` and `grpo-K1` are the K = 1 reference of every
OPO cell and of GRPO and GSPO.

tune (validation split only, never test; `TUNE_SEEDS`, not grid seeds, so that no grid seed's training is chosen
for; K = 4, `TUNE_ROLLOUTS` rollouts; 128 validation problems x 2 samples before and after):
- OPO's `mu_target_chi2` from `MU_TARGET_CHI2_CANDIDATES` (v2's chosen mu at 0.01 was about 2 on rollouts with a
  signal, so the four budgets span mu of about 2, 1, 0.5 and 0.25 at v2's drive): the best mean validation pass@1
  over the tuning seeds; ties to the candidate listed first (the smaller budget, the smaller step per rollout).
- GSPO's clip range (epsilon, epsilon_high) from `GSPO_CLIP_CANDIDATES` (GSPO's published 3e-4 / 4e-4, v3's, and 10
  and 100 times wider), at the learning rate of the others: the candidates whose reuse steps with a signal had an
  exactly zero gradient (`benchmarking.zero_gradient_reuse_steps`, pooled over the tuning seeds) on at most
  `ZERO_GRADIENT_LIMIT` of them, then the best mean validation pass@1 among those; ties to the candidate listed first
  (the narrower clip). If none qualifies, the one with the fewest such steps (and `tune` says so).

pilot: the grid's runs of `PILOT_CELLS` at `PILOT_SEEDS` (they stay in the grid: the pilot is its first six runs),
two at a time as the grid runs; `pilot.json` holds each run's costs (`benchmarking.step_costs`) and wall minutes,
and the per-seed held-out pass@1 of OPO mu = 1 minus GRPO at K = 4, their mean and standard deviation.

plan: from the pilot, the whole grid's hours `--jobs` at a time and the detectable difference of OPO mu = 1 vs GRPO
at K = 4 (80% power, 5% two-sided: `benchmarking.planned_detectable`, (t_0.975 + t_0.80 at S - 1 df) x sd / sqrt(S))
at `SEED_COUNTS` seeds; then, at `--seeds` (at least `MIN_SEEDS`), the cells in `PRIORITY` order while they fit
`--hours`: a cell is kept whole or not at all, and none after the first that does not fit. K = 1 and K = 8 runs are
priced from the K = 4 pilot's seconds per generating and per reusing step. Written to `plan.json`.

runs: the planned cells x seeds (`--only`: the named cells of the whole grid, in that order, at the plan's seeds);
cells without a tuned setting need no finished tuning, so they can run beside it.

report: held-out pass@1 per cell with its 95% interval; every comparison (OPO minus each baseline per K; OPO's
stiffness against mu = 1; each cell against K = 1) with its difference, 95% interval, detectable difference, verdict
and Holm-adjusted verdict; the mechanism figures of v3 with their caveats.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import benchmarking
from benchmarking import REPO, Run


DOCS = REPO / "docs" / "benchmark_v4"
WORK = REPO / "runs" / "benchmark_v4"
TASK = "chain_sum"
# Precision and generator of every run, from the CPU-speed benchmark (docs/cpu_speed/report.md): vLLM's CPU engine
# in float32 (matched to the trainer: 2.5e-7 per token) learned no worse than float32 `model.generate`
# (+0.037 [-0.052, +0.127], 5 seeds) and generates faster. Not bf16, though vLLM bf16 was faster still: this benchmark
# is about reused rollouts, and under bf16 the reused rollout's Delta, which OPO's quadratic penalises and the
# baselines clip, is off by about its own size (docs/cpu_speed/bf16_numerics.md).
TRAINING_OVERRIDES = {"bf16": False, "use_vllm": True}
LEARNING_RATE = 1e-5  # v2's tuned rate, every algorithm's (v3's too)
PROMPTS_PER_ROLLOUT = 8
G = 6
MICRO_BATCHES = 4  # of PROMPTS_PER_ROLLOUT / MICRO_BATCHES prompts x G completions each
ROLLOUTS = 16
MAX_COMPLETION_LENGTH = 64  # v3's budget (docs/benchmark_v3/budget.json: 19% of untrained completions cut at 64)
HELDOUT_SEQUENCES = 256 * 3  # the recipe's 256 test problems x (2 samples + greedy)
K_VALUES = (1, 4, 8)
HEADLINE = ("opo-mu1-K4", "grpo-K4")  # the comparison the plan is powered for
TARGET_DETECTABLE = 0.05

# name -> (algorithm, overrides); "tuned": the setting `tune` chooses.
TUNED = "tuned"
CELLS_AT_K = {
    "opo-mu1": ("opo", {"mu": 1.0}),
    "grpo": ("grpo", {}),
    "opo-mu0.25": ("opo", {"mu": 0.25}),
    "opo-chi2": ("opo", TUNED),
    "gspo": ("gspo", TUNED),
}
CELLS = {
    **{
        f"{name}-K{k}": (algorithm, overrides, k)
        for k in (4, 8)
        for name, (algorithm, overrides) in CELLS_AT_K.items()
    },
    "opo-K1": ("opo", {"mu": 1.0}, 1),
    "grpo-K1": ("grpo", {}, 1),
}
# The order in which the plan keeps cells: the comparison the benchmark is powered for; the reference without reuse;
# OPO's stiffness (mu < 1, the direction that should allow more reuse; then the chi-square budget); GSPO at a fair clip;
# then K = 8 in the same order.
PRIORITY = (
    "opo-mu1-K4", "grpo-K4", "opo-K1", "grpo-K1", "opo-mu0.25-K4", "opo-chi2-K4", "gspo-K4",
    "opo-mu1-K8", "grpo-K8", "opo-mu0.25-K8", "opo-chi2-K8", "gspo-K8",
)  # fmt: skip
MIN_SEEDS = 8
SEED_COUNTS = (8, 10, 12, 16)

TUNE_SEEDS = (1000, 1001)
TUNE_K = 4
TUNE_ROLLOUTS = 8
MU_TARGET_CHI2_CANDIDATES = (0.01, 0.04, 0.16, 0.64)
GSPO_CLIP_CANDIDATES = ((3e-4, 4e-4), (3e-3, 4e-3), (3e-2, 4e-2))
ZERO_GRADIENT_LIMIT = 0.5

PILOT_CELLS = HEADLINE
PILOT_SEEDS = (0, 1, 2)


def reuse_overrides(k: int, rollouts: int = ROLLOUTS) -> dict:
    """The settings that make each rollout of `PROMPTS_PER_ROLLOUT x G` completions serve `k` whole optimizer steps."""
    return {
        **TRAINING_OVERRIDES,
        "num_iterations": k,
        "steps_per_generation": MICRO_BATCHES,
        "gradient_accumulation_steps": MICRO_BATCHES,
        "per_device_train_batch_size": PROMPTS_PER_ROLLOUT * G // MICRO_BATCHES,
        "num_generations": G,
        "max_steps": rollouts * k,
        "max_completion_length": MAX_COMPLETION_LENGTH,
        "heldout_eval_steps": 0,
    }


# Tuning.


def tune_candidates() -> dict[str, tuple[str, dict]]:
    """name -> (algorithm, setting), in the order ties are broken (the first listed wins)."""
    opo = {f"opo-chi2-{b:g}": ("opo", {"mu_target_chi2": b}) for b in MU_TARGET_CHI2_CANDIDATES}
    gspo = {f"gspo-clip{lo:g}": ("gspo", {"epsilon": lo, "epsilon_high": hi}) for lo, hi in GSPO_CLIP_CANDIDATES}
    return {**opo, **gspo}


def tune_runs() -> list[Run]:
    validation = {"heldout_split": "validation", "heldout_greedy": False}
    return [
        Run(
            DOCS,
            "tune",
            TASK,
            name,
            algorithm,
            seed,
            LEARNING_RATE,
            {**reuse_overrides(TUNE_K, TUNE_ROLLOUTS), **validation, **setting},
        )  # fmt: skip
        for seed in TUNE_SEEDS
        for name, (algorithm, setting) in tune_candidates().items()
    ]


def tune_rule(candidates: list[dict], zero_gradient_limit: float | None) -> dict:
    """
    The choice among `candidates` (in the order ties are broken), each `{"name", "scores": [validation pass@1 per
    seed], "zero": (zero-gradient reuse steps with a signal, reuse steps with a signal)}`: with `zero_gradient_limit`,
    only those whose zero share is at most it (none: the smallest share, first on ties); then the best mean score,
    the first listed on ties.
    """

    def share(c):
        zero, signal = c["zero"]
        return zero / signal if signal else 0.0

    eligible = candidates
    if zero_gradient_limit is not None:
        eligible = [c for c in candidates if share(c) <= zero_gradient_limit]
        if not eligible:
            return min(candidates, key=share)
    # Equal means are equal to 9 decimals (float sums of the same scores in another order differ in the last bit); max
    # keeps the first of them.
    return max(eligible, key=lambda c: round(statistics.fmean(c["scores"]), 9))


def tune_table() -> tuple[list[dict], dict[str, dict] | None]:
    """Every candidate's validation scores and zero-gradient reuse steps, and the chosen settings (None until every
    tuning run is done)."""
    records = benchmarking.load_records(tune_runs())
    candidates, complete = [], True
    for name, (algorithm, setting) in tune_candidates().items():
        group = [r for run, r in records.items() if run.name == name]
        complete &= len(group) == len(TUNE_SEEDS)
        counts = [benchmarking.zero_gradient_reuse_steps(r) for r in group]
        candidates.append({"name": name, "algorithm": algorithm, "setting": setting, "records": group,
                           "scores": [r.summary.heldout_accuracy_after for r in group],
                           "zero": (sum(z for z, _ in counts), sum(s for _, s in counts))})  # fmt: skip
    if not complete:
        return candidates, None
    opo = tune_rule([c for c in candidates if c["algorithm"] == "opo"], None)
    gspo = tune_rule([c for c in candidates if c["algorithm"] == "gspo"], ZERO_GRADIENT_LIMIT)
    return candidates, {"opo-chi2": opo["setting"], "gspo": gspo["setting"]}


def chosen_settings() -> dict[str, dict]:
    """The tuned cells' settings: `{"opo-chi2": {"mu_target_chi2": ...}, "gspo": {"epsilon": ..., ...}}`."""
    _, chosen = tune_table()
    if chosen is None:
        raise SystemExit("tuning is not finished: run `reuse_powered.py tune` first")
    return chosen


def tune_report() -> str:
    candidates, chosen = tune_table()
    lines = [
        f"## Tuning (validation split, seeds {', '.join(map(str, TUNE_SEEDS))}, K = {TUNE_K}, {TUNE_ROLLOUTS} rollouts)",
        "",
        "| candidate | seeds | validation pass@1 per seed | mean | zero-gradient reuse steps with a signal |",
        "|---|---|---|---|---|",
    ]
    for c in candidates:
        scores = ", ".join(f"{s:.3f}" for s in c["scores"]) or "n/a"
        mean = f"{statistics.fmean(c['scores']):.3f}" if c["scores"] else "n/a"
        lines.append(f"| {c['name']} | {len(c['scores'])} | {scores} | {mean} | {c['zero'][0]} of {c['zero'][1]} |")
    lines.append("")
    if chosen is None:
        lines.append("Tuning not finished: no choice yet.")
    else:
        gspo = [c for c in candidates if c["algorithm"] == "gspo"]
        if all(c["zero"][1] and c["zero"][0] / c["zero"][1] > ZERO_GRADIENT_LIMIT for c in gspo):
            lines.append(f"No GSPO clip range kept its zero-gradient share at or under {ZERO_GRADIENT_LIMIT}: the one "
                         "with the fewest was taken; a wider range or a lower learning rate would be the next to try.")  # fmt: skip
        lines.append(f"Chosen: OPO `mu_target_chi2` = {chosen['opo-chi2']['mu_target_chi2']:g} (best mean validation "
                     f"pass@1, ties to the smaller budget); GSPO clip {chosen['gspo']['epsilon']:g} / "
                     f"{chosen['gspo']['epsilon_high']:g} (at most {ZERO_GRADIENT_LIMIT:g} of its reuse steps with a "
                     "signal at zero gradient, then the best mean validation pass@1, ties to the narrower range).")  # fmt: skip
    return "\n".join(lines) + "\n"


# The grid.


def grid_runs(seeds, chosen: dict | None = None, cells=PRIORITY) -> list[Run]:
    """
    The runs of `cells` (in that order) x `seeds`. Without `chosen` (the tuned settings) the tuned cells lack their
    setting: such runs serve for counting and pricing, never for launching.
    """
    out = []
    for cell in cells:
        algorithm, overrides, k = CELLS[cell]
        if overrides == TUNED:
            overrides = (chosen or {}).get(cell.rsplit("-K", 1)[0], {})
        out += [Run(DOCS, "grid", TASK, cell, algorithm, seed, LEARNING_RATE, {**overrides, **reuse_overrides(k)})
                for seed in seeds]  # fmt: skip
    return out


def pilot_runs() -> list[Run]:
    return grid_runs(PILOT_SEEDS, cells=PILOT_CELLS)


def pilot_summary() -> dict:
    """The pilot's costs and its per-seed spread of OPO mu = 1 minus GRPO at K = 4, from its raw files."""
    from opo_trl.harness.runfiles import RunFiles

    runs = pilot_runs()
    missing = [r.key for r in runs if not r.done]
    if missing:
        raise SystemExit(f"the pilot is not finished ({', '.join(missing)}): run `reuse_powered.py pilot` first")
    per_run = {f"{r.key}": benchmarking.step_costs(RunFiles(r.docs_dir)) for r in runs}
    records = benchmarking.load_records(runs)
    after = {(run.name, run.seed): record.outcomes().mean() for run, record in records.items()}
    ours, theirs = PILOT_CELLS
    differences = [float(after[ours, s] - after[theirs, s]) for s in PILOT_SEEDS]
    paired = benchmarking.paired_on_common_seeds(
        [r for run, r in records.items() if run.name == ours], [r for run, r in records.items() if run.name == theirs]
    )

    def median(key):
        values = [c[key] for c in per_run.values() if c.get(key) is not None]
        return statistics.median(values) if values else None

    return {
        "runs": {key: {k: v for k, v in c.items() if k != "sampling_logp_difference"} for key, c in per_run.items()},
        "wall_minutes": {key: c["wall_seconds"] / 60 for key, c in per_run.items() if c["wall_seconds"]},
        "costs": {
            key: median(key)
            for key in (
                "seconds_generating_step",
                "seconds_reusing_step",
                "eval_seconds_per_sequence",
                "overhead_seconds",
            )
        },  # fmt: skip
        "pass_at_1": {f"{name}-seed{seed}": float(value) for (name, seed), value in sorted(after.items())},
        "comparison": f"{ours} - {theirs}",
        "per_seed_differences": differences,
        "mean_difference": statistics.fmean(differences),
        "sd_difference": statistics.stdev(differences),
        "two_way": None
        if paired is None
        else {"mean": paired.mean, "se": paired.se, "df": paired.df, "detectable": paired.detectable},  # fmt: skip
    }


def price(run: Run, costs: dict, evaluate_before: bool) -> float:
    """A pending run's wall minutes at `costs` (a pilot's), its initial evaluation counted when `evaluate_before`."""
    return benchmarking.minutes_per_run(costs, run.overrides["num_iterations"], ROLLOUTS, HELDOUT_SEQUENCES,
                                        evaluate_before, setup_seconds=costs.get("overhead_seconds") or 60.0)  # fmt: skip


def run_minutes(runs: list[Run], costs: dict, evaluated: set[int]) -> list[float]:
    """Each pending run's minutes (0 for a done one), in order; `evaluated`: the seeds whose initial model has been
    evaluated (updated: a seed's first run evaluates it)."""
    minutes = []
    for r in runs:
        minutes.append(0.0 if r.done else price(r, costs, evaluate_before=r.seed not in evaluated))
        evaluated.add(r.seed)
    return minutes


def deadline_in(minutes: float, costs: dict, slower: float = 1.0) -> benchmarking.Deadline:
    """`minutes` from now, each run priced at the pilot's `costs` (its initial evaluation counted unless its seed's was
    done, as it stands when the run would start), times `slower` on a machine that slow against the pilot's."""
    return benchmarking.Deadline(
        time.time() + minutes * 60,
        lambda r: slower * price(r, costs, evaluate_before=benchmarking.evaluated_before(r) is None),
    )


def plan(pilot: dict, hours: float, seeds: int, jobs: int) -> dict:
    """
    The grid's hours `jobs` at a time and the headline's detectable difference at each of `SEED_COUNTS`; then the cells
    kept at `seeds` seeds within `hours`: in `PRIORITY` order, whole, up to the first that does not fit.
    """
    if seeds < MIN_SEEDS:
        raise SystemExit(f"--seeds {seeds}: the plan never goes below {MIN_SEEDS} seeds a cell")
    costs, sd = pilot["costs"], pilot["sd_difference"]

    def cell_hours(n: int) -> dict[str, float]:
        evaluated: set[int] = set()
        return {cell: sum(run_minutes(grid_runs(range(n), cells=(cell,)), costs, evaluated)) / 60 / jobs
                for cell in PRIORITY}  # fmt: skip

    by_seeds = {
        n: {"grid_hours": sum(cell_hours(n).values()), "detectable": benchmarking.planned_detectable(sd, n)}
        for n in sorted({*SEED_COUNTS, seeds})
    }
    kept, total = [], 0.0
    for cell, h in cell_hours(seeds).items():
        if total + h > hours:
            break
        kept.append(cell)
        total += h
    return {
        "seeds": seeds,
        "hours_budget": hours,
        "jobs": jobs,
        "cells": kept,
        "dropped": [c for c in PRIORITY if c not in kept],
        "hours": total,
        "detectable": benchmarking.planned_detectable(sd, seeds),
        "pilot_sd_difference": sd,
        "by_seeds": by_seeds,
        "costs": costs,
    }


def print_plan(planned: dict) -> None:
    print(f"pilot: {planned['pilot_sd_difference']:.3f} sd of the per-seed {' - '.join(HEADLINE)} held-out pass@1")
    print(f"{'seeds':>5} | whole grid, h ({planned['jobs']} at a time) | detectable {HEADLINE[0]} - {HEADLINE[1]}")
    for n, row in planned["by_seeds"].items():
        print(f"{n:>5} | {row['grid_hours']:>29.1f} | {row['detectable']:.3f}")
    print(f"plan at {planned['seeds']} seeds within {planned['hours_budget']:g} h: {len(planned['cells'])} cells, "
          f"{planned['hours']:.1f} h: {', '.join(planned['cells']) or 'none'}; dropped: "
          f"{', '.join(planned['dropped']) or 'none'}; detectable {planned['detectable']:.3f} "
          f"(aim {TARGET_DETECTABLE})")  # fmt: skip


# The report.

MECHANISM_NOTE = """\
Mechanism figures are descriptive, not tested, medians over seeds of each run's median. "Last reuse": the last
optimizer step on each rollout that carried a signal (not every group tied); a step's figures are logged before its
update, so at the last reuse they measure the policy after K - 1 of the rollout's K updates (at K = 1 it is the
generating step, where every ratio is 1). Clip fraction: GRPO's tokens, GSPO's sequences, both counting the tied
groups (advantage 0) too, so GSPO's 0.5 can mean every sequence with a signal clipped. Share of the closed-form step:
mean |Delta| / mean |g / mu| over tokens, a ratio of mean magnitudes, not closeness to Delta* = g / mu token by
token; equilibrium gap: mean |mu Delta - g| / mean |g|, 0 at OPO's equilibrium. Zero-gradient reuse steps: reuse
steps of a rollout with a signal whose gradient was exactly 0 (a clip cut the whole step off); AdamW keeps moving
the policy along its momentum through them, so a zero gradient does not stop the step. Length: mean completion
tokens of the first rollout (the untrained policy's) and of the last quarter of the rollouts; truncated completions
(at the 64-token limit) score 0. Entropy: mean over the last quarter of the steps. mu: OPO's, median over the
rollouts with a signal (chosen per rollout with `mu_target_chi2`).
"""


def family(cell: str) -> tuple[str, int]:
    name, k = cell.rsplit("-K", 1)
    return name, int(k)


def k1_reference(name: str) -> str:
    """The K = 1 cell that stands for `name` without reuse."""
    return "opo-K1" if name.startswith("opo") else "grpo-K1"


def runs_table(records: dict[str, list], order: list[str]) -> str:
    """One row per finished grid run, cells in `order`: held-out pass@1 and greedy accuracy before -> after training
    (from its summary), wall minutes, the machine it recorded; then the headline comparison's difference seed by seed,
    and the seeds whose two runs recorded different machines or where only one recorded its machine (floating-point
    results can differ between CPUs; runs from before machines were recorded ran their pairs side by side)."""

    def figure(before, after):
        return "n/a" if before is None or after is None else f"{before:.3f} -> {after:.3f}"

    lines = ["| cell | seed | held-out pass@1 before -> after | greedy before -> after | wall minutes | machine |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for cell in order:
        for r in sorted(records.get(cell, []), key=lambda r: r.seed):
            s = r.summary
            wall = "n/a" if s.wall_seconds is None else f"{s.wall_seconds / 60:.1f}"
            lines.append(f"| {cell} | {r.seed} | {figure(s.heldout_accuracy_before, s.heldout_accuracy_after)} | "
                         f"{figure(s.heldout_greedy_before, s.heldout_greedy_after)} | {wall} | "
                         f"{s.cpu or 'not recorded'} |")  # fmt: skip
    ours, theirs = ({r.seed: r for r in records.get(cell, [])} for cell in HEADLINE)
    common = sorted(set(ours) & set(theirs))
    if common:
        per_seed = ", ".join(f"{s}: {ours[s].outcomes().mean() - theirs[s].outcomes().mean():+.3f}" for s in common)
        lines.append(f"\n{HEADLINE[0]} - {HEADLINE[1]} held-out pass@1 after, seed by seed: {per_seed}.")
        apart = [s for s in common if ours[s].summary.cpu != theirs[s].summary.cpu]
        unknown = [s for s in apart if None in (ours[s].summary.cpu, theirs[s].summary.cpu)]
        known = [s for s in apart if s not in unknown]
        if known:
            lines.append(f"Seeds whose two runs recorded different machines: {', '.join(map(str, known))}.")
        if unknown:
            lines.append(f"Seeds where one run's machine is not recorded: {', '.join(map(str, unknown))}.")
    return "\n".join(lines) + "\n"


def report() -> str:
    """The tables (and the plot) of every finished grid run, into `DOCS`; returns the markdown."""
    planned = DOCS / "plan.json"
    seeds = range(max(*SEED_COUNTS, json.loads(planned.read_text())["seeds"] if planned.exists() else 0))
    records = {}
    for run, record in benchmarking.load_records(grid_runs(seeds)).items():
        records.setdefault(run.name, []).append(record)
    try:
        chosen = chosen_settings()
    except SystemExit:
        chosen = None

    spread = benchmarking.median_cell

    lines = [
        "| K | cell | seeds | held-out pass@1 [95% CI] | greedy [95% CI] | gain per 1k generated tokens | clip fraction "
        "at last reuse | KL to rollout policy at last reuse | share of closed-form step at last reuse | equilibrium gap "
        "at last reuse | zero-gradient reuse steps with a signal | completion length, first -> last quarter | entropy, "
        "last quarter | mu |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    estimates = {}
    order = sorted(CELLS, key=lambda c: (family(c)[1], PRIORITY.index(c)))
    for cell in order:
        group = sorted(records.get(cell, []), key=lambda r: r.seed)
        if not group:
            continue
        name, k = family(cell)
        estimate, greedy = benchmarking.accuracy_cell(group), benchmarking.accuracy_cell(group, greedy=True)
        figures = [benchmarking.reuse_figures(r, k, PROMPTS_PER_ROLLOUT * G) for r in group]
        zero = [f["zero_gradient_reuse_steps"] for f in figures]
        lines.append(
            f"| {k} | {cell} | {len(group)} | {estimate} | {greedy if greedy is not None else 'n/a'} | "
            f"{spread([f['gain_per_1k_tokens'] for f in figures], 4)} | "
            f"{spread([f['clip_fraction'] for f in figures])} | {spread([f['rollout_kl'] for f in figures], 4)} | "
            f"{spread([f['closed_form_fraction'] for f in figures], 2)} | "
            f"{spread([f['equilibrium_gap'] for f in figures], 2)} | "
            f"{sum(z for z, _ in zero)} of {sum(s for _, s in zero)} | "
            f"{spread([f['length_first'] for f in figures], 1)} -> {spread([f['length_late'] for f in figures], 1)} | "
            f"{spread([f['entropy_late'] for f in figures], 2)} | {spread([f['mu'] for f in figures], 2)} |"
        )
        estimates[cell] = estimate

    # One line per cell of `CELLS_AT_K` against K, from its K = 1 reference.
    curves = {name: [(k, estimates[c]) for k, c in ((1, k1_reference(name)), (4, f"{name}-K4"), (8, f"{name}-K8"))
                     if c in estimates] for name in CELLS_AT_K}  # fmt: skip

    def paired(ours, theirs):
        return benchmarking.paired_on_common_seeds(records[ours], records[theirs])

    def rows(pairs, label):
        return [((label(a, b), f"{a} - {b}"), paired(a, b)) for a, b in pairs if a in records and b in records]

    opo = [n for n in CELLS_AT_K if n.startswith("opo")]
    baselines = [n for n in CELLS_AT_K if not n.startswith("opo")]
    against_baselines = [("opo-K1", "grpo-K1")] + [
        (f"{o}-K{k}", f"{b}-K{k}") for k in (4, 8) for o in opo for b in baselines
    ]
    stiffness = [(f"{o}-K{k}", f"opo-mu1-K{k}") for k in (4, 8) for o in opo if o != "opo-mu1"]
    reuse = [(f"{n}-K{k}", k1_reference(n)) for n in CELLS_AT_K for k in (4, 8)]

    def k_of(a, b):
        return str(family(a)[1])

    text = f"# Benchmark v4: rollout reuse with power ({TASK}, {ROLLOUTS} rollouts of {PROMPTS_PER_ROLLOUT} x {G})\n\n"
    if chosen is not None:
        text += (f"Tuned on the validation split: OPO `mu_target_chi2` = {chosen['opo-chi2']['mu_target_chi2']:g}, "
                 f"GSPO clip {chosen['gspo']['epsilon']:g} / {chosen['gspo']['epsilon_high']:g} (see below).\n\n")  # fmt: skip
    text += "## Held-out pass@1 and what reuse did, per cell (medians over seeds unless an interval is given)\n\n"
    text += "\n".join(lines) + "\n\n" + MECHANISM_NOTE
    text += f"\n## OPO minus each baseline, per K (paired on common seeds and the same problems; {HEADLINE[0]} - "
    text += f"{HEADLINE[1]} is the comparison the plan is powered for)\n\n"
    text += benchmarking.comparison_table(rows(against_baselines, k_of), ("K", "comparison"))
    text += "\n## OPO's stiffness: mu = 0.25 and the chi-square budget minus mu = 1, per K\n\n"
    text += benchmarking.comparison_table(rows(stiffness, k_of), ("K", "comparison"))
    text += '\n## Each cell with reuse minus its K = 1 reference ("ahead": reuse scores higher)\n\n'
    text += benchmarking.comparison_table(rows(reuse, k_of), ("K", "comparison"))
    text += ("\nAt K = 1 every OPO cell is `opo-K1` and GSPO is `grpo-K1` (every ratio is 1 on a rollout's only step: "
             "OPO's mu and GSPO's clip do not act).\n")  # fmt: skip
    text += "\n" + benchmarking.STATISTICS_NOTE + "\n\n## Runs\n\n" + runs_table(records, order)
    text += "\n" + tune_report()
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "report.md").write_text(text)
    benchmarking.plot_against_k(
        {n: c for n, c in curves.items() if c},
        DOCS / "reuse.png",
        K_VALUES,
        f"held-out pass@1 after {ROLLOUTS} rollouts",
    )
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=["tune", "pilot", "plan", "runs", "report"])
    benchmarking.add_run_arguments(parser, WORK)
    parser.add_argument("--hours", type=float, help="`plan`: the grid's budget in hours, --jobs at a time.")
    parser.add_argument("--seeds", type=int, default=MIN_SEEDS, help=f"`plan`: seeds a cell (at least {MIN_SEEDS}).")
    parser.add_argument("--only", nargs="+", metavar="CELL", help="`runs`: only these cells, in this order.")
    parser.add_argument("--within", type=float, metavar="MINUTES",
                        help="`runs`: start only the runs that the pilot's costs say end within MINUTES of the launch "
                        "(the others stay pending; a shorter run behind a long one may still start).")  # fmt: skip
    parser.add_argument("--slower", type=float, default=1.0, metavar="F",
                        help="`runs --within`: price each run at F times the pilot's costs, on a machine F times "
                        "slower than the pilot's (a run's summary.json records its cpu).")  # fmt: skip
    parser.add_argument("--by_seed", action="store_true",
                        help="`runs`: seed by seed (each seed's cells in order, so that the cells compared finish the "
                        "same seeds together), no run waiting for its seed's first one: a run whose seed's initial "
                        "model is not evaluated yet evaluates it itself.")  # fmt: skip
    args = parser.parse_args(argv)
    work = Path(args.work_dir)
    if args.phase == "tune":
        benchmarking.run_phase(tune_runs(), args.jobs, work, args.commit, threads=args.threads)
        text = tune_report()
        DOCS.mkdir(parents=True, exist_ok=True)
        (DOCS / "tune.md").write_text(text)
        print(text)
    elif args.phase == "pilot":
        benchmarking.run_phase(pilot_runs(), args.jobs, work, args.commit, threads=args.threads)
        summary = pilot_summary()
        (DOCS / "pilot.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps({k: summary[k] for k in ("wall_minutes", "costs", "per_seed_differences", "sd_difference")},
                         indent=2))  # fmt: skip
    elif args.phase == "plan":
        if args.hours is None:
            raise SystemExit("plan: --hours is required (the grid's budget)")
        pilot = DOCS / "pilot.json"
        if not pilot.exists():
            raise SystemExit(f"no {pilot}: run `reuse_powered.py pilot` first")
        planned = plan(json.loads(pilot.read_text()), args.hours, args.seeds, args.jobs)
        (DOCS / "plan.json").write_text(json.dumps(planned, indent=2) + "\n")
        print_plan(planned)
    elif args.phase == "report":
        print(report())
    else:
        planned = DOCS / "plan.json"
        if not planned.exists():
            raise SystemExit(f"no {planned}: run `reuse_powered.py plan --hours H` first")
        planned = json.loads(planned.read_text())
        unknown = set(args.only or []) - set(CELLS)
        if unknown:
            raise SystemExit(f"--only: no cell {', '.join(sorted(unknown))} in the grid ({', '.join(PRIORITY)})")
        cells = args.only or planned["cells"]
        # The cells without a tuned setting may run while the tuning does.
        chosen = chosen_settings() if any(CELLS[c][1] == TUNED for c in cells) else None
        deadline = None
        if args.within is not None:
            if args.within <= 0:
                raise SystemExit(f"--within {args.within:g}: minutes must be positive")
            if args.slower <= 0:
                raise SystemExit(f"--slower {args.slower:g}: a factor must be positive")
            costs = json.loads((DOCS / "pilot.json").read_text())["costs"]
            deadline = deadline_in(args.within, costs, args.slower)
        runs = grid_runs(range(planned["seeds"]), chosen, cells)
        if args.by_seed:
            runs.sort(key=lambda r: r.seed)  # stable: each seed's cells keep their order
            benchmarking.run_side_by_side(runs, args.jobs, work, args.commit, deadline, args.threads)
        else:
            benchmarking.run_phase(runs, args.jobs, work, args.commit, deadline, args.threads)


if __name__ == "__main__":
    main()
