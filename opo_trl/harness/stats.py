# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
Confidence intervals for held-out accuracy, over problems and seeds, and paired differences between algorithms.

An accuracy table is a matrix `outcomes[seed, problem]`: the fraction of a problem's sampled completions that were
correct (or 0/1 for greedy decoding) in the run of that seed. Every run of a comparison sees the same problems, and
the runs of different algorithms with the same seed start from the same model, so two algorithms are compared on the
differences `a[s, p] - b[s, p]` over their common seeds.

The bootstrap resamples both sources of variation at once: seeds with replacement, and problems with replacement (the
same problems for every seed of a replicate, since the problems are shared). The 95% interval is the 2.5th to 97.5th
percentile of the replicate means; the two-sided p-value of a difference is twice the share of replicates on the
far side of zero (at least 1 / (replicates + 1)).

A verdict needs at least `MIN_SEEDS` seeds: with fewer, the bootstrap can only resample problems (one seed) or barely
samples the seed-to-seed spread (two), which on the v2 benchmark was wider than most differences between algorithms;
the interval is still given, labelled, and the verdict reads e.g. "no verdict: 1 seed". With enough seeds, a
difference of scores (accuracy, reward) is "ahead" or "behind" when its interval excludes zero, and "not separated"
otherwise; a difference of figures that are not scores (gradient norm, truncated or clipped fraction) is "higher",
"lower" or "not separated" ([`Estimate.direction`]).
"""

from dataclasses import dataclass

import numpy as np


REPLICATES = 10_000
# Fewest seeds for a verdict: seeds differ widely (OPO's held-out accuracy on v2's basic_arithmetic: 0.195-0.414).
MIN_SEEDS = 3


@dataclass(frozen=True)
class Estimate:
    """
    A mean with its bootstrap interval; for a difference, also the p-value and the verdict. `problems` counts the
    columns of the matrix: problems, or training steps for figures paired over steps.
    """

    mean: float
    low: float
    high: float
    seeds: int
    problems: int
    p_value: float | None = None

    @property
    def verdict(self) -> str:
        """For a difference of scores: "ahead", "behind", "not separated", or "no verdict: N seed(s)"."""
        return self._words("ahead", "behind")

    @property
    def direction(self) -> str:
        """For a difference of figures that are not scores: "higher", "lower", "not separated", or "no verdict: ..."."""
        return self._words("higher", "lower")

    @property
    def coverage(self) -> str | None:
        """What the interval leaves out, when it has too few seeds for a verdict; `None` otherwise."""
        if self.seeds >= MIN_SEEDS:
            return None
        return "problems only" if self.seeds == 1 else f"problems, {self.seeds} seeds"

    def _words(self, above: str, below: str) -> str:
        if self.seeds < MIN_SEEDS:
            return f"no verdict: {self.seeds} seed{'s' if self.seeds != 1 else ''}"
        if self.low > 0:
            return above
        if self.high < 0:
            return below
        return "not separated"

    def __str__(self) -> str:
        if self.p_value is None:
            text = f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"
        else:
            text = f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}], p={self.p_value:.3g}"
        return text if self.coverage is None else f"{text} ({self.coverage})"


RESAMPLE = ("both", "problems")


def _resampled(matrices, replicates: int, seed: int, resample: str = "both"):
    """
    Yield chunks of bootstrap resamples of equally shaped `[seed, column]` matrices: the same seeds and columns are
    drawn for every matrix of a replicate, so paired matrices stay paired. Each yielded item is a tuple with one
    resampled array of shape `(chunk, seeds, columns)` per matrix. `resample="problems"` keeps every seed once and
    draws the columns only: the interval of these seeds, blind to how much another seed would differ.
    """
    if resample not in RESAMPLE:
        raise ValueError(f"resample must be one of {RESAMPLE}, got {resample!r}.")
    rng = np.random.default_rng(seed)
    n_seeds, n_columns = matrices[0].shape
    # In chunks, to keep the (chunk, seeds, columns) index arrays small.
    for start in range(0, replicates, 500):
        size = min(500, replicates - start)
        if resample == "both":
            seeds = rng.integers(0, n_seeds, size=(size, n_seeds))
        else:
            seeds = np.broadcast_to(np.arange(n_seeds), (size, n_seeds))
        columns = rng.integers(0, n_columns, size=(size, n_columns))
        yield tuple(m[seeds[:, :, None], columns[:, None, :]] for m in matrices)


def _as_matrix(values, name: str = "outcomes") -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"{name} must be a non-empty (seeds, problems) matrix, got shape {values.shape}.")
    return values


def bootstrap_means(outcomes, replicates: int = REPLICATES, seed: int = 0, resample: str = "both") -> np.ndarray:
    """Means of `replicates` bootstrap resamples (seeds and problems, or problems alone) of `outcomes[seed, problem]`."""
    outcomes = _as_matrix(outcomes)
    chunks = _resampled([outcomes], replicates, seed, resample)
    return np.concatenate([chunk.mean(axis=(1, 2)) for (chunk,) in chunks])


def mean_ci(outcomes, replicates: int = REPLICATES, seed: int = 0, level: float = 0.95) -> Estimate:
    """The mean of `outcomes[seed, problem]` with its bootstrap interval over seeds and problems."""
    outcomes = _as_matrix(outcomes)
    means = bootstrap_means(outcomes, replicates, seed)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(float(outcomes.mean()), float(low), float(high), *outcomes.shape)


def paired_difference(
    a,
    b,
    replicates: int = REPLICATES,
    seed: int = 0,
    level: float = 0.95,
    statistic: str = "mean",
    resample: str = "both",
) -> Estimate:
    """
    `statistic(a) - statistic(b)` over seeds and problems (both `[seed, problem]`, the same seeds and problems in the
    same order), with its bootstrap interval and two-sided p-value. `statistic` is `"mean"` (accuracies, rewards) or
    `"median"` (heavy-tailed figures such as gradient norms, where one outlier step would dominate a mean); the
    bootstrap draws the same seeds and columns for `a` and `b`. `resample="problems"` draws problems alone (see
    [`_resampled`]): for showing what the seeds add, not for a verdict.
    """
    a, b = _as_matrix(a, "a"), _as_matrix(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes must have the same (seeds, problems) shape, got {a.shape} and {b.shape}.")
    if statistic == "mean":
        diff = a - b
        point, replicate_values = diff.mean(), bootstrap_means(diff, replicates, seed, resample)
    elif statistic == "median":
        point = np.median(a) - np.median(b)
        replicate_values = np.concatenate(
            [
                np.median(x.reshape(len(x), -1), axis=1) - np.median(y.reshape(len(y), -1), axis=1)
                for x, y in _resampled([a, b], replicates, seed, resample)
            ]
        )
    else:
        raise ValueError(f"statistic must be 'mean' or 'median', got {statistic!r}.")
    low, high = np.quantile(replicate_values, [(1 - level) / 2, (1 + level) / 2])
    tail = min((replicate_values <= 0).mean(), (replicate_values >= 0).mean())
    p_value = max(min(1.0, 2 * tail), 1 / (replicates + 1))
    return Estimate(float(point), float(low), float(high), *a.shape, p_value=float(p_value))
