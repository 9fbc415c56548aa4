# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
What a benchmark of training runs needs, shared by `algorithms_across_tasks.py` (benchmark v2) and `rollout_reuse.py`
(benchmark v3):

- planning and resuming: a benchmark is a list of `Run`s; each run's small raw files (summary.json, metrics.jsonl,
  heldout.jsonl) are copied to `<its benchmark's folder>/runs/<phase>/<task>/<name>-lr<LR>-seed<S>/` as soon as it
  finishes, and a run whose raw files are there is done and never run again, so an interrupted grid resumes where it
  stopped;
- launching: `run_phase` runs the pending runs `--jobs` at a time (2 on the project's 2-core machines), each as
  `python -m opo_trl.harness.run` in its own process with cores / jobs threads (less those that another launch from
  the same work folder holds), the first run of each seed first (the others of that seed reuse its evaluation of the
  initial model), and with `--commit` commits each run's raw files as it finishes; a file named `DRAIN` in the work
  folder lets the runs in flight finish (and commit) and starts no other, for a machine that must be free at a known
  time; a file named `PAUSE` there has the runs in flight save a checkpoint at the end of their current step and stop
  (`pause_file`), and the next launch on the same machine resumes them (on another machine, or once the work folder
  is gone, a paused run starts again; a run stopped any other way is lost);
- loading: `load_records` reads the finished runs back as `opo_trl.harness.compare.RunRecord`s;
- costing: `step_costs` reads a finished run's seconds per generating and per reusing step, per evaluated sequence
  and of overhead; `minutes_per_run` prices a planned run from them; `planned_detectable` is the smallest difference
  a planned number of seeds will detect, from a pilot's spread of per-seed differences;
- reporting: `accuracy_cell` and `comparison_table`, the seed-level statistics of `opo_trl.harness.stats` (t-intervals
  over seeds and problems, the sign-flip p-value over seeds, the smallest difference each comparison could have
  detected, verdicts, and Holm's adjustment over the comparisons of a table); `reuse_figures`, what reusing a rollout
  for K optimizer steps did to a run (KL to the rollout policy, clip fraction, OPO's share of its closed-form step and
  equilibrium gap, zero-gradient steps, completion length, entropy).

The scripts import it as a sibling module (`python benchmarks/<script>.py` puts `benchmarks/` on the path).
"""

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the worktree's opo_trl, also without an install

from opo_trl.harness import stats  # noqa: E402
from opo_trl.harness.checkpoints import checkpoint_step, last_complete_checkpoint  # noqa: E402
from opo_trl.harness.compare import RunRecord, load_run, outcome_matrix  # noqa: E402
from opo_trl.harness.runfiles import RunFiles, RunPause  # noqa: E402


@dataclass(frozen=True)
class Run:
    """One planned run: where its raw files go (`root`, the benchmark's folder under `docs/`), its phase, task, name in
    the tables, algorithm, seed, learning rate and command-line overrides; `shares_before_with`: other phases whose runs
    of the same task and seed evaluated the same initial model (so this run may reuse that evaluation)."""

    root: Path
    phase: str
    task: str
    name: str  # what the tables call it: the algorithm, or a variant
    algorithm: str
    seed: int
    learning_rate: float
    overrides: dict = field(default_factory=dict, hash=False)
    shares_before_with: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.name}-lr{self.learning_rate:g}-seed{self.seed}"

    @property
    def docs_dir(self) -> Path:
        return self.root / "runs" / self.phase / self.task / self.key

    def work_dir(self, work_root: Path) -> Path:
        return work_root / self.phase / self.task / self.key

    @property
    def done(self) -> bool:
        return RunFiles(self.docs_dir).finished


def recipe(task: str) -> Path:
    return REPO / "benchmarks" / "recipes" / f"benchmark_{task}.yaml"


def command(run: Run, work_root: Path, before_from: Path | None, resume: bool = False) -> list[str]:
    args = [sys.executable, "-m", "opo_trl.harness.run", "--config", str(recipe(run.task)), "--algorithm", run.algorithm,
            "--seed", str(run.seed), "--learning_rate", str(run.learning_rate),
            "--output_dir", str(run.work_dir(work_root)), "--pause_file", str(pause_file(work_root))]  # fmt: skip
    for key, value in run.overrides.items():
        args += [f"--{key}", str(value)]
    if before_from is not None:
        args += ["--heldout_before_from", str(before_from)]
    if resume:
        args += ["--resume_from_checkpoint", "last"]
    return args


def evaluated_before(run: Run) -> Path | None:
    """A finished run of the same task and seed, of this run's phase or of one it shares with, that evaluated the initial
    model: its evaluation can be reused."""
    for phase in (run.phase, *run.shares_before_with):
        for sibling in sorted((run.root / "runs" / phase / run.task).glob(f"*-seed{run.seed}")):
            files = RunFiles(sibling)
            if files.finished and files.heldout_path.exists():
                return sibling
    return None


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


DRAIN = "DRAIN"
PAUSE = "PAUSE"


def drain_file(work_root: Path) -> Path:
    return Path(work_root) / DRAIN


def pause_file(work_root: Path) -> Path:
    return Path(work_root) / PAUSE


def paused_here(work: Path, log: Callable[[str], None] = log) -> tuple[RunPause, int] | None:
    """
    The pause of the run in `work` and its steps in all, when this launch can resume it: it paused (and has not
    finished since), its checkpoint at that step is complete, and it paused on this machine (a run resumed on another
    CPU would mix two machines' floating-point results). Otherwise `None`, saying why when a pause is there.
    """
    from opo_trl.harness.run import cpu_description  # torch and TRL: imported only when a run paused

    pause = RunFiles(work).read_pause()
    if pause is None:
        return None
    checkpoint = last_complete_checkpoint(work)
    if checkpoint is None or checkpoint_step(checkpoint) != pause.step:
        log(f"{work.name} paused at step {pause.step} but has no complete checkpoint of it: it starts again")
        return None
    if pause.cpu != cpu_description():
        log(f"{work.name} paused on {pause.cpu}, and this machine is {cpu_description()}: it starts again")
        return None
    with open(Path(checkpoint) / "trainer_state.json") as f:
        return pause, json.load(f)["max_steps"]


LAUNCH = "launch-"  # + pid: a launch in progress, holding the threads its file says


def start_launching(work_root: Path, pending: int, jobs: int = 1, threads: int | None = None) -> int:
    """
    Say how to drain the launch, clear a drain left from an earlier one (it asked that one to stop, not this), and
    return each run's threads: `threads`, or else the cores that the other launches running from `work_root` leave,
    shared among `jobs` (at least 1). Two launches that each took every core would put twice the threads on the cores,
    which slows both far more than sharing the cores does; the later one is warned when that happens anyway.
    """
    work_root = Path(work_root)
    for stop in (drain_file(work_root), pause_file(work_root)):
        if stop.exists():
            stop.unlink()
            log(f"removed {stop}, left from an earlier launch")
    drain = drain_file(work_root)
    others = live_launches(work_root)
    cores, taken = os.cpu_count() or 2, sum(others.values())
    threads = threads if threads is not None else threads_per_run(jobs, taken)
    if not pending:
        return threads
    held = min(jobs, pending) * threads
    if others:
        running = ", ".join(f"pid {pid} ({n} thread{'s' * (n != 1)})" for pid, n in sorted(others.items()))
        log(
            f"other launches from {work_root}: {running}; this one: {min(jobs, pending)} at a time of {threads} threads"
        )
        if taken + held > cores:
            log(f"warning: {taken + held} threads on {cores} cores: the runs will contend (slower, not wrong)")
    work_root.mkdir(parents=True, exist_ok=True)
    marker = work_root / f"{LAUNCH}{os.getpid()}"
    marker.write_text(f"{held}\n")
    atexit.register(marker.unlink, missing_ok=True)
    log(f"to finish the runs in flight and start no other: touch {drain}")
    log(f"to pause them (a checkpoint each; the next launch here resumes them): touch {pause_file(work_root)}")
    return threads


def live_launches(work_root: Path) -> dict[int, int]:
    """The other launches running from `work_root`, as {pid: threads held}; the files of ended ones are removed."""
    found = {}
    for marker in Path(work_root).glob(f"{LAUNCH}*"):
        pid = int(marker.name[len(LAUNCH) :])
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            marker.unlink(missing_ok=True)
            continue
        except PermissionError:
            pass  # alive, another user's
        try:
            found[pid] = int(marker.read_text() or 0)
        except FileNotFoundError:
            continue  # it ended since the glob
    return found


@dataclass(frozen=True)
class Deadline:
    """A launch's end (`at`, in `time.time()` seconds): a run starts only when `minutes(run)`, its estimated wall
    minutes, end before it; a run that does not fit stays pending for the next launch, and a shorter one behind it may
    still start."""

    at: float
    minutes: Callable[[Run], float]

    def refuses(self, run: Run, share: float = 1.0) -> str | None:
        """Why `run` may not start (`None`: it may), when `share` of it is left to run (a paused run resumes)."""
        need, left = share * self.minutes(run), (self.at - time.time()) / 60
        return None if need <= left else f"needs about {need:.0f} min, {max(left, 0):.0f} left"


def threads_per_run(jobs: int, taken: int = 0) -> int:
    """The threads of each of `jobs` runs: the cores less `taken` (held by other launches), shared, at least 1."""
    return max(1, ((os.cpu_count() or 2) - taken) // jobs)


def execute(run: Run, work_root: Path, threads: int, commit: bool, log: Callable[[str], None] = log,
            deadline: Deadline | None = None) -> None:  # fmt: skip
    """Run one planned run in its own process, or resume it where it paused on this machine; when it finishes, copy
    its raw files to `run.docs_dir` (and commit). Under a drain or a pause (`DRAIN`, `PAUSE` in `work_root`), or when
    it would not end before `deadline`, it starts nothing and says so."""
    name = f"{run.phase}/{run.task}/{run.key}"
    for stop, doing in ((drain_file(work_root), "draining"), (pause_file(work_root), "pausing")):
        if stop.exists():
            log(f"{doing}: {name} not started")
            return
    work = run.work_dir(work_root)
    paused = paused_here(work, log) if work.exists() else None
    share = 1.0 - paused[0].step / paused[1] if paused else 1.0
    if deadline is not None and (why := deadline.refuses(run, share)):
        log(f"not started before the deadline: {name} ({why})")
        return
    if paused:
        log(f"resuming {name} at step {paused[0].step} of {paused[1]}")
    else:
        if work.exists():
            shutil.rmtree(work)  # an interrupted attempt: start it again
        work.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    with (work / "run.log").open("a" if paused else "w") as out:
        process = subprocess.run(command(run, work_root, evaluated_before(run), resume=bool(paused)), cwd=REPO,
                                 env=env, stdout=out, stderr=out)  # fmt: skip
    wall = time.perf_counter() - start
    if process.returncode != 0:
        log(f"FAILED {name} after {wall:.0f} s (exit {process.returncode}): see {work}/run.log")
        return
    if (pause := RunFiles(work).read_pause()) is not None:
        log(f"paused {name} at step {pause.step} after {wall / 60:.1f} min; the next launch here resumes it")
        return
    # The run's own files, as the job wrote them (its summary records its wall time and threads); the run's name,
    # phase, task and overrides are its folder and the benchmark's tables.
    summary = RunFiles(work).copy_raw_files(run.docs_dir).read_summary()
    for path in work.glob("*.safetensors"):
        path.unlink()  # the model and checkpoints are not raw results
    for path in work.glob("checkpoint-*"):
        shutil.rmtree(path)
    log(f"done {name} in {wall / 60:.1f} min: held-out {summary.heldout_accuracy_before:.3f}"
        f" -> {summary.heldout_accuracy_after:.3f}")  # fmt: skip
    if commit:
        commit_raw_files(run)


def commit_raw_files(run: Run) -> None:
    """Commit one run's raw files, with a message naming the benchmark's folder and the run."""
    top = Path(
        subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=run.root, capture_output=True, text=True
        ).stdout.strip()
    )
    rel = run.docs_dir.relative_to(top)
    message = f"{run.root.name.replace('_', ' ')}: {run.phase}/{run.task}/{run.key}"
    for _ in range(10):  # another commit may hold the index lock for a moment
        added = subprocess.run(["git", "add", str(rel)], cwd=top, capture_output=True)
        done = subprocess.run(["git", "commit", "-q", "-m", message, "--", str(rel)], cwd=top, capture_output=True)
        if added.returncode == 0 and done.returncode == 0:
            return
        time.sleep(5)


def run_phase(runs: list[Run], jobs: int, work_root: Path, commit: bool, deadline: Deadline | None = None,
              threads: int | None = None) -> None:  # fmt: skip
    """
    Every pending run of `runs`, `jobs` at a time, task by task (so that an interrupted phase leaves whole tasks behind).
    Within a task, the first run of each seed evaluates the initial model and the others of that seed reuse it: those
    first runs go first, and a run waits only for its own seed's first run. With a `deadline`, only the runs estimated
    to end before it start. Each run gets `threads` threads (see `start_launching` for the default).
    """
    pending = [r for r in runs if not r.done]
    log(f"{len(runs) - len(pending)} of {len(runs)} runs already done; {len(pending)} to go, {jobs} at a time")
    threads = start_launching(work_root, len(pending), jobs, threads)
    for task in dict.fromkeys(r.task for r in pending):
        firsts = {}
        for r in pending:
            if r.task == task and r.seed not in firsts and evaluated_before(r) is None:
                firsts[r.seed] = r
        rest = [r for r in pending if r.task == task and r not in firsts.values()]
        with ThreadPoolExecutor(jobs) as pool:
            started = {seed: pool.submit(execute, r, work_root, threads, commit, log, deadline)
                       for seed, r in firsts.items()}  # fmt: skip
            others = [pool.submit(_run_after, started.get(r.seed), r, work_root, threads, commit, deadline)
                      for r in rest]  # fmt: skip
            for future in [*started.values(), *others]:
                future.result()


def _run_after(first, run: Run, work_root: Path, threads: int, commit: bool, deadline: Deadline | None) -> None:
    # Only a run whose seed's first run is still going waits (for that run's evaluation of the initial model); the
    # others take the slots as they free up.
    if first is not None:
        first.result()
    execute(run, work_root, threads, commit, log, deadline)


def run_side_by_side(
    runs: list[Run],
    jobs: int,
    work_root: Path,
    commit: bool,
    deadline: Deadline | None = None,
    threads: int | None = None,
) -> None:
    """The pending runs of `runs` in their order, `jobs` at a time, none waiting for another: a run reuses its seed's
    evaluation of the initial model if a finished run has one when it starts, and otherwise makes its own."""
    threads = start_launching(work_root, sum(not r.done for r in runs), jobs, threads)
    with ThreadPoolExecutor(jobs) as pool:
        for future in [pool.submit(execute, r, work_root, threads, commit, log, deadline) for r in runs if not r.done]:
            future.result()


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def add_run_arguments(parser: argparse.ArgumentParser, work_dir: Path) -> None:
    """The options of every benchmark script that launches runs."""
    parser.add_argument("--jobs", type=positive_int, default=2, help="Runs at a time.")
    parser.add_argument("--threads", type=positive_int,
                        help="Threads a run (default: the cores that other launches from --work_dir leave, over --jobs).")  # fmt: skip
    parser.add_argument("--work_dir", default=str(work_dir), help="Where runs write.")
    parser.add_argument("--commit", action="store_true", help="Commit each finished run's raw files.")


# Costing.


def step_costs(files: RunFiles) -> dict:
    """
    A finished run's costs, from its raw files: the median seconds of a step that generates a rollout (the first left
    out: it pays for warm-up) and of one that reuses it, the seconds per evaluated sequence (sampled and greedy), the
    overhead (wall time less the steps and the evaluations: imports, data, model load, writing), and the rollouts'
    rewards; also the sampling log-prob difference a vLLM run logs.
    """
    import statistics

    steps = [e for e in files.read_metrics() if "step_time" in e]
    generating = [e["step_time"] for e in steps if "reward" in e]
    reusing = [e["step_time"] for e in steps if "reward" not in e]
    evaluations = files.read_heldout()
    sequences = sum(e.problems * (len(e.sampled[0]) + (e.greedy is not None)) for e in evaluations)
    evaluation_seconds = sum(e.seconds or 0.0 for e in evaluations)
    wall = files.read_summary().wall_seconds
    generate = statistics.median(generating[1:] or generating)
    reuse = statistics.median(reusing) if reusing else 0.0
    return {
        "rollout_rewards": [e["reward"] for e in steps if "reward" in e],
        "seconds_generating_step": generate,
        "seconds_reusing_step": reuse,
        "seconds_per_rollout": generate - reuse,
        "eval_seconds_per_sequence": evaluation_seconds / sequences if sequences else 0.0,
        "overhead_seconds": None if wall is None else wall - sum(e["step_time"] for e in steps) - evaluation_seconds,
        "wall_seconds": wall,
        "sampling_logp_difference": [e[k] for e in steps for k in e if k == "sampling/sampling_logp_difference/mean"],
    }


def minutes_per_run(costs: dict, k: int, rollouts: int, heldout_sequences: int, evaluate_before: bool,
                    setup_seconds: float = 60.0) -> float:  # fmt: skip
    """
    Wall minutes of a run of `rollouts` rollouts, each serving `k` optimizer steps, from another run's `step_costs`
    at the same rollout size and jobs at a time: its steps, its evaluations (the initial model's too when
    `evaluate_before`) and `setup_seconds`.
    """
    training = rollouts * (costs["seconds_generating_step"] + (k - 1) * costs["seconds_reusing_step"])
    evaluations = (2 if evaluate_before else 1) * heldout_sequences * costs["eval_seconds_per_sequence"]
    return (setup_seconds + training + evaluations) / 60


def planned_detectable(seed_sd: float, seeds: int, level: float = stats.LEVEL, power: float = stats.POWER) -> float:
    """
    The smallest true difference a paired comparison over `seeds` seeds will detect with `power` at the two-sided
    `level`, when its per-seed differences spread with standard deviation `seed_sd` (measured in a pilot):
    `(t_{(1 + level) / 2, S - 1} + t_{power, S - 1}) * seed_sd / sqrt(S)`, the seed-level t of `stats` before any run.
    Each per-seed difference is a mean over the same problems, so their spread already holds the problems' noise.
    """
    if seeds < 2:
        raise ValueError("a planned comparison needs at least 2 seeds.")
    t = stats.t_quantile((1 + level) / 2, seeds - 1) + stats.t_quantile(power, seeds - 1)
    return float(t) * seed_sd / seeds**0.5


def load_records(runs: Iterable[Run]) -> dict[Run, RunRecord]:
    """The finished runs of `runs`, read back from their raw files, named as the tables name them."""
    return {r: load_run(r.docs_dir, r.name, r.seed) for r in runs if r.done}


# Reporting.


def accuracy_cell(records: list[RunRecord], greedy: bool = False) -> stats.Estimate | None:
    """Held-out pass@1 (or greedy accuracy) after training over the seeds of `records`, with its interval."""
    seeds = sorted(r.seed for r in records)
    matrix = outcome_matrix(records, seeds, greedy=greedy)
    return None if matrix is None else stats.mean_ci(matrix)


def paired_on_common_seeds(ours: list[RunRecord], theirs: list[RunRecord], **kwargs) -> stats.Estimate | None:
    """
    Held-out pass@1 after training of `ours` minus `theirs`, paired on their common seeds and the same problems;
    `kwargs`: `greedy=True`, or those of `stats.paired_difference` (`variation`). `None` without a common seed.
    """
    seeds = sorted({r.seed for r in ours} & {r.seed for r in theirs})
    greedy = kwargs.pop("greedy", False)
    a, b = (outcome_matrix(g, seeds, greedy=greedy) for g in (ours, theirs))
    if not seeds or a is None or b is None or a.shape != b.shape:
        return None
    return stats.paired_difference(a, b, **kwargs)


def zero_gradient_reuse_steps(record: RunRecord) -> tuple[int, int]:
    """
    The reuse steps (an optimizer step on a rollout generated at an earlier step: one that logs no reward) whose
    gradient was exactly zero although their rollout had a learning signal, and how many reuse steps had one: where a
    ratio clip cut the whole step off. (`RunRecord.zero_gradient_steps` counts the generating steps too, where every
    ratio is 1 and no clip binds.)
    """
    zero = signal = 0
    no_signal = 1.0
    for entry in record.steps:
        no_signal = entry.get("frac_reward_zero_std", no_signal)
        if "grad_norm" in entry and "reward" not in entry and no_signal < 1.0:
            signal += 1
            zero += entry["grad_norm"] == 0
    return zero, signal


def reuse_figures(record: RunRecord, k: int, completions_per_rollout: int) -> dict:
    """
    What one finished run with rollouts reused for `k` optimizer steps did (`record`: a `compare.RunRecord`): its
    accuracy gain per thousand generated completion tokens and per minute of training, and, at the last optimizer step
    of each rollout with a signal (where reuse has gone furthest), the median clipped fraction, KL from the rollout
    policy, how much of its closed-form step OPO has taken (mean |Delta| / mean |g / mu|) and OPO's equilibrium gap
    (mean |mu Delta - g| / mean |g|); the zero-gradient steps with a signal (all, and the reuse steps alone); the
    entropy over the last quarter of the steps; the mean completion length of the first rollout and of the last
    quarter of the rollouts; OPO's mu, median over the rollouts with a signal (it varies with `mu_target_chi2`).
    """
    import statistics

    steps = record.steps
    generating = [e for e in steps if "reward" in e]
    tokens = sum(e["completions/mean_length"] * completions_per_rollout for e in generating)
    seconds = sum(e.get("step_time", 0.0) for e in steps)
    summary = record.summary
    gain = summary.heldout_accuracy_after - summary.heldout_accuracy_before
    # The last reuse of each rollout that carried a signal (not every group tied): a rollout without one moves nothing,
    # so its ratios stay 1 and would only pull the medians to 0.
    with_signal = [e for e in generating if e.get("frac_reward_zero_std", 0.0) < 1.0]
    signal = {e["step"] + k - 1 for e in with_signal}
    last = [e for e in steps if e["step"] in signal and "grad_norm" in e]
    mu, mus = None, {}  # OPO logs its mu when it generates a rollout; it holds for the rollout's steps
    for e in steps:
        mu = e.get("opo/mu", mu)
        mus[e["step"]] = mu

    def median(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    fractions = [e["opo/step/abs_mean"] / e["opo/closed_form_step/abs_mean"] for e in last
                 if e.get("opo/closed_form_step/abs_mean")]  # fmt: skip
    gaps = [e["opo/equilibrium_gap"] / (mus[e["step"]] * e["opo/closed_form_step/abs_mean"]) for e in last
            if e.get("opo/closed_form_step/abs_mean") and "opo/equilibrium_gap" in e and mus[e["step"]]]  # fmt: skip
    quarter = [e for e in steps if "entropy" in e][-max(1, len(steps) // 4) :]
    lengths = [e["completions/mean_length"] for e in generating if "completions/mean_length" in e]
    return {
        "gain_per_1k_tokens": 1000 * gain / tokens if tokens else None,
        "gain_per_minute": 60 * gain / seconds if seconds else None,
        "clip_fraction": median(e.get("clip_ratio/region_mean") for e in last),
        "rollout_kl": median(e.get("rollout_kl") for e in last),
        "closed_form_fraction": median(fractions),
        "equilibrium_gap": median(gaps),
        "zero_gradient_steps": record.zero_gradient_steps(),
        "zero_gradient_reuse_steps": zero_gradient_reuse_steps(record),
        "entropy_late": statistics.fmean(e["entropy"] for e in quarter) if quarter else None,
        "length_first": lengths[0] if lengths else None,
        "length_late": statistics.fmean(lengths[-max(1, len(lengths) // 4) :]) if lengths else None,
        "mu": median(e.get("opo/mu") for e in with_signal),
    }


def median_cell(values: Iterable[float | None], digits: int = 3) -> str:
    """A table cell: the median of the values that are not `None` (a figure over seeds), or "n/a"."""
    import statistics

    values = [v for v in values if v is not None]
    return "n/a" if not values else f"{statistics.median(values):.{digits}f}"


COMPARISON_COLUMNS = (
    "seeds | difference [95% CI] | p | sign-flip p | detectable (80% power) | verdict | Holm",
    "---|---|---|---|---|---|---",
)


def comparison_cells(estimate: stats.Estimate | None, score: bool = True) -> str:
    """One comparison's cells, in `COMPARISON_COLUMNS`' order."""
    if estimate is None:
        return "0 | n/a | | | | |"
    e = estimate
    coverage = f" ({e.coverage})" if e.coverage else ""
    sign_flip = "n/a" if e.sign_flip_p is None else f"{e.sign_flip_p:.2g}"
    detectable = "n/a" if e.detectable is None else f"{e.detectable:.3f}"
    verdict, adjusted = (e.verdict, e.adjusted_verdict) if score else (e.direction, e.adjusted_direction)
    return (
        f"{e.seeds} | {e.interval()}{coverage} | {e.p_value:.2g} | {sign_flip} | {detectable} | {verdict} | {adjusted}"
    )


def comparison_table(rows: list[tuple[tuple[str, ...], stats.Estimate | None]], labels: tuple[str, ...],
                     score: bool = True) -> str:  # fmt: skip
    """
    A markdown table of paired comparisons, one family: each row's `labels` cells, then its common seeds, difference
    with its 95% t-interval, p-value, exact sign-flip p-value over seeds, the smallest difference it could have detected
    at 80% power, verdict, and the verdict after Holm's adjustment over the table's comparisons; then a line saying how
    many comparisons the adjustment covered.
    """
    adjusted = stats.holm([estimate for _, estimate in rows])
    lines = [
        "| " + " | ".join(labels) + " | " + COMPARISON_COLUMNS[0] + " |",
        "|" + "---|" * len(labels) + COMPARISON_COLUMNS[1] + "|",
    ]
    for (cells, _), estimate in zip(rows, adjusted, strict=True):
        lines.append("| " + " | ".join(cells) + " | " + comparison_cells(estimate, score) + " |")
    m = sum(e is not None for e in adjusted)
    lines += ["", f"{m} comparison{'s' if m != 1 else ''} in this table; Holm: the verdicts adjusted over them."]
    return "\n".join(lines) + "\n"


def plot_against_k(curves: dict, path, ks, ylabel: str) -> None:
    """A figure against K (`curves`: name -> [(K, `stats.Estimate`)]), one line per name with its 95% interval as a
    band, log-scaled K with `ks` labelled; nothing without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in curves.items():
        xs = [k for k, _ in points]
        ax.plot(xs, [e.mean for _, e in points], marker="o", label=name)
        ax.fill_between(xs, [e.low for _, e in points], [e.high for _, e in points], alpha=0.15)
    ax.set(xscale="log", xlabel="optimizer steps per rollout (K)", ylabel=ylabel)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # only the K values are labelled
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


STATISTICS_NOTE = (
    "Intervals: 95% t-intervals whose variance counts the seeds and the problems (two-way, `opo_trl.harness.stats`; "
    "with 3 seeds that differ more than the problems, about 2 degrees of freedom). Verdict: 'ahead' or 'behind' when "
    f"the interval excludes 0 (p < 0.05), only with at least {stats.MIN_SEEDS} seeds. Sign-flip p: the exact "
    "permutation test over the seeds' mean differences, assuming nothing of their distribution; its smallest value "
    "is 2 / 2^seeds (0.25 at 3 seeds), so it cannot reject below 6 seeds. Detectable: the smallest true difference "
    "the comparison would have found with 80% power, from its standard error; 'not separated' says no more than that "
    "a difference under it would likely not have been seen. Holm: the verdict after Holm's adjustment over the "
    "comparisons of the table."
)
