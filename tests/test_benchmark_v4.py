"""
Benchmark v4 (`benchmarks/reuse_powered.py`): the grid's shape, the tuning rule, the pilot's spread and the plan's
detectable difference and cut by hand, and the report, on run files written by hand; the rollout shape on the tiny
model.
"""

import json
import math

import pytest

from .test_benchmarks import benchmarking, load_script, train_counting_rollouts


@pytest.fixture
def bench(tmp_path, monkeypatch):
    module = load_script("reuse_powered")
    monkeypatch.setattr(module, "DOCS", tmp_path)
    return module


def write_run(run, after, k=4, rollouts=2, zero_reuse=0, step_seconds=(100.0, 40.0), eval_seconds=6.0,
              overhead=60.0, problems=4, cpu=None):  # fmt: skip
    """
    A finished run's raw files: `rollouts` rollouts each serving `k` steps, every rollout with a signal, the first
    `zero_reuse` reuse steps of each with a zero gradient; held-out pass@1 `after` on every problem (0 before), each
    evaluation `problems` x (2 samples + greedy) in `eval_seconds`; wall time the steps, evaluations and `overhead`;
    the machine `cpu` (None: not recorded, as in runs before it was).
    """
    from opo_trl.harness.runfiles import HeldoutRecord, RunFiles, RunSummary

    steps = []
    for t in range(1, rollouts * k + 1):
        position = (t - 1) % k  # 0: the step that generated the rollout
        entry = {"step": t, "step_time": step_seconds[position > 0], "entropy": 0.5, "rollout_kl": 0.01 * position,
                 "grad_norm": 0.0 if 0 < position <= zero_reuse else 1.0}  # fmt: skip
        if position == 0:
            entry |= {"reward": 0.5, "completions/mean_length": 10.0, "frac_reward_zero_std": 0.5}
        if run.algorithm == "opo":
            entry |= {"opo/step/abs_mean": 0.05 * position, "opo/closed_form_step/abs_mean": 0.1,
                      "opo/equilibrium_gap": 0.05} | ({"opo/mu": 1.0} if position == 0 else {})  # fmt: skip
        else:
            entry |= {"clip_ratio/region_mean": 0.1 * position}
        steps.append(entry)
    files = RunFiles(run.docs_dir)
    files.write_metrics(steps)
    files.start_heldout()
    files.append_heldout(HeldoutRecord(0, problems, "f", eval_seconds, [[0.0, 0.0]] * problems, [0.0] * problems))
    files.append_heldout(
        HeldoutRecord(len(steps), problems, "f", eval_seconds, [[after, after]] * problems, [after] * problems)
    )
    wall = sum(e["step_time"] for e in steps) + 2 * eval_seconds + overhead
    files.write_summary(RunSummary(run.algorithm, run.seed, heldout_accuracy_before=0.0, heldout_accuracy_after=after,
                                   wall_seconds=wall, cpu=cpu))  # fmt: skip


def test_the_grid_has_eight_seeds_a_cell_and_rollouts_of_8_prompts_x_6(bench):
    chosen = {"opo-chi2": {"mu_target_chi2": 0.04}, "gspo": {"epsilon": 3e-3, "epsilon_high": 4e-3}}
    grid = bench.grid_runs(range(bench.MIN_SEEDS), chosen)
    assert set(bench.PRIORITY) == set(bench.CELLS) and len(grid) == len(bench.CELLS) * bench.MIN_SEEDS
    for cell in bench.CELLS:
        assert sorted(r.seed for r in grid if r.name == cell) == list(range(8))
    for run in grid:
        o, k = run.overrides, bench.CELLS[run.name][2]
        # Each optimizer step accumulates the whole rollout of at least 8 prompts x 6 completions, K steps a rollout.
        rollout = o["per_device_train_batch_size"] * o["gradient_accumulation_steps"]
        assert rollout == o["num_generations"] * bench.PROMPTS_PER_ROLLOUT and o["num_generations"] == 6
        assert bench.PROMPTS_PER_ROLLOUT >= 8 and o["steps_per_generation"] == o["gradient_accumulation_steps"]
        assert o["num_iterations"] == k and o["max_steps"] == bench.ROLLOUTS * k
        assert o.items() >= bench.TRAINING_OVERRIDES.items() and "heldout_split" not in o  # the recipe's test split
        assert run.learning_rate == bench.LEARNING_RATE and run.root / "runs" / "grid" in run.docs_dir.parents
    assert {r.overrides["num_iterations"] for r in grid} == {1, 4, 8}
    gspo = [r for r in grid if r.algorithm == "gspo"]
    assert gspo and all(r.overrides["epsilon"] == 3e-3 and r.overrides["epsilon_high"] == 4e-3 for r in gspo)
    assert all(r.overrides["mu_target_chi2"] == 0.04 for r in grid if r.name.startswith("opo-chi2"))
    assert {r.overrides["mu"] for r in grid if r.name.startswith("opo-mu")} == {1.0, 0.25}
    # Tuning: validation split only, seeds no grid run uses, K = 4.
    tune = bench.tune_runs()
    assert {r.overrides["heldout_split"] for r in tune} == {"validation"}
    assert not {r.seed for r in tune} & set(range(max(bench.SEED_COUNTS)))
    assert {r.overrides["num_iterations"] for r in tune} == {4}
    # The pilot is the grid's first runs.
    assert {(r.name, r.seed) for r in bench.pilot_runs()} <= {(r.name, r.seed) for r in grid}


def test_the_grids_commands_parse(bench, tmp_path):
    from opo_trl.harness.arguments import parse_command

    chosen = {"opo-chi2": {"mu_target_chi2": 0.04}, "gspo": {"epsilon": 3e-3, "epsilon_high": 4e-3}}
    runs = [*bench.grid_runs((0,), chosen, ("opo-chi2-K4", "gspo-K8")), bench.tune_runs()[0]]
    parsed = [parse_command(benchmarking.command(r, tmp_path, None)[3:]) for r in runs]
    opo, gspo, tune = parsed
    assert opo.training_args.mu_target_chi2 == 0.04 and opo.training_args.num_iterations == 4
    assert (gspo.training_args.epsilon, gspo.training_args.epsilon_high) == (3e-3, 4e-3)
    assert gspo.training_args.gradient_accumulation_steps == 4 and gspo.training_args.max_steps == 8 * bench.ROLLOUTS
    assert tune.script_args.heldout_split == "validation" and tune.training_args.bf16 is False


def test_tune_picks_by_the_stated_rule(bench, monkeypatch):
    with pytest.raises(SystemExit, match="tuning is not finished"):
        bench.chosen_settings()
    # OPO: 0.04 and 0.16 tie at the best mean (0.35): the first listed, 0.04. GSPO: the paper's clip scores best but
    # zeroes every reuse step (12 of 12); 3e-3 zeroes 6 of 12 (0.5, at the limit) and ties 3e-2 (none): 3e-3.
    scores = {"opo-chi2-0.01": (0.2, 0.2), "opo-chi2-0.04": (0.3, 0.4), "opo-chi2-0.16": (0.4, 0.3),
              "opo-chi2-0.64": (0.1, 0.1), "gspo-clip0.0003": (0.5, 0.5), "gspo-clip0.003": (0.3, 0.3),
              "gspo-clip0.03": (0.2, 0.4)}  # fmt: skip
    for run in bench.tune_runs():
        index = bench.TUNE_SEEDS.index(run.seed)
        # K = 4, 2 rollouts: 6 reuse steps with a signal per run; 3e-3 zeroes 2 on one seed and 1 on the other.
        z = {"gspo-clip0.0003": 3, "gspo-clip0.003": (2, 1)[index]}.get(run.name, 0)
        write_run(run, scores[run.name][index], zero_reuse=z)
    candidates, chosen = bench.tune_table()
    assert {c["name"]: c["zero"] for c in candidates if c["algorithm"] == "gspo"} == {
        "gspo-clip0.0003": (12, 12), "gspo-clip0.003": (6, 12), "gspo-clip0.03": (0, 12)}  # fmt: skip
    assert chosen == {"opo-chi2": {"mu_target_chi2": 0.04}, "gspo": {"epsilon": 3e-3, "epsilon_high": 4e-3}}
    text = bench.tune_report()
    assert "| gspo-clip0.0003 | 2 | 0.500, 0.500 | 0.500 | 12 of 12 |" in text
    assert "Chosen: OPO `mu_target_chi2` = 0.04" in text and "GSPO clip 0.003 / 0.004" in text
    # No candidate under the limit: the fewest zero-gradient steps, the first of equal shares.
    rule = bench.tune_rule(
        [{"name": "a", "scores": [0.9], "zero": (6, 6)}, {"name": "b", "scores": [0.1], "zero": (4, 6)},
         {"name": "c", "scores": [0.5], "zero": (4, 6)}], 0.5)  # fmt: skip
    assert rule["name"] == "b"


def test_pilot_spread_plan_detectable_and_cut_by_priority_by_hand(bench, capsys):
    with pytest.raises(SystemExit, match="the pilot is not finished"):
        bench.pilot_summary()
    # OPO mu = 1 at 0.30, 0.40, 0.35 on seeds 0, 1, 2, GRPO at 0.25: differences 0.05, 0.15, 0.10, sd 0.05.
    for run in bench.pilot_runs():
        write_run(run, {0: 0.30, 1: 0.40, 2: 0.35}[run.seed] if run.algorithm == "opo" else 0.25)
    pilot = bench.pilot_summary()
    assert pilot["per_seed_differences"] == pytest.approx([0.05, 0.15, 0.10])
    assert pilot["sd_difference"] == pytest.approx(0.05) and pilot["mean_difference"] == pytest.approx(0.10)
    # Generating steps 100 s (the first of each run left out), reusing 40 s; 24 sequences in 12 s; overhead 60 s.
    assert pilot["costs"] == pytest.approx({"seconds_generating_step": 100.0, "seconds_reusing_step": 40.0,
                                            "eval_seconds_per_sequence": 0.5, "overhead_seconds": 60.0})  # fmt: skip
    (bench.DOCS / "pilot.json").write_text(json.dumps(pilot))

    with pytest.raises(SystemExit, match="never goes below 8 seeds"):
        bench.plan(pilot, 100.0, 6, 2)
    planned = bench.plan(pilot, 12.0, 8, 2)
    # Detectable at 8 seeds: (t_0.975,7 = 2.3646 + t_0.80,7 = 0.8960) x 0.05 / sqrt(8); at 10: (2.2622 + 0.8834).
    assert planned["detectable"] == pytest.approx(3.2606 * 0.05 / math.sqrt(8), abs=1e-4)
    assert planned["by_seeds"][10]["detectable"] == pytest.approx(3.1456 * 0.05 / math.sqrt(10), abs=1e-4)
    # A grid run: 60 s + 16 rollouts x (100 + (K - 1) x 40) s + 768 sequences x 0.5 s (twice for a seed's first run),
    # two at a time. Seeds 0-2 of the first two cells are the pilot's (done, their initial model evaluated).
    minutes = {k: (60 + 16 * (100 + (k - 1) * 40) + 384) / 60 for k in (1, 4)}
    first_k4 = minutes[4] + 384 / 60
    hours = [5 * first_k4, 5 * minutes[4], 8 * minutes[1], 8 * minutes[1], 8 * minutes[4]]
    hours = [m / 60 / 2 for m in hours]
    assert sum(hours[:4]) < 12.0 < sum(hours)
    # The cut keeps whole cells in priority order and stops at the first that does not fit.
    assert planned["cells"] == list(bench.PRIORITY[:4]) and planned["dropped"] == list(bench.PRIORITY[4:])
    assert planned["hours"] == pytest.approx(sum(hours[:4]))
    assert planned["by_seeds"][8]["grid_hours"] > planned["hours"] and planned["seeds"] == 8

    bench.main(["plan", "--hours", "12", "--seeds", "10"])
    printed = capsys.readouterr().out
    assert "   10 |" in printed and f"{3.1456 * 0.05 / math.sqrt(10):.3f}" in printed
    planned = json.loads((bench.DOCS / "plan.json").read_text())
    assert planned["seeds"] == 10 and planned["cells"] == list(bench.PRIORITY[: len(planned["cells"])])


def test_runs_follow_the_plan_and_the_tuning(bench, monkeypatch):
    with pytest.raises(SystemExit, match="plan --hours H"):
        bench.main(["runs"])
    (bench.DOCS / "plan.json").write_text(json.dumps({"seeds": 9, "cells": ["opo-mu1-K4", "gspo-K4"]}))
    with pytest.raises(SystemExit, match="tuning is not finished"):
        bench.main(["runs"])
    started = []
    monkeypatch.setattr(benchmarking, "run_phase", lambda grid, *args, **kwargs: started.extend(grid))
    # Cells without a tuned setting run before the tuning ends; a tuned one among them still needs it.
    bench.main(["runs", "--only", "opo-K1", "opo-mu0.25-K4"])
    assert [(r.name, r.seed) for r in started] == [(c, s) for c in ("opo-K1", "opo-mu0.25-K4") for s in range(9)]
    assert started[-1].overrides["mu"] == 0.25 and started[0].overrides["num_iterations"] == 1
    with pytest.raises(SystemExit, match="tuning is not finished"):
        bench.main(["runs", "--only", "opo-K1", "gspo-K4"])
    started.clear()
    for run in bench.tune_runs():
        write_run(run, 0.3)
    bench.main(["runs"])
    assert [(r.name, r.seed) for r in started] == [(c, s) for c in ("opo-mu1-K4", "gspo-K4") for s in range(9)]
    # All candidates tied and none zeroes a step: the first listed of each.
    assert started[-1].overrides["epsilon"] == bench.GSPO_CLIP_CANDIDATES[0][0]
    with pytest.raises(SystemExit, match="--only: no cell opo-K3"):
        bench.main(["runs", "--only", "opo-K3"])
    started.clear()
    bench.main(["runs", "--only", "grpo-K1", "opo-chi2-K8"])
    assert [r.name for r in started] == ["grpo-K1"] * 9 + ["opo-chi2-K8"] * 9
    assert started[-1].overrides["mu_target_chi2"] == bench.MU_TARGET_CHI2_CANDIDATES[0]
    # Seed by seed, side by side, so that the pairs compared finish the same seeds together.
    side = []
    monkeypatch.setattr(benchmarking, "run_side_by_side", lambda grid, *args: side.append((grid, args)))
    bench.main(["runs", "--only", "grpo-K1", "opo-K1", "--by_seed", "--jobs", "1", "--threads", "1"])
    ((grid, (jobs, _, _, _, threads)),) = side
    assert [(r.name, r.seed) for r in grid] == [(c, s) for s in range(9) for c in ("grpo-K1", "opo-K1")]
    assert (jobs, threads) == (1, 1)  # one run at a time, of one thread, beside another launch


def test_report_prints_every_comparison_with_its_verdict_and_detectable_difference(bench):
    # OPO mu = 1 at K = 4 solves 0.45, 0.5, 0.55 of every problem on seeds 0, 1, 2; every other cell 0.25.
    # Seed 0's runs record no machine; at seed 1 GRPO's records another than OPO's; at seed 2 one records none.
    machines = {("opo-mu1-K4", 1): "A (AVX512)", ("grpo-K4", 1): "B (AVX2)", ("grpo-K4", 2): "B (AVX2)"}
    for run in bench.grid_runs(range(3), cells=("opo-mu1-K4", "grpo-K4", "opo-K1", "grpo-K1")):
        k = bench.CELLS[run.name][2]
        after = 0.45 + 0.05 * run.seed if run.name == "opo-mu1-K4" else 0.25
        zero = 1 if run.name == "grpo-K4" else 0
        write_run(run, after, k=k, zero_reuse=zero, cpu=machines.get((run.name, run.seed)))
    text = bench.report()
    # Seed means 0.45, 0.5, 0.55: SE sqrt(0.0025 / 3) = 0.0289 on 2 df; difference +0.25, t = 8.66, p = 0.013;
    # detectable (4.303 + 1.061) x 0.0289 = 0.155; Holm over the table's 2 comparisons: 0.026, still ahead.
    assert "| 4 | opo-mu1-K4 | 3 | 0.500 [0.376, 0.624] |" in text
    assert "| 4 | opo-mu1-K4 - grpo-K4 | 3 | +0.250 [+0.126, +0.374] | 0.013 | 0.25 | 0.155 | ahead | ahead |" in text
    assert (
        "| 1 | opo-K1 - grpo-K1 | 3 | +0.000 [+0.000, +0.000] | 1 | 1 | 0.000 | not separated | not separated |"
        in (text)
    )
    assert "| 4 | opo-mu1-K4 - opo-K1 | 3 | +0.250 [+0.126, +0.374] |" in text
    assert "| 4 | grpo-K4 - grpo-K1 | 3 | +0.000 [+0.000, +0.000]" in text
    # Mechanism: GRPO at K = 4 zeroed 1 of 3 reuse steps per rollout (2 rollouts x 3 seeds); OPO's last reuse took
    # 0.15 / 0.1 of its closed-form step, equilibrium gap 0.05 / (1 x 0.1).
    (row,) = [line for line in text.splitlines() if line.startswith("| 4 | grpo-K4 | 3 |")]
    assert "| 6 of 18 |" in row and "| 10.0 -> 10.0 |" in row
    (row,) = [line for line in text.splitlines() if line.startswith("| 4 | opo-mu1-K4 | 3 |")]
    assert "| 1.50 | 0.50 |" in row
    assert "2 comparisons in this table; Holm" in text and "Detectable: the smallest true difference" in text
    assert "Tuning not finished" in text and "AdamW keeps moving" in text
    # Runs: 2 rollouts x (100 s + 3 x 40 s) + 2 evaluations x 6 s + 60 s = 512 s; no greedy figure in the summary.
    assert "| opo-mu1-K4 | 2 | 0.000 -> 0.550 | n/a | 8.5 | not recorded |" in text
    assert "| grpo-K4 | 1 | 0.000 -> 0.250 | n/a | 8.5 | B (AVX2) |" in text
    assert "opo-mu1-K4 - grpo-K4 held-out pass@1 after, seed by seed: 0: +0.200, 1: +0.250, 2: +0.300." in text
    assert "Seeds whose two runs recorded different machines: 1.\n" in text
    assert "Seeds where one run's machine is not recorded: 2.\n" in text
    assert (bench.DOCS / "report.md").read_text() == text and (bench.DOCS / "reuse.png").stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["opo", "grpo"])
def test_a_rollout_of_8_prompts_serves_k_whole_optimizer_steps(tmp_path, tiny_model_path, prompt_dataset, algorithm):
    bench = load_script("reuse_powered")
    k = 2
    # The rollout's structure, without the benchmark's generator (vLLM-CPU rejects the tiny model's head_dim).
    structure = {
        key: v for key, v in bench.reuse_overrides(k, rollouts=2).items() if key not in bench.TRAINING_OVERRIDES
    }
    settings = {**structure, "max_completion_length": 8}
    trainer, generated = train_counting_rollouts(tmp_path, tiny_model_path, prompt_dataset, algorithm, settings)

    # 2 rollouts of 8 prompts x 6 completions, each in 4 micro-batches, each serving k optimizer steps.
    assert generated == [48, 48] and trainer.state.global_step == 2 * k
    steps = [e for e in trainer.state.log_history if "grad_norm" in e]
    kl = [e["rollout_kl"] for e in steps]
    # A rollout's first step accumulates its 4 micro-batches before the update: the policy is the rollout's.
    assert all(abs(d) < 1e-6 for d in kl[::k]) and all(d > 1e-6 for i, d in enumerate(kl) if i % k)
