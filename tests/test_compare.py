"""The comparison harness end to end on a tiny model: reasoning-gym data, runs, paired statistics, tables, plots."""

import csv
import json

import pytest
import yaml

from opo_trl.harness.compare import load_run, run_comparison
from opo_trl.harness.compare import main as compare_main
from opo_trl.harness.rewards import answer_checker
from opo_trl.harness.runfiles import HeldoutRecord, RunSummary

from .conftest import tiny_recipe


@pytest.mark.slow
def test_comparison_writes_steps_paired_statistics_and_curves(tmp_path, tiny_model_path, capsys):
    pytest.importorskip("reasoning_gym")
    recipe = tiny_recipe(
        tmp_path, tiny_model_path, dataset_name="reasoning_gym/chain_sum", reward_funcs=["reasoning_gym"],
        dataset_options={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}, dataset_seed=0,
        num_train_samples=16, num_test_samples=6, heldout_eval=True, heldout_num_samples=2, heldout_greedy=True,
        heldout_eval_steps=1, heldout_interim_max_samples=3, steps_per_generation=2, max_steps=2,
    )  # fmt: skip
    del recipe["max_operand"]
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    algorithms, out = ["opo", "grpo", "dapo"], tmp_path / "cmp"
    summary = run_comparison(config, algorithms, [0, 1], out, in_process=True, learning_rates={"grpo": 2e-3}, last_k=2)

    # reasoning-gym's verifiers score these runs: the answer checker of `accuracy` is not theirs, and not recorded.
    assert summary["answer_checker"] == "unknown" == load_run(out / "opo-seed0").answer_checker
    rows = {r["algorithm"]: r for r in summary["algorithms"]}
    assert list(rows) == algorithms and rows["grpo"]["learning_rate"] == 2e-3 and rows["opo"]["learning_rate"] == 1e-3
    for row in rows.values():
        assert row["seeds"] == [0, 1] and row["steps"] == 4
        for key in ("before", "after", "greedy_after"):
            cell = row[key]
            assert cell["seeds"] == 2 and cell["problems"] == 6 and cell["low"] <= cell["mean"] <= cell["high"]
    # Every algorithm of a seed starts from the same model, evaluated once.
    assert rows["opo"]["before"]["mean"] == rows["grpo"]["before"]["mean"] == rows["dapo"]["before"]["mean"]
    opo0, grpo0 = load_run(out / "opo-seed0"), load_run(out / "grpo-seed0")
    assert (opo0.outcomes(before=True) == grpo0.outcomes(before=True)).all()

    paired = {p["baseline"]: p for p in summary["paired"]}
    assert set(paired) == {"grpo", "dapo"}
    for p in paired.values():
        assert p["seeds"] == [0, 1] and 0 < p["after"]["p_value"] <= 1
        difference = (opo0.outcomes() - load_run(out / f"{p['baseline']}-seed0").outcomes()).mean()
        difference += (
            load_run(out / "opo-seed1").outcomes() - load_run(out / f"{p['baseline']}-seed1").outcomes()
        ).mean()
        assert p["after"]["mean"] == pytest.approx(difference / 2)
        # Two common seeds: intervals, but no verdict.
        assert p["after"]["verdict"] == "no verdict: 2 seeds" and p["after"]["str"].endswith("(problems, 2 seeds)")
        # Two steps, one rollout: reward logged at step 1 only, too few for a late window; a gradient at both steps;
        # an interim evaluation at 1.
        assert p["reward_late_steps"] is None and p["reward_late"] is None and p["reward_steps"] == 1
        assert p["grad_norm_median"]["problems"] == 2 and set(p["interim"]) == {1}

    with (out / "steps.csv").open() as f:
        steps = list(csv.DictReader(f))
    assert {(r["algorithm"], r["seed"], r["step"]) for r in steps} >= {
        (a, s, t) for a in algorithms for s in "01" for t in "12"
    }
    assert any(r["heldout_interim_accuracy"] for r in steps) and any(
        r["clip_frac"] for r in steps if r["algorithm"] == "dapo"
    )
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    table = (out / "summary.md").read_text()
    assert "| opo vs |" in table and "| median grad norm |" in table and "interim held-out, step 1" in table
    assert "no verdict: 2 seeds" in table and "too few steps (1 logged" in table and "detectable" in table
    assert "Holm: the verdict adjusted for the 2 comparisons of its column (one per baseline)" in table
    assert (out / "curves.png").stat().st_size > 10_000

    # `opo-trl compare` of one seed (its runs are finished, so nothing trains again) prints no verdict.
    assert compare_main(["--config", str(config), "--algorithms", "opo", "grpo", "--seeds", "0",
                         "--output_dir", str(out), "--last_k", "2"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    # GRPO's rows: its accuracies, the held-out differences to OPO, then one row per figure paired over training.
    accuracies, held_out, late, *differences = [line for line in printed.splitlines() if line.startswith("| grpo |")]
    assert "(problems only)" in accuracies and "too few steps (1 logged; the late window needs 8)" in late
    assert [row.split(" | ")[1] for row in differences] == ["median grad norm", "interim held-out, step 1"]
    for row in [held_out, *differences]:
        assert "(problems only)" in row and "detectable" in row and row.count("no verdict: 1 seed") >= 2
    assert not any(word in row for row in differences for word in ("ahead", "behind", "higher", "lower"))
    assert "Holm: the verdict adjusted for the 1 comparison of its column" in printed

    # A finished run is not run again.
    before = (out / "opo-seed0" / "summary.json").stat().st_mtime
    run_comparison(config, ["opo"], [0], out, in_process=True)
    assert (out / "opo-seed0" / "summary.json").stat().st_mtime == before


def test_zero_gradient_steps_count_only_steps_with_a_signal():
    from opo_trl.harness.compare import RunRecord

    steps = [
        {"step": 1, "frac_reward_zero_std": 1.0, "grad_norm": 0.0},  # every group tied: no signal, zero for anyone
        {"step": 2, "grad_norm": 0.0},  # the same rollout's second step
        {"step": 3, "frac_reward_zero_std": 0.5, "grad_norm": 0.7},  # a signal, a gradient
        {"step": 4, "grad_norm": 0.0},  # a signal, and the loss cut it off
        {"step": 5, "frac_reward_zero_std": 0.0, "grad_norm": 0.0},
    ]
    assert RunRecord("gspo", 0, RunSummary("gspo", 0), steps, []).zero_gradient_steps() == (2, 3)


def _stepped_run(name, seed, reward, grad, interim, steps=32):
    from opo_trl.harness.compare import RunRecord

    # Generation every other step (reward logged at odd steps), a gradient every step, interim evaluations at 2, 4.
    logged = [
        {"step": t, "grad_norm": grad(t)} | ({"reward": reward(t)} if t % 2 else {}) for t in range(1, steps + 1)
    ]
    heldout = [
        HeldoutRecord(
            step=t, problems=len(interim[t]), fingerprint=None, seconds=None, sampled=[[x] for x in interim[t]]
        )
        for t in (2, 4)
    ]
    return RunRecord(name, seed, RunSummary(name, seed), logged, heldout)


def _opo_and_grpo(seeds, steps=32):
    runs = []
    for seed in seeds:
        runs.append(
            _stepped_run("opo", seed, lambda t: 0.1 * t, lambda t: 2.0, {2: [0, 0, 0, 0], 4: [1, 1, 1, 0]}, steps)
        )
        runs.append(_stepped_run("grpo", seed, lambda t: 0.1 * t - 0.2, lambda t: 1.0 + (t == 5) * 50, {2: [1, 1, 1, 1], 4: [1, 1, 1, 0]}, steps))  # fmt: skip
    return runs


def test_paired_training_reward_gradient_norm_and_interim_accuracy():
    from opo_trl.harness.compare import summary_markdown, summary_rows

    summary = summary_rows(_opo_and_grpo((0, 1, 2)))
    (paired,) = summary["paired"]
    # Rewards at the 16 odd steps 1-31: the last quarter is steps 25-31, where OPO is ahead by 0.2 on every seed.
    assert paired["reward_late_steps"] == [25, 31] and paired["reward_late"]["problems"] == 4
    assert paired["reward_late"]["mean"] == pytest.approx(0.2) and paired["reward_late"]["verdict"] == "ahead"
    # Medians: OPO 2, GRPO 1 (its one 51 does not move the median); the mean difference would be negative. A gradient
    # norm is not a score: "higher", not "ahead".
    assert paired["grad_norm_median"]["mean"] == pytest.approx(1.0)
    assert paired["grad_norm_median"]["verdict"] == "higher"
    # Interim: at step 2 OPO solves none of the 4 problems and GRPO all, on every seed; at step 4 they tie.
    assert paired["interim"][2]["mean"] == pytest.approx(-1.0) and paired["interim"][2]["verdict"] == "behind"
    assert paired["interim"][4]["mean"] == 0 and paired["interim"][4]["verdict"] == "not separated"
    # One baseline: Holm's adjustment over a family of one changes nothing.
    assert paired["reward_late"]["adjusted_p"] == paired["reward_late"]["p_value"]
    assert paired["reward_late"]["comparisons"] == 1 and paired["interim"][2]["adjusted_verdict"] == "behind"
    table = summary_markdown(summary)
    # The same difference on every seed and step: no spread, so nothing smaller than it would have been missed.
    assert (
        "| grpo | training reward, steps 25-31 | +0.200 [+0.200, +0.200], p=0, detectable 0.000 | ahead | ahead |"
        in table
    )
    assert "| grpo | median grad norm | +1.000 [+1.000, +1.000], p=0, detectable 0.000 | higher | higher |" in table


def test_holm_adjusts_each_figure_over_the_baselines():
    from opo_trl.harness.compare import summary_markdown, summary_rows

    # Three baselines. The interim accuracy at step 2: OPO solves none of 4 problems, every baseline varies by seed.
    runs = _opo_and_grpo((0, 1, 2))
    for name, interim in (("dapo", [[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]]), ("gspo", [[1, 1, 1, 1]] * 3)):
        for seed in (0, 1, 2):
            run = _stepped_run(name, seed, lambda t: 0.1 * t, lambda t: 1.0, {2: interim[seed], 4: [1, 1, 1, 0]})
            runs.append(run)
    summary = summary_rows(runs)
    cells = {p["baseline"]: p["interim"][2] for p in summary["paired"]}
    assert {c["comparisons"] for c in cells.values()} == {3}
    # GRPO and GSPO solve every problem on every seed: -1 with no spread, p = 0, behind adjusted or not. DAPO: seed
    # means -0.25, 0, -0.5 (V_seeds 0.0625 / 3), problem means -2/3, -1/3, 0, 0 (V_problems 0.1019 / 4), cells' variance
    # 0.2045 / 12: V = 0.0292, df = 1.97, t = 0.25 / 0.171, p = 0.283, the largest of the three, which Holm keeps.
    assert cells["grpo"]["adjusted_verdict"] == cells["gspo"]["adjusted_verdict"] == "behind"
    assert cells["dapo"]["p_value"] == pytest.approx(0.283, abs=1e-3) and cells["dapo"]["adjusted_verdict"] == (
        "not separated"
    )
    assert cells["dapo"]["adjusted_p"] == pytest.approx(cells["dapo"]["p_value"])
    assert "adjusted for the 3 comparisons of its column" in summary_markdown(summary)


def test_short_runs_and_single_seeds_get_no_verdict():
    from opo_trl.harness.compare import summary_markdown, summary_rows

    # 8 steps: rewards at 4 steps, too few for a late window.
    summary = summary_rows(_opo_and_grpo((0, 1, 2), steps=8))
    (paired,) = summary["paired"]
    assert paired["reward_late"] is None and paired["reward_late_steps"] is None and paired["reward_steps"] == 4
    assert "| grpo | training reward, late steps | too few steps (4 logged; the late window needs 8) |" in (
        summary_markdown(summary)
    )
    # 16 steps, a rollout every 2 (the compare_cpu preset): rewards at 8 steps, whose last 4 are the late window.
    (paired,) = summary_rows(_opo_and_grpo((0, 1, 2), steps=16))["paired"]
    assert paired["reward_late_steps"] == [9, 15] and paired["reward_late"]["problems"] == 4

    # One seed: intervals over problems (steps) only, and no verdict anywhere, whatever the interval.
    summary = summary_rows(_opo_and_grpo((0,)))
    (paired,) = summary["paired"]
    cells = [paired["reward_late"], paired["grad_norm_median"], *paired["interim"].values()]
    assert paired["reward_late"]["low"] > 0 and paired["grad_norm_median"]["low"] > 0
    assert {c["verdict"] for c in cells} == {"no verdict: 1 seed"}
    assert all(c["str"].endswith("(problems only)") for c in cells)
    # GRPO's rows: its figures, held-out differences (none here: no held-out evaluation), one row per figure over steps.
    rows = [line for line in summary_markdown(summary).splitlines() if line.startswith("| grpo |")]
    assert len(rows) == 6 and all(row.count("no verdict: 1 seed") == 2 for row in rows[2:])
    assert not any(word in row for row in rows for word in ("ahead", "behind", "higher", "lower"))


def test_runs_scored_by_different_answer_checkers_are_not_compared(tmp_path, capsys):
    from opo_trl.harness.cli import main as cli_main
    from opo_trl.harness.compare import summary_markdown, summary_rows
    from opo_trl.harness.rewards import STRINGS_AND_NUMBERS

    runs = _opo_and_grpo((0, 1, 2))
    for r in runs:
        r.summary.answer_checker = "math-verify 0.9.0"
    summary = summary_rows(runs)
    assert summary["answer_checker"] == "math-verify 0.9.0"
    assert "Answer checker of every run (how the `accuracy` reward compares answers): math-verify 0.9.0." in (
        summary_markdown(summary)
    )
    runs[1].summary.answer_checker = STRINGS_AND_NUMBERS  # GRPO's seed 0
    with pytest.raises(ValueError, match="different answer checkers") as info:
        summary_rows(runs)
    assert f"grpo-seed0 by '{STRINGS_AND_NUMBERS}'" in str(info.value) and "\n" not in str(info.value)

    # Run files from before the checker was recorded: "unknown", comparable only with each other.
    old = _opo_and_grpo((0, 1, 2))
    assert summary_rows(old)["answer_checker"] == "unknown"
    old[0].summary.answer_checker = "math-verify 0.9.0"
    with pytest.raises(ValueError, match="different answer checkers"):
        summary_rows(old)

    # `opo-trl compare` refuses in one line, before training, when a finished run was scored otherwise than this
    # install scores (the model does not exist: had a run started, it would have failed differently).
    out = tmp_path / "cmp"
    (out / "opo-seed0").mkdir(parents=True)
    (out / "opo-seed0" / "summary.json").write_text(
        json.dumps({"algorithm": "opo", "seed": 0, "answer_checker": STRINGS_AND_NUMBERS})
    )
    recipe = tmp_path / "accuracy.yaml"  # scored by `accuracy`, so the runs to do will record this install's checker
    recipe.write_text(yaml.safe_dump({"reward_funcs": ["accuracy"], "model_name_or_path": str(tmp_path / "none")}))
    argv = ["compare", "--config", str(recipe), "--algorithms", "opo", "grpo", "--seeds", "0",
            "--output_dir", str(out)]  # fmt: skip
    assert cli_main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"opo-seed0 by '{STRINGS_AND_NUMBERS}'" in error
    assert f"grpo-seed0 (to run) by '{answer_checker()}'" in error and not (out / "grpo-seed0").exists()
