# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""Curves of a comparison: one line per algorithm (the median over seeds), a band over seeds (their interquartile
range, or min..max with fewer than 4 seeds). Needs matplotlib (`pip install opo-trl[plot]`)."""

import sys
from pathlib import Path

import numpy as np


# (title, logged key, whether the curve is sparse: drawn with markers)
PANELS = (
    ("held-out accuracy (interim set)", "heldout/interim_accuracy", True),
    ("training reward", "reward", False),
    ("gradient norm", "grad_norm", False),
    ("entropy", "entropy", False),
    ("completion length", "completions/mean_length", False),
    ("OPO chi-square", "opo/chi2", False),
    ("OPO equilibrium gap", "opo/equilibrium_gap", False),
    ("OPO mu", "opo/mu", False),
)


def plot_curves(runs, path, title: str | None = None, smooth: int = 4) -> Path | None:
    """
    Draw every panel of `PANELS` for `runs` (a list of [`~compare.RunRecord`]) into one PNG at `path`.

    Dense per-step curves are smoothed with a running mean over `smooth` steps before the median and band over seeds
    are taken. A panel no run logged is left empty. Returns the path, or `None` without matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[opo-trl] matplotlib not installed: no plots (pip install opo-trl[plot])", file=sys.stderr)
        return None
    names = list(dict.fromkeys(r.name for r in runs))
    colors = {name: f"C{i % 10}" for i, name in enumerate(names)}  # the same colour in every panel
    fig, axes = plt.subplots(2, 4, figsize=(18, 7.5))
    for ax, (label, key, sparse) in zip(axes.flat, PANELS, strict=True):
        # Without an interim set, the held-out curve is the full evaluation (before, during, after).
        if key == "heldout/interim_accuracy" and not any(key in e for r in runs for e in r.steps):
            key = "heldout/accuracy"
        for name in names:
            curves = []
            for r in (r for r in runs if r.name == name):
                points = {e["step"]: e[key] for e in r.steps if e.get(key) is not None}
                if points:
                    curves.append(points)
            if not curves:
                continue
            steps = sorted(set().union(*curves))
            values = np.array([[c.get(s, np.nan) for s in steps] for c in curves], dtype=np.float64)
            if not sparse and smooth > 1:
                values = np.array([_running_mean(v, smooth) for v in values])
            middle = np.nanmedian(values, axis=0)
            low, high = (
                np.nanquantile(values, [0.25, 0.75], axis=0)
                if len(curves) >= 4
                else (np.nanmin(values, 0), np.nanmax(values, 0))
            )
            marker = "o" if sparse else None
            ax.plot(steps, middle, label=f"{name} ({len(curves)})", color=colors[name], marker=marker, markersize=3)
            ax.fill_between(steps, low, high, alpha=0.15, color=colors[name])
        ax.set(title=label, xlabel="step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(
        (f"{title}: " if title else "")
        + "median over seeds, band = interquartile range (min..max below 4 seeds); per-step curves smoothed over "
        + f"{smooth} steps"
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    out = np.full_like(values, np.nan)
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        chunk = chunk[~np.isnan(chunk)]
        if chunk.size:
            out[i] = chunk.mean()
    return out


def plot_reward_curve(log_history: list[dict], algorithm: str, path) -> Path | None:
    """The training reward of one run against the step, into a PNG at `path`; `None` without matplotlib or reward."""
    steps = [(e["step"], e["reward"]) for e in log_history if "reward" in e and "step" in e]
    if not steps:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[opo-trl] matplotlib not installed: no reward plot (pip install opo-trl[plot])", file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*steps, strict=True), marker="o", markersize=3)
    ax.set(xlabel="step", ylabel="mean training reward", title=f"{algorithm.upper()} reward")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
