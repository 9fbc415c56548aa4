"""Bootstrap intervals over seeds and problems, and paired differences, against cases worked out by hand."""

import numpy as np
import pytest

from opo_trl.harness.stats import Estimate, bootstrap_means, mean_ci, paired_difference


def test_bootstrap_of_two_problems_by_hand():
    # One seed, problems (0, 1): a resample has mean 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4.
    means = bootstrap_means([[0.0, 1.0]], replicates=20_000, seed=1)
    assert set(np.unique(means)) == {0.0, 0.5, 1.0}
    for value, probability in ((0.0, 0.25), (0.5, 0.5), (1.0, 0.25)):
        assert (means == value).mean() == pytest.approx(probability, abs=0.01)
    estimate = mean_ci([[0.0, 1.0]], replicates=20_000)
    assert (estimate.mean, estimate.low, estimate.high) == (0.5, 0.0, 1.0)


def test_seeds_are_resampled_too():
    # Two seeds that disagree completely, every problem alike within a seed: only seed resampling makes the spread.
    outcomes = np.array([[0.0] * 50, [1.0] * 50])
    means = bootstrap_means(outcomes, replicates=4_000)
    assert set(np.unique(means)) == {0.0, 0.5, 1.0}
    # Problems alone: every replicate keeps both seeds once, so every mean is exactly 0.5, and the interval is blind to
    # the seeds' disagreement.
    assert set(np.unique(bootstrap_means(outcomes, replicates=4_000, resample="problems"))) == {0.5}
    # Seeds that agree, problems that differ: resampling the problems alone draws the same columns for every seed.
    agree = np.array([[0.0, 1.0], [0.0, 1.0]])
    means = bootstrap_means(agree, replicates=20_000, seed=1, resample="problems")
    for value, probability in ((0.0, 0.25), (0.5, 0.5), (1.0, 0.25)):
        assert (means == value).mean() == pytest.approx(probability, abs=0.01)
    difference = paired_difference(outcomes, np.zeros_like(outcomes), replicates=4_000, resample="problems")
    assert (difference.low, difference.high) == (0.5, 0.5)
    with pytest.raises(ValueError, match="resample must be one of"):
        bootstrap_means(outcomes, resample="seeds")


def test_interval_covers_the_truth_and_shrinks_with_more_problems():
    rng = np.random.default_rng(0)
    small = mean_ci(rng.binomial(1, 0.3, size=(5, 64)))
    large = mean_ci(rng.binomial(1, 0.3, size=(5, 1024)))
    assert small.low < 0.3 < small.high and large.low < 0.3 < large.high
    assert large.high - large.low < (small.high - small.low) / 2
    assert mean_ci(np.full((3, 10), 0.25)) == Estimate(0.25, 0.25, 0.25, 3, 10)


def test_paired_difference_verdicts():
    rng = np.random.default_rng(0)
    base = rng.binomial(1, 0.4, size=(5, 256)).astype(float)
    same = paired_difference(base, base)
    assert (same.mean, same.low, same.high, same.p_value, same.verdict) == (0.0, 0.0, 0.0, 1.0, "not separated")

    better = np.clip(base + rng.binomial(1, 0.3, size=base.shape), 0, 1)  # strictly more problems solved
    ahead = paired_difference(better, base)
    assert ahead.verdict == "ahead" and ahead.low > 0 and ahead.p_value < 0.001
    assert paired_difference(base, better).verdict == "behind"

    noise = rng.binomial(1, 0.4, size=base.shape).astype(float)  # same distribution, independent draws
    unseparated = paired_difference(noise, base)
    assert unseparated.low < 0 < unseparated.high and unseparated.p_value > 0.05
    assert "p=" in str(unseparated) and str(mean_ci(base)).count("[") == 1


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="same .* shape"):
        paired_difference(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="non-empty"):
        mean_ci(np.zeros((0, 3)))


def test_median_difference_ignores_an_outlier_that_dominates_the_mean():
    # b's gradient norms are a's plus 1 on every step, but a has one outlier step 100x its median.
    a = np.array([[1.0, 1.2, 0.8, 1.1, 100.0], [0.9, 1.0, 1.3, 0.7, 1.2]])
    b = a + 1.0
    b[0, 4] = 2.0
    median = paired_difference(a, b, statistic="median")
    assert median.mean == pytest.approx(1.05 - 2.0)  # the medians of the ten values, by hand
    assert median.high < 0 and median.direction == "no verdict: 2 seeds"
    # A third seed like the second: enough seeds for words, and a gradient norm is "lower", never "behind".
    three = paired_difference(np.vstack([a, a[1]]), np.vstack([b, b[1]]), statistic="median")
    assert three.high < 0 and three.direction == "lower" and three.verdict == "behind"
    # The mean difference is pulled positive by the single step.
    assert paired_difference(a, b).mean == pytest.approx((a - b).mean()) and paired_difference(a, b).mean > 8
    with pytest.raises(ValueError, match="statistic must be"):
        paired_difference(a, b, statistic="mode")


def test_one_seed_gives_an_interval_over_problems_but_no_verdict():
    # 1 seed x 64 problems, a large difference: the interval excludes 0, yet it says nothing of the seed spread.
    rng = np.random.default_rng(0)
    base = rng.binomial(1, 0.1, size=(1, 64)).astype(float)
    better = np.maximum(base, rng.binomial(1, 0.5, size=base.shape))
    one = paired_difference(better, base)
    assert one.low > 0 and one.p_value < 0.001
    assert one.verdict == "no verdict: 1 seed" and one.direction == "no verdict: 1 seed"
    assert one.coverage == "problems only" and str(one).endswith("(problems only)")
    assert str(mean_ci(base)).endswith("(problems only)")

    # The same per-problem gains on 3 seeds: a verdict, and no label on the interval.
    three = paired_difference(np.repeat(better, 3, axis=0), np.repeat(base, 3, axis=0))
    assert (three.seeds, three.verdict, three.direction, three.coverage) == (3, "ahead", "higher", None)
    assert (
        "(" not in str(three)
        and paired_difference(np.repeat(base, 3, axis=0), np.repeat(better, 3, axis=0)).verdict == "behind"
    )
    two = paired_difference(np.repeat(better, 2, axis=0), np.repeat(base, 2, axis=0))
    assert two.verdict == "no verdict: 2 seeds" and str(two).endswith("(problems, 2 seeds)")
