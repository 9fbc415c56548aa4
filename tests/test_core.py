"""The identities of the OPO objective, each checked on small tensors against values worked out by hand."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from opo_trl.core import escort_drive, escort_statistics, group_advantages, opo_loss, sequence_log_ratio


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
