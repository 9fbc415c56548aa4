# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
Confidence intervals for held-out accuracy, over seeds and problems, and paired differences between algorithms, with
tests that keep their error rate with the few seeds a benchmark can afford.

An accuracy table is a matrix `outcomes[seed, problem]`: the fraction of a problem's sampled completions that were
correct (or 0/1 for greedy decoding) in the run of that seed. Every run of a comparison sees the same problems, and
the runs of different algorithms with the same seed start from the same model, so two algorithms are compared on the
differences `d[s, p] = a[s, p] - b[s, p]` over their common seeds.

Where the variation is. Two sources move a benchmark's mean: the seed (which training run: its rollouts, its order of
prompts) and the problem (which test problems). In every benchmark of this project the seed-to-seed spread is the
larger (OPO's held-out accuracy on v2's `basic_arithmetic` spans 0.195-0.414 over 5 seeds) and the seeds are few (3
to 5). A percentile bootstrap that resamples 3 seeds cannot go past the best or the worst of them, so it under-counts
their spread: in simulated comparisons with no true difference (the generator of `tests/test_stats.py`, 300 per seed
count), the bootstrap this module used before called 17% of them "ahead" or "behind" at 3 seeds, 14% at 5 and 9% at
8, against the 5% its 95% interval promised.

The test. A t-interval whose variance is the two-way cluster-robust estimate of Cameron, Gelbach and Miller (2011,
"Robust inference with multiway clustering"), seeds and problems being the two ways:

    V = V_seeds + V_problems - V_cells, at least max(V_seeds, V_problems),
    V_seeds = var(seed means of d) / S,  V_problems = var(problem means of d) / P,  V_cells = var(d) / (S P),

(sample variances, S seeds, P problems). `V_seeds` is the spread of the seeds, each seed's problem noise inside its
mean; `V_problems` that of the problems, shared by every seed; `V_cells` is counted by both, so it is taken off once;
the floor keeps `V` from going below either one-way term. The degrees of freedom are Satterthwaite's for that `V`
from the two main terms, `V^2 / (V_seeds^2 / (S - 1) + V_problems^2 / (P - 1))`: with 3 seeds and 256 problems the
seeds dominate and it is about S - 1 = 2, where, for normal seed effects, the t over the seed means is exact; with
many seeds and a few problems that differ, the problems dominate and it approaches P - 1. So the method covers both
cases: seeds that disagree, and a test set so small that other problems would give another answer. (`V` is in the
numerator, not `V_seeds + V_problems`: when the problems share no effect, `V_problems` is only the cells' noise that
`V_seeds` already holds, and the sum would count it twice and claim more degrees of freedom than the seeds give: in
the same kind of simulation, about 10% false verdicts at 3 seeds instead of 5%.)

Why this and not the alternatives: an exact sign-flip (permutation) test over seeds needs no normality, but its
p-value cannot go below 2 / 2^S, so it can reject at 5% only from 6 seeds (2 / 64 = 0.031; 5 seeds: 0.0625) and would
give no verdict at all on this project's 3- and 5-seed benchmarks; it is reported beside the t (`sign_flip_p`), as
the check that assumes nothing about the seeds' distribution. A bootstrap corrected for few clusters (wild cluster
bootstrap) is still approximate at 3 clusters and needs a choice of weights whose small-sample behaviour is itself a
research question. The t's one assumption, roughly normal seed means, cannot be checked with 3 seeds; in simulations
of this project's shape (`tests/test_stats.py`) it keeps its 5% at 3, 5 and 8 seeds.

Verdicts. A difference of scores (accuracy, reward) is "ahead" or "behind" when its 95% t-interval excludes 0 (the
two-sided p < 0.05), "not separated" otherwise; a difference of figures that are not scores (gradient norm) is
"higher" or "lower" ([`Estimate.direction`]). A verdict needs at least `MIN_SEEDS` = 3 seeds: with 2 the seeds'
spread is estimated from a single contrast; the interval is then given with what it covers, and the verdict reads
"no verdict: 2 seeds". (The sign-flip test could give one only from 6 seeds.)

What a comparison could have seen. `Estimate.detectable` is the smallest true difference the comparison would find
with 80% power at the 5% level, given its observed standard error: `(t_{0.975, df} + t_{0.80, df}) * SE`. "Not
separated" means no more than "a difference under `detectable` would likely not have been seen".

Several comparisons in one table. [`holm`] adjusts the p-values of a family of comparisons by Holm's step-down method
(1979), which keeps the chance of any false verdict in the family at 5% without assuming independence;
`Estimate.adjusted_verdict` is the verdict after it.

The median (gradient norms, the columns being training steps, where single steps reach 10x the median): per seed the
difference of the medians of its columns, then the t over seeds (S - 1 degrees of freedom), the steps' noise being
inside each seed's median. With one seed it falls back to a percentile bootstrap over the columns, labelled.

The t distribution is computed here (its CDF from the regularised incomplete beta function, by continued fraction;
its quantile by Newton's method): numpy has none, and nothing else in the stack brings one.
"""

import math
from dataclasses import dataclass, replace

import numpy as np


LEVEL = 0.95
# The power at which `Estimate.detectable` is computed.
POWER = 0.80
# Fewest seeds for a verdict: with 2 the spread of the seeds is estimated from a single contrast.
MIN_SEEDS = 3
# Replicates of the bootstrap over columns that a median of a single seed falls back to.
REPLICATES = 10_000
VARIATION = ("both", "problems")


@dataclass(frozen=True)
class Estimate:
    """
    A mean with its t-interval; for a difference, also the two-sided p-value, the exact sign-flip p-value over seeds,
    the smallest difference it could have detected and, once [`holm`] has adjusted a family, the adjusted p-value.
    `problems` counts the columns of the matrix: problems, or training steps for figures paired over steps.
    """

    mean: float
    low: float
    high: float
    seeds: int
    problems: int
    p_value: float | None = None
    se: float | None = None
    df: float | None = None
    detectable: float | None = None
    sign_flip_p: float | None = None
    adjusted_p: float | None = None
    comparisons: int | None = None
    level: float = LEVEL

    @property
    def verdict(self) -> str:
        """For a difference of scores: "ahead", "behind", "not separated", or "no verdict: N seed(s)"."""
        return self._words("ahead", "behind")

    @property
    def direction(self) -> str:
        """For a difference of figures that are not scores: "higher", "lower", "not separated", or "no verdict: ..."."""
        return self._words("higher", "lower")

    @property
    def adjusted_verdict(self) -> str:
        """The verdict after [`holm`]'s adjustment for the other comparisons of its family (unadjusted if none)."""
        return self._words("ahead", "behind", adjusted=True)

    @property
    def adjusted_direction(self) -> str:
        return self._words("higher", "lower", adjusted=True)

    @property
    def coverage(self) -> str | None:
        """What the interval leaves out, when it has too few seeds for a verdict; `None` otherwise."""
        if self.seeds >= MIN_SEEDS:
            return None
        return "problems only" if self.seeds == 1 else f"problems, {self.seeds} seeds"

    def _words(self, above: str, below: str, adjusted: bool = False) -> str:
        if self.seeds < MIN_SEEDS:
            return f"no verdict: {self.seeds} seed{'s' if self.seeds != 1 else ''}"
        if adjusted and self.adjusted_p is not None:
            if self.adjusted_p >= 1 - self.level:
                return "not separated"
            return above if self.mean > 0 else below
        if self.low > 0:
            return above
        if self.high < 0:
            return below
        return "not separated"

    def interval(self) -> str:
        """The mean and its interval: `0.344 [0.293, 0.396]`, or signed for a difference."""
        if self.p_value is None:
            return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"

    def __str__(self) -> str:
        text = self.interval()
        if self.p_value is not None:
            text += f", p={self.p_value:.2g}"
            if self.detectable is not None:
                text += f", detectable {self.detectable:.3f}"
        return text if self.coverage is None else f"{text} ({self.coverage})"


# The t distribution.


def _log_beta(a, b):
    lgamma = np.vectorize(math.lgamma, otypes=[float])
    return lgamma(a) + lgamma(b) - lgamma(a + b)


def _beta_continued_fraction(a, b, x, tolerance=1e-15, max_terms=10_000):
    """The continued fraction of the incomplete beta function (modified Lentz), elementwise."""
    tiny = 1e-300

    def guard(v):
        return np.where(np.abs(v) < tiny, tiny, v)

    c = np.ones_like(x)
    d = 1 / guard(1 - (a + b) * x / (a + 1))
    h = d.copy()
    for m in range(1, max_terms + 1):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 / guard(1 + numerator * d)
            c = guard(1 + numerator / c)
            h = h * d * c
        if np.all(np.abs(d * c - 1) < tolerance):
            break
    return h


def _regularized_beta(a, b, x):
    """I_x(a, b), elementwise (the continued fraction where it converges fast, the symmetry I_x(a, b) = 1 - I_{1-x}(b, a)
    elsewhere)."""
    a, b, x = (np.asarray(v, dtype=np.float64) for v in np.broadcast_arrays(a, b, x))
    inside = (x > 0) & (x < 1)
    xs = np.where(inside, x, 0.5)
    with np.errstate(divide="ignore"):
        front = np.exp(a * np.log(xs) + b * np.log1p(-xs) - _log_beta(a, b))
    swap = xs > (a + 1) / (a + b + 2)
    direct = front * _beta_continued_fraction(np.where(swap, b, a), np.where(swap, a, b), np.where(swap, 1 - xs, xs))
    value = np.where(swap, 1 - direct / b, direct / a)
    return np.where(x <= 0, 0.0, np.where(x >= 1, 1.0, value))


# Past this, the t is the normal to four decimals; it keeps the continued fraction short.
_DF_CAP = 1e5


def t_sf2(t, df):
    """The two-sided tail P(|T| >= |t|) of Student's t with `df` degrees of freedom (any positive real), elementwise."""
    t, df = np.broadcast_arrays(np.asarray(t, dtype=np.float64), np.minimum(np.asarray(df, dtype=np.float64), _DF_CAP))
    return _regularized_beta(df / 2, 0.5, df / (df + t**2))


def t_cdf(t, df):
    """P(T <= t) of Student's t with `df` degrees of freedom, elementwise."""
    t = np.asarray(t, dtype=np.float64)
    tail = t_sf2(t, df) / 2
    return np.where(t >= 0, 1 - tail, tail)


def t_quantile(q, df):
    """
    The `q` quantile of Student's t with `df` degrees of freedom (any positive real), elementwise, by Newton's method
    from 0: the CDF is concave above 0, so the iterates rise monotonically to the root without overshooting it.
    """
    q, df = np.broadcast_arrays(np.asarray(q, dtype=np.float64), np.minimum(np.asarray(df, dtype=np.float64), _DF_CAP))
    if np.any((q <= 0) | (q >= 1)):
        raise ValueError("a quantile needs 0 < q < 1.")
    upper = np.maximum(q, 1 - q)  # the quantile of the upper half, by symmetry
    log_density0 = -_log_beta(df / 2, 0.5) - 0.5 * np.log(df)
    t = np.zeros_like(upper)
    for _ in range(200):
        density = np.exp(log_density0 - (df + 1) / 2 * np.log1p(t**2 / df))
        step = (upper - t_cdf(t, df)) / density
        t = t + step
        if np.all(np.abs(step) <= 1e-12 * (1 + t)):
            break
    return np.where(q >= 0.5, t, -t)


# Intervals and tests.


@dataclass(frozen=True)
class TwoWay:
    """The two-way t of a `[..., seed, column]` array, elementwise over its leading axes (see the module docstring)."""

    mean: np.ndarray
    se: np.ndarray
    df: np.ndarray
    low: np.ndarray
    high: np.ndarray
    p_value: np.ndarray
    detectable: np.ndarray


def two_way_t(values, level: float = LEVEL, variation: str = "both", power: float = POWER) -> TwoWay:
    """
    The mean of `values[..., seed, column]` over its last two axes, with the two-way cluster-robust t-interval, the
    two-sided p-value of "the mean is 0" and the smallest mean detectable at `power`, all elementwise over the leading
    axes (so a simulation tests thousands of matrices in one call). `variation="problems"` counts the columns alone,
    every seed kept as it is: the interval of these seeds, blind to how much another seed would differ, for showing
    what the seeds add, never for a verdict. One seed counts the columns alone too; one column, the seeds alone.
    """
    if variation not in VARIATION:
        raise ValueError(f"variation must be one of {VARIATION}, got {variation!r}.")
    values = np.asarray(values, dtype=np.float64)
    seeds, columns = values.shape[-2:]
    mean = values.mean(axis=(-2, -1))
    by_seed = values.mean(axis=-1).var(axis=-1, ddof=1) / seeds if seeds > 1 else None
    by_column = values.mean(axis=-2).var(axis=-1, ddof=1) / columns if columns > 1 else None
    if variation == "problems" or by_seed is None:
        if by_column is None:
            raise ValueError("an interval needs at least two seeds or two columns.")
        variance, df = by_column, np.full_like(mean, columns - 1)
    elif by_column is None:
        variance, df = by_seed, np.full_like(mean, seeds - 1)
    else:
        cells = values.reshape(*values.shape[:-2], -1).var(axis=-1, ddof=1) / (seeds * columns)
        variance = np.maximum(by_seed + by_column - cells, np.maximum(by_seed, by_column))
        denominator = by_seed**2 / (seeds - 1) + by_column**2 / (columns - 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            df = np.where(denominator > 0, variance**2 / denominator, seeds - 1)
    se = np.sqrt(variance)
    half = t_quantile((1 + level) / 2, df) * se
    with np.errstate(invalid="ignore", divide="ignore"):
        statistic = np.where(se > 0, mean / se, np.where(mean == 0, 0.0, np.inf))
    p_value = np.where(np.isinf(statistic), 0.0, t_sf2(np.where(np.isinf(statistic), 0.0, statistic), df))
    detectable = (t_quantile((1 + level) / 2, df) + t_quantile(power, df)) * se
    return TwoWay(mean, se, df, mean - half, mean + half, p_value, detectable)


# Up to this many seeds the sign-flip test enumerates every sign pattern; past it, it draws this many at random.
_EXACT_SIGN_FLIPS = 16


def sign_flip_p(seed_values) -> float:
    """
    The two-sided p-value of the sign-flip (permutation) test that the per-seed values (each seed's mean difference)
    are centred on 0: the share of the 2^S ways of flipping their signs whose mean is at least as far from 0 as the
    observed one. Exact, with no assumption on their distribution beyond symmetry under the null; its smallest value is
    2 / 2^S (0.25 at 3 seeds, 0.0625 at 5, 0.031 at 6).
    """
    values = np.asarray(seed_values, dtype=np.float64).ravel()
    n = len(values)
    if n <= _EXACT_SIGN_FLIPS:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
    else:
        rng = np.random.default_rng(0)
        signs = np.vstack([np.ones(n), rng.choice([-1.0, 1.0], size=(2**_EXACT_SIGN_FLIPS - 1, n))])
    totals = np.abs(signs @ values)
    observed = abs(values.sum())
    return float(np.mean(totals >= observed - 1e-12 * max(1.0, observed)))


def _as_matrix(values, name: str = "outcomes") -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"{name} must be a non-empty (seeds, problems) matrix, got shape {values.shape}.")
    return values


def mean_ci(outcomes, level: float = LEVEL, bounds: tuple[float, float] | None = (0.0, 1.0)) -> Estimate:
    """
    The mean of `outcomes[seed, problem]` with its two-way t-interval over seeds and problems, cut to `bounds`, the
    range the values can take (accuracies: 0 to 1; `None` for none): with 3 seeds that disagree, the t-interval of an
    accuracy can reach past 0 or 1, where the accuracy cannot be.
    """
    outcomes = _as_matrix(outcomes)
    if outcomes.size == 1:
        value = float(outcomes[0, 0])
        return Estimate(value, value, value, 1, 1, level=level)
    t = two_way_t(outcomes, level)
    low, high = float(t.low), float(t.high)
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Estimate(float(t.mean), low, high, *outcomes.shape, se=float(t.se), df=float(t.df), level=level)


def paired_difference(a, b, *, level: float = LEVEL, statistic: str = "mean", variation: str = "both") -> Estimate:
    """
    `statistic(a) - statistic(b)` over seeds and problems (both `[seed, problem]`, the same seeds and problems in the
    same order), with its t-interval, two-sided p-value, sign-flip p-value over seeds and the smallest difference it
    could have detected (see the module docstring). `statistic` is `"mean"` (accuracies, rewards) or `"median"`
    (heavy-tailed figures such as gradient norms, where one outlier step would dominate a mean: the mean over seeds of
    each seed's difference of medians). `variation="problems"` counts the problems alone (see [`two_way_t`]): for
    showing what the seeds add, not for a verdict.
    """
    a, b = _as_matrix(a, "a"), _as_matrix(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes must have the same (seeds, problems) shape, got {a.shape} and {b.shape}.")
    if statistic == "mean":
        values = a - b
        per_seed = values.mean(axis=1)
    elif statistic == "median":
        per_seed = np.median(a, axis=1) - np.median(b, axis=1)
        if len(per_seed) == 1 or variation == "problems":
            return _median_bootstrap(a, b, level)
        values = per_seed[:, None]
    else:
        raise ValueError(f"statistic must be 'mean' or 'median', got {statistic!r}.")
    t = two_way_t(values, level, variation)
    return Estimate(float(t.mean), float(t.low), float(t.high), *a.shape, p_value=float(t.p_value), se=float(t.se),
                    df=float(t.df), detectable=float(t.detectable), sign_flip_p=sign_flip_p(per_seed),
                    level=level)  # fmt: skip


def _median_bootstrap(a, b, level: float, replicates: int = REPLICATES, seed: int = 0) -> Estimate:
    """
    The difference of medians with every seed kept and the columns drawn with replacement (the same columns for `a`
    and `b`): the interval of a single seed, or of these seeds, over its steps; percentile interval and two-sided
    p-value (at least 1 / (replicates + 1)).
    """
    rng = np.random.default_rng(seed)
    n_seeds, n_columns = a.shape
    point = float(np.mean(np.median(a, axis=1) - np.median(b, axis=1)))
    values = []
    for start in range(0, replicates, 500):
        columns = rng.integers(0, n_columns, size=(min(500, replicates - start), 1, n_columns))
        rows = np.arange(n_seeds)[None, :, None]
        values.append((np.median(a[rows, columns], axis=2) - np.median(b[rows, columns], axis=2)).mean(axis=1))
    values = np.concatenate(values)
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    tail = min((values <= 0).mean(), (values >= 0).mean())
    p_value = max(min(1.0, 2 * tail), 1 / (replicates + 1))
    # The detectable difference from the replicates' spread, with the columns' degrees of freedom.
    se, df = float(values.std(ddof=1)), n_columns - 1
    detectable = float((t_quantile((1 + level) / 2, df) + t_quantile(POWER, df)) * se)
    return Estimate(point, float(low), float(high), n_seeds, n_columns, p_value=float(p_value), se=se, df=df,
                    detectable=detectable, level=level)  # fmt: skip


def holm(estimates: list[Estimate | None]) -> list[Estimate | None]:
    """
    The estimates of one family of comparisons (a table's column: OPO against each baseline on one figure) with Holm's
    step-down adjusted p-values (`adjusted_p`) and the family's size (`comparisons`): the i-th smallest of m p-values
    is multiplied by m - i + 1, and the adjusted values are made non-decreasing in that order. `None` entries (a
    comparison that could not be made) stay `None` and do not count.
    """
    tested = [i for i, e in enumerate(estimates) if e is not None and e.p_value is not None]
    m = len(tested)
    adjusted, running = {}, 0.0
    for rank, i in enumerate(sorted(tested, key=lambda i: estimates[i].p_value)):
        running = max(running, min(1.0, (m - rank) * estimates[i].p_value))
        adjusted[i] = running
    return [replace(e, adjusted_p=adjusted[i], comparisons=m) if i in adjusted else e for i, e in enumerate(estimates)]
