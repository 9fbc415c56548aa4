"""The comparison harness end to end on a tiny model: reasoning-gym data, runs, paired statistics, tables, plots."""

import csv
import json

import pytest
import yaml

from opo_trl.compare import load_run, run_comparison

from .conftest import tiny_recipe


@pytest.mark.slow
def test_comparison_writes_steps_paired_statistics_and_curves(tmp_path, tiny_model_path):
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
        assert p["after"]["verdict"] in ("ahead", "behind", "not separated")
        difference = (opo0.outcomes() - load_run(out / f"{p['baseline']}-seed0").outcomes()).mean()
        difference += (
            load_run(out / "opo-seed1").outcomes() - load_run(out / f"{p['baseline']}-seed1").outcomes()
        ).mean()
        assert p["after"]["mean"] == pytest.approx(difference / 2)
        # Two steps, one rollout: reward logged at step 1 only; a gradient at both steps; an interim evaluation at 1.
        assert p["reward_late_steps"] == [1, 1] and p["reward_late"]["seeds"] == 2
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
    assert (
        "| opo vs |" in table
        and "Δ median grad norm" in table
        and "interim held-out, step 1" in table
        and any(verdict in table for verdict in ("not separated", "ahead", "behind"))
    )
    assert (out / "curves.png").stat().st_size > 10_000

    # A finished run is not run again.
    before = (out / "opo-seed0" / "summary.json").stat().st_mtime
    run_comparison(config, ["opo"], [0], out, in_process=True)
    assert (out / "opo-seed0" / "summary.json").stat().st_mtime == before


def test_zero_gradient_steps_count_only_steps_with_a_signal():
    from opo_trl.compare import RunRecord

    steps = [
        {"step": 1, "frac_reward_zero_std": 1.0, "grad_norm": 0.0},  # every group tied: no signal, zero for anyone
        {"step": 2, "grad_norm": 0.0},  # the same rollout's second step
        {"step": 3, "frac_reward_zero_std": 0.5, "grad_norm": 0.7},  # a signal, a gradient
        {"step": 4, "grad_norm": 0.0},  # a signal, and the loss cut it off
        {"step": 5, "frac_reward_zero_std": 0.0, "grad_norm": 0.0},
    ]
    assert RunRecord("gspo", 0, {}, steps, []).zero_gradient_steps() == (2, 3)


def test_paired_training_reward_gradient_norm_and_interim_accuracy():
    from opo_trl.compare import RunRecord, summary_rows

    def run(name, seed, reward, grad, interim):
        # Generation every other step (reward logged at odd steps), a gradient every step, interim evaluations at 2, 4.
        steps = [{"step": t, "grad_norm": grad(t)} | ({"reward": reward(t)} if t % 2 else {}) for t in range(1, 9)]
        heldout = [{"step": t, "fingerprint": None, "sampled": [[x] for x in interim[t]]} for t in (2, 4)]
        return RunRecord(name, seed, {}, steps, heldout)

    runs = []
    for seed in (0, 1, 2):
        runs.append(run("opo", seed, lambda t: 0.1 * t, lambda t: 2.0, {2: [0, 0, 0, 0], 4: [1, 1, 1, 0]}))
        runs.append(run("grpo", seed, lambda t: 0.1 * t - 0.2, lambda t: 1.0 + (t == 5) * 50, {2: [1, 1, 1, 1], 4: [1, 1, 1, 0]}))  # fmt: skip
    (paired,) = summary_rows(runs)["paired"]
    # Rewards at steps 1, 3, 5, 7: the last quarter is step 7 alone, where OPO is ahead by 0.2 on every seed.
    assert paired["reward_late_steps"] == [7, 7]
    assert paired["reward_late"]["mean"] == pytest.approx(0.2) and paired["reward_late"]["verdict"] == "ahead"
    # Medians: OPO 2, GRPO 1 (its one 51 does not move the median); the mean difference would be negative.
    assert paired["grad_norm_median"]["mean"] == pytest.approx(1.0)
    assert paired["grad_norm_median"]["verdict"] == "ahead"
    # Interim: at step 2 OPO solves none of the 4 problems and GRPO all, on every seed; at step 4 they tie.
    assert paired["interim"][2]["mean"] == pytest.approx(-1.0) and paired["interim"][2]["verdict"] == "behind"
    assert paired["interim"][4]["mean"] == 0 and paired["interim"][4]["verdict"] == "not separated"
