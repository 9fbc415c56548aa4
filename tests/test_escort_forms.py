"""
The escort family: temperature, the self-normalised ratio and the authors' softmax mixture, each by hand; and a form
registered by a test alone, to show that adding one takes a registration and nothing else.
"""

import math

import pytest
import torch

from opo_trl import OPOConfig
from opo_trl.core import (
    ESCORT_FORMS,
    EscortBatch,
    EscortDrive,
    EscortForm,
    escort_drive,
    opo_loss,
    register_escort_form,
    softmax_mixture_drive,
)
from opo_trl.diagnostics import escort_statistics
from opo_trl.harness.testing import group_advantages

from .conftest import cpu_config_kwargs, hand_logps, logged, make_trainer


# Two groups of four: the first has a signal, the second ties (every reward 1).
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
ADVANTAGES = group_advantages(REWARDS, 4)


def exp_drive_by_hand(advantages, alpha, temperature=1.0, normalization="subtract_mean", group=4, log_pi=None):
    """
    w_i = exp((1 - alpha) (A_i / T - c_i)), c_i = log_pi_i minus its group mean (0 without `log_pi`), then w - mean(w)
    or w / mean(w) - 1 per group, with Python floats.
    """
    drive = []
    for start in range(0, len(advantages), group):
        l = [0.0] * group if log_pi is None else log_pi[start : start + group]
        c = [x - sum(l) / group for x in l]
        w = [
            math.exp((1 - alpha) * (a / temperature - ci))
            for a, ci in zip(advantages[start : start + group], c, strict=True)
        ]
        mean = sum(w) / len(w)
        drive += [x - mean if normalization == "subtract_mean" else x / mean - 1 for x in w]
    return torch.tensor(drive)


def mixture_by_hand(advantages, deltas, alpha, beta_r, tau, clip, scale=None, group=4):
    """q = softmax(A / beta_r), p = softmax(clamp(Delta) / tau), w ∝ q^alpha p^(1 - alpha); s (G w - 1)."""
    scale = 1 / alpha if scale is None else scale
    drive = []
    for start in range(0, len(advantages), group):
        a, d = advantages[start : start + group], deltas[start : start + group]
        q = [math.exp(x / beta_r) for x in a]
        q = [x / sum(q) for x in q]
        p = [math.exp(max(-clip, min(clip, x)) / tau) for x in d]
        p = [x / sum(p) for x in p]
        w = [qi**alpha * pi ** (1 - alpha) for qi, pi in zip(q, p, strict=True)]
        w = [x / sum(w) for x in w]
        drive += [scale * (group * x - 1) for x in w]
    return torch.tensor(drive)


# -- core ------------------------------------------------------------------------------------------------------


def test_temperature_one_and_subtract_mean_is_the_plain_escort_drive_bit_for_bit():
    torch.manual_seed(0)
    advantages, log_pi = torch.randn(12), torch.randn(12) * 5
    for reference in (None, log_pi):
        new = escort_drive(advantages, 4, 0.4, log_reference=reference, temperature=1.0, normalization="subtract_mean")
        # The plain escort drive, written out: (1 - alpha) * (A - c), capped, exp, minus the group mean.
        exponent = advantages.clone()
        if reference is not None:
            centred = reference.view(3, 4) - reference.view(3, 4).sum(1, keepdim=True) / 4
            exponent = exponent - centred.reshape(-1)
        w = torch.exp(((1.0 - 0.4) * exponent).clamp(max=20.0))
        g = w.view(3, 4) - w.view(3, 4).sum(1, keepdim=True) / 4
        assert torch.equal(new.drive, g.reshape(-1)) and torch.equal(new.weights, w)


@pytest.mark.parametrize("temperature", [0.3, 0.15, 2.0])
def test_escort_temperature_by_hand_and_tied_group_gets_no_drive(temperature):
    drive = escort_drive(ADVANTAGES, 4, 0.4, temperature=temperature).drive
    torch.testing.assert_close(drive, exp_drive_by_hand(ADVANTAGES.tolist(), 0.4, temperature))
    assert torch.equal(drive[4:], torch.zeros(4))
    # A lower temperature is more peak-seeking: the drive of the winners grows faster than linearly.
    if temperature < 1:
        assert drive[0] > escort_drive(ADVANTAGES, 4, 0.4).drive[0] / temperature


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_divide_by_mean_is_the_subtract_mean_drive_over_the_group_mean_weight(temperature):
    torch.manual_seed(1)
    advantages = torch.randn(12)
    subtracted = escort_drive(advantages, 4, 0.4, temperature=temperature)
    mean_w = subtracted.weights.view(3, 4).mean(1, keepdim=True).expand(3, 4).reshape(-1)
    divided = escort_drive(advantages, 4, 0.4, temperature=temperature, normalization="divide_by_mean")
    torch.testing.assert_close(divided.drive, subtracted.drive / mean_w)
    torch.testing.assert_close(
        escort_drive(ADVANTAGES, 4, 0.4, temperature=temperature, normalization="divide_by_mean").drive,
        exp_drive_by_hand(ADVANTAGES.tolist(), 0.4, temperature, "divide_by_mean"),
    )
    assert torch.equal(escort_drive(ADVANTAGES, 4, 0.4, normalization="divide_by_mean").drive[4:], torch.zeros(4))


def test_divide_by_mean_stays_finite_and_bounded_at_huge_exponents():
    advantages = torch.tensor([1e4, -1e4, 0.0, 0.0, 3e4, 3e4, 3e4, 3e4])
    out = escort_drive(advantages, 4, 0.0, normalization="divide_by_mean")
    assert torch.isfinite(out.drive).all() and not out.clipped.any()
    # All the mass on the one winner: its ratio is G = 4, the others' 0. A tied group at 3e4 still gets exactly 0.
    torch.testing.assert_close(out.drive, torch.tensor([3.0, -1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 0.0]))
    assert out.drive.view(2, 4).sum(1).abs().max() < 1e-6


def test_divide_by_mean_leaves_unscorable_completions_out():
    advantages = torch.tensor([0.5, float("nan"), -0.5, 0.0])
    out = escort_drive(advantages, 4, 0.4, normalization="divide_by_mean")
    expected = exp_drive_by_hand([0.5, -0.5, 0.0], 0.4, normalization="divide_by_mean", group=3)
    torch.testing.assert_close(out.drive[[0, 2, 3]], expected)
    assert out.drive[1] == 0


def test_bad_temperature_or_normalization_is_an_error():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        escort_drive(ADVANTAGES, 4, 0.4, temperature=0.0)
    with pytest.raises(ValueError, match="normalization must be one of"):
        escort_drive(ADVANTAGES, 4, 0.4, normalization="sum")


@pytest.mark.parametrize("former, current", [("none", "subtract_mean"), ("mean", "divide_by_mean")])
def test_former_normalization_names_still_work_with_a_warning(tmp_path, former, current):
    torch.manual_seed(2)
    advantages = torch.randn(8)
    with pytest.warns(FutureWarning, match=f"escort_normalization={former!r} is deprecated.*use {current!r}"):
        old = escort_drive(advantages, 4, 0.4, normalization=former)
    assert torch.equal(old.drive, escort_drive(advantages, 4, 0.4, normalization=current).drive)
    # A recipe's value is translated once, when the config is built, and the trainer sees the current name.
    with pytest.warns(FutureWarning, match=f"escort_normalization={former!r} is deprecated"):
        args = OPOConfig(**cpu_config_kwargs(tmp_path, escort_normalization=former))
    assert args.escort_normalization == current


def test_softmax_mixture_at_zero_log_ratio_is_the_reward_softmax_only():
    out = softmax_mixture_drive(ADVANTAGES, torch.zeros(8), 4, alpha=0.5, reward_temperature=0.3)
    expected = mixture_by_hand(ADVANTAGES.tolist(), [0.0] * 8, 0.5, 0.3, 0.5, 5.0)
    torch.testing.assert_close(out.drive, expected)
    # p uniform, so w ∝ q^alpha; the tied group's q is uniform too: no drive at all.
    q = torch.softmax(ADVANTAGES[:4] / 0.3, 0)
    w = q**0.5 / (q**0.5).sum()
    torch.testing.assert_close(out.drive[:4], (1 / 0.5) * (4 * w - 1))
    assert torch.equal(out.drive[4:], torch.zeros(4))
    torch.testing.assert_close(out.p_entropy, torch.full((2,), math.log(4)))
    torch.testing.assert_close(out.q_entropy[1], torch.tensor(math.log(4)))


def test_softmax_mixture_drives_a_tied_group_towards_risen_ratios():
    deltas = torch.tensor([0.1, -0.2, 0.0, 0.3, 0.4, -0.1, 0.0, 7.0])  # the last one beyond the clip of 5
    out = softmax_mixture_drive(ADVANTAGES, deltas, 4, alpha=0.5, reward_temperature=0.3, direction_scale=1.33)
    expected = mixture_by_hand(ADVANTAGES.tolist(), deltas.tolist(), 0.5, 0.3, 0.5, 5.0, scale=1.33)
    torch.testing.assert_close(out.drive, expected)
    # In the tied group the drive follows Delta: -0.1 < 0.0 < 0.4 < clamp(7.0) = 5.
    assert out.drive[5] < out.drive[6] < out.drive[4] < out.drive[7] and out.drive[7] > 0
    assert out.clipped.tolist() == [False] * 7 + [True]
    # Conservation: the drive sums to zero over each group, whatever p.
    assert out.drive.view(2, 4).sum(1).abs().max() < 1e-5


def test_direction_scale_replaces_one_over_alpha_and_leaves_the_weights():
    deltas = torch.tensor([0.1, -0.2, 0.0, 0.3, 0.4, -0.1, 0.0, 0.2])
    default = softmax_mixture_drive(ADVANTAGES, deltas, 4, alpha=0.5)
    scaled = softmax_mixture_drive(ADVANTAGES, deltas, 4, alpha=0.5, direction_scale=3.0)
    # s (G w - 1) with s = 3 against 1 / alpha = 2: the same direction, 3 / 2 as long.
    torch.testing.assert_close(scaled.drive, 1.5 * default.drive)
    torch.testing.assert_close(scaled.weights, default.weights)
    assert default.drive.abs().max() > 0.1


def test_softmax_mixture_leaves_unscorable_completions_out_and_needs_alpha_or_a_scale():
    advantages = torch.tensor([0.5, float("nan"), -0.5, 0.0])
    deltas = torch.tensor([0.2, 9.0, -0.1, 0.0])
    out = softmax_mixture_drive(advantages, deltas, 4, alpha=0.25)
    expected = mixture_by_hand([0.5, -0.5, 0.0], [0.2, -0.1, 0.0], 0.25, 0.3, 0.5, 5.0, group=3)
    torch.testing.assert_close(out.drive[[0, 2, 3]], expected)
    assert out.drive[1] == 0 and not out.clipped[1]
    with pytest.raises(ValueError, match="alpha must be > 0"):
        softmax_mixture_drive(advantages, deltas, 4, alpha=0.0)


def test_quadratic_with_a_log_ratio_clip_exerts_no_force_past_the_clip():
    delta = torch.tensor([0.5, 2.0, -3.0], requires_grad=True)
    g = torch.tensor([0.2, 0.4, -0.1])
    loss = opo_loss(delta, g, 2.0, log_ratio_clip=1.0)
    torch.testing.assert_close(loss.detach(), -g * delta.detach() + torch.tensor([0.25, 1.0, 1.0]))
    loss.sum().backward()
    # Inside the clip the gradient is mu * Delta - g; outside only the linear term remains.
    torch.testing.assert_close(delta.grad, torch.tensor([2.0 * 0.5 - 0.2, -0.4, 0.1]))


def test_escort_statistics_report_mixture_entropies():
    out = softmax_mixture_drive(ADVANTAGES, torch.zeros(8), 4, alpha=0.5)
    stats = escort_statistics(out, 4, 1.0)
    q0 = torch.softmax(ADVANTAGES[:4] / 0.3, 0)
    assert stats["escort/q_entropy"] == pytest.approx((-(q0 * q0.log()).sum().item() + math.log(4)) / 2, rel=1e-5)
    assert stats["escort/p_entropy"] == pytest.approx(math.log(4), rel=1e-6)
    assert "escort/q_entropy" not in escort_statistics(escort_drive(ADVANTAGES, 4, 0.4), 4, 1.0)
    assert isinstance(escort_drive(ADVANTAGES, 4, 0.4), EscortDrive)


# -- config ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"escort_temperature": 0.0},
            "escort_temperature=0.0 is invalid; escort_temperature must be a finite float > 0",
        ),
        ({"escort_temperature": -1.0}, "escort_temperature=-1.0 is invalid"),
        ({"escort_normalization": "sum"}, "escort_normalization='sum' is invalid"),
        ({"escort_form": "softmax"}, "escort_form='softmax' is invalid"),
        ({"escort_form": "softmax_mixture", "ratio_temperature": 0.0}, "ratio_temperature=0.0 is invalid"),
        ({"escort_form": "softmax_mixture", "direction_scale": -1.0}, "direction_scale=-1.0 is invalid"),
        ({"reward_temperature": 0.15}, "reward_temperature=0.15 has no effect with escort_form='exp'"),
        ({"log_ratio_clip": 3.0}, "log_ratio_clip=3.0 has no effect with escort_form='exp'"),
        ({"escort_form": "softmax_mixture", "escort_temperature": 0.3}, "escort_temperature=0.3 has no effect"),
        ({"escort_form": "softmax_mixture", "escort_reference": "sum"}, "escort_reference='sum' has no effect"),
        ({"escort_form": "softmax_mixture", "mu_target_chi2": 0.01}, "mu_target_chi2=0.01 has no effect"),
        ({"escort_form": "softmax_mixture", "ratio_form": "exact"}, "ratio_form='exact' has no effect"),
        ({"escort_form": "softmax_mixture", "alpha": 0.0}, "alpha=0 with escort_form='softmax_mixture' needs"),
    ],
)
def test_bad_escort_settings_fail_at_construction_naming_the_field(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        OPOConfig(**cpu_config_kwargs(tmp_path, **overrides))


def test_each_forms_own_fields_reach_its_drive(tmp_path):
    scorable = torch.ones(8, dtype=torch.bool)
    log_pi = [-3.0, -7.0, -5.0, -1.0, -2.0, -2.5, -4.0, -1.5]  # a per-token mean of log pi_k per completion
    args = OPOConfig(
        **cpu_config_kwargs(
            tmp_path, alpha=0.2, escort_temperature=0.3, escort_normalization="divide_by_mean", escort_reference="mean"
        )
    )
    asked = []

    def log_reference(aggregation):
        asked.append(aggregation)
        return torch.tensor(log_pi)

    exp = ESCORT_FORMS[args.escort_form].drive(args, EscortBatch(ADVANTAGES, 4, scorable, None, log_reference))
    expected = exp_drive_by_hand(ADVANTAGES.tolist(), 0.2, 0.3, "divide_by_mean", log_pi=log_pi)
    torch.testing.assert_close(exp.drive, expected)
    assert asked == ["mean"]

    args = OPOConfig(
        **cpu_config_kwargs(
            tmp_path,
            escort_form="softmax_mixture",
            alpha=0.25,
            direction_scale=1.33,
            reward_temperature=0.15,
            ratio_temperature=0.4,
            log_ratio_clip=0.3,
        )
    )
    deltas = torch.tensor([0.1, -0.5, 0.0, 0.2, 0.4, -0.1, 0.0, 0.2])  # two beyond the clip
    batch = EscortBatch(ADVANTAGES, 4, scorable, deltas, lambda aggregation: pytest.fail("no reference here"))
    mixture = ESCORT_FORMS[args.escort_form].drive(args, batch)
    expected = mixture_by_hand(ADVANTAGES.tolist(), deltas.tolist(), 0.25, 0.15, 0.4, 0.3, scale=1.33)
    torch.testing.assert_close(mixture.drive, expected)
    # Before the policy moves (no log-ratio yet), p is uniform.
    first = ESCORT_FORMS[args.escort_form].drive(args, batch._replace(log_ratio=None)).drive
    torch.testing.assert_close(first, mixture_by_hand(ADVANTAGES.tolist(), [0.0] * 8, 0.25, 0.15, 0.4, 0.3, 1.33))


# -- trainer ---------------------------------------------------------------------------------------------------


def group_batch(dataset, groups, generations=4):
    """The rows a RepeatSampler gives: each prompt `generations` times in a row."""
    return [{"prompt": row["prompt"]} for row in dataset.select(range(groups)) for _ in range(generations)]


@pytest.mark.parametrize(
    "temperature, normalization", [(0.3, "subtract_mean"), (0.3, "divide_by_mean"), (1.0, "divide_by_mean")]
)
def test_trainer_drive_is_the_escort_of_its_rewards(
    tmp_path, tiny_model_path, prompt_dataset, temperature, normalization
):
    trainer = make_trainer(
        tmp_path, tiny_model_path, prompt_dataset, escort_temperature=temperature, escort_normalization=normalization
    )
    trainer.model.train()
    output = trainer._generate_and_score_completions(group_batch(prompt_dataset, 2))
    advantages = group_advantages(trainer._opo_rewards_per_func[:, 0], 4).tolist()
    expected = exp_drive_by_hand(advantages, 0.4, temperature, normalization)
    torch.testing.assert_close(output["opo_drive"], expected, rtol=1e-5, atol=1e-6)
    assert output["opo_drive"].abs().sum() > 0


def first_step_of_a_reused_rollout(tmp_path, model, dataset, **config):
    """
    A trainer whose rollout of 2 groups of 4 serves 2 optimizer steps of one micro-batch of 4 each (so each group is
    spread over both), after the first step's `_prepare_inputs`: the trainer, the prompts and the rollout's micro-batches.
    """
    trainer = make_trainer(
        tmp_path,
        model,
        dataset,
        steps_per_generation=2,
        gradient_accumulation_steps=1,
        max_completion_length=6,
        **config,
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which these tests play by hand
    batch = group_batch(dataset, 2)
    trainer._prepare_inputs(batch)
    return trainer, batch, list(trainer._buffered_inputs)


def move_policy(model, chunks):
    """A seeded random step of the policy; then each buffered completion's Delta (per-token mean) by hand, by row."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    deltas = {}
    for c in chunks:
        with torch.no_grad():
            logps = hand_logps(model, c["prompt_ids"], c["completion_ids"])
        mask = c["completion_mask"].float()
        delta = ((logps - c["old_per_token_logps"]) * mask).sum(1) / mask.sum(1)
        deltas.update(zip(c["opo_row"].tolist(), delta.tolist(), strict=True))
    return deltas


def test_softmax_mixture_recomputes_the_drive_of_a_split_rollout_from_the_current_policy(
    tmp_path, tiny_model_path, prompt_dataset
):
    # 2 groups of 4, shuffled and split into 2 micro-batches of 4: each group is spread over both.
    alpha, mu, beta_r, tau = 0.5, 0.7, 0.3, 0.5
    trainer, batch, chunks = first_step_of_a_reused_rollout(
        tmp_path,
        tiny_model_path,
        prompt_dataset,
        escort_form="softmax_mixture",
        alpha=alpha,
        mu=mu,
        reward_temperature=beta_r,
        ratio_temperature=tau,
    )
    model = trainer.model
    assert [len(c["opo_row"]) for c in chunks] == [4, 4]
    rows = torch.cat([c["opo_row"] for c in chunks])
    advantages = torch.cat([c["advantages"] for c in chunks])[rows.argsort()]
    # The first step of the rollout: Delta = 0, p uniform.
    first = mixture_by_hand(advantages.tolist(), [0.0] * 8, alpha, beta_r, tau, 5.0)
    torch.testing.assert_close(
        torch.cat([c["opo_drive"] for c in chunks])[rows.argsort()], first, atol=1e-5, rtol=1e-5
    )

    # An update moves the policy; the next optimizer step must see the new log-ratios of all 8 completions.
    deltas = move_policy(model, chunks)
    deltas = [deltas[i] for i in range(8)]
    assert max(abs(d) for d in deltas) > 1e-3
    clip = sorted(abs(d) for d in deltas)[5]  # some log-ratios beyond the clip, some inside
    trainer.args.log_ratio_clip = clip

    trainer._step = 1
    second = trainer._prepare_inputs(batch)
    assert second is chunks[1]
    expected = mixture_by_hand(advantages.tolist(), deltas, alpha, beta_r, tau, clip)
    refreshed = torch.cat([c["opo_drive"] for c in chunks])[rows.argsort()]
    torch.testing.assert_close(refreshed, expected, atol=1e-4, rtol=1e-4)
    assert (refreshed - first).abs().max() > 1e-3

    # The loss of the micro-batch: -drive * Delta + mu / 2 * clamp(Delta)^2, averaged.
    loss = trainer._compute_loss(model, second).item()
    hand = 0.0
    for row, g in zip(second["opo_row"].tolist(), second["opo_drive"].tolist(), strict=True):
        d = deltas[row]
        hand += (-g * d + mu / 2 * max(-clip, min(clip, d)) ** 2) / 4
    assert loss == pytest.approx(hand, rel=1e-4, abs=1e-6)
    # The refresh is logged: the last p is no longer uniform.
    assert trainer._metrics["train"]["opo/escort/p_entropy"][-1] < math.log(4) - 1e-6


@pytest.mark.slow
def test_softmax_mixture_trains_with_reuse_and_logs_its_entropies(tmp_path, tiny_model_path, prompt_dataset):
    trainer = make_trainer(
        tmp_path,
        tiny_model_path,
        prompt_dataset,
        escort_form="softmax_mixture",
        alpha=0.5,
        num_iterations=2,
        max_steps=2,
    )
    trainer.train()
    keys = logged(trainer)
    assert {"opo/escort/q_entropy", "opo/escort/p_entropy", "opo/escort_weight/ess"} <= keys
    history = [e for e in trainer.state.log_history if "opo/escort/p_entropy" in e]
    # Step 1: p uniform. Step 2 reuses the rollout after an update: p is no longer uniform.
    assert history[0]["opo/escort/p_entropy"] == pytest.approx(math.log(4), abs=1e-6)
    assert history[1]["opo/escort/p_entropy"] < math.log(4) - 1e-7
    assert all(math.isfinite(e["loss"]) for e in trainer.state.log_history if "loss" in e)


@pytest.mark.slow
def test_entropy_bonus_logs_trls_keys_with_trls_meaning(tmp_path, tiny_model_path, prompt_dataset):
    coef = 0.05
    trainer = make_trainer(tmp_path, tiny_model_path, prompt_dataset, entropy_coef=coef, max_steps=3)
    trainer.train()
    steps = [e for e in trainer.state.log_history if "loss" in e and "policy_loss" in e]
    assert len(steps) == 3
    for e in steps:
        assert e["entropy_coef"] == coef and e["entropy"] > 0
        assert e["policy_loss"] - e["loss"] == pytest.approx(coef * e["entropy"], rel=1e-4, abs=1e-6)


# -- a form of one's own ---------------------------------------------------------------------------------------


def linear_drive(args, batch):
    """A toy form: g = A - Delta on the scorable completions, REINFORCE less the step the policy has taken."""
    log_ratio = torch.zeros_like(batch.advantages) if batch.log_ratio is None else batch.log_ratio
    drive = (batch.advantages - log_ratio) * batch.scorable
    return EscortDrive(drive, batch.scorable.to(drive.dtype), torch.zeros_like(batch.scorable))


@pytest.fixture
def linear_form():
    form = register_escort_form(EscortForm("linear", linear_drive, refresh_each_step=True, clip_quadratic=True))
    yield form
    del ESCORT_FORMS[form.name]


def test_a_registered_form_is_a_choice_of_the_config_and_owns_no_other_forms_fields(tmp_path, linear_form):
    import dataclasses

    assert OPOConfig(**cpu_config_kwargs(tmp_path, escort_form="linear")).escort_form == "linear"
    (escort_form,) = [f for f in dataclasses.fields(OPOConfig) if f.name == "escort_form"]
    assert "linear" in escort_form.metadata["choices"]  # what the command line accepts
    with pytest.raises(ValueError, match="escort_temperature=0.3 has no effect with escort_form='linear'"):
        OPOConfig(**cpu_config_kwargs(tmp_path, escort_form="linear", escort_temperature=0.3))
    with pytest.raises(ValueError, match="already registered"):
        register_escort_form(linear_form)


def test_unregistered_forms_are_rejected(tmp_path):
    assert "linear" not in ESCORT_FORMS  # never registered here, or removed again by the fixture
    with pytest.raises(ValueError, match=r"escort_form='linear' is invalid; escort_form must be one of \['exp'"):
        OPOConfig(**cpu_config_kwargs(tmp_path, escort_form="linear"))


def test_a_registered_form_drives_refreshes_and_clips_as_it_declares(
    tmp_path, tiny_model_path, prompt_dataset, linear_form
):
    mu = 0.7
    trainer, batch, chunks = first_step_of_a_reused_rollout(
        tmp_path, tiny_model_path, prompt_dataset, escort_form="linear", mu=mu
    )
    model = trainer.model
    for chunk in chunks:  # the rollout's first step: Delta = 0, so g = A
        assert torch.equal(chunk["opo_drive"], chunk["advantages"])
    assert torch.cat([c["opo_drive"] for c in chunks]).abs().sum() > 0

    deltas = move_policy(model, chunks)
    # clip_quadratic: the quadratic acts on clamp(Delta, -c, c); c cuts two of the next micro-batch's four.
    rows = chunks[1]["opo_row"].tolist()
    clip = sorted(abs(deltas[r]) for r in rows)[1]
    trainer.args.log_ratio_clip = clip

    trainer._step = 1
    second = trainer._prepare_inputs(batch)  # refresh_each_step: g = A - Delta with the moved policy's Delta
    assert second is chunks[1]
    drive = [a - deltas[r] for a, r in zip(second["advantages"].tolist(), rows, strict=True)]
    torch.testing.assert_close(second["opo_drive"], torch.tensor(drive), atol=1e-5, rtol=1e-5)
    loss = trainer._compute_loss(model, second).item()

    def by_hand(c):
        return (
            sum(-g * deltas[r] + mu / 2 * max(-c, min(c, deltas[r])) ** 2 for g, r in zip(drive, rows, strict=True))
            / 4
        )

    assert loss == pytest.approx(by_hand(clip), rel=1e-4, abs=1e-7)
    assert by_hand(clip) != pytest.approx(by_hand(math.inf), rel=1e-3)  # the clip changes the loss


@pytest.mark.slow
def test_a_registered_form_trains(tmp_path, tiny_model_path, prompt_dataset, linear_form):
    trainer = make_trainer(tmp_path, tiny_model_path, prompt_dataset, escort_form="linear", num_iterations=2)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 2
    assert any(not torch.equal(before[name], p) for name, p in trainer.model.named_parameters())
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert "opo/drive/abs_mean" in logged(trainer)
