"""Seed-level intervals and tests, against cases worked out by hand and simulations with a known truth."""

import math

import numpy as np
import pytest

from opo_trl.harness.stats import (
    MIN_SEEDS,
    Estimate,
    holm,
    mean_ci,
    paired_difference,
    sign_flip_p,
    t_cdf,
    t_quantile,
    t_sf2,
    two_way_t,
)


def test_t_quantiles_match_the_tables_and_the_closed_forms():
    # Student's t tables (two-sided 95%: the 0.975 quantile; 80% power: the 0.80 quantile).
    table = {(0.975, 1): 12.706, (0.975, 2): 4.303, (0.975, 4): 2.776, (0.975, 10): 2.228, (0.975, 30): 2.042,
             (0.80, 2): 1.061, (0.80, 5): 0.920, (0.995, 4): 4.604, (0.975, 10**6): 1.960}  # fmt: skip
    for (q, df), value in table.items():
        assert float(t_quantile(q, df)) == pytest.approx(value, abs=6e-4), (q, df)
    # Closed forms: df = 1 is Cauchy, tan(pi (q - 1/2)); df = 2 is (2q - 1) / sqrt(2 q (1 - q)).
    for q in (0.6, 0.8, 0.9, 0.99):
        assert float(t_quantile(q, 1)) == pytest.approx(math.tan(math.pi * (q - 0.5)), rel=1e-9)
        assert float(t_quantile(q, 2)) == pytest.approx((2 * q - 1) / math.sqrt(2 * q * (1 - q)), rel=1e-9)
        assert float(t_quantile(1 - q, 2)) == pytest.approx(-float(t_quantile(q, 2)), rel=1e-9)
    # Non-integer degrees of freedom (Satterthwaite's): the quantile inverts the CDF, between its integer neighbours.
    df = np.array([1.5, 2.7, 7.3, 40.5])
    quantiles = t_quantile(0.975, df)
    assert t_cdf(quantiles, df) == pytest.approx(np.full(4, 0.975), abs=1e-10)
    assert t_quantile(0.975, 2) > t_quantile(0.975, 2.7) > t_quantile(0.975, 3)
    assert t_sf2(quantiles, df) == pytest.approx(np.full(4, 0.05), abs=1e-10)
    assert float(t_cdf(0.0, 3)) == 0.5 and float(t_sf2(1.0, 1)) == pytest.approx(0.5)  # Cauchy: P(|T| > 1) = 1/2
    with pytest.raises(ValueError, match="0 < q < 1"):
        t_quantile(1.0, 3)


def test_interval_p_value_and_detectable_difference_by_hand():
    # Differences on 3 seeds x 2 problems whose problem means are equal (0.3, 0.3): only the seeds vary.
    d = np.array([[0.1, 0.3], [0.3, 0.1], [0.5, 0.5]])
    estimate = paired_difference(d, np.zeros_like(d))
    # Seed means 0.2, 0.2, 0.5: variance (0.01 + 0.01 + 0.04) / 2 = 0.03, over 3 seeds 0.01, so SE = 0.1. The problem
    # term is 0 and the cells' (0.032 / 6) is under the seeds' term, so the floor keeps 0.01; df = 0.01^2 / (0.01^2 / 2)
    # = 2.
    assert (
        estimate.mean == pytest.approx(0.3) and estimate.se == pytest.approx(0.1) and estimate.df == pytest.approx(2)
    )
    # 95% interval 0.3 -+ 4.303 x 0.1; p from t = 3 on 2 df: 2 (1/2 - 3 / (2 sqrt(11))) = 0.0955.
    assert (estimate.low, estimate.high) == pytest.approx((0.3 - 0.4303, 0.3 + 0.4303), abs=1e-4)
    assert estimate.p_value == pytest.approx(1 - 3 / math.sqrt(11), abs=1e-9)
    # Detectable at 80% power: (t_0.975,2 + t_0.80,2) x SE = (4.303 + 1.061) x 0.1.
    assert estimate.detectable == pytest.approx(0.5364, abs=1e-4)
    # All three seed means positive: the sign-flip test's smallest p-value, 2 of the 8 sign patterns.
    assert estimate.sign_flip_p == 0.25
    assert (
        estimate.verdict == "not separated" and str(estimate) == "+0.300 [-0.130, +0.730], p=0.095, detectable 0.536"
    )


def test_problems_count_when_they_vary():
    # 2 seeds x 3 problems. Seed means 0.4, 0.6: V_seeds = 0.02 / 2 = 0.01. Problem means 0.1, 0.5, 0.9: V_problems =
    # 0.16 / 3 = 0.0533. Cells 0.0, 0.4, 0.8, 0.2, 0.6, 1.0 (mean 0.5): variance 0.14, V_cells = 0.14 / 6 = 0.02333.
    # V = 0.01 + 0.05333 - 0.02333 = 0.04, under V_problems: the floor gives 0.05333.
    d = np.array([[0.0, 0.4, 0.8], [0.2, 0.6, 1.0]])
    t = two_way_t(d)
    assert float(t.se) ** 2 == pytest.approx(0.16 / 3)
    # Satterthwaite: V^2 / (0.01^2 / 1 + 0.05333^2 / 2).
    assert float(t.df) == pytest.approx((0.16 / 3) ** 2 / (0.01**2 + (0.16 / 3) ** 2 / 2))
    # Counting the problems alone: V_problems, with P - 1 = 2 df; the seeds alone (one column): V_seeds, S - 1 = 1 df.
    alone = two_way_t(d, variation="problems")
    assert float(alone.se) ** 2 == pytest.approx(0.16 / 3) and float(alone.df) == 2
    seeds_only = two_way_t(d.mean(axis=1, keepdims=True))
    assert float(seeds_only.se) ** 2 == pytest.approx(0.01) and float(seeds_only.df) == 1
    with pytest.raises(ValueError, match="variation must be one of"):
        two_way_t(d, variation="seeds")


def _simulated_differences(rng, sims, seeds, problems=256, effect=0.0, seed_sd=0.11, problem_sd=0.0):
    """
    `sims` paired comparisons of `seeds` runs per algorithm on `problems` test problems x 2 samples: each problem has its
    own difficulty, each run (algorithm, seed) its own shift of every problem's chance of being solved (standard
    deviation `seed_sd / sqrt(2)`, so that the per-seed differences spread by about 0.08 after clipping, the scale of
    benchmark v3's), each (run, problem) its own noise; `effect` is the true difference; `problem_sd` gives the
    problems effects on the difference that are shared by every seed, zero on average.
    """
    difficulty = rng.beta(0.6, 1.2, size=(sims, 1, problems))
    shared = rng.normal(0, problem_sd, size=(sims, 1, problems))

    def runs(shift):
        per_seed = rng.normal(0, seed_sd / math.sqrt(2), size=(sims, seeds, 1))
        chance = np.clip(difficulty + shift + per_seed + rng.normal(0, 0.1, size=(sims, seeds, problems)), 0, 1)
        return rng.binomial(2, chance) / 2

    return runs(effect + shared) - runs(0.0)


def test_no_true_difference_gives_at_most_five_percent_false_verdicts_and_a_large_one_is_found():
    rng = np.random.default_rng(0)
    sims = 2000
    allowed = 0.05 + 3 * math.sqrt(0.05 * 0.95 / sims)  # 5% plus three simulation standard errors
    for seeds in (3, 5, 8):
        d = _simulated_differences(rng, sims, seeds)
        spread = np.median(d.mean(axis=2).std(axis=1, ddof=1))
        assert 0.06 < spread < 0.11  # the seed-to-seed spread the simulation is about
        false = (two_way_t(d).p_value < 0.05).mean()
        assert false <= allowed, (seeds, false)
    # The function the reports call gives the same answer as the vectorised one.
    one = paired_difference(d[0], np.zeros_like(d[0]))
    t = two_way_t(d[0])
    assert (one.mean, one.low, one.high, one.p_value) == pytest.approx(
        tuple(float(x) for x in (t.mean, t.low, t.high, t.p_value))
    )

    # A true difference of 0.15 in every problem's chance (0.12 in pass@1 after clipping) on 8 seeds: found in most
    # simulations, never in the wrong direction; the detectable difference (80% power) is about that size.
    d = _simulated_differences(rng, 500, 8, effect=0.15)
    t = two_way_t(d)
    assert ((t.p_value < 0.05) & (t.mean > 0)).mean() > 0.8 and not ((t.p_value < 0.05) & (t.mean < 0)).any()
    assert np.median(t.detectable) < np.median(t.mean) < 0.15


def test_many_seeds_and_few_problems_count_the_problems():
    # 10 seeds, 8 problems whose differences are shared by every seed (a property of the problem, zero on average
    # over problems): a t over the seed means alone sees the 8 problems' shared effect as a true difference.
    rng = np.random.default_rng(1)
    sims = 2000
    d = _simulated_differences(rng, sims, 10, problems=8, seed_sd=0.02, problem_sd=0.15)
    t = two_way_t(d)
    assert (t.p_value < 0.05).mean() <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / sims)
    assert np.median(t.df) < 8  # the problems decide: about P - 1
    seeds_alone = two_way_t(d.mean(axis=2, keepdims=True))  # one column: the seeds' t, S - 1 df
    assert (seeds_alone.p_value < 0.05).mean() > 0.10


def test_sign_flip_p_values_are_exact():
    assert sign_flip_p([0.2, 0.1, 0.3]) == 2 / 8  # its floor at 3 seeds
    assert sign_flip_p([0.1] * 5) == 2 / 32 and sign_flip_p([0.1] * 6) == 2 / 64  # rejects at 5% only from 6 seeds
    # -0.064, -0.014, -0.223 (benchmark v3, K = 8, OPO - GSPO): every pattern with |sum| >= 0.301 is the observed
    # one and its mirror.
    assert sign_flip_p([-0.064, -0.014, -0.223]) == 0.25
    # 0.3, -0.1, 0.1, 0.1: |sum| 0.4; of the 16 patterns, those at least as far are +-(0.3, -0.1, 0.1, 0.1),
    # +-(0.3, 0.1, -0.1, 0.1), +-(0.3, 0.1, 0.1, -0.1) (|0.4|) and +-(0.3, 0.1, 0.1, 0.1) (0.6): 8 of 16.
    assert sign_flip_p([0.3, -0.1, 0.1, 0.1]) == 0.5
    assert sign_flip_p([0.0, 0.0, 0.0]) == 1.0


def test_holm_adjusts_a_family_by_hand():
    def with_p(p, mean=0.1):
        return Estimate(mean, mean - 0.01, mean + 0.01, 3, 2, p_value=p)

    family = holm([with_p(0.01), with_p(0.04, mean=-0.1), None, with_p(0.03)])
    # Sorted 0.01, 0.03, 0.04: x3, x2, x1 = 0.03, 0.06, 0.04 -> made non-decreasing: 0.03, 0.06, 0.06.
    assert [e.adjusted_p if e else None for e in family] == pytest.approx([0.03, 0.06, None, 0.06])
    assert [e.comparisons for e in family if e] == [3, 3, 3]
    assert [e.verdict for e in family if e] == ["ahead", "behind", "ahead"]  # each on its own
    assert [e.adjusted_verdict for e in family if e] == ["ahead", "not separated", "not separated"]
    assert family[1].adjusted_direction == "not separated" and family[0].adjusted_direction == "higher"
    # An estimate without a family reads the same adjusted or not.
    assert with_p(0.01).adjusted_verdict == "ahead"


def test_interval_covers_the_truth_and_shrinks_with_more_problems():
    rng = np.random.default_rng(0)
    small = mean_ci(rng.binomial(1, 0.3, size=(5, 64)))
    large = mean_ci(rng.binomial(1, 0.3, size=(5, 1024)))
    assert small.low < 0.3 < small.high and large.low < 0.3 < large.high
    assert large.high - large.low < (small.high - small.low) / 2
    constant = mean_ci(np.full((3, 10), 0.25))
    assert (constant.mean, constant.low, constant.high, constant.se) == (0.25, 0.25, 0.25, 0.0)
    assert str(constant) == "0.250 [0.250, 0.250]"
    # Three seeds that disagree widely (0, 0.1, 0.5 on every problem): the t-interval, 0.2 -+ 4.303 x 0.1528, is cut
    # at 0, where accuracy ends.
    seeds = np.repeat([[0.0], [0.1], [0.5]], 4, axis=1)
    assert (mean_ci(seeds).low, mean_ci(seeds).high) == pytest.approx((0.0, 0.2 + 4.303 * 0.1528), abs=1e-3)
    assert mean_ci(seeds, bounds=None).low == pytest.approx(0.2 - 4.303 * 0.1528, abs=1e-3)


def test_seeds_that_disagree_widen_the_interval_and_problems_alone_do_not_see_it():
    # Two algorithms tie on every problem within a seed; the seeds disagree in sign.
    a = np.array([[0.2] * 50, [0.0] * 50, [0.1] * 50])
    b = np.array([[0.0] * 50, [0.1] * 50, [0.0] * 50])
    both = paired_difference(a, b)
    assert both.low < 0 < both.high and both.verdict == "not separated"
    # Every problem gives the same difference within each seed: counted alone, problems see no spread at all.
    alone = paired_difference(a, b, variation="problems")
    assert alone.low == alone.high == pytest.approx(both.mean)


def test_paired_difference_verdicts():
    rng = np.random.default_rng(0)
    base = rng.binomial(1, 0.4, size=(5, 256)).astype(float)
    same = paired_difference(base, base)
    assert (same.mean, same.low, same.high, same.p_value, same.verdict) == (0.0, 0.0, 0.0, 1.0, "not separated")

    better = np.clip(base + rng.binomial(1, 0.3, size=base.shape), 0, 1)  # strictly more problems solved
    ahead = paired_difference(better, base)
    assert ahead.verdict == "ahead" and ahead.low > 0 and ahead.p_value < 0.001 and ahead.sign_flip_p == 2 / 32
    assert paired_difference(base, better).verdict == "behind"

    noise = rng.binomial(1, 0.4, size=base.shape).astype(float)  # same distribution, independent draws
    unseparated = paired_difference(noise, base)
    assert unseparated.low < 0 < unseparated.high and unseparated.p_value > 0.05
    assert unseparated.detectable > abs(unseparated.mean)
    assert "p=" in str(unseparated) and "detectable" in str(unseparated) and str(mean_ci(base)).count("[") == 1


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="same .* shape"):
        paired_difference(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="non-empty"):
        mean_ci(np.zeros((0, 3)))
    with pytest.raises(TypeError):
        paired_difference(np.zeros((3, 3)), np.zeros((3, 3)), 1000)  # no positional options


def test_median_difference_is_per_seed_and_ignores_an_outlier_that_dominates_the_mean():
    # b's gradient norms are a's plus 1 on every step, but a has one outlier step 100x its median.
    a = np.array([[1.0, 1.2, 0.8, 1.1, 100.0], [0.9, 1.0, 1.3, 0.7, 1.2], [1.0, 0.9, 1.1, 1.2, 0.8]])
    b = a + 1.0
    b[0, 4] = 2.0
    median = paired_difference(a, b, statistic="median")
    # Per seed, median(a) - median(b): 1.1 - 2.0, 1.0 - 2.0, 1.0 - 2.0; their mean -0.967, standard error
    # sd(-0.9, -1, -1) / sqrt(3) = 0.0577 / sqrt(3).
    assert median.mean == pytest.approx(-2.9 / 3) and median.se == pytest.approx(math.sqrt(0.01 / 3) / math.sqrt(3))
    assert median.high < 0 and median.direction == "lower" and median.verdict == "behind" and median.df == 2
    # The mean difference is pulled positive by the single step.
    assert paired_difference(a, b).mean == pytest.approx((a - b).mean()) and paired_difference(a, b).mean > 5
    with pytest.raises(ValueError, match="statistic must be"):
        paired_difference(a, b, statistic="mode")
    # Two seeds: an interval, no words.
    assert paired_difference(a[1:], b[1:], statistic="median").direction == "no verdict: 2 seeds"
    # One seed: an interval over the steps alone (a bootstrap of them), labelled; b is a + 1 on every step of seed 1.
    one = paired_difference(a[1:2], b[1:2], statistic="median")
    assert (one.mean, one.low, one.high) == pytest.approx((-1, -1, -1)) and one.coverage == "problems only"


def test_one_seed_gives_an_interval_over_problems_but_no_verdict():
    # 1 seed x 64 problems, a large difference: the interval excludes 0, yet it says nothing of the seed spread.
    rng = np.random.default_rng(0)
    base = rng.binomial(1, 0.1, size=(1, 64)).astype(float)
    better = np.maximum(base, rng.binomial(1, 0.5, size=base.shape))
    one = paired_difference(better, base)
    assert one.low > 0 and one.p_value < 0.001 and one.df == 63
    assert one.verdict == "no verdict: 1 seed" and one.direction == "no verdict: 1 seed"
    assert one.adjusted_verdict == "no verdict: 1 seed"
    assert one.coverage == "problems only" and str(one).endswith("(problems only)")
    assert str(mean_ci(base)).endswith("(problems only)")

    # The same per-problem gains on MIN_SEEDS seeds: a verdict, and no label on the interval.
    three = paired_difference(np.repeat(better, MIN_SEEDS, axis=0), np.repeat(base, MIN_SEEDS, axis=0))
    assert (three.seeds, three.verdict, three.direction, three.coverage) == (3, "ahead", "higher", None)
    assert "(" not in str(three)
    assert paired_difference(np.repeat(base, 3, axis=0), np.repeat(better, 3, axis=0)).verdict == "behind"
    two = paired_difference(np.repeat(better, 2, axis=0), np.repeat(base, 2, axis=0))
    assert two.verdict == "no verdict: 2 seeds" and str(two).endswith("(problems, 2 seeds)")
