# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
The OPO objective as small pure functions over tensors.

Nothing in this module knows about TRL: it is the algorithm of Orthogonalized Policy Optimization (Wang, 2026,
arXiv:2601.12415), readable top to bottom and testable alone. The trainer (`opo_trl.trainer`) only wires these
functions into `GRPOTrainer`.

For one prompt with completions y_1..y_G sampled from the rollout policy pi_k and rewards R_i:

    A_i     = R_i - mean_j R_j                          centred advantage (optionally divided by a std)
    w_i     = exp((1 - alpha) * (A_i / T - c_i))        alpha-escort weight (the sampling geometry), temperature T;
                                                        c_i = 0, or the centred log pi_k(y_i) of the full escort
    g_i     = w_i - mean_j w_j                          escort drive: projection onto E_{pi_k}[v] = 0
              (or w_i / mean_j w_j - 1, the self-normalised escort ratio, scale-free)
    Delta_i = sum_t log pi_theta(y_it) - log pi_k(y_it) sequence log-ratio (or its per-token mean)
    l_i     = -g_i * v_i + (mu / 2) * v_i^2             v_i = Delta_i (log-ratio surrogate) or exp(Delta_i) - 1

The quadratic term (Pearson chi-square, stiffness mu) is the trust region: there is no clipping, the Hessian in v is
the constant mu, and the minimiser is v_i* = g_i / mu, which sums to zero over each group. mu is either fixed or
chosen per rollout so that that minimiser spends a chi-square budget ([`trust_region_mu`]).

[`softmax_mixture_drive`] is the form of the authors' released code: w = q^alpha p^(1 - alpha) with q the softmax of the
advantages and p the softmax of the current (clamped) log-ratios, so that a reused rollout is re-weighted at every
optimizer step.

Each way of computing the drive is an [`EscortForm`] in the registry [`ESCORT_FORMS`] (`"exp"` and `"softmax_mixture"`):
it carries the config fields it owns, whether a reused rollout's drive is refreshed at each optimizer step, whether
Delta is clipped in the quadratic, and its drive. `OPOConfig` and `OPOTrainer` ask the form; [`register_escort_form`]
adds one.
"""

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch


LOG_RATIO_AGGREGATIONS = ("mean", "sum")
SCALE_REWARDS = ("none", "group", "batch")
# log pi_k(y) in the escort weight: none (pi_k uniform over the group), per-token mean, or sum (the paper).
ESCORT_REFERENCES = ("none", "mean", "sum")
# g = w - mean(w) (the paper's projection) or w / mean(w) - 1 (the self-normalised escort ratio).
ESCORT_NORMALIZATIONS = ("subtract_mean", "divide_by_mean")
# The names these values had before, which recipes still use: each still works, with a FutureWarning.
DEPRECATED_ESCORT_NORMALIZATIONS = {"none": "subtract_mean", "mean": "divide_by_mean"}

# Default cap on the escort exponent (1 - alpha) * A: exp(20) ~ 4.9e8 keeps w, g and g * Delta finite in float32.
MAX_ESCORT_EXPONENT = 20.0
# The largest cap allowed: a weight of e^40 makes float32 gradient norms overflow.
MAX_ESCORT_EXPONENT_LIMIT = 30.0
# Largest log-ratio fed to exp() in the exact-ratio form; exp(20) ~ 4.9e8 keeps v and v**2 finite in float32/bf16.
MAX_EXACT_LOG_RATIO = 20.0


def masked_mean(
    values: torch.Tensor,
    mask: torch.Tensor,
    dim: int | None = None,
    sum_processes: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """
    The mean of `values` over the entries where `mask` is 1 (0 where the mask has none), along `dim` or over all.

    Args:
        values (`torch.Tensor`): The values; entries under a 0 of the mask count as `value * 0`.
        mask (`torch.Tensor`): 0/1 (or boolean) mask, the shape of `values`.
        dim (`int` or `None`, *optional*): The dimension to average over; `None` averages everything.
        sum_processes (`Callable` or `None`, *optional*): A sum over processes (e.g. `accelerator.reduce(...,
            reduction="sum")`), applied to the stacked total and count of a `dim=None` mean: the mean over all processes.

    Example:

    ```python
    >>> masked_mean(torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]]), torch.tensor([[1, 1, 0], [0, 0, 0]]), dim=-1)
    tensor([1.5000, 0.0000])

    ```
    """
    total, count = (values * mask).sum(dim), mask.sum(dim)
    if sum_processes is not None:
        total, count = sum_processes(torch.stack([total, count.float()]))
    return total / count.clamp(min=1.0)


class EscortDrive(NamedTuple):
    """The escort drive of a batch of groups, flat and detached."""

    drive: torch.Tensor  # g = w - mean_group(w), 0 where unscorable
    weights: torch.Tensor  # w, 0 where unscorable
    clipped: torch.Tensor  # bool: the exponent hit the cap


def sequence_log_prob(per_token_logps: torch.Tensor, mask: torch.Tensor, aggregation: str) -> torch.Tensor:
    """
    log pi(y) of each completion from its token log-probs: the masked sum (`"sum"`) or per-token mean (`"mean"`).
    A completion without a single unmasked token gets `NaN`: it has no reference value.
    """
    if aggregation not in ("mean", "sum"):
        raise ValueError(f"aggregation must be 'mean' or 'sum', got {aggregation!r}.")
    mask = mask.to(per_token_logps.dtype)
    values = torch.where(mask.bool(), per_token_logps, 0.0)
    value = masked_mean(values, mask, dim=-1) if aggregation == "mean" else values.sum(dim=-1)
    return torch.where(mask.sum(dim=-1) > 0, value, torch.full_like(value, float("nan")))


def escort_drive(
    advantages: torch.Tensor,
    num_generations: int,
    alpha: float,
    scorable: torch.Tensor | None = None,
    max_exponent: float = MAX_ESCORT_EXPONENT,
    log_reference: torch.Tensor | None = None,
    temperature: float = 1.0,
    normalization: str = "subtract_mean",
) -> EscortDrive:
    """
    The alpha-escort drive g_i = w_i - mean_j w_j (or w_i / mean_j w_j - 1), per prompt group.

    The escort distribution is rho_alpha ∝ pi_k^alpha * P*^(1 - alpha) with P* ∝ exp(A / T), T the escort temperature
    (the KL-anchored target P* ∝ pi_k exp(A / T) when pi_k's own factor is absorbed by the sampling). Relative to pi_k,
    which sampled the completions, its weight is

        w_i = exp((1 - alpha) * (A_i / T - c_i)),    c_i = l_i - mean_group(l),  l_i = log pi_k(y_i)

    Without `log_reference`, c = 0: pi_k is treated as uniform over the group. With it (the paper's Algorithm 1),
    among completions of equal advantage the less likely ones get more drive, and alpha -> 0 gives P* / pi_k. A
    temperature below 1 makes the weighting peak-seeking; at T = 1 with binary rewards the exponent is small and g is
    nearly linear in A.

    Centring l within the group multiplies every weight of the group by the same factor exp((1 - alpha) * mean l),
    so it changes the drive's scale per group and nothing else (not which completions gain or lose, nor their
    ratios). It is what keeps the weights usable: log pi_k of a 30-token completion is tens of nats, and
    pi_k(y)^-(1 - alpha) alone would be around e^18.

    `normalization="subtract_mean"` subtracts the group mean of w: the orthogonal projection onto probability
    conservation, so g sums to zero over the scorable completions of every group; the exponent is capped at
    `max_exponent`. `normalization="divide_by_mean"` divides by it instead, g_i = w_i / mean_j w_j - 1: a self-normalised
    estimate of the escort ratio rho_alpha / pi_k minus 1, which has mean 0 under pi_k too. It is the
    `"subtract_mean"` drive divided by the group's mean w, so it is scale-free (g in [-1, n - 1] for n scorable
    completions whatever T or the reward scale) and is computed in log space, so no exponent is capped. Either way a
    group whose exponents all tie gets g = 0 exactly.

    Unscorable completions (`scorable` false, or a `NaN` advantage) get g = 0 and are left out of the group mean; a group
    with no scorable completion contributes nothing.

    Args:
        advantages (`torch.Tensor`):
            Flat tensor of shape `(num_groups * num_generations,)` of centred advantages.
        num_generations (`int`):
            Completions per prompt (G).
        alpha (`float`):
            Escort exponent in [0, 1). alpha -> 1 flattens the weights (no update); alpha = 0 is the most aggressive.
        scorable (`torch.Tensor` or `None`, *optional*):
            Boolean mask of completions that carry a reward.
        max_exponent (`float`, *optional*, defaults to `MAX_ESCORT_EXPONENT`):
            Upper bound on the exponent with `normalization="subtract_mean"`, so that w never overflows to inf.
        log_reference (`torch.Tensor` or `None`, *optional*):
            l_i = log pi_k(y_i) per completion (e.g. [`sequence_log_prob`] of the rollout policy's token log-probs),
            shape like `advantages`. `NaN` entries (no tokens) get c_i = 0 and stay out of the group mean of l.
        temperature (`float`, *optional*, defaults to `1.0`):
            Escort temperature T > 0 that divides the advantages.
        normalization (`str`, *optional*, defaults to `"subtract_mean"`):
            `"subtract_mean"` (g = w - mean w) or `"divide_by_mean"` (g = w / mean w - 1). The former names `"none"`
            and `"mean"` still work, with a `FutureWarning`.

    Returns:
        [`EscortDrive`]: The drive g, the escort weights (w with `"subtract_mean"`, w / mean w with `"divide_by_mean"`;
        0 where unscorable) and where the exponent was capped.
    """
    normalization = current_escort_normalization(normalization)
    if normalization not in ESCORT_NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {ESCORT_NORMALIZATIONS}, got {normalization!r}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}.")
    advantages = advantages.detach()
    scorable = _scorable_mask(advantages, scorable)
    exponent = torch.where(scorable, advantages, torch.zeros_like(advantages))
    if temperature != 1.0:
        exponent = exponent / temperature
    if log_reference is not None:
        exponent = exponent - _group_centred(log_reference.detach().to(advantages.dtype), scorable, num_generations)
    exponent = (1.0 - alpha) * exponent
    grouped_scorable = scorable.view(-1, num_generations)
    n_scorable = grouped_scorable.sum(dim=1, keepdim=True).clamp(min=1)
    if normalization == "divide_by_mean":
        # w_i / mean_j w_j = exp(e_i - max e) / mean_j exp(e_j - max e): the largest term is 1, nothing overflows, and
        # equal exponents give exactly 1 (so g = 0) whatever their value.
        grouped_e = torch.where(grouped_scorable, exponent.view(-1, num_generations), -torch.inf)
        top = grouped_e.max(dim=1, keepdim=True).values
        relative = torch.exp(grouped_e - torch.where(torch.isfinite(top), top, 0.0))
        ratio = relative / (relative.sum(dim=1, keepdim=True) / n_scorable).clamp(min=torch.finfo(relative.dtype).tiny)
        drive = (ratio - 1.0) * grouped_scorable
        return EscortDrive(
            drive.reshape(advantages.shape), ratio.reshape(advantages.shape), torch.zeros_like(scorable)
        )
    clipped = scorable & (exponent > max_exponent)
    weights = torch.exp(exponent.clamp(max=max_exponent)) * scorable
    grouped_w = weights.view(-1, num_generations)
    mean_w = grouped_w.sum(dim=1, keepdim=True) / n_scorable
    drive = (grouped_w - mean_w) * grouped_scorable
    return EscortDrive(drive.reshape(advantages.shape), weights, clipped)


def current_escort_normalization(value, stacklevel: int = 3):
    """
    `value` of `escort_normalization` under its current name: a former name (`"none"`, `"mean"`) is translated, with a
    `FutureWarning`; any other value is returned as it is.
    """
    if isinstance(value, str) and value in DEPRECATED_ESCORT_NORMALIZATIONS:
        current = DEPRECATED_ESCORT_NORMALIZATIONS[value]
        warnings.warn(
            f"escort_normalization={value!r} is deprecated and will be removed in a future release; use {current!r}, "
            "which computes the same drive.",
            FutureWarning,
            stacklevel=stacklevel,
        )
        return current
    return value


class MixtureDrive(NamedTuple):
    """The softmax-mixture drive of a batch of groups, flat and detached."""

    drive: torch.Tensor  # s * (n * w - 1), the per-sequence drive the loss uses; 0 where unscorable
    weights: torch.Tensor  # w = q^alpha p^(1 - alpha), normalised to sum 1 over each group's scorable completions
    clipped: torch.Tensor  # bool: |Delta| reached the log-ratio clip
    q_entropy: torch.Tensor  # (num_groups,) entropy of q, in nats
    p_entropy: torch.Tensor  # (num_groups,) entropy of p, in nats


def softmax_mixture_drive(
    advantages: torch.Tensor,
    log_ratio: torch.Tensor,
    num_generations: int,
    alpha: float,
    reward_temperature: float = 0.3,
    ratio_temperature: float = 0.5,
    log_ratio_clip: float = 5.0,
    direction_scale: float | None = None,
    scorable: torch.Tensor | None = None,
) -> MixtureDrive:
    """
    The drive of the authors' released OPO (verl, `adpo/core_algos.py`, `loss_variant: opo`), per prompt group:

        q = softmax(A / beta_r),   p = softmax(clamp(Delta, -c, c) / tau),   w ∝ q^alpha p^(1 - alpha),  sum w = 1
        g_i = w_i - 1 / n,         drive_i = s * n * g_i = s * (n * w_i - 1),  s = direction_scale or 1 / alpha

    Their loss per group is `-s * sum_i g_i * lbar_i + (mu / 2) * mean_i clamp(Delta_i)^2`, averaged over groups;
    written per sequence and averaged over all sequences, that is `-drive_i * Delta_i + (mu / 2) * clamp(Delta_i)^2`
    (the same gradient: lbar_i and Delta_i differ by a constant). So `drive` is their sum over the group's n
    completions made per-sequence, which is why it is n * s times g. alpha's direction is the reverse of the
    exponential escort's: alpha -> 1 is the pure reward softmax q, alpha -> 0 the pure ratio softmax p.

    On the first optimizer step of a rollout Delta = 0, p is uniform and the drive depends on the rewards alone (a tied
    group gets exactly 0). On later steps of a reused rollout p follows the completions whose ratio already rose, and
    even a tied group is driven towards them.

    Weights are formed in log space (log w = alpha log q + (1 - alpha) log p, then a softmax), which is their
    `(q + 1e-10)^alpha (p + 1e-10)^(1 - alpha)` normalised, without the 1e-10. Unscorable completions (`scorable`
    false or a `NaN` advantage) are left out of both softmaxes and get drive 0.

    Args:
        advantages (`torch.Tensor`): Flat `(num_groups * num_generations,)` advantages.
        log_ratio (`torch.Tensor`): Current sequence log-ratio Delta against the rollout policy, same shape.
        num_generations (`int`): Completions per prompt (G).
        alpha (`float`): Weight of q in the mixture, in [0, 1]; > 0 unless `direction_scale` is given.
        reward_temperature (`float`, *optional*, defaults to `0.3`): beta_r > 0.
        ratio_temperature (`float`, *optional*, defaults to `0.5`): tau > 0.
        log_ratio_clip (`float`, *optional*, defaults to `5.0`): c > 0, the clamp of Delta inside p.
        direction_scale (`float` or `None`, *optional*): s; `None` is 1 / alpha.
        scorable (`torch.Tensor` or `None`, *optional*): Boolean mask of completions that carry a reward.

    Returns:
        [`MixtureDrive`].
    """
    if direction_scale is None and alpha <= 0:
        raise ValueError("alpha must be > 0 when direction_scale is None (the direction scale is 1 / alpha).")
    scale = direction_scale if direction_scale is not None else 1.0 / alpha
    advantages, log_ratio = advantages.detach(), log_ratio.detach().to(advantages.dtype)
    scorable = _scorable_mask(advantages, scorable)
    grouped_scorable = scorable.view(-1, num_generations)
    n_scorable = grouped_scorable.sum(dim=1, keepdim=True)

    def group_log_softmax(x):
        x = torch.where(grouped_scorable, x.view(-1, num_generations), -torch.inf)
        out = torch.log_softmax(x, dim=1)
        return torch.where(grouped_scorable, out, -torch.inf)  # a group with no scorable entry gives NaN; keep it -inf

    log_q = group_log_softmax(torch.where(scorable, advantages, 0.0) / reward_temperature)
    clipped = scorable & (log_ratio.abs() >= log_ratio_clip)
    log_p = group_log_softmax(log_ratio.clamp(-log_ratio_clip, log_ratio_clip) / ratio_temperature)
    log_w = group_log_softmax(
        alpha * torch.where(grouped_scorable, log_q, 0.0) + (1 - alpha) * torch.where(grouped_scorable, log_p, 0.0)
    )
    w = torch.exp(log_w) * grouped_scorable
    drive = scale * (n_scorable * w - 1.0) * grouped_scorable

    def entropy(log_x):
        return -(torch.exp(log_x) * torch.where(grouped_scorable, log_x, 0.0)).sum(dim=1)

    return MixtureDrive(
        drive.reshape(advantages.shape), w.reshape(advantages.shape), clipped, entropy(log_q), entropy(log_p)
    )


def _scorable_mask(advantages: torch.Tensor, scorable: torch.Tensor | None) -> torch.Tensor:
    # The completions that carry a reward: those of `scorable` (all if None) whose advantage is not NaN.
    mask = ~torch.isnan(advantages)
    return mask if scorable is None else mask & scorable.to(torch.bool)


def _group_centred(values: torch.Tensor, scorable: torch.Tensor, num_generations: int) -> torch.Tensor:
    # values minus their group mean over the entries that are scorable and not NaN; 0 elsewhere.
    present = scorable & ~torch.isnan(values)
    grouped, grouped_present = (
        torch.where(present, values, 0.0).view(-1, num_generations),
        present.view(-1, num_generations),
    )
    mean = grouped.sum(dim=1, keepdim=True) / grouped_present.sum(dim=1, keepdim=True).clamp(min=1)
    return ((grouped - mean) * grouped_present).reshape(values.shape)


def trust_region_mu(
    drive: torch.Tensor,
    target_chi2: float,
    scorable: torch.Tensor | None = None,
    mu_min: float = 0.0,
    mu_max=float("inf"),
) -> torch.Tensor:
    """
    The stiffness mu at which the closed-form step v* = g / mu spends exactly a chi-square budget:

        mean(v*^2) = target_chi2   <=>   mu = sqrt(mean(g^2) / target_chi2)

    over the scorable completions of a rollout, clamped to `[mu_min, mu_max]`. With a fixed mu the size of the step moves
    with the reward scale, alpha and the group size; with this mu it does not.

    Args:
        drive (`torch.Tensor`): The escort drive g of the whole rollout (all processes).
        target_chi2 (`float`): The budget, > 0.
        scorable (`torch.Tensor` or `None`, *optional*): Boolean mask of the completions that carry a reward.
        mu_min (`float`, *optional*, defaults to `0.0`): Lower clamp (a rollout without signal gives mu = mu_min).
        mu_max (`float`, *optional*, defaults to `inf`): Upper clamp.

    Returns:
        `torch.Tensor`: mu, a 0-dim tensor on the drive's device.
    """
    scorable = torch.ones_like(drive, dtype=torch.bool) if scorable is None else scorable.to(torch.bool)
    mean_g2 = masked_mean(drive.detach().double().pow(2), scorable)
    return torch.sqrt(mean_g2 / target_chi2).clamp(min=mu_min, max=mu_max).to(drive.dtype)


def sequence_log_ratio(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    mask: torch.Tensor,
    aggregation: str = "mean",
) -> torch.Tensor:
    """
    Sequence log-ratio Delta_i = sum_t m_it (log pi_theta - log pi_k), or that sum divided by sum_t m_it.

    Masked-out positions never reach the sum (not even as `0 * NaN`), and an all-zero mask gives Delta = 0.

    Args:
        per_token_logps (`torch.Tensor`): `(B, T)` log-probs of the sampled tokens under the current policy.
        old_per_token_logps (`torch.Tensor`): `(B, T)` log-probs under the rollout policy pi_k.
        mask (`torch.Tensor`): `(B, T)` completion mask (times the tool mask).
        aggregation (`str`, *optional*, defaults to `"mean"`): `"sum"` (the paper) or `"mean"` (length-normalised).

    Returns:
        `torch.Tensor`: Delta, shape `(B,)`.
    """
    if aggregation not in LOG_RATIO_AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {LOG_RATIO_AGGREGATIONS}, got {aggregation!r}.")
    token_log_ratio = torch.where(mask.bool(), per_token_logps - old_per_token_logps, 0.0)
    return (
        masked_mean(token_log_ratio, mask, dim=-1) if aggregation == "mean" else (token_log_ratio * mask).sum(dim=-1)
    )


def _log_ratio(delta: torch.Tensor) -> torch.Tensor:
    return delta


def _exact_ratio(delta: torch.Tensor) -> torch.Tensor:
    return torch.expm1(delta.clamp(max=MAX_EXACT_LOG_RATIO))


# v(Delta): the ratio field the quadratic acts on. "log" is the paper's surrogate v = Delta, "exact" is v = r - 1.
RATIO_FORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"log": _log_ratio, "exact": _exact_ratio}


def opo_loss(
    delta: torch.Tensor,
    drive: torch.Tensor,
    mu: float | torch.Tensor,
    ratio_form: str = "log",
    log_ratio_clip: float | None = None,
) -> torch.Tensor:
    """
    Per-sequence OPO loss l_i = -g_i * v_i + (mu / 2) * v_i^2, "work minus dissipation" with the sign flipped.

    Its gradient in v is mu * v - g (linear, never saturating) and its curvature is the constant mu.

    Args:
        delta (`torch.Tensor`): `(B,)` sequence log-ratios.
        drive (`torch.Tensor`): `(B,)` escort drive g (treated as a constant).
        mu (`float` or `torch.Tensor`): Stiffness of the chi-square trust region, > 0 (a scalar or one per sequence).
        ratio_form (`str`, *optional*, defaults to `"log"`): `"log"` (v = Delta) or `"exact"` (v = exp(Delta) - 1).
        log_ratio_clip (`float` or `None`, *optional*): If set, the quadratic acts on `clamp(Delta, -c, c)` (the
            authors' released code), so it exerts no restoring force past c; the linear term is not clamped.

    Returns:
        `torch.Tensor`: `(B,)` per-sequence losses.
    """
    if ratio_form not in RATIO_FORMS:
        raise ValueError(f"ratio_form must be one of {tuple(RATIO_FORMS)}, got {ratio_form!r}.")
    v = RATIO_FORMS[ratio_form](delta)
    v_quadratic = v if log_ratio_clip is None else v.clamp(-log_ratio_clip, log_ratio_clip)
    return -drive.detach() * v + 0.5 * mu * v_quadratic.pow(2)


def sequence_importance_weight(importance_sampling_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """
    One detached weight per sequence from TRL's vLLM importance-sampling correction: the ratio itself in TRL's
    `sequence_*` modes (shape `(B, 1)`), the masked mean of the token ratios in its `token_*` modes (shape `(B, T)`).
    """
    ratio = importance_sampling_ratio.detach()
    if ratio.size(-1) == 1:
        return ratio.squeeze(-1)
    return masked_mean(ratio, mask, dim=-1)


def per_token_kl(
    per_token_logps: torch.Tensor, ref_per_token_logps: torch.Tensor, old_per_token_logps: torch.Tensor | None = None
) -> torch.Tensor:
    """
    TRL's per-token KL estimate to the reference, `exp(ref - logp) - (ref - logp) - 1` (Schulman's k3), times the
    token ratio `exp(logp - old)` when `old_per_token_logps` is given (TRL's `use_bias_correction_kl`).
    """
    diff = ref_per_token_logps - per_token_logps
    kl = torch.exp(diff) - diff - 1
    if old_per_token_logps is not None:
        kl = kl * torch.exp(per_token_logps - old_per_token_logps)
    return kl


class SequenceLoss(NamedTuple):
    """What [`opo_sequence_loss`] returns: the loss to average and what the trainer logs."""

    loss: torch.Tensor  # (B,) per-sequence loss, IS weight and KL included
    delta: torch.Tensor  # (B,) sequence log-ratio Delta
    kl: torch.Tensor | None  # (B, T) per-token KL, when beta > 0


def opo_sequence_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    mask: torch.Tensor,
    drive: torch.Tensor,
    mu: float | torch.Tensor,
    aggregation: str = "mean",
    ratio_form: str = "log",
    importance_weight: torch.Tensor | None = None,
    ref_per_token_logps: torch.Tensor | None = None,
    beta: float = 0.0,
    kl_ratio_correction: bool = True,
    log_ratio_clip: float | None = None,
) -> SequenceLoss:
    """
    The whole per-sequence OPO loss of a micro-batch: the log-ratio Delta against the rollout policy, the quadratic
    ratio loss [`opo_loss`], an optional importance weight per sequence (vLLM's sampler correction), and an optional
    KL penalty to a reference, `beta` times TRL's per-token KL averaged over each sequence.

    Args:
        per_token_logps (`torch.Tensor`): `(B, T)` log-probs of the completion tokens under the current policy.
        old_per_token_logps (`torch.Tensor`): `(B, T)` log-probs under the rollout policy pi_k.
        mask (`torch.Tensor`): `(B, T)` completion mask (times the tool mask).
        drive (`torch.Tensor`): `(B,)` escort drive g.
        mu (`float` or `torch.Tensor`): Stiffness of the chi-square trust region (a scalar or one per sequence).
        aggregation (`str`, *optional*, defaults to `"mean"`): How Delta aggregates tokens, see [`sequence_log_ratio`].
        ratio_form (`str`, *optional*, defaults to `"log"`): See [`opo_loss`].
        importance_weight (`torch.Tensor`, *optional*): `(B,)` detached weight of each sequence's loss.
        ref_per_token_logps (`torch.Tensor`, *optional*): `(B, T)` reference log-probs; needed when `beta > 0`.
        beta (`float`, *optional*, defaults to `0.0`): KL coefficient.
        kl_ratio_correction (`bool`, *optional*, defaults to `True`): Weight the KL by the token ratio to pi_k.
        log_ratio_clip (`float`, *optional*): Clamp of Delta inside the quadratic, see [`opo_loss`].

    Returns:
        [`SequenceLoss`]: The per-sequence loss, Delta and the per-token KL (or `None`).
    """
    # A bf16 model may hand over bf16 log-probs: Delta sums tens of tokens, so it and the quadratic are float32.
    per_token_logps, old_per_token_logps = per_token_logps.float(), old_per_token_logps.float()
    if ref_per_token_logps is not None:
        ref_per_token_logps = ref_per_token_logps.float()
    delta = sequence_log_ratio(per_token_logps, old_per_token_logps, mask, aggregation)
    loss = opo_loss(delta, drive.float(), mu, ratio_form, log_ratio_clip)
    if importance_weight is not None:
        loss = loss * importance_weight.detach()
    kl = None
    if beta != 0.0:
        kl = per_token_kl(per_token_logps, ref_per_token_logps, old_per_token_logps if kl_ratio_correction else None)
        # beta times the masked sum, then divided: not beta * masked_mean, whose rounding differs in the last bit.
        loss = loss + beta * (kl * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return SequenceLoss(loss, delta, kl)


def entropy_bonus(entropies: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean token entropy H over the unmasked tokens of a micro-batch, as TRL's entropy bonus `- coef * H` uses it."""
    return masked_mean(entropies, mask.to(entropies.dtype))


# -- escort forms ------------------------------------------------------------------------------------------------------


class Allowed(NamedTuple):
    """The values a config field may take: a test, and the words an error message gives them."""

    test: Callable[[Any], bool]
    description: str


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


POSITIVE = Allowed(lambda value: _finite(value) and value > 0, "a finite float > 0")
POSITIVE_OR_NONE = Allowed(lambda value: value is None or POSITIVE.test(value), "None or a finite float > 0")


def one_of(choices) -> Allowed:
    """The values of `choices`."""
    return Allowed(lambda value: value in choices, f"one of {list(choices)}")


class EscortBatch(NamedTuple):
    """
    What an escort form computes a drive from: one rollout, gathered from all processes, flat, the completions of a
    prompt consecutive.
    """

    advantages: torch.Tensor  # TRL's advantages: rewards centred per group, optionally divided by a std
    num_generations: int  # completions per prompt (G)
    scorable: torch.Tensor  # bool: the completions at least one reward function scored
    log_ratio: torch.Tensor | None  # the current Delta of each completion; None while the policy has not moved
    # log pi_k(y) of each completion, summed ("sum") or averaged ("mean") over its tokens; computed when asked for, since
    # it may cost a forward pass.
    log_reference: Callable[[str], torch.Tensor]


@dataclass(frozen=True)
class EscortForm:
    """
    One way of turning a rollout's advantages into OPO's drive, with all that [`OPOConfig`] and [`OPOTrainer`] need to
    know about it. `OPOConfig(escort_form=name)` selects the form registered under `name` ([`register_escort_form`]).

    Args:
        name (`str`):
            The value of `OPOConfig.escort_form` that selects the form.
        drive (`Callable[[OPOConfig, EscortBatch], EscortDrive | MixtureDrive]`):
            The drive of a rollout from the config and an [`EscortBatch`]: flat, detached, 0 where a completion is not
            scorable. Its `weights` and `clipped` feed the logged statistics.
        fields (`Mapping[str, Allowed]`, *optional*):
            The `OPOConfig` fields the form reads and no form it shares the config with needs, each with the values it
            allows. Under another form, setting one of them away from its default is an error.
        refresh_each_step (`bool`, *optional*, defaults to `False`):
            Whether the drive depends on the current policy (`EscortBatch.log_ratio`): then the trainer recomputes the
            drive of a reused rollout at the first micro-batch of every optimizer step.
        clip_quadratic (`bool`, *optional*, defaults to `False`):
            Whether the quadratic acts on `clamp(Delta, -log_ratio_clip, log_ratio_clip)` rather than on Delta.
        check (`Callable[[OPOConfig], str | None]`, *optional*):
            A check across fields: what is wrong with the config, or `None`.
    """

    name: str
    drive: Callable[[Any, EscortBatch], Any]
    fields: Mapping[str, Allowed] = field(default_factory=dict)
    refresh_each_step: bool = False
    clip_quadratic: bool = False
    check: Callable[[Any], str | None] | None = None


# Every escort form, by name: the choices of `OPOConfig.escort_form`.
ESCORT_FORMS: dict[str, EscortForm] = {}


def register_escort_form(form: EscortForm) -> EscortForm:
    """Add `form` to [`ESCORT_FORMS`], so that `OPOConfig(escort_form=form.name)` selects it. Returns the form."""
    if form.name in ESCORT_FORMS:
        raise ValueError(f"An escort form named {form.name!r} is already registered.")
    ESCORT_FORMS[form.name] = form
    return form


def _exp_drive(args, batch: EscortBatch) -> EscortDrive:
    log_reference = None if args.escort_reference == "none" else batch.log_reference(args.escort_reference)
    return escort_drive(
        batch.advantages,
        batch.num_generations,
        args.alpha,
        scorable=batch.scorable,
        max_exponent=args.max_escort_exponent,
        log_reference=log_reference,
        temperature=args.escort_temperature,
        normalization=args.escort_normalization,
    )


def _softmax_mixture_drive(args, batch: EscortBatch) -> MixtureDrive:
    # Before the policy moves Delta = 0, and p is uniform.
    log_ratio = torch.zeros_like(batch.advantages) if batch.log_ratio is None else batch.log_ratio
    return softmax_mixture_drive(
        batch.advantages,
        log_ratio,
        batch.num_generations,
        args.alpha,
        reward_temperature=args.reward_temperature,
        ratio_temperature=args.ratio_temperature,
        log_ratio_clip=args.log_ratio_clip,
        direction_scale=args.direction_scale,
        scorable=batch.scorable,
    )


def _softmax_mixture_check(args) -> str | None:
    if args.alpha == 0 and args.direction_scale is None:
        return "alpha=0 with escort_form='softmax_mixture' needs direction_scale: the default scale is 1 / alpha."
    return None


# The paper's exponential escort family ([`escort_drive`]).
register_escort_form(
    EscortForm(
        "exp",
        _exp_drive,
        fields={
            "escort_temperature": POSITIVE,
            "escort_normalization": one_of(ESCORT_NORMALIZATIONS),
            "escort_reference": one_of(ESCORT_REFERENCES),
            "max_escort_exponent": Allowed(
                lambda value: _finite(value) and 0 < value <= MAX_ESCORT_EXPONENT_LIMIT,
                f"a float in (0, {MAX_ESCORT_EXPONENT_LIMIT:g}] (an escort weight of e^40 makes float32 gradient norms "
                "overflow)",
            ),
            "mu_target_chi2": POSITIVE_OR_NONE,
            "ratio_form": one_of(RATIO_FORMS),
        },
    )
)
# The authors' released softmax mixture (verl `loss_variant: opo`, [`softmax_mixture_drive`]).
register_escort_form(
    EscortForm(
        "softmax_mixture",
        _softmax_mixture_drive,
        fields={
            "reward_temperature": POSITIVE,
            "ratio_temperature": POSITIVE,
            "log_ratio_clip": POSITIVE,
            "direction_scale": POSITIVE_OR_NONE,
        },
        refresh_each_step=True,
        clip_quadratic=True,
        check=_softmax_mixture_check,
    )
)
