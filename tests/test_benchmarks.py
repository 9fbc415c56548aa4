"""
The benchmark scripts: the gradient probe and the loss timing end to end on the tiny model; the shared machinery of the
benchmarks of runs (`benchmarks/benchmarking.py`: planning, launching, resuming, report tables) and the two benchmarks
built on it, algorithms across tasks (v2) and rollout reuse (v3), on run files written by hand.
"""

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# The scripts import their shared module as a sibling, as `python benchmarks/<script>.py` lets them.
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
import benchmarking  # noqa: E402


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gradient_probe_writes_finite_rows_for_every_algorithm(tmp_path):
    probe = load_script("gradient_probe")
    probe.main(["--model", "tiny", "--steps", "3", "--out", str(tmp_path), "--no-plot"])

    with open(tmp_path / "gradient_probe.csv") as f:
        rows = list(csv.DictReader(f))
    algorithms = {row["algorithm"] for row in rows}
    for family in ("opo", "grpo", "dapo", "gspo"):
        assert any(a.startswith(family) for a in algorithms), f"no rows for {family}: {algorithms}"
    assert len(rows) == 4 * len(algorithms)  # steps 0..3
    for row in rows:
        for column in ("grad_norm", "delta_mean_abs", "delta_max_abs"):
            assert math.isfinite(float(row[column])), row
        # Only the clipped losses have a clip range; only OPO has a restoring force.
        column = "opo_force" if row["algorithm"].startswith("opo") else "clip_frac"
        assert math.isfinite(float(row[column])), row
    at_anchor = [r for r in rows if r["step"] == "0"]
    assert max(float(r["delta_max_abs"]) for r in at_anchor) < 1e-5  # old_per_token_logps are the initial model's
    assert min(float(r["grad_norm"]) for r in at_anchor) > 0  # every loss pulls at the anchor


def test_cost_loss_timing_reports_a_finite_ratio(tmp_path):
    cost = load_script("cost")
    cost.main(["--model", "tiny", "--repeats", "1", "--warmup", "1", "--skip-train", "--skip-memory",
               "--out", str(tmp_path)])  # fmt: skip

    result = json.loads((tmp_path / "cost.json").read_text())
    for baseline in ("grpo_default", "grpo_loss_grpo"):
        ratio = result["loss"][f"opo_over_{baseline}"]["ratio_of_medians"]
        assert math.isfinite(ratio) and ratio > 0
    assert (tmp_path / "cost.md").read_text().startswith("# OPO vs GRPO")


def test_cost_train_step_ratios_include_the_escort_reference(tmp_path):
    cost = load_script("cost")
    cost.main(["--model", "tiny", "--repeats", "1", "--warmup", "0", "--train-steps", "2", "--train-repeats", "1",
               "--completion-length", "8", "--skip-memory", "--out", str(tmp_path)])  # fmt: skip

    train = json.loads((tmp_path / "cost.json").read_text())["train"]
    assert set(train["step_time"]) == {"opo", "opo_ref_mean", "grpo_default"}
    for key in ("opo_over_grpo_step_time", "opo_ref_mean_over_opo_step_time", "opo_ref_mean_over_grpo_step_time"):
        assert math.isfinite(train[key]) and train[key] > 0
    assert "escort_reference=mean / OPO" in (tmp_path / "cost.md").read_text()


@pytest.mark.slow
def test_sweep_writes_a_table_with_intervals(tmp_path, tiny_model_path):
    import yaml

    from .conftest import tiny_recipe

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, tiny_model_path, heldout_eval=True, max_steps=1)))
    sweep = load_script("sweep")
    sweep.main(
        [
            "--config",
            str(recipe),
            "--seeds",
            "0",
            "--alphas",
            "0.4",
            "--mus",
            "1.0",
            "--output_dir",
            str(tmp_path / "sweep"),
        ]
    )
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [(r["alpha"], r["mu"]) for r in rows] == [(0.4, 1.0)] and rows[0]["after"]["problems"] == 4
    assert "| 0.4 | 1.0 | 1 |" in (tmp_path / "sweep" / "sweep.md").read_text()


def test_algorithms_across_tasks_plan_learning_rates_and_order(tmp_path, monkeypatch):
    from opo_trl.harness.runfiles import RunFiles, RunSummary

    bench = load_script("algorithms_across_tasks")
    monkeypatch.setattr(bench, "DOCS", tmp_path)
    with pytest.raises(SystemExit, match="tuning is not finished"):
        bench.chosen_learning_rates()
    # Validation accuracy of each tuning run: OPO best at 3e-5, GRPO tied between 3e-6 and 1e-5 (the smaller wins).
    accuracy = {("opo", 3e-6): 0.2, ("opo", 1e-5): 0.3, ("opo", 3e-5): 0.4, ("grpo", 3e-6): 0.3, ("grpo", 1e-5): 0.3,
                ("grpo", 3e-5): 0.1}  # fmt: skip
    for run in bench.tune_runs():
        summary = RunSummary(
            run.algorithm, run.seed, heldout_accuracy_after=accuracy[run.algorithm, run.learning_rate]
        )
        RunFiles(run.docs_dir).write_summary(summary)
    assert bench.chosen_learning_rates() == {"opo": 3e-5, "grpo": 3e-6, "dapo": 3e-6, "gspo": 3e-6}

    main = bench.main_runs()
    assert len(main) == 32 and len(bench.variant_runs()) == 18
    for task in bench.TASKS:
        seeds = {a: sorted(r.seed for r in main if r.task == task and r.algorithm == a) for a in bench.MAIN_SEEDS}
        assert seeds == {"opo": [0, 1, 2, 3, 4], "grpo": [0, 1, 2, 3, 4], "dapo": [0, 1, 2], "gspo": [0, 1, 2]}
    assert {r.learning_rate for r in main if r.algorithm == "opo"} == {3e-5}
    assert {r.root for r in main} == {tmp_path} and {r.shares_before_with for r in bench.variant_runs()} == {("main",)}

    # A phase runs task by task; within a task, the first run of each seed (which evaluates the initial model) first.
    order = []
    monkeypatch.setattr(benchmarking, "execute", lambda run, *args: order.append(run))
    benchmarking.run_phase(main, jobs=1, work_root=tmp_path / "work", commit=False)
    assert [r.task for r in order] == sorted((r.task for r in main), key=bench.TASKS.index)
    first_task = order[:16]
    assert [r.algorithm for r in first_task[:5]] == ["opo"] * 5 and {r.seed for r in first_task[:5]} == set(range(5))

    # `--tasks` runs the main phase for the named tasks only.
    order.clear()
    bench.main(["main", "--tasks", "basic_arithmetic", "--docs_dir", str(tmp_path), "--work_dir", str(tmp_path / "w")])
    assert len(order) == 16 and {r.task for r in order} == {"basic_arithmetic"}


def test_algorithms_across_tasks_paper_table_puts_our_figures_beside_the_papers():
    from opo_trl.harness.compare import RunRecord
    from opo_trl.harness.runfiles import HeldoutRecord, RunSummary

    bench = load_script("algorithms_across_tasks")

    def full(step, sampled):
        return HeldoutRecord(step=step, problems=len(sampled), fingerprint="f", seconds=None, sampled=sampled)

    records = [
        RunRecord(
            "opo",
            seed,
            RunSummary("opo", seed),
            # Rewards logged at steps 1..16: the last quarter is steps 13-16.
            [{"step": t, "reward": 0.1 * t + seed, "grad_norm": float(t)} for t in range(1, 17)],
            [full(0, [[0.0]] * 4), full(16, [[1.0], [1.0], [0.0], [0.0]])],
        )
        for seed in (0, 1)
    ]
    table = bench.paper_table(records)
    (row,) = [line for line in table.splitlines() if line.startswith("| opo |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    # Late reward: seed 0 0.1 * (13 + 14 + 15 + 16) / 4 = 1.45, seed 1 2.45; grad norms 1..16 twice: median 8.5,
    # IQR [4.75, 12.25].
    assert cells == ["opo", "0.756", "1.950 [1.450, 2.450]", "0.90", "8.500 [4.750, 12.250]", "48%", cells[6]]
    assert cells[6].startswith("0.500 [")
    assert "| grpo |" not in table  # only the algorithms that ran
    # 6 logged steps: too few for a late window (its 4 steps would be more than the second half).
    short = [RunRecord("opo", r.seed, r.summary, r.steps[:6], r.heldout) for r in records]
    assert "| opo | 0.756 | too few steps | 0.90 |" in bench.paper_table(short)


def test_runs_wait_only_for_their_own_seeds_first_run(tmp_path, monkeypatch):
    import threading

    def run(name, seed, phase="main"):
        shares = ("main",) if phase == "variants" else ()
        return benchmarking.Run(tmp_path, phase, "chain_sum", name, name, seed, 1e-5, shares_before_with=shares)

    # Seed 0's initial model is already evaluated (a finished run); seeds 2, 3, 4 are not.
    done = run("opo", 0)
    done.docs_dir.mkdir(parents=True)
    for name in ("heldout.jsonl", "summary.json"):
        (done.docs_dir / name).write_text("{}")
    # A variant of seed 0 reuses the main table's evaluation of the initial model; a run of another phase does not.
    assert benchmarking.evaluated_before(run("opo-ref-mean", 0, "variants")) == done.docs_dir
    assert benchmarking.evaluated_before(run("opo-ref-mean", 2, "variants")) is None
    assert benchmarking.evaluated_before(run("opo", 0, "reuse")) is None

    events, grpo0_started = [], threading.Event()

    def fake_execute(r, *args):
        events.append(("start", r.name, r.seed))
        if (r.name, r.seed) == ("grpo", 0):
            grpo0_started.set()
        if (r.name, r.seed) == ("opo", 4):
            # With a barrier between the first runs and the others, grpo seed 0 could not start before this ends.
            assert grpo0_started.wait(timeout=10), "grpo seed 0 waited for another seed's first run"
        events.append(("end", r.name, r.seed))

    monkeypatch.setattr(benchmarking, "execute", fake_execute)
    runs = [run("opo", 2), run("opo", 3), run("opo", 4), run("grpo", 0), run("grpo", 4)]
    benchmarking.run_phase(runs, jobs=2, work_root=tmp_path / "work", commit=False)
    assert events.index(("start", "grpo", 4)) > events.index(("end", "opo", 4))  # it needs seed 4's evaluation
    assert len(events) == 10


def test_a_drain_lets_the_run_in_flight_finish_and_starts_no_other(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    runs = [benchmarking.Run(tmp_path, "main", "chain_sum", "opo", "opo", seed, 1e-5) for seed in range(4)]
    launched = []

    def fake_subprocess_run(args, **kwargs):
        launched.append(args[args.index("--output_dir") + 1])
        if len(launched) == 1:
            (work / benchmarking.DRAIN).touch()  # asked while the first run is in flight
        return subprocess.CompletedProcess(args, 1)  # "failed": nothing to copy

    monkeypatch.setattr(benchmarking.subprocess, "run", fake_subprocess_run)
    # A DRAIN left by an earlier launch asks that launch to stop, not this one.
    work.mkdir()
    (work / benchmarking.DRAIN).touch()
    benchmarking.run_side_by_side(runs, jobs=1, work_root=work, commit=False)
    out = capsys.readouterr().out
    assert len(launched) == 1 and launched[0].endswith("opo-lr1e-05-seed0")
    assert "removed" in out and f"touch {work / benchmarking.DRAIN}" in out
    assert [line.split("draining: ")[1] for line in out.splitlines() if "draining: " in line] == [
        f"main/chain_sum/opo-lr1e-05-seed{seed} not started" for seed in (1, 2, 3)
    ]


def test_a_launch_takes_the_cores_that_another_launch_leaves(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    runs = [benchmarking.Run(tmp_path, "grid", "chain_sum", "opo", "opo", seed, 1e-5) for seed in range(2)]
    threads = []

    def fake_subprocess_run(args, **kwargs):
        threads.append(kwargs["env"]["OMP_NUM_THREADS"])
        return subprocess.CompletedProcess(args, 1)

    monkeypatch.setattr(benchmarking.subprocess, "run", fake_subprocess_run)
    monkeypatch.setattr(benchmarking.os, "cpu_count", lambda: 2)
    # Alone, a launch shares the cores among its jobs.
    benchmarking.run_side_by_side(runs, jobs=1, work_root=work, commit=False)
    benchmarking.run_phase(runs, jobs=2, work_root=work, commit=False)
    assert threads == ["2", "2", "1", "1"]
    # Another launch holds 1 of the 2 cores: this one takes the other. An ended launch's file is removed.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    try:
        (work / f"launch-{other.pid}").write_text("1\n")
        (work / f"launch-{ended.pid}").write_text("2\n")
        threads.clear()
        benchmarking.run_side_by_side(runs, jobs=1, work_root=work, commit=False)
        assert threads == ["1", "1"] and not (work / f"launch-{ended.pid}").exists()
        assert "warning" not in capsys.readouterr().out
        # It holds 2 of them: this one gets 1 thread a run anyway, and is told that the runs will contend.
        (work / f"launch-{other.pid}").write_text("2\n")
        threads.clear()
        benchmarking.run_phase(runs, jobs=2, work_root=work, commit=False)
        out = capsys.readouterr().out
        assert threads == ["1", "1"]
        assert f"pid {other.pid} (2 threads)" in out and "warning: 4 threads on 2 cores" in out
        # `--threads` overrides the share, and this launch's own file says what it holds.
        threads.clear()
        benchmarking.run_side_by_side(runs[:1], jobs=2, work_root=work, commit=False, threads=3)
        assert threads == ["3"] and (work / f"launch-{os.getpid()}").read_text() == "3\n"
    finally:
        other.kill()
        other.wait()
    assert benchmarking.live_launches(work) == {}
    reuse_powered = load_script("reuse_powered")
    with pytest.raises(SystemExit):
        reuse_powered.main(["runs", "--threads", "0"])
    assert "--threads: 0: must be at least 1" in capsys.readouterr().err


def test_a_deadline_starts_only_the_runs_that_end_before_it(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    runs = [
        benchmarking.Run(tmp_path, "grid", "chain_sum", name, "opo", 0, 1e-5) for name in ("long", "short", "edge")
    ]
    launched = []

    def fake_subprocess_run(args, **kwargs):
        launched.append(Path(args[args.index("--output_dir") + 1]).name)
        return subprocess.CompletedProcess(args, 1)

    monkeypatch.setattr(benchmarking.subprocess, "run", fake_subprocess_run)
    minutes = {"long": 60.0, "short": 20.0, "edge": 31.0}
    deadline = benchmarking.Deadline(time.time() + 30 * 60, lambda r: minutes[r.name])
    benchmarking.run_phase(runs, jobs=1, work_root=work, commit=False, deadline=deadline)
    out = capsys.readouterr().out
    # The long run stays pending and the short one behind it still starts.
    assert launched == ["short-lr1e-05-seed0"]
    refused = [line.split("deadline: ")[1] for line in out.splitlines() if "not started before the deadline" in line]
    assert refused == ["grid/chain_sum/long-lr1e-05-seed0 (needs about 60 min, 30 left)",
                       "grid/chain_sum/edge-lr1e-05-seed0 (needs about 31 min, 30 left)"]  # fmt: skip
    # The same for runs launched side by side.
    launched.clear()
    benchmarking.run_side_by_side(runs, jobs=1, work_root=work, commit=False, deadline=deadline)
    assert launched == ["short-lr1e-05-seed0"]


def test_a_paused_run_resumes_where_it_paused_on_its_own_machine_only(tmp_path, monkeypatch, capsys):
    from opo_trl.harness.run import cpu_description
    from opo_trl.harness.runfiles import RunFiles, RunPause, RunSummary

    work = tmp_path / "work"
    runs = [benchmarking.Run(tmp_path, "grid", "chain_sum", "opo", "opo", seed, 1e-5) for seed in range(2)]
    launched, calls = [], []

    def pause_at(folder, step, cpu):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        (folder / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step,
                                                                                     "max_steps": 12}))  # fmt: skip
        RunFiles(folder).write_pause(RunPause(step, 600.0, 100.0, cpu))

    def fake_subprocess_run(args, **kwargs):
        folder = Path(args[args.index("--output_dir") + 1])
        launched.append((folder.name, "--resume_from_checkpoint" in args, args[args.index("--pause_file") + 1]))
        calls.append(folder.name)
        if len(calls) == 1:  # the first run pauses at step 3 of 12, asked to while it runs
            pause_at(folder, 3, cpu_description())
            (work / benchmarking.PAUSE).touch()
        else:  # the others finish
            RunFiles(folder).write_summary(
                RunSummary("opo", 0, heldout_accuracy_before=0.1, heldout_accuracy_after=0.2)
            )
        return subprocess.CompletedProcess(args, 0)

    monkeypatch.setattr(benchmarking.subprocess, "run", fake_subprocess_run)
    benchmarking.run_side_by_side(runs, jobs=1, work_root=work, commit=False)
    out = capsys.readouterr().out
    assert launched == [("opo-lr1e-05-seed0", False, str(work / benchmarking.PAUSE))]
    assert "paused grid/chain_sum/opo-lr1e-05-seed0 at step 3" in out
    assert "pausing: grid/chain_sum/opo-lr1e-05-seed1 not started" in out and not runs[0].done

    # The next launch clears the PAUSE and resumes the run, priced at the 9 of its 12 steps left: 30 of 40 minutes fit
    # in 35, and a fresh run's 40 do not.
    launched.clear()
    (runs[0].work_dir(work) / "run.log").write_text("first part\n")
    deadline = benchmarking.Deadline(time.time() + 35 * 60, lambda r: 40.0)
    benchmarking.run_side_by_side(runs, jobs=1, work_root=work, commit=False, deadline=deadline)
    out = capsys.readouterr().out
    assert launched == [("opo-lr1e-05-seed0", True, str(work / benchmarking.PAUSE))]
    assert "resuming grid/chain_sum/opo-lr1e-05-seed0 at step 3 of 12" in out and "(needs about 40 min" in out
    assert runs[0].done and (runs[0].work_dir(work) / "run.log").read_text().startswith("first part")
    assert not list(runs[0].work_dir(work).glob("checkpoint-*"))  # a finished run keeps no checkpoint

    # A run paused on another machine starts again from scratch.
    launched.clear()
    pause_at(runs[1].work_dir(work), 5, "Another CPU (AVX512)")
    benchmarking.run_side_by_side(runs, jobs=1, work_root=work, commit=False)
    out = capsys.readouterr().out
    assert launched == [("opo-lr1e-05-seed1", False, str(work / benchmarking.PAUSE))]
    assert f"paused on Another CPU (AVX512), and this machine is {cpu_description()}: it starts again" in out
    assert not (runs[1].work_dir(work) / "checkpoint-5").exists() and runs[1].done


def test_reuse_powered_prices_a_run_for_its_deadline_with_its_initial_evaluation_when_its_seed_has_none():
    import reuse_powered

    costs = {"seconds_generating_step": 60.0, "seconds_reusing_step": 30.0, "eval_seconds_per_sequence": 0.1,
             "overhead_seconds": 30.0}  # fmt: skip
    deadline = reuse_powered.deadline_in(90, costs)
    assert 89.9 * 60 < deadline.at - time.time() <= 90 * 60
    k4, k1 = (next(r for r in reuse_powered.grid_runs([987], None, [cell])) for cell in ("opo-mu1-K4", "opo-K1"))
    evaluations = 2 * reuse_powered.HELDOUT_SEQUENCES * 0.1  # seed 987 has no run: before and after
    rollouts = reuse_powered.ROLLOUTS
    assert deadline.minutes(k4) == pytest.approx((30 + rollouts * (60 + 3 * 30) + evaluations) / 60)
    assert deadline.minutes(k1) == pytest.approx((30 + rollouts * 60 + evaluations) / 60)
    # On a machine three times slower than the pilot's, every price triples.
    slow = reuse_powered.deadline_in(90, costs, slower=3.0)
    assert slow.minutes(k4) == pytest.approx(3 * deadline.minutes(k4))
    assert "needs about" in slow.refuses(k4) and deadline.refuses(k1) is None
    with pytest.raises(SystemExit, match="--within 0: minutes must be positive"):
        reuse_powered.main(["runs", "--within", "0"])
    with pytest.raises(SystemExit, match="--slower 0: a factor must be positive"):
        reuse_powered.main(["runs", "--within", "30", "--slower", "0"])


def test_a_run_is_launched_with_its_recipe_overrides_and_the_shared_evaluation(tmp_path):
    run = benchmarking.Run(tmp_path, "reuse", "chain_sum", "opo-K4", "opo", 1, 1e-5, {"num_iterations": 4})
    args = benchmarking.command(run, tmp_path / "work", tmp_path / "first")
    assert args[1:3] == ["-m", "opo_trl.harness.run"] and args[args.index("--config") + 1].endswith(
        "benchmarks/recipes/benchmark_chain_sum.yaml"
    )
    assert args[args.index("--output_dir") + 1] == str(
        tmp_path / "work" / "reuse" / "chain_sum" / "opo-K4-lr1e-05-seed1"
    )
    assert args[-4:] == ["--num_iterations", "4", "--heldout_before_from", str(tmp_path / "first")]
    assert run.docs_dir == tmp_path / "runs" / "reuse" / "chain_sum" / "opo-K4-lr1e-05-seed1" and not run.done


def test_algorithms_across_tasks_variant_mechanics_counts_tied_rollouts_and_their_drive():
    from opo_trl.harness.compare import RunRecord
    from opo_trl.harness.runfiles import HeldoutRecord, RunSummary

    bench = load_script("algorithms_across_tasks")

    def full(step, sampled):
        return HeldoutRecord(step=step, problems=len(sampled), fingerprint="f", seconds=None, sampled=sampled)

    heldout = [full(0, [[0.0]] * 4), full(8, [[1.0], [0.0], [0.0], [0.0]])]

    def steps(seed):
        # 32 optimizer steps, a rollout every 2: rollouts at steps 1, 3, ..., 31; those at 3 and 7 have every group tied.
        out = []
        for t in range(1, 33):
            entry = {"step": t, "grad_norm": float(t + seed), "entropy": 0.5 + 0.1 * t}
            if t % 2:
                tied = t in (3, 7)
                entry |= {"frac_reward_zero_std": 1.0 if tied else 0.5, "opo/drive/abs_mean": 0.2 * t + seed,
                          "completions/mean_length": 10.0 + t}  # fmt: skip
            out.append(entry)
        return out

    records = [RunRecord("opo-x", seed, RunSummary("opo", seed), steps(seed), heldout) for seed in (0, 1)]
    (row,) = [line for line in bench.variant_mechanics(records).splitlines() if line.startswith("| opo-x |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    # Tied rollouts: 2 per seed. Their drive: 0.6, 1.4 (seed 0) and 1.6, 2.4 (seed 1): median 1.5.
    # Entropy: 0.6 at step 1; the last quarter is steps 25-32, mean 3.35. Length: 11 at the first rollout, 38 over the
    # last quarter of the 16 logged rollouts (steps 25, 27, 29, 31). Grad norms 1..32 and 2..33: median 17.
    assert cells == ["opo-x", "2", "0.250, 0.250", "4 of 32", "1.5", "0.60 -> 3.35", "11.00 -> 38.00", "17"]
    # 6 steps (3 rollouts): too few for a late window of 4 steps within the second half.
    short = [RunRecord("opo-x", r.seed, r.summary, r.steps[:6], heldout) for r in records]
    (row,) = [line for line in bench.variant_mechanics(short).splitlines() if line.startswith("| opo-x |")]
    assert "| too few steps | too few steps |" in row


def train_counting_rollouts(tmp_path, model_path, dataset, algorithm, settings):
    """Train the tiny model with a benchmark's reuse `settings`; the trainer and the size of each rollout generated."""
    from .conftest import make_trainer

    settings = {key: value for key, value in settings.items() if key != "heldout_eval_steps"}  # a script argument
    trainer = make_trainer(tmp_path, model_path, dataset, algorithm=algorithm, **settings)
    generated = []
    generate = trainer._generate_and_score_completions
    trainer._generate_and_score_completions = lambda inputs: generated.append(len(inputs)) or generate(inputs)
    trainer.train()
    return trainer, generated


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("algorithm", ["opo", "grpo"])
def test_rollout_reuse_serves_k_optimizer_steps_per_rollout(tmp_path, tiny_model_path, prompt_dataset, k, algorithm):
    bench = load_script("rollout_reuse")
    settings = {**bench.reuse_overrides(k, 8), "max_steps": 2 * k}  # 2 rollouts instead of the grid's 12
    trainer, generated = train_counting_rollouts(tmp_path, tiny_model_path, prompt_dataset, algorithm, settings)

    # 2 rollouts of 2 prompts x 6 completions, each used for k optimizer steps on the whole rollout.
    assert generated == [12, 12] and trainer.state.global_step == 2 * k
    steps = [e for e in trainer.state.log_history if "grad_norm" in e]
    assert len(steps) == 2 * k
    # Both trainers log how far the policy has moved from the rollout's: 0 on a rollout's first step, then more.
    kl = [e["rollout_kl"] for e in steps]
    assert all(d == 0 for d in kl[::k]) and all(d > 0 for i, d in enumerate(kl) if i % k)
    if algorithm == "opo":
        assert all("opo/delta/abs_max" in e and "opo/equilibrium_gap" in e for e in steps)
        # The report's |Delta| / Delta*: on a rollout's first step no step is taken yet, on later ones some is.
        fractions = [e["opo/step/abs_mean"] / e["opo/closed_form_step/abs_mean"] for e in steps]
        assert all(f == 0 for f in fractions[::k]) and all(f > 0 for i, f in enumerate(fractions) if i % k)
        assert sum("opo/mu" in e for e in steps) == 2  # once per rollout
        reused = [e["opo/delta/abs_max"] for i, e in enumerate(steps) if i % k]
        assert all(d > 0 for d in reused) and len(reused) == 2 * (k - 1)  # later steps see Delta != 0
    else:
        assert all("clip_ratio/region_mean" in e for e in steps)


def test_rollout_reuse_truncated_fraction_per_budget_by_hand():
    bench = load_script("rollout_reuse")
    # Ended after 10 and 40 tokens, never ended in 64, ended exactly at token 64.
    fractions = bench.truncated_fractions([10, 40, 64, 64], [True, True, False, True])
    assert fractions == {32: 3 / 4, 48: 2 / 4, 64: 1 / 4}


def test_algorithms_across_tasks_resampling_table_sets_problems_alone_beside_seeds_and_problems():
    from opo_trl.harness.compare import RunRecord
    from opo_trl.harness.runfiles import HeldoutRecord, RunSummary

    bench = load_script("algorithms_across_tasks")

    def run(name, seed, value):
        # Every problem alike within a run: the runs differ only from seed to seed.
        after = HeldoutRecord(step=8, problems=4, fingerprint="f", seconds=None, sampled=[[value]] * 4)
        before = HeldoutRecord(step=0, problems=4, fingerprint="f", seconds=None, sampled=[[0.0]] * 4)
        summary = RunSummary(name, seed, heldout_accuracy_after=value)
        return RunRecord(name, seed, summary, [], [before, after])

    records = [run("opo", s, v) for s, v in zip((0, 1, 2), (0.0, 0.5, 1.0), strict=True)] + [
        run("grpo", s, 0.25) for s in (0, 1, 2)
    ]
    (row,) = [line for line in bench.resampling_table(records).splitlines() if line.startswith("| grpo |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    # Differences -0.25, +0.25, +0.75: mean +0.25; over seeds, variance 0.25 / 3, 2 df: +-4.303 x 0.2887. Problems
    # alone see no spread at all; the seeds do.
    assert cells == ["grpo", "3", "+0.250 [-0.992, +1.492]", "+0.250 [+0.250, +0.250]", "0.000..1.000", "0.250..0.250"]


def test_rollout_reuse_pilot_figures_and_plan_from_raw_files(tmp_path):
    from opo_trl.harness.runfiles import HeldoutRecord, RunFiles, RunSummary

    bench = load_script("rollout_reuse")
    files = RunFiles(tmp_path)
    # K = 2: steps 1, 3, 5 generate (reward logged) and take 10, 11, 12 s; steps 2, 4, 6 reuse and take 3 s each.
    files.write_metrics(
        [
            {"step": t, "step_time": (9.0 + (t + 1) / 2) if t % 2 else 3.0} | ({"reward": 0.1 * t} if t % 2 else {})
            for t in range(1, 7)
        ]  # fmt: skip
    )
    files.start_heldout()
    files.append_heldout(HeldoutRecord(0, 4, "f", 12.0, [[1.0, 0.0]] * 4, [1.0] * 4))  # 4 x (2 + 1) sequences in 12 s
    files.write_summary(RunSummary("opo", 0, wall_seconds=100.0))
    figures = bench.pilot_figures(files)
    # The first generating step is warm-up: median of 11 and 12 is 11.5; rollout = 11.5 - 3.
    assert figures["seconds_generating_step"] == 11.5 and figures["seconds_reusing_step"] == 3.0
    assert figures["seconds_per_rollout"] == 8.5 and figures["eval_seconds_per_sequence"] == 1.0
    assert figures["rollout_rewards"] == pytest.approx([0.1, 0.3, 0.5])
    # A grid run at K = 4: ROLLOUTS x (11.5 + 3 x 3) s, 100 sequences evaluated once, 60 s setup.
    rollouts = bench.ROLLOUTS * 20.5
    assert bench.minutes_per_run(figures, 4, 100, evaluate_before=False) == pytest.approx((60 + rollouts + 100) / 60)
    assert bench.minutes_per_run(figures, 4, 100, evaluate_before=True) == pytest.approx((60 + rollouts + 200) / 60)


def v3_record(name, seed, after, k=2, steps=4, no_signal=()):
    """A finished v3 run: K = k, `steps` optimizer steps, every rollout 12 completions of 10 tokens, 30 s a step; the
    rollouts generated at the steps in `no_signal` have every group tied."""
    from opo_trl.harness.compare import RunRecord
    from opo_trl.harness.runfiles import HeldoutRecord, RunSummary

    logged = []
    for t in range(1, steps + 1):
        entry = {"step": t, "grad_norm": 1.0, "step_time": 30.0, "entropy": 0.1 * t, "rollout_kl": 0.01 * t}
        if t % k == 1 % k:
            tied = 1.0 if t in no_signal else 0.5
            entry |= {"reward": 0.5, "completions/mean_length": 10.0, "frac_reward_zero_std": tied}
        if name.startswith("opo"):
            entry |= {
                "opo/step/abs_mean": 0.05 * (t % k == 0) + 0.05 * (t == steps),
                "opo/closed_form_step/abs_mean": 0.1,
            }
        else:
            entry |= {"clip_ratio/region_mean": 0.1 * t}
        logged.append(entry)
    heldout = [
        HeldoutRecord(0, 4, "f", 1.0, [[0.0, 0.0]] * 4, [0.0] * 4),
        HeldoutRecord(steps, 4, "f", 1.0, [[after, after]] * 4, [after] * 4),
    ]
    summary = RunSummary(name, seed, heldout_accuracy_before=0.1, heldout_accuracy_after=0.1 + after)
    return RunRecord(f"{name}-K{k}", seed, summary, logged, heldout)


def test_rollout_reuse_run_figures_by_hand():
    bench = load_script("rollout_reuse")
    opo = bench.run_figures(v3_record("opo", 0, 0.2), 2)
    # Rollouts at steps 1 and 3: 2 x 12 x 10 = 240 tokens; gain 0.2; 4 steps x 30 s = 2 minutes.
    assert opo["gain_per_1k_tokens"] == pytest.approx(1000 * 0.2 / 240) and opo["gain_per_minute"] == pytest.approx(
        0.1
    )
    # Last reuse of each rollout: steps 2 and 4. Share of the closed-form step 0.5 and 1.0; KL 0.02 and 0.04.
    assert opo["closed_form_fraction"] == pytest.approx(0.75) and opo["rollout_kl"] == pytest.approx(0.03)
    assert opo["clip_fraction"] is None and opo["zero_gradient_steps"] == (0, 4)
    assert opo["entropy_late"] == pytest.approx(0.4)  # the last quarter of 4 steps: step 4
    grpo = bench.run_figures(v3_record("grpo", 0, 0.2), 2)
    assert grpo["clip_fraction"] == pytest.approx(0.3) and grpo["closed_form_fraction"] is None
    # The rollout of step 3 carried no signal: only step 2 is a last reuse (clip 0.2, KL 0.02).
    grpo = bench.run_figures(v3_record("grpo", 0, 0.2, no_signal=(3,)), 2)
    assert grpo["clip_fraction"] == pytest.approx(0.2) and grpo["rollout_kl"] == pytest.approx(0.02)


def test_rollout_reuse_report_tables_and_differences(tmp_path, monkeypatch):
    from opo_trl.harness.runfiles import RunFiles

    bench = load_script("rollout_reuse")
    monkeypatch.setattr(bench, "DOCS", tmp_path)
    monkeypatch.setattr(bench, "K_VALUES", (1, 2))
    monkeypatch.setattr(bench, "ALGORITHMS", {"opo": ("opo", {}), "grpo": ("grpo", {})})
    monkeypatch.setattr(bench, "EXTRA_AT_LARGEST_K", {})
    # At K = 2 OPO solves 0.45, 0.5, 0.55 of every problem on seeds 0, 1, 2, GRPO 0.25: OPO ahead by 0.2, 0.25, 0.3.
    # At K = 1 both solve 0.25: reuse is worth the same to OPO and nothing to GRPO.
    for run in bench.runs(64):
        k = run.overrides["num_iterations"]
        after = 0.45 + 0.05 * run.seed if run.name.startswith("opo") and k == 2 else 0.25
        record = v3_record(run.name.split("-K")[0], run.seed, after, k=k, steps=4 * k)
        files = RunFiles(run.docs_dir)
        files.write_summary(record.summary)
        files.write_metrics(record.steps)
        files.start_heldout()
        for evaluation in record.heldout:
            files.append_heldout(evaluation)
    text = bench.report(64)
    # Seed means 0.45, 0.5, 0.55: SE sqrt(0.0025 / 3) = 0.0289 on 2 df, 0.5 -+ 4.303 x 0.0289.
    assert "| 2 | opo | 3 | 0.500 [0.376, 0.624] |" in text and "| 2 | grpo | 3 | 0.250 [0.250, 0.250] |" in text
    # The differences: the same numbers shifted by 0.25; t = 0.25 / 0.0289 = 8.66 on 2 df, p = 1 - 8.66 / sqrt(77) =
    # 0.013; the sign-flip test's floor at 3 seeds, 0.25; detectable (4.303 + 1.061) x 0.0289 = 0.155. Holm over the 2
    # comparisons of the table doubles the smaller p-value (the other is 1): 0.026, still ahead.
    assert "| 2 | opo - grpo | 3 | +0.250 [+0.126, +0.374] | 0.013 | 0.25 | 0.155 | ahead | ahead |" in text
    assert "| 1 | opo - grpo | 3 | +0.000 [+0.000, +0.000] | 1 | 1 | 0.000 | not separated | not separated |" in text
    assert "| opo | K = 2 - K = 1 | 3 | +0.250 [+0.126, +0.374] | 0.013 | 0.25 | 0.155 | ahead | ahead |" in text
    assert "| grpo | K = 2 - K = 1 | 3 | +0.000 [+0.000, +0.000]" in text
    assert text.count("2 comparisons in this table; Holm") == 2 and "Detectable: the smallest true difference" in text
    assert (tmp_path / "report.md").exists() and (tmp_path / "reuse.png").stat().st_size > 1000


def test_comparison_table_adjusts_its_rows_by_holm():
    from opo_trl.harness.stats import Estimate

    def estimate(mean, p):
        return Estimate(mean, mean - 0.1, mean + 0.1, 3, 256, p_value=p, detectable=0.2, sign_flip_p=0.25)

    # p-values 0.01, 0.04, 0.5 over 3 rows: Holm 0.03, 0.08, 0.5. The first stays ahead, the second does not.
    rows = [
        (("a",), estimate(0.3, 0.01)),
        (("b",), estimate(-0.2, 0.04)),
        (("c",), estimate(0.0, 0.5)),
        (("d",), None),
    ]
    table = benchmarking.comparison_table(rows, ("comparison",))
    lines = table.splitlines()
    assert lines[0] == (
        "| comparison | seeds | difference [95% CI] | p | sign-flip p | detectable (80% power) | verdict | Holm |"
    )
    assert lines[2] == "| a | 3 | +0.300 [+0.200, +0.400] | 0.01 | 0.25 | 0.200 | ahead | ahead |"
    assert lines[3] == "| b | 3 | -0.200 [-0.300, -0.100] | 0.04 | 0.25 | 0.200 | behind | not separated |"
    assert lines[5] == "| d | 0 | n/a | | | | | |"
    assert lines[-1] == "3 comparisons in this table; Holm: the verdicts adjusted over them."
    # Figures that are not scores read "higher"/"lower".
    assert "| a | 3 | +0.300 [+0.200, +0.400] | 0.01 | 0.25 | 0.200 | higher | higher |" in (
        benchmarking.comparison_table(rows[:1], ("comparison",), score=False)
    )


def test_rollout_reuse_only_runs_the_named_cells(monkeypatch):
    bench = load_script("rollout_reuse")
    with pytest.raises(SystemExit, match="--only: no cell opo-K3 in the grid"):
        bench.main(["runs", "--only", "opo-K3"])
    started = []
    monkeypatch.setattr(benchmarking, "run_phase", lambda grid, *args, **kwargs: started.extend(grid))
    bench.main(["runs", "--only", "opo-K1", "gspo-K8"])
    # In the order named, though the grid runs gspo-K8 first.
    assert [(r.name, r.seed) for r in started] == [("opo-K1", s) for s in bench.SEEDS] + [
        ("gspo-K8", s) for s in bench.SEEDS
    ]
    # The grid's runs write their raw files where benchmark v3's always went.
    assert {r.root for r in started} == {Path(__file__).resolve().parents[1] / "docs" / "benchmark_v3"}


@pytest.mark.parametrize(
    ("old", "phases"),
    [
        ("benchmark_v2", "{measure,plan,tune,main,variants,report}"),
        ("benchmark_v3", "{budget,pilot,plan,runs,report}"),
    ],
)
def test_the_old_command_lines_run_the_renamed_benchmarks(old, phases):
    # `python benchmarks/benchmark_v3.py PHASE`, as docs/RESULTS.md records it: the renamed benchmark's parser and phases.
    printed = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{old}.py"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert printed.startswith(f"usage: {old}.py") and phases in printed


def test_planned_detectable_difference_by_hand():
    # 8 seeds, per-seed differences spread 0.09: t_{0.975, 7} = 2.3646, t_{0.80, 7} = 0.8960; 3.2606 x 0.09 / sqrt(8).
    assert benchmarking.planned_detectable(0.09, 8) == pytest.approx(3.2606 * 0.09 / 8**0.5, abs=1e-4)
    assert benchmarking.planned_detectable(0.09, 8) == pytest.approx(0.1037, abs=1e-4)
    # More seeds detect less: 16 seeds, t_{0.975, 15} = 2.1314, t_{0.80, 15} = 0.8662.
    assert benchmarking.planned_detectable(0.09, 16) == pytest.approx(2.9976 * 0.09 / 4, abs=1e-4)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        benchmarking.planned_detectable(0.09, 1)


def test_reuse_figures_equilibrium_gap_lengths_mu_and_zero_gradient_reuse_steps():
    from opo_trl.harness.compare import RunRecord
    from opo_trl.harness.runfiles import RunSummary

    # K = 2, rollouts at steps 1, 3, 5 with mu 0.5, 2, 1 (chosen per rollout); the rollout of step 5 had no signal.
    steps = []
    for t in range(1, 7):
        entry = {"step": t, "grad_norm": 0.0 if t == 4 else 1.0, "entropy": 0.5, "rollout_kl": 0.0,
                 "opo/step/abs_mean": 0.1, "opo/closed_form_step/abs_mean": 0.2, "opo/equilibrium_gap": 0.3}  # fmt: skip
        if t % 2:
            entry |= {"reward": 0.5, "completions/mean_length": float(t), "opo/mu": {1: 0.5, 3: 2.0, 5: 1.0}[t],
                      "frac_reward_zero_std": 1.0 if t == 5 else 0.5}  # fmt: skip
        steps.append(entry)
    summary = RunSummary("opo", 0, heldout_accuracy_before=0.1, heldout_accuracy_after=0.2)
    figures = benchmarking.reuse_figures(RunRecord("opo", 0, summary, steps, []), 2, 48)
    # Last reuses with a signal: steps 2 (mu 0.5) and 4 (mu 2): gap 0.3 / (mu x 0.2) = 3.0 and 0.75, median 1.875.
    assert figures["equilibrium_gap"] == pytest.approx(1.875) and figures["closed_form_fraction"] == pytest.approx(0.5)
    # Zero gradient at step 4, a reuse step with a signal; steps 1-4 have one (2 of them reuses), 5 and 6 do not.
    assert figures["zero_gradient_steps"] == (1, 4) and figures["zero_gradient_reuse_steps"] == (1, 2)
    # Lengths 1, 3, 5 at the three rollouts: the first 1, the last quarter (one rollout) 5; mu over signal rollouts.
    assert (figures["length_first"], figures["length_late"]) == (1.0, 5.0) and figures["mu"] == pytest.approx(1.25)
    # 3 rollouts x 48 completions x (1 + 3 + 5) / 3 tokens = 432 tokens for a gain of 0.1.
    assert figures["gain_per_1k_tokens"] == pytest.approx(100 / 432)


def test_step_costs_overhead_and_minutes_per_run(tmp_path):
    from opo_trl.harness.runfiles import HeldoutRecord, RunFiles, RunSummary

    files = RunFiles(tmp_path)
    # K = 2: generating steps take 10, 20, 20 s (the first is warm-up), reusing steps 5 s each.
    files.write_metrics(
        [
            {"step": t, "step_time": {1: 10.0, 3: 20.0, 5: 20.0}.get(t, 5.0)} | ({"reward": 0.0} if t % 2 else {})
            for t in range(1, 7)
        ]  # fmt: skip
    )
    files.start_heldout()
    files.append_heldout(HeldoutRecord(0, 10, "f", 30.0, [[0.0, 1.0]] * 10, [0.0] * 10))  # 30 sequences in 30 s
    files.write_summary(RunSummary("opo", 0, wall_seconds=200.0))
    costs = benchmarking.step_costs(files)
    # 200 s of wall less 65 s of steps and 30 s of evaluation.
    assert costs["overhead_seconds"] == pytest.approx(105.0) and costs["eval_seconds_per_sequence"] == 1.0
    # 10 rollouts at K = 4: 10 x (20 + 3 x 5) s, 100 sequences evaluated twice, 105 s setup.
    assert benchmarking.minutes_per_run(costs, 4, 10, 100, True, setup_seconds=105.0) == pytest.approx(655 / 60)
