# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
What OPOTrainer logs about the objective: statistics of the escort drive of a rollout and of the sequence log-ratios of
a micro-batch, and the KL from the rollout policy. None of it changes the loss; the objective is in `opo_trl.core`.
"""

import torch

from .core import MAX_EXACT_LOG_RATIO, RATIO_FORMS, EscortDrive, MixtureDrive, masked_mean


def escort_statistics(
    escort: EscortDrive | MixtureDrive,
    num_generations: int,
    mu: float | torch.Tensor,
    scorable: torch.Tensor | None = None,
) -> dict[str, float]:
    """
    Diagnostics of one batch of escort drives (all processes): weight stats, |g|, half the range of g per group (the
    denominator of the paper's gradient-response efficiency), effective sample size, positivity violations,
    exponent-capped fraction (for the softmax mixture: the fraction of |Delta| at the clip), groups without signal,
    given `scorable` the unscorable fraction, and for the softmax mixture the mean entropy of q and p per group. One host
    sync.
    """
    drive, weights, clipped = escort.drive, escort.weights, escort.clipped
    # Not `weights > 0`: the weight of a very negative advantage underflows to 0 but is still a scored sample.
    all_scorable = scorable is None
    scorable = torch.ones_like(weights, dtype=torch.bool) if all_scorable else scorable.to(torch.bool)
    grouped_w = weights.view(-1, num_generations).double()
    sum_w, sum_w2 = grouped_w.sum(dim=1), grouped_w.pow(2).sum(dim=1)
    n_group = scorable.view(-1, num_generations).sum(dim=1)
    has_data = (n_group > 0).double()
    # Effective sample size of the escort weights, as a fraction of the scorable completions of each group.
    ess = sum_w.pow(2) / sum_w2.clamp(min=1e-300) / n_group.clamp(min=1)
    grouped_g, grouped_scorable = drive.view(-1, num_generations).double(), scorable.view(-1, num_generations)
    g_max = torch.where(grouped_scorable, grouped_g, -torch.inf).max(dim=1).values
    g_min = torch.where(grouped_scorable, grouped_g, torch.inf).min(dim=1).values
    half_range = torch.where(n_group > 0, (g_max - g_min) / 2, 0.0)
    stats = {
        "escort_weight/mean": masked_mean(weights.double(), scorable),
        "escort_weight/max": weights.double().max() if weights.numel() else torch.zeros((), dtype=torch.float64),
        "escort_weight/ess": masked_mean(ess, has_data),
        "escort_weight/clipped_frac": masked_mean(clipped.double(), scorable),
        "drive/abs_mean": masked_mean(drive.double().abs(), scorable),
        "drive/half_range": masked_mean(half_range, has_data),
        # The exact update 1 + g/mu stays a probability ratio only when g >= -mu.
        "positivity_violations": masked_mean((drive < -mu).double(), scorable),
        "groups_without_signal": (drive.view(-1, num_generations) == 0).all(dim=1).double().mean(),
    }
    if not all_scorable:
        stats["unscorable_frac"] = 1.0 - scorable.double().mean()
    if isinstance(escort, MixtureDrive):
        stats["escort/q_entropy"] = masked_mean(escort.q_entropy.double(), has_data)
        stats["escort/p_entropy"] = masked_mean(escort.p_entropy.double(), has_data)
    return _to_floats(stats)


def ratio_statistics(
    delta: torch.Tensor, drive: torch.Tensor, mu: float | torch.Tensor, ratio_form: str = "log"
) -> dict[str, float]:
    """
    Diagnostics of the sequence log-ratios of a micro-batch (all processes). One host sync.

    - `delta/mean`, `delta/abs_max`: of Delta.
    - `chi2`: `mean((exp(Delta) - 1)^2)`, the Pearson chi-square of the step whatever `ratio_form`. With
      `log_ratio_aggregation="sum"` it is the chi-square of the sequence ratio pi_theta(y) / pi_k(y); with `"mean"`,
      Delta is a per-token mean, and it is the chi-square of the geometric-mean token ratio.
    - `equilibrium_gap`: `mean |mu * v - g|` with v the ratio field the quadratic acts on (Delta, or exp(Delta) - 1
      in the exact form): how far the policy is from the closed-form step v* = g / mu.
    - `step/abs_mean` and `closed_form_step/abs_mean`: `mean |v|` and `mean |g / mu|`; their ratio is how much of its
      own closed-form step the policy has taken (0 on a rollout's first step, 1 at the optimum of the quadratic).
    """
    delta, drive = delta.detach().float(), drive.detach().float()
    mu = mu.detach().float() if isinstance(mu, torch.Tensor) else mu
    v = RATIO_FORMS[ratio_form](delta)
    return _to_floats(
        {
            "delta/mean": delta.mean(),
            "delta/abs_max": delta.abs().max(),
            "chi2": torch.expm1(delta.clamp(max=MAX_EXACT_LOG_RATIO)).pow(2).mean(),
            "equilibrium_gap": (mu * v - drive).abs().mean(),
            "step/abs_mean": v.abs().mean(),
            "closed_form_step/abs_mean": (drive / mu).abs().mean(),
        }
    )


def rollout_kl(per_token_logps: torch.Tensor, old_per_token_logps: torch.Tensor) -> torch.Tensor:
    """
    Per-token estimate of KL(pi_k || pi_theta), the current policy's distance from the rollout policy, on tokens the
    rollout policy sampled: `r - 1 - log r` with `r = pi_theta / pi_k` (the unbiased, non-negative "k3" estimator).
    0 on a rollout's first step; it grows as a reused rollout's policy moves away.
    """
    log_r = per_token_logps.detach().float() - old_per_token_logps.detach().float()
    return torch.expm1(log_r) - log_r


def _to_floats(stats: dict[str, torch.Tensor]) -> dict[str, float]:
    values = torch.stack([v.to(torch.float64).cpu() for v in stats.values()]).tolist()
    return dict(zip(stats, values, strict=True))
