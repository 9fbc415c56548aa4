"""The identities of the OPO objective, each checked on small tensors against values worked out by hand."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from opo_trl.core import (
    entropy_bonus,
    escort_drive,
    opo_loss,
    opo_sequence_loss,
    per_token_kl,
    sequence_log_prob,
    sequence_log_ratio,
    trust_region_mu,
)
from opo_trl.diagnostics import escort_statistics, ratio_statistics, rollout_kl
from opo_trl.harness.testing import group_advantages


def drive_from_rewards(rewards, num_generations, alpha, scale_rewards="none"):
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    return escort_drive(group_advantages(rewards, num_generations, scale_rewards), num_generations, alpha).drive


def test_escort_drive_matches_hand_computation():
    # One group of 4 with binary rewards: A = +-0.5, w = exp(+-0.3), mean w = cosh(0.3), g = +-sinh(0.3).
    g = drive_from_rewards([1.0, 0.0, 0.0, 1.0], 4, alpha=0.4)
    s = math.sinh(0.6 * 0.5)
    torch.testing.assert_close(g, torch.tensor([s, -s, -s, s]))


def test_group_advantages_scalings_match_hand_values():
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 13.0])
    centred = group_advantages(rewards, 3, "none")
    torch.testing.assert_close(centred, torch.tensor([-1.0, 0.0, 1.0, -1.0, -1.0, 2.0]))
    grouped = group_advantages(rewards, 3, "group")
    torch.testing.assert_close(
        grouped,
        torch.tensor([-1.0, 0.0, 1.0, -1 / math.sqrt(3), -1 / math.sqrt(3), 2 / math.sqrt(3)])
        * torch.tensor([1 / 1.0001] * 3 + [math.sqrt(3) / (math.sqrt(3) + 1e-4)] * 3),
    )
    batch_std = rewards.std().item()
    torch.testing.assert_close(group_advantages(rewards, 3, "batch"), centred / (batch_std + 1e-4))


def test_gradient_is_mu_delta_minus_drive_and_curvature_is_mu():
    mu = 2.5
    g = torch.tensor([0.3, -0.1, -0.2])
    delta = torch.tensor([0.05, -0.4, 1.2], requires_grad=True)
    opo_loss(delta, g, mu).sum().backward()
    torch.testing.assert_close(delta.grad, mu * delta.detach() - g)

    hessian = torch.autograd.functional.hessian(lambda d: opo_loss(d, g, mu).sum(), delta.detach())
    torch.testing.assert_close(hessian, mu * torch.eye(3))


def test_exact_ratio_form_gradient():
    mu, g = 0.7, torch.tensor([0.5, -0.5])
    delta = torch.tensor([0.2, -0.3], requires_grad=True)
    opo_loss(delta, g, mu, ratio_form="exact").sum().backward()
    v = torch.exp(delta.detach()) - 1
    torch.testing.assert_close(delta.grad, (mu * v - g) * torch.exp(delta.detach()))


def test_minimiser_is_drive_over_mu_and_conserves_probability():
    mu = 4.0
    g = drive_from_rewards([1.0, 0.0, 0.0, 1.0, 0.0, 0.2, 0.9, 0.1], 4, alpha=0.4)
    delta = torch.zeros(8, requires_grad=True)
    optimizer = torch.optim.SGD([delta], lr=0.1)
    for _ in range(500):
        optimizer.zero_grad()
        opo_loss(delta, g, mu).sum().backward()
        optimizer.step()
    torch.testing.assert_close(delta.detach(), g / mu, atol=1e-6, rtol=0)
    torch.testing.assert_close(delta.detach().view(2, 4).sum(dim=1), torch.zeros(2), atol=1e-6, rtol=0)


def test_at_zero_log_ratio_gradient_is_reinforce_with_drive_weights():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, requires_grad=True)  # 3 sequences, 5 tokens, vocabulary of 7
    tokens = torch.randint(0, 7, (3, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float32)
    g = torch.tensor([0.4, -0.1, -0.3])

    logps = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    delta = sequence_log_ratio(logps, logps.detach(), mask, "sum")
    assert torch.all(delta == 0)
    (grad_opo,) = torch.autograd.grad(opo_loss(delta, g, mu=3.0).sum(), logits)

    # REINFORCE: -sum_i g_i * grad log pi(y_i), by hand from the per-token log-probs.
    logps = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    (grad_reinforce,) = torch.autograd.grad(-(g[:, None] * logps * mask).sum(), logits)
    torch.testing.assert_close(grad_opo, grad_reinforce)


def test_sequence_log_ratio_mean_and_sum():
    logps = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, float("nan"), 0.0]])
    old = torch.tensor([[-1.5, -1.0, -3.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(sequence_log_ratio(logps, old, mask, "sum"), torch.tensor([-0.5, 0.5]))
    torch.testing.assert_close(sequence_log_ratio(logps, old, mask, "mean"), torch.tensor([-0.25, 0.5]))
    empty = torch.zeros_like(mask)
    torch.testing.assert_close(sequence_log_ratio(logps, old, empty, "mean"), torch.zeros(2))
    with pytest.raises(ValueError, match="aggregation"):
        sequence_log_ratio(logps, old, mask, "max")


def test_drive_invariant_to_reward_shift():
    rewards = torch.tensor([0.3, 0.9, 0.1, 0.5, 2.0, -1.0, 0.0, 0.0])
    torch.testing.assert_close(drive_from_rewards(rewards, 4, 0.4), drive_from_rewards(rewards + 17.0, 4, 0.4))


def test_drive_scales_with_reward_scale_as_exp():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    for scale in (1.0, 3.0):
        a = scale * torch.tensor([0.75, -0.25, -0.25, -0.25])
        w = torch.exp(0.6 * a)
        torch.testing.assert_close(drive_from_rewards(scale * rewards, 4, 0.4), w - w.mean())
    # Not linear: tripling the rewards more than triples the drive of the rewarded sample.
    assert drive_from_rewards(3 * rewards, 4, 0.4)[0] > 3 * drive_from_rewards(rewards, 4, 0.4)[0]


def test_alpha_to_one_gives_no_update():
    g = drive_from_rewards([1.0, 0.0, 5.0, -2.0], 4, alpha=1 - 1e-7)
    assert g.abs().max() < 1e-5
    assert drive_from_rewards([1.0, 0.0, 5.0, -2.0], 4, alpha=0.0).abs().max() > 1.0


def test_small_exponent_drive_is_linear_in_advantage():
    a = torch.tensor([0.01, -0.02, 0.01, 0.0])
    g = escort_drive(a, 4, alpha=0.4).drive
    # The error is second order: (1 - alpha)^2 / 2 * (A^2 - mean A^2), at most 0.18 * 4e-4 here.
    torch.testing.assert_close(g, 0.6 * a, atol=8e-5, rtol=0)
    assert (g - 0.6 * a).abs().max() > 1e-6  # and it is the exp, not a linear map


@pytest.mark.parametrize("magnitude", [1e3, 1e6])
def test_huge_rewards_stay_finite(magnitude):
    rewards = torch.tensor([magnitude, -magnitude, 0.0, magnitude, -magnitude, -magnitude, magnitude, 0.5])
    for scale in ("none", "group", "batch"):
        g = drive_from_rewards(rewards, 4, alpha=0.0, scale_rewards=scale)
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.view(2, 4).sum(1), torch.zeros(2), atol=1e-3 * g.abs().max().item(), rtol=0)
        delta = torch.zeros(8, requires_grad=True)
        loss = opo_loss(delta, g, 1.0).mean()
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(delta.grad).all()
    delta = torch.full((8,), 1e3, requires_grad=True)
    loss = opo_loss(delta, g, 1.0, ratio_form="exact").mean()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(delta.grad).all()


def test_unscored_completions_get_no_drive_and_stay_out_of_the_mean():
    rewards = torch.tensor([1.0, float("nan"), 0.0, 0.0, float("nan"), float("nan"), float("nan"), float("nan")])
    g = drive_from_rewards(rewards, 4, alpha=0.4)
    assert g[1] == 0 and torch.all(g[4:] == 0)
    # The scored three behave like a group of three: A = (2/3, -1/3, -1/3).
    w = torch.exp(0.6 * torch.tensor([2 / 3, -1 / 3, -1 / 3]))
    torch.testing.assert_close(g[[0, 2, 3]], w - w.mean())


def test_escort_statistics_hand_values():
    escort = escort_drive(torch.tensor([0.5, -0.5, 0.0, 0.0]), 2, alpha=0.0)
    stats = escort_statistics(escort, 2, mu=0.1)
    e = math.exp(0.5)
    assert stats["escort_weight/max"] == pytest.approx(e, rel=1e-6)
    assert stats["escort_weight/mean"] == pytest.approx((e + 1 / e + 2) / 4, rel=1e-6)
    assert stats["groups_without_signal"] == pytest.approx(0.5)
    assert stats["escort_weight/ess"] == pytest.approx(((e + 1 / e) ** 2 / (e**2 + e**-2) / 2 + 1) / 2, rel=1e-6)
    # g = -sinh(0.5) = -0.52 < -mu for the second sample only.
    assert stats["positivity_violations"] == pytest.approx(0.25)


finite_rewards = st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32), min_size=8, max_size=8)


@settings(max_examples=60, deadline=None)
@given(rewards=finite_rewards, alpha=st.floats(0.0, 0.99), shift=st.floats(-100, 100))
def test_property_drive_finite_zero_sum_and_shift_invariant(rewards, alpha, shift):
    rewards = torch.tensor(rewards, dtype=torch.float64)
    g = drive_from_rewards(rewards, 4, alpha)
    assert torch.isfinite(g).all()
    scale = max(1.0, g.abs().max().item())
    assert torch.allclose(g.view(2, 4).sum(1), torch.zeros(2, dtype=g.dtype), atol=1e-5 * scale)
    if max(abs(r) for r in rewards.tolist()) < 1e3:
        g_shifted = drive_from_rewards(rewards + shift, 4, alpha)
        assert torch.allclose(g, g_shifted, atol=1e-4 * scale, rtol=1e-4)


@settings(max_examples=60, deadline=None)
@given(
    delta=st.lists(st.floats(-50, 50, width=32), min_size=4, max_size=4),
    g=st.lists(st.floats(-1e4, 1e4, width=32), min_size=4, max_size=4),
    mu=st.floats(1e-3, 1e3),
    form=st.sampled_from(["log", "exact"]),
)
def test_property_loss_finite_for_finite_inputs(delta, g, mu, form):
    delta = torch.tensor(delta, requires_grad=True)
    loss = opo_loss(delta, torch.tensor(g), mu, ratio_form=form).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(delta.grad).all()


rewards_with_missing = st.lists(
    st.one_of(st.floats(min_value=-1e3, max_value=1e3, allow_nan=False), st.just(float("nan"))),
    min_size=12,
    max_size=12,
)


def drive64(rewards, alpha):
    # float64 end to end, so that the tolerances below measure the algorithm, not float32 rounding.
    return escort_drive(group_advantages(rewards, 4, "none"), 4, alpha).drive


@settings(max_examples=60, deadline=None)
@given(rewards=rewards_with_missing, alpha=st.floats(0.0, 0.99))
def test_property_drive_with_missing_rewards_is_zero_sum_and_zero_where_missing(rewards, alpha):
    rewards = torch.tensor(rewards, dtype=torch.float64)
    missing = torch.isnan(rewards)
    g = drive64(rewards, alpha)
    assert torch.isfinite(g).all()
    assert torch.all(g[missing] == 0)
    scale = max(1.0, g.abs().max().item())
    assert torch.allclose(g.view(3, 4).sum(1), torch.zeros(3, dtype=g.dtype), rtol=0, atol=1e-9 * scale)


@settings(max_examples=60, deadline=None)
@given(rewards=rewards_with_missing, alpha=st.floats(0.0, 0.99), shift=st.floats(-100, 100))
def test_property_drive_with_missing_rewards_is_shift_invariant(rewards, alpha, shift):
    rewards = torch.tensor(rewards, dtype=torch.float64)
    g = drive64(rewards, alpha)
    scale = max(1.0, g.abs().max().item())
    # NaN + shift is NaN: the same completions stay missing, and the others' drive must not move.
    torch.testing.assert_close(drive64(rewards + shift, alpha), g, rtol=1e-9, atol=1e-9 * scale)


# -- the full alpha-escort: the rollout policy's log-probability in the weight ------------------------------------


def test_escort_reference_by_hand_with_a_missing_reward():
    # One group of 4: rewards (1, 1, 0, missing), log pi_k(y) = (-3, -7, -5, -1). The missing one stays out of both
    # group means (of the rewards and of l) and gets no drive.
    rewards = torch.tensor([1.0, 1.0, 0.0, float("nan")])
    log_pi = torch.tensor([-3.0, -7.0, -5.0, -1.0])
    alpha = 0.4
    advantages = group_advantages(rewards, 4)
    escort = escort_drive(advantages, 4, alpha, log_reference=log_pi)

    a = [1 / 3, 1 / 3, -2 / 3]
    c = [-3 - (-5), -7 - (-5), -5 - (-5)]  # l minus its mean over the three scored completions
    w = [math.exp((1 - alpha) * (a[i] - c[i])) for i in range(3)]
    g = [wi - sum(w) / 3 for wi in w]
    torch.testing.assert_close(escort.drive, torch.tensor([*g, 0.0]))
    # Equal advantage, different likelihood: the less likely completion (-7) gets more drive than the likelier (-3).
    assert escort.drive[1] > escort.drive[0]
    # Without the reference both rewarded completions get the same drive.
    plain = escort_drive(advantages, 4, alpha).drive
    assert plain[0] == plain[1]


def test_tied_group_under_the_reference_is_driven_towards_unlikely_completions_by_hand():
    # The collapse mechanism of the full escort: every reward 1, so A = 0, yet c = l - mean(l) drives the group.
    log_pi = [-10.0, -12.0, -11.0, -13.0]
    alpha = 0.4
    escort = escort_drive(group_advantages(torch.ones(4), 4), 4, alpha, log_reference=torch.tensor(log_pi))
    mean_l = sum(log_pi) / 4
    w = [math.exp(-(1 - alpha) * (l - mean_l)) for l in log_pi]
    g = [wi - sum(w) / 4 for wi in w]
    torch.testing.assert_close(escort.drive, torch.tensor(g))
    assert escort.drive[3] > 0 > escort.drive[0]  # the least likely completion (-13) gains, the likeliest loses
    assert torch.equal(escort_drive(group_advantages(torch.ones(4), 4), 4, alpha).drive, torch.zeros(4))


def test_kl_term_value_and_sign_by_hand():
    # k3 = exp(ref - logp) - (ref - logp) - 1 >= 0, times the token ratio exp(logp - old); it is ADDED to the loss.
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    old = torch.tensor([[-1.2, -2.0]])
    k3 = [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1]
    ratio = [math.exp(0.2), 1.0]
    torch.testing.assert_close(per_token_kl(logp, ref), torch.tensor([k3]))
    torch.testing.assert_close(per_token_kl(logp, ref, old), torch.tensor([[k3[0] * ratio[0], k3[1] * ratio[1]]]))
    mask = torch.ones_like(logp)
    beta, g = 0.25, torch.tensor([0.3])
    without = opo_sequence_loss(logp, old, mask, g, torch.ones(1)).loss
    with_kl = opo_sequence_loss(logp, old, mask, g, torch.ones(1), ref_per_token_logps=ref, beta=beta).loss
    expected = beta * (k3[0] * ratio[0] + k3[1] * ratio[1]) / 2
    assert (with_kl - without).item() == pytest.approx(expected, rel=1e-6) and expected > 0


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
def test_sequence_log_prob_by_hand(aggregation):
    logps = torch.tensor([[-1.0, -2.0, float("nan")], [-0.5, -0.5, -0.5], [-3.0, -3.0, -3.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    l = sequence_log_prob(logps, mask, aggregation)
    expected = [-3.0, -1.5] if aggregation == "sum" else [-1.5, -0.5]
    torch.testing.assert_close(l[:2], torch.tensor(expected))
    assert torch.isnan(l[2])  # no tokens: no reference value


def test_centring_the_reference_changes_only_the_scale_of_each_group():
    torch.manual_seed(0)
    advantages = group_advantages(torch.randint(0, 2, (8,)).float(), 4)
    log_pi = -10 * torch.rand(8)
    shifted = log_pi + torch.tensor([5.0] * 4 + [-40.0] * 4)  # a constant per group
    torch.testing.assert_close(
        escort_drive(advantages, 4, 0.4, log_reference=log_pi).drive,
        escort_drive(advantages, 4, 0.4, log_reference=shifted).drive,
    )
    # A completion without tokens (l = NaN) gets no reference term; the others of its group are centred without it.
    with_nan = log_pi.clone()
    with_nan[0] = float("nan")
    drive = escort_drive(advantages, 4, 0.4, log_reference=with_nan).drive
    assert torch.isfinite(drive).all() and abs(drive[:4].sum()) < 1e-6


def test_alpha_zero_with_reference_gives_p_star_over_pi_k():
    # alpha -> 0: w ∝ exp(A) / pi_k(y) within a group.
    advantages = torch.tensor([0.5, -0.5, 0.25, -0.25])
    log_pi = torch.tensor([-2.0, -1.0, -4.0, -3.0])
    w = escort_drive(advantages, 4, 0.0, log_reference=log_pi).weights
    ratio = torch.exp(advantages) / torch.exp(log_pi)
    torch.testing.assert_close(w / w.sum(), ratio / ratio.sum())


def test_reference_exponent_is_capped_and_counted():
    escort = escort_drive(torch.zeros(4), 4, 0.0, max_exponent=5.0, log_reference=torch.tensor([-100.0, 0, 0, 0]))
    assert escort.clipped.tolist() == [True, False, False, False]
    assert escort.weights[0] == pytest.approx(math.exp(5.0))


# -- mu from a chi-square budget ------------------------------------------------------------------------------------


def test_trust_region_mu_spends_exactly_the_budget():
    torch.manual_seed(0)
    g = drive_from_rewards(torch.rand(32), 8, 0.4)
    for target in (1e-3, 0.05, 2.0):
        mu = trust_region_mu(g, target)
        assert (g / mu).pow(2).mean().item() == pytest.approx(target, rel=1e-5)
    # Unscorable completions are left out of the mean; the clamps bind.
    scorable = torch.arange(32) % 2 == 0
    mu = trust_region_mu(g, 0.05, scorable=scorable)
    assert ((g[scorable] / mu) ** 2).mean().item() == pytest.approx(0.05, rel=1e-5)
    assert trust_region_mu(g, 1e-12, mu_max=50.0).item() == 50.0
    assert trust_region_mu(torch.zeros(8), 0.05, mu_min=0.1).item() == pytest.approx(0.1)


def test_mu_makes_the_step_independent_of_the_reward_scale():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    for scale in (0.1, 1.0, 10.0):
        g = drive_from_rewards(scale * rewards, 4, 0.4)
        assert ((g / trust_region_mu(g, 0.02)) ** 2).mean().item() == pytest.approx(0.02, rel=1e-5)


# -- what the trainer logs --------------------------------------------------------------------------------------------


def test_equilibrium_gap_uses_the_ratio_field_of_the_loss():
    delta, drive, mu = torch.tensor([0.2, -0.1]), torch.tensor([0.3, -0.3]), 2.0
    log = ratio_statistics(delta, drive, mu, "log")
    exact = ratio_statistics(delta, drive, mu, "exact")
    assert log["equilibrium_gap"] == pytest.approx((abs(0.4 - 0.3) + abs(-0.2 + 0.3)) / 2)
    v = [math.expm1(0.2), math.expm1(-0.1)]
    assert exact["equilibrium_gap"] == pytest.approx((abs(2 * v[0] - 0.3) + abs(2 * v[1] + 0.3)) / 2, rel=1e-6)
    assert log["chi2"] == exact["chi2"] == pytest.approx((v[0] ** 2 + v[1] ** 2) / 2, rel=1e-6)
    # How much of the closed-form step v* = g / mu = (0.15, -0.15) was taken: |v| against |g / mu|.
    assert log["step/abs_mean"] == pytest.approx((0.2 + 0.1) / 2) and exact["step/abs_mean"] == pytest.approx(
        (abs(v[0]) + abs(v[1])) / 2, rel=1e-6
    )
    assert log["closed_form_step/abs_mean"] == exact["closed_form_step/abs_mean"] == pytest.approx(0.15)


def test_rollout_kl_is_the_k3_estimator_by_hand():
    old = torch.log(torch.tensor([[0.5, 0.25, 0.5]]))
    new = torch.log(torch.tensor([[0.5, 0.5, 0.25]]))
    # r = new / old = 1, 2, 1/2: r - 1 - log r = 0, 1 - log 2, log 2 - 1/2.
    expected = torch.tensor([[0.0, 1 - math.log(2), math.log(2) - 0.5]])
    torch.testing.assert_close(rollout_kl(new, old), expected)
    assert rollout_kl(new, new).abs().max() == 0


def test_half_range_of_the_drive_per_group():
    escort = escort_drive(torch.tensor([0.5, -0.5, 0.0, 0.0, 1.0, 0.0, 0.0, -1.0]), 4, alpha=0.0)
    stats = escort_statistics(escort, 4, mu=1.0)
    # alpha = 0: w = exp(A), and the range of g = w - mean(w) is the range of w: (e^0.5 - e^-0.5) and (e - 1/e).
    expected = ((math.exp(0.5) - math.exp(-0.5)) / 2 + (math.e - 1 / math.e) / 2) / 2
    assert stats["drive/half_range"] == pytest.approx(expected, rel=1e-6)


def test_entropy_bonus_is_the_masked_mean_token_entropy():
    entropies = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert entropy_bonus(entropies, mask).item() == pytest.approx(2.0)
