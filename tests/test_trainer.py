"""OPOTrainer on a tiny model built in code: the loss against the formula, and training in every supported setting."""

import inspect
import math

import pytest
import torch
import yaml
from datasets import Dataset
from peft import LoraConfig
from trl import GRPOConfig, GRPOTrainer

from opo_trl import OPOConfig, OPOTrainer
from opo_trl.core import escort_drive
from opo_trl.harness.testing import group_advantages

from .conftest import (
    changed,
    cpu_config_kwargs,
    digit_reward,
    distinct_chars_reward,
    hand_logps,
    logged,
    make_trainer,
    snapshot,
)


# -- the loss, by hand -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "aggregation, form, beta", [("mean", "log", 0.0), ("sum", "log", 0.0), ("mean", "exact", 0.0), ("sum", "log", 0.3)]
)
def test_loss_on_hand_built_batch_equals_formula(tmp_path, tiny_model_path, prompt_dataset, aggregation, form, beta):
    mu, accumulation = 3.0, 2
    trainer = make_trainer(
        tmp_path, tiny_model_path, prompt_dataset, mu=mu, log_ratio_aggregation=aggregation, ratio_form=form, beta=beta
    )
    model = trainer.model.train()
    trainer.current_gradient_accumulation_steps = accumulation

    torch.manual_seed(1)
    vocab = model.config.vocab_size
    prompt_ids, completion_ids = torch.randint(6, vocab, (4, 3)), torch.randint(6, vocab, (4, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
    drive = torch.tensor([0.3, -0.1, -0.5, 0.3])
    with torch.no_grad():
        current = hand_logps(model, prompt_ids, completion_ids)
    old = current + 0.1 * torch.randn_like(current)
    ref = current + 0.2 * torch.randn_like(current)
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": mask,
        "opo_drive": drive,
        "opo_mu": torch.full((4,), mu),
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
    }
    loss = trainer._compute_loss(model, inputs)

    # l_i = -g_i v_i + mu/2 v_i^2 (+ beta * mean_t r_t KL_t), written out per sequence with Python floats. r_t is
    # the token ratio of TRL's default `use_bias_correction_kl=True`.
    expected = 0.0
    for i in range(4):
        n = int(mask[i].sum())
        log_ratio = sum(current[i, t].item() - old[i, t].item() for t in range(n))
        delta = log_ratio / n if aggregation == "mean" else log_ratio
        v = math.exp(delta) - 1 if form == "exact" else delta
        l_i = -drive[i].item() * v + mu / 2 * v**2
        if beta:
            kl = [
                (math.exp(ref[i, t] - current[i, t]) - (ref[i, t] - current[i, t]).item() - 1)
                * math.exp(current[i, t] - old[i, t])
                for t in range(n)
            ]
            l_i += beta * sum(kl) / n
        expected += l_i / 4
    assert loss.item() == pytest.approx(expected / accumulation, rel=1e-4, abs=1e-6)

    # The gradient is that of the same hand formula, written with tensors.
    (grad_trainer,) = torch.autograd.grad(loss, model.model.embed_tokens.weight)
    logps = hand_logps(model, prompt_ids, completion_ids)
    delta = ((logps - old) * mask).sum(-1)
    delta = delta / mask.sum(-1) if aggregation == "mean" else delta
    v = torch.expm1(delta) if form == "exact" else delta
    hand = -drive * v + mu / 2 * v**2
    if beta:
        kl = (torch.exp(ref - logps) - (ref - logps) - 1) * torch.exp(logps - old)
        hand = hand + beta * ((kl * mask).sum(-1) / mask.sum(-1))
    (grad_hand,) = torch.autograd.grad(hand.mean() / accumulation, model.model.embed_tokens.weight)
    # TRL's fused log-prob head and log_softmax sum in different orders: float32 rounding of about 3e-7 in absolute
    # terms shows up on single elements (seen with the "sum" aggregation), far below any real error's size.
    torch.testing.assert_close(grad_trainer, grad_hand, rtol=1e-4, atol=1e-6)


def test_drive_is_escort_of_weighted_rewards_with_missing_rewards_left_out(tmp_path, tiny_model_path, prompt_dataset):
    def sometimes_missing(completions, **kwargs):
        return [None if i % 4 == 1 else float(len(c)) for i, c in enumerate(completions)]

    trainer = make_trainer(
        tmp_path,
        tiny_model_path,
        prompt_dataset,
        reward_funcs=[digit_reward, sometimes_missing],
        reward_weights=[1.0, 0.5],
        alpha=0.2,
    )
    trainer.model.train()
    batch = [{"prompt": row["prompt"]} for row in prompt_dataset.select(range(2)) for _ in range(4)]
    output = trainer._generate_and_score_completions(batch)

    rewards_per_func = trainer._opo_rewards_per_func
    assert rewards_per_func.shape == (8, 2) and torch.isnan(rewards_per_func[1::4, 1]).all()
    rewards = rewards_per_func[:, 0] + 0.5 * torch.nan_to_num(rewards_per_func[:, 1])
    expected = escort_drive(group_advantages(rewards, 4, "none"), 4, alpha=0.2).drive
    torch.testing.assert_close(output["opo_drive"], expected)
    torch.testing.assert_close(output["opo_drive"].view(2, 4).sum(1), torch.zeros(2), atol=1e-5, rtol=0)
    # "advantages" keeps what TRL put there: the centred rewards, from which the drive is computed.
    torch.testing.assert_close(output["advantages"], group_advantages(rewards, 4, "none"))
    assert output["opo_scorable"].tolist() == [True] * 8


# -- training -------------------------------------------------------------------------------------------------


OPO_METRICS = (
    "opo/escort_weight/mean",
    "opo/drive/abs_mean",
    "opo/delta/abs_max",
    "opo/chi2",
    "opo/equilibrium_gap",
    "opo/step/abs_mean",
    "opo/closed_form_step/abs_mean",
    "opo/positivity_violations",
    "opo/policy_loss",
)


@pytest.mark.slow
def test_training_changes_parameters_and_logs_opo_metrics(tmp_path, tiny_model_path, prompt_dataset):
    trainer = make_trainer(tmp_path, tiny_model_path, prompt_dataset)
    before = snapshot(trainer.model)
    trainer.train()
    assert len(changed(before, trainer.model)) > 0
    assert set(OPO_METRICS) <= logged(trainer)
    assert all(math.isfinite(e["opo/drive/abs_mean"]) for e in trainer.state.log_history if "opo/drive/abs_mean" in e)


@pytest.mark.slow
def test_two_weighted_reward_functions_and_conversational_prompts(tmp_path, tiny_model_path, conversational_dataset):
    trainer = make_trainer(
        tmp_path,
        tiny_model_path,
        conversational_dataset,
        reward_funcs=[distinct_chars_reward, digit_reward],
        reward_weights=[1.0, 0.5],
    )
    before = snapshot(trainer.model)
    trainer.train()
    assert changed(before, trainer.model)
    assert {"rewards/distinct_chars_reward/mean", "rewards/digit_reward/mean"} <= logged(trainer)


@pytest.mark.slow
def test_lora_trains_only_adapter_weights(tmp_path, tiny_model_path, prompt_dataset):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = make_trainer(tmp_path, tiny_model_path, prompt_dataset, peft_config=lora)
    before = snapshot(trainer.model)
    trainer.train()
    moved = changed(before, trainer.model)
    assert moved and all("lora_" in name for name in moved)


@pytest.mark.slow
def test_kl_to_reference_with_beta(tmp_path, tiny_model_path, prompt_dataset):
    trainer = make_trainer(tmp_path, tiny_model_path, prompt_dataset, beta=0.5)
    before = snapshot(trainer.model)
    trainer.train()
    assert changed(before, trainer.model)
    assert "kl" in logged(trainer)


def train_final_params(tmp_path, model, dataset, **overrides):
    trainer = make_trainer(tmp_path, model, dataset, max_steps=4, **overrides)
    trainer.train()
    return trainer, snapshot(trainer.model)


@pytest.mark.slow
def test_mu_acts_only_when_a_rollout_is_reused(tmp_path, tiny_model_path, prompt_dataset):
    def distance(a, b):
        return max((a[k] - b[k]).abs().max().item() for k in a)

    # One optimizer step per rollout: Delta = 0 at every step, so mu cannot matter.
    _, soft = train_final_params(tmp_path / "a", tiny_model_path, prompt_dataset, mu=0.1)
    _, stiff = train_final_params(tmp_path / "b", tiny_model_path, prompt_dataset, mu=100.0)
    assert distance(soft, stiff) < 1e-6

    # Two optimizer steps per rollout: the second sees Delta != 0 and the quadratic pulls with strength mu.
    reused = dict(steps_per_generation=2, gradient_accumulation_steps=1)
    trainer, soft = train_final_params(tmp_path / "c", tiny_model_path, prompt_dataset, mu=0.1, **reused)
    _, stiff = train_final_params(tmp_path / "d", tiny_model_path, prompt_dataset, mu=100.0, **reused)
    assert distance(soft, stiff) > 1e-4
    assert max(e.get("opo/delta/abs_max", 0.0) for e in trainer.state.log_history) > 0


# -- drop-in: a GRPO script with the class names changed ---------------------------------------------------------

GRPO_SCRIPT_YAML = {
    "grpo": "loss_type: grpo\nscale_rewards: group\nepsilon: 0.2\n",
    "dapo": "loss_type: dapo\nepsilon: 0.2\nepsilon_high: 0.28\nmask_truncated_completions: true\nscale_rewards: none\n",
    "gspo": "importance_sampling_level: sequence\nloss_type: grpo\nepsilon: 3.0e-4\nepsilon_high: 4.0e-4\n",
}


def user_script(trainer_cls, config_cls, config_path, model, dataset):
    """What a user's GRPO training script does; the test runs it twice with only the two class names changed."""
    from trl import TrlParser

    (args,) = TrlParser((config_cls,)).parse_args_and_config(["--config", str(config_path)])
    trainer = trainer_cls(model=model, reward_funcs=[distinct_chars_reward], args=args, train_dataset=dataset)
    trainer.train()
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(GRPO_SCRIPT_YAML))
def test_same_script_runs_with_grpo_and_opo_classes(tmp_path, tiny_model_path, prompt_dataset, recipe):
    common = cpu_config_kwargs(tmp_path / "out", max_steps=1)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(common) + GRPO_SCRIPT_YAML[recipe])
    grpo = user_script(GRPOTrainer, GRPOConfig, path, tiny_model_path, prompt_dataset)
    with pytest.warns(UserWarning, match="ignores these GRPO options"):
        opo = user_script(OPOTrainer, OPOConfig, path, tiny_model_path, prompt_dataset)
    assert type(opo) is OPOTrainer and type(grpo) is GRPOTrainer
    assert "opo/drive/abs_mean" in logged(opo) and "opo/drive/abs_mean" not in logged(grpo)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["opo", "grpo"])
def test_gradient_accumulation_gives_the_gradient_of_one_big_batch(
    tmp_path, tiny_model_path, prompt_dataset, algorithm
):
    """One rollout of 6 completions: 2 micro-batches of 3 accumulated must make the same update as 1 micro-batch of 6."""
    from opo_trl.harness.algorithms import ALGORITHMS

    spec = ALGORITHMS[algorithm]

    def one_step(out, batch, accumulation):
        kwargs = cpu_config_kwargs(
            tmp_path / out,
            max_steps=1,
            num_generations=6,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            max_completion_length=6,
            learning_rate=1e-3,
            **spec.settings,
        )
        trainer = spec.trainer_cls(
            model=tiny_model_path,
            reward_funcs=distinct_chars_reward,
            args=spec.config_cls(**kwargs),
            train_dataset=prompt_dataset,
        )
        seen = []
        generate = trainer._generate_and_score_completions

        def record(inputs):
            output = generate(inputs)
            seen.append(output["completion_ids"].clone())
            return output

        trainer._generate_and_score_completions = record
        before = snapshot(trainer.model)
        trainer.train()
        return seen, before, snapshot(trainer.model)

    big_rollout, start, big = one_step("big", 6, 1)
    small_rollout, _, small = one_step("small", 3, 2)
    assert len(big_rollout) == len(small_rollout) == 1 and torch.equal(big_rollout[0], small_rollout[0])
    assert max((big[k] - start[k]).abs().max().item() for k in big) > 1e-5  # the step did something
    for name in big:
        torch.testing.assert_close(small[name], big[name], rtol=1e-4, atol=1e-6, msg=name)


def test_grpo_config_is_refused_with_a_clear_message(tmp_path, tiny_model_path, prompt_dataset):
    args = GRPOConfig(**cpu_config_kwargs(tmp_path))
    with pytest.raises(TypeError, match="replace `GRPOConfig"):
        OPOTrainer(model=tiny_model_path, reward_funcs=digit_reward, args=args, train_dataset=prompt_dataset)


# -- the private TRL API this package relies on -------------------------------------------------------------------


def test_private_trl_api_is_as_expected(tmp_path, tiny_model_path, prompt_dataset):
    """If this fails after a TRL upgrade, OPOTrainer's overrides must be revisited before the pin is widened."""
    params = inspect.signature(GRPOTrainer._get_per_token_logps_and_entropies).parameters
    for name in ("model", "input_ids", "attention_mask", "logits_to_keep", "compute_entropy", "compute_aux_loss"):
        assert name in params, f"GRPOTrainer._get_per_token_logps_and_entropies lost its `{name}` argument"
    assert list(inspect.signature(GRPOTrainer._calculate_rewards).parameters) == [
        "self",
        "inputs",
        "prompts",
        "completions",
        "completion_ids_list",
    ]
    assert list(inspect.signature(GRPOTrainer._generate_and_score_completions).parameters) == ["self", "inputs"]
    assert list(inspect.signature(GRPOTrainer._compute_loss).parameters) == ["self", "model", "inputs"]
    # TRL scales the loss for gradient accumulation itself and tells the Trainer so; OPOTrainer does the same.
    assert GRPOTrainer.loss_is_scaled_for_ga is True

    trainer = make_trainer(tmp_path, tiny_model_path, prompt_dataset)
    for attribute in ("num_generations", "num_generations_eval", "beta", "use_vllm", "aux_loss_enabled", "_metrics",
                      "_entropy_bonus_enabled", "entropy_coef", "log_completions", "_logs"):  # fmt: skip
        assert hasattr(trainer, attribute), f"GRPOTrainer no longer sets `{attribute}`"
    # The completions table OPOTrainer writes its drive and Delta into.
    assert {"prompt", "advantages", "extra"} <= set(trainer._logs)
    assert hasattr(trainer, "vllm_importance_sampling_correction")
    # The generation output carries TRL's per-process advantages, from which OPOTrainer computes its drive.
    trainer.model.train()
    output = trainer._generate_and_score_completions([{"prompt": "1+1="}] * 4)
    assert output["advantages"].shape == (4,)
    assert {"prompt_ids", "prompt_mask", "completion_ids", "completion_mask"} <= set(output)


def test_training_order_depends_on_the_seed_only(tmp_path, tiny_model_path):
    """
    `opo_trl.harness.compare` pairs the training reward and gradient norm of two algorithms step by step, because runs of one
    seed draw the same prompts in the same order (TRL's RepeatSampler is seeded by `args.seed`).
    """
    from opo_trl.harness.algorithms import ALGORITHMS

    dataset = Dataset.from_dict({"prompt": [f"{i}+{i}=" for i in range(32)]})

    def order(algorithm, seed):
        spec = ALGORITHMS[algorithm]
        args = spec.config_cls(**cpu_config_kwargs(tmp_path / f"{algorithm}{seed}", seed=seed), **spec.settings)
        trainer = spec.trainer_cls(model=tiny_model_path, reward_funcs=digit_reward, args=args, train_dataset=dataset)
        return list(trainer._get_train_sampler(dataset))

    orders = {a: order(a, 0) for a in ALGORITHMS}
    assert len(orders["opo"]) > 0 and all(o == orders["opo"] for o in orders.values())
    assert order("opo", 1) != orders["opo"]


def input_keys(method):
    """
    The keys a `_compute_loss` reads from its `inputs`, from its source (`MULTIMODAL_KEYS` and `loss_mask(inputs)`
    stand for the keys they read).
    """
    import re

    from opo_trl.trainer import MULTIMODAL_KEYS, loss_mask

    source = inspect.getsource(method)
    keys = set(re.findall(r"""(?:inputs|batch)(?:\[|\.get\()["'](\w+)["']""", source))
    if "in MULTIMODAL_KEYS" in source:
        keys |= set(MULTIMODAL_KEYS)
    if "loss_mask(inputs)" in source:
        keys |= input_keys(loss_mask)
    return keys


# Keys GRPOTrainer's loss reads that OPO's does not, each with the reason.
NOT_READ_BY_OPO = {
    "advantages": "TRL's advantages; OPO's loss reads the drive computed from them, opo_drive",
    "sampling_per_token_logps": "read only for off_policy_mask_threshold, which OPOConfig rejects",
    "num_items_in_batch": "the token-count normaliser of loss_type dapo/cispo/vespo; OPO averages over sequences",
}


def test_opo_loss_reads_every_input_grpo_loss_reads():
    """A new input of GRPOTrainer's loss (a multimodal key, a mask) must not be dropped silently by OPO's."""
    grpo, opo = input_keys(GRPOTrainer._compute_loss), input_keys(OPOTrainer._compute_loss)
    assert {"advantages", "pixel_values", "old_per_token_logps", "ref_per_token_logps"} <= grpo  # the parse works
    assert grpo - opo == set(NOT_READ_BY_OPO), f"GRPO's loss reads {sorted(grpo - opo - set(NOT_READ_BY_OPO))} too"
    # OPO's own, set in _generate_and_score_completions: the drive and the rollout's mu.
    assert opo - grpo == {"opo_drive", "opo_mu"}


# -- robustness: bad rewards, degenerate completions -------------------------------------------------------------


def assert_finite_run(trainer, steps):
    assert trainer.state.global_step == steps
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    grad_norms = [e["grad_norm"] for e in trainer.state.log_history if "grad_norm" in e]
    assert len(losses) == steps and all(math.isfinite(x) for x in losses + grad_norms), trainer.state.log_history
    for name, p in trainer.model.named_parameters():
        assert torch.isfinite(p).all(), name


NAN = float("nan")

# Rewards of the G = 4 completions of each prompt, in order. Drive and metrics below are checked against these.
SCENARIO = {
    "huge": [1e6, -1e6, 0.0, 1e6],  # exponent (1 - alpha) * A ~ 3e5: clipped at max_escort_exponent
    "some nan": [NAN, 1.0, 2.0, NAN],
    "some none": [None, 0.5, None, 0.0],
    "constant": [7.0, 7.0, 7.0, 7.0],  # no signal
    "unscorable": [None, None, None, None],  # no signal, all four unscorable
}

NO_SIGNAL = ("constant", "unscorable")

NUM_MISSING = 2 + 2 + 4

NUM_CLIPPED = 2  # the two +1e6 completions


def scenario_reward(prompts, completions, **kwargs):
    # The completions of one prompt are consecutive, so i % 4 is the index within the group.
    return [SCENARIO[prompt][i % 4] for i, prompt in enumerate(prompts)]


@pytest.mark.slow
def test_pathological_rewards_keep_training_finite_and_groups_without_signal_get_zero_drive(tmp_path, tiny_model_path):
    dataset = Dataset.from_dict({"prompt": list(SCENARIO)})
    # Every step sees all five groups.
    trainer = make_trainer(
        tmp_path,
        tiny_model_path,
        dataset,
        reward_funcs=scenario_reward,
        per_device_train_batch_size=20,
        max_completion_length=4,
    )
    before = snapshot(trainer.model)
    trainer.train()
    assert_finite_run(trainer, 2)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())  # still learns
    assert all(
        e["opo/escort_weight/max"] <= math.exp(20.0) * 1.0001
        for e in trainer.state.log_history
        if "opo/escort_weight/max" in e
    )

    trainer.model.train()
    batch = [{"prompt": prompt} for prompt in SCENARIO for _ in range(4)]
    drive = trainer._generate_and_score_completions(batch)["opo_drive"].view(len(SCENARIO), 4)
    assert torch.isfinite(drive).all()
    for row, (prompt, rewards) in zip(drive, SCENARIO.items(), strict=True):
        missing = torch.tensor([r is None or math.isnan(r) for r in rewards])
        assert torch.all(row[missing] == 0), prompt
        if prompt in NO_SIGNAL:
            assert torch.all(row == 0), prompt
        else:
            assert row.abs().max() > 0, prompt
            assert abs(row.sum().item()) <= 1e-6 * row.abs().max().item(), prompt
    # The huge group: w = (e^20, 0, 0, e^20), so g = +-e^20 / 2.
    torch.testing.assert_close(drive[0], math.exp(20.0) / 2 * torch.tensor([1.0, -1.0, -1.0, 1.0]))

    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    assert metrics["opo/groups_without_signal"] == pytest.approx(len(NO_SIGNAL) / len(SCENARIO))
    assert metrics["opo/unscorable_frac"] == pytest.approx(NUM_MISSING / 20)
    assert metrics["opo/escort_weight/clipped_frac"] == pytest.approx(NUM_CLIPPED / (20 - NUM_MISSING))


@pytest.mark.slow
def test_constant_reward_gives_no_update(tmp_path, tiny_model_path, prompt_dataset):
    def constant(completions, **kwargs):
        return [3.0] * len(completions)

    trainer = make_trainer(tmp_path, tiny_model_path, prompt_dataset, reward_funcs=constant, max_completion_length=4)
    before = snapshot(trainer.model)
    trainer.train()
    assert_finite_run(trainer, 2)
    # Every group is tied, so the drive, the loss gradient and (weight_decay = 0) the Adam update are exactly 0.
    assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    logged = [e["opo/groups_without_signal"] for e in trainer.state.log_history if "opo/groups_without_signal" in e]
    assert logged == [1.0, 1.0]


def hand_batch(model, drive, mask, seed=0):
    torch.manual_seed(seed)
    vocab = model.config.vocab_size
    prompt_ids, completion_ids = torch.randint(6, vocab, (len(drive), 3)), torch.randint(6, vocab, (len(drive), 5))
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": mask,
        "opo_drive": drive,
        "opo_mu": torch.ones_like(drive),
        # Off-policy old log-probs, so that Delta != 0 where there are tokens.
        "old_per_token_logps": -5.0 + 0.3 * torch.randn(mask.shape),
        "ref_per_token_logps": torch.full(mask.shape, -5.0),
    }


def loss_and_grads(trainer, inputs):
    model = trainer.model
    model.zero_grad()
    loss = trainer._compute_loss(model, inputs)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_empty_completions_give_finite_loss_and_gradients(tmp_path, tiny_model_path, prompt_dataset, beta):
    trainer = make_trainer(tmp_path, tiny_model_path, prompt_dataset, mu=2.0, beta=beta)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])

    # One empty completion: finite, and its drive has no effect at all (Delta = 0 with no gradient path).
    loss, grads = loss_and_grads(trainer, hand_batch(trainer.model, torch.tensor([0.3, -0.4, -0.2, 0.3]), mask))
    loss_other, grads_other = loss_and_grads(
        trainer, hand_batch(trainer.model, torch.tensor([0.3, 9.0, -0.2, 0.3]), mask)
    )
    assert torch.isfinite(loss) and loss != 0
    assert all(torch.isfinite(g).all() for g in grads.values()) and any(g.abs().max() > 0 for g in grads.values())
    assert loss == loss_other and all(torch.equal(grads[n], grads_other[n]) for n in grads)

    # A micro-batch whose completions are all empty: loss exactly 0, gradients exactly 0, metrics finite.
    empty = hand_batch(trainer.model, torch.tensor([0.3, -0.4, -0.2, 0.3]), torch.zeros_like(mask))
    loss, grads = loss_and_grads(trainer, empty)
    assert loss == 0
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads.values())
    metrics = trainer._metrics["train"]
    assert all(math.isfinite(metrics[k][-1]) for k in ("entropy", "opo/delta/abs_max", "opo/chi2", "opo/policy_loss"))


@pytest.mark.slow
@pytest.mark.parametrize("mask_truncated", [False, True])
def test_all_completions_truncated(tmp_path, tiny_model_path, prompt_dataset, mask_truncated):
    trainer = make_trainer(
        tmp_path, tiny_model_path, prompt_dataset, max_completion_length=2, mask_truncated_completions=mask_truncated
    )
    trainer.train()
    assert_finite_run(trainer, 2)
    clipped = [e["completions/clipped_ratio"] for e in trainer.state.log_history if "completions/clipped_ratio" in e]
    assert clipped and min(clipped) > 0.5  # the setting does what it says: (nearly) everything is cut at 2 tokens
    # One optimizer step per rollout: Delta = 0 on every completion, masked or not, so every step's loss is exactly 0.
    assert [e["loss"] for e in trainer.state.log_history if "loss" in e] == [0.0, 0.0]


# -- the full alpha-escort, mu from a chi-square budget, the entropy bonus -----------------------------------------


def generate(trainer, prompts=("1+2=", "3+4=")):
    trainer.model.train()
    return trainer._generate_and_score_completions([{"prompt": p} for p in prompts for _ in range(4)])


@pytest.mark.parametrize("reference", ["sum", "mean"])
@pytest.mark.parametrize("reused", [False, True])
def test_escort_reference_uses_the_rollout_policy_log_probs(
    tmp_path, tiny_model_path, prompt_dataset, reference, reused
):
    # reused: TRL computes old_per_token_logps itself; otherwise OPOTrainer runs one no-grad forward.
    steps = dict(steps_per_generation=2, per_device_train_batch_size=4) if reused else {}
    trainer = make_trainer(tmp_path, tiny_model_path, prompt_dataset, escort_reference=reference, alpha=0.3, **steps)
    output = generate(trainer)
    assert ("old_per_token_logps" in output) == reused

    with torch.no_grad():
        logps = hand_logps(trainer.model, output["prompt_ids"], output["completion_ids"])
    mask = output["completion_mask"].float()
    l = (logps * mask).sum(-1)
    l = l / mask.sum(-1) if reference == "mean" else l
    rewards = trainer._opo_rewards_per_func[:, 0]
    expected = escort_drive(group_advantages(rewards, 4), 4, alpha=0.3, log_reference=l).drive
    torch.testing.assert_close(output["opo_drive"], expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(expected, escort_drive(group_advantages(rewards, 4), 4, alpha=0.3).drive)


def test_mu_is_chosen_per_rollout_to_spend_the_budget(tmp_path, tiny_model_path, prompt_dataset):
    trainer = make_trainer(tmp_path, tiny_model_path, prompt_dataset, mu_target_chi2=0.01, mu_min=1e-3, mu_max=1e3)
    output = generate(trainer)
    mu = output["opo_mu"]
    assert torch.all(mu == mu[0]) and trainer._metrics["train"]["opo/mu"][-1] == pytest.approx(mu[0].item())
    drive = output["opo_drive"]
    assert ((drive / mu) ** 2).mean().item() == pytest.approx(0.01, rel=1e-4)

    # The loss uses the rollout's mu: -g Delta + (mu / 2) Delta^2 with that mu, per sequence.
    logps = hand_logps(trainer.model, output["prompt_ids"], output["completion_ids"]).detach()
    inputs = {**output, "old_per_token_logps": logps + 0.05}  # off-policy, so the quadratic acts
    trainer.current_gradient_accumulation_steps = 1
    chosen_loss = trainer._compute_loss(trainer.model, inputs)
    mask = output["completion_mask"].float()
    delta = ((logps - inputs["old_per_token_logps"]) * mask).sum(-1) / mask.sum(-1)
    hand = (-drive * delta + mu[0] / 2 * delta**2).mean()
    assert mu[0].item() != pytest.approx(1.0, abs=0.05)  # not the configured default
    torch.testing.assert_close(chosen_loss, hand, rtol=1e-4, atol=1e-6)


def test_static_entropy_bonus_is_subtracted_beside_the_policy_term(tmp_path, tiny_model_path, prompt_dataset):
    coef, accumulation = 0.1, 2
    plain = make_trainer(tmp_path / "a", tiny_model_path, prompt_dataset, mu=2.0)
    bonus = make_trainer(tmp_path / "b", tiny_model_path, prompt_dataset, mu=2.0, entropy_coef=coef)
    torch.manual_seed(1)
    vocab = plain.model.config.vocab_size
    prompt_ids, completion_ids = torch.randint(6, vocab, (4, 3)), torch.randint(6, vocab, (4, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids), "completion_ids": completion_ids,
              "completion_mask": mask, "opo_drive": torch.tensor([0.3, -0.1, -0.5, 0.3]),
              "opo_mu": torch.full((4,), 2.0)}  # fmt: skip
    for trainer in (plain, bonus):
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = accumulation
    # H by hand: the entropy of the next-token distribution at each completion position, averaged over the mask.
    with torch.no_grad():
        logits = bonus.model(input_ids=torch.cat([prompt_ids, completion_ids], 1)).logits[:, 2:-1].float()
    entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    h = (entropy * mask).sum() / mask.sum()
    expected = plain._compute_loss(plain.model, inputs) - coef * h / accumulation
    torch.testing.assert_close(bonus._compute_loss(bonus.model, inputs), expected, rtol=1e-5, atol=1e-6)


# -- warnings where OPO would quietly do less than asked ---------------------------------------------------------


def opo_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, UserWarning) and "OPO" in str(w.message)]


def test_warnings_appear_when_warranted_and_not_otherwise(tmp_path, tiny_model_path, prompt_dataset):
    import warnings

    from opo_trl.trainer import _warn_where_opo_does_less

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = make_trainer(tmp_path, tiny_model_path, prompt_dataset, mu=3.0)
    (message,) = [m for m in opo_warnings(record) if "has no effect" in m]
    for part in ("mu=3.0", "steps_per_generation=1", "gradient_accumulation_steps=1", "num_iterations=1",
                 "steps_per_generation=2"):  # fmt: skip
        assert part in message

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        make_trainer(tmp_path, tiny_model_path, prompt_dataset, steps_per_generation=2, per_device_train_batch_size=4)
        make_trainer(tmp_path, tiny_model_path, prompt_dataset, num_iterations=2)
    assert opo_warnings(record) == []

    with pytest.warns(UserWarning, match=r"normalize_then_sum' overrides scale_rewards='none'"):
        make_trainer(tmp_path, tiny_model_path, prompt_dataset, multi_objective_aggregation="normalize_then_sum")

    # vLLM cannot run here: the check runs on a trainer set up as `use_vllm=True` would leave it.
    trainer.args.steps_per_generation = 2
    trainer.use_vllm, trainer.vllm_importance_sampling_correction = True, True
    for mode, warned in [("token_truncate", True), ("token_mask", True), ("sequence_mask", False)]:
        trainer.args.vllm_importance_sampling_mode = mode
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            _warn_where_opo_does_less(trainer)
        assert [m for m in opo_warnings(record) if "one weight per sequence" in m] == (
            [m for m in opo_warnings(record) if mode in m] if warned else []
        )
        assert bool(opo_warnings(record)) == warned


def test_an_escort_cap_above_30_is_rejected_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match=r"max_escort_exponent=40.0 .* e\^40 makes float32 gradient norms overflow"):
        OPOConfig(**cpu_config_kwargs(tmp_path, max_escort_exponent=40.0))


# -- what a run shows: metrics, the completions table, the model card -------------------------------------------


@pytest.mark.slow
def test_completions_table_grad_response_and_model_card(tmp_path, tiny_model_path, prompt_dataset):
    import pandas as pd

    trainer = make_trainer(tmp_path, tiny_model_path, prompt_dataset, log_completions=True, steps_per_generation=2,
                           per_device_train_batch_size=4, max_steps=2)  # fmt: skip
    trainer.train()
    assert {"opo/grad_response", "opo/mu", "opo/drive/half_range"} <= logged(trainer)
    step = next(e for e in trainer.state.log_history if "opo/grad_response" in e)
    assert step["opo/grad_response"] == pytest.approx(step["grad_norm"] / step["opo/drive/half_range"], rel=1e-4)

    table = pd.read_parquet(tmp_path / "completions" / "completions_00002.parquet")
    # The advantage column holds OPO's drive: zero-sum per group, not GRPO's advantages.
    drive = torch.tensor(table["advantage"].to_list()).view(-1, 4)
    torch.testing.assert_close(drive.sum(1), torch.zeros(len(drive)), atol=1e-6, rtol=0)
    # Delta of each completion at the micro-batch that used it: 0 in step 1 (pi_k itself), not 0 in step 2.
    delta = table["delta"].to_numpy()
    assert len(delta) == 8 and (delta == 0).sum() == 4 and (abs(delta) > 0).sum() == 4

    trainer.create_model_card(model_name="tiny-opo")
    card = (tmp_path / "README.md").read_text()
    assert "OPO" in card and "2601.12415" in card and "Orthogonal Projection" in card and "DeepSeekMath" not in card


# -- drop-in: GRPOTrainer's signature, any reward source -----------------------------------------------------------


def test_signature_is_grpo_trainers():
    def described(cls):
        return [(p.name, p.default, p.kind) for p in inspect.signature(cls.__init__).parameters.values()]

    assert described(OPOTrainer) == described(GRPOTrainer)


class CountingEnv:
    """
    An environment that owns the reward (TRL 1.16's `get_reward`). Its state is the number of episodes it has seen,
    so rollouts of the same prompt get different rewards, as they would from a stochastic environment.
    """

    episodes = 0

    def reset(self, **kwargs):
        CountingEnv.episodes += 1
        self.state = CountingEnv.episodes % 3
        return None

    def get_reward(self):
        return float(self.state)


def test_no_reward_source_is_grpo_trainers_own_error(tmp_path, tiny_model_path, prompt_dataset):
    args = OPOConfig(**cpu_config_kwargs(tmp_path))
    with pytest.raises(ValueError, match="No reward source provided"):
        OPOTrainer(model=tiny_model_path, args=args, train_dataset=prompt_dataset)


@pytest.mark.slow
def test_environment_that_owns_the_reward_drives_opo(tmp_path, tiny_model_path):
    from importlib.resources import files

    from transformers import AutoTokenizer

    # Environments need a chat template that renders tool calls: TRL's own Qwen2.5 template.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    tokenizer.chat_template = files("trl.chat_templates").joinpath("qwen2_5.jinja").read_text()
    prompts = [[{"role": "user", "content": f"{a}{'1' * b}+{b}="}] for a in range(4) for b in range(4)]
    trainer = OPOTrainer(model=tiny_model_path, args=OPOConfig(**cpu_config_kwargs(tmp_path, max_steps=2)),
                         train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer,
                         environment_factory=CountingEnv)  # fmt: skip
    before = snapshot(trainer.model)
    trainer.train()
    assert changed(before, trainer.model)
    assert {"rewards/CountingEnv/mean", "opo/drive/abs_mean", "opo/mu"} <= logged(trainer)
    assert any(e.get("opo/drive/abs_mean", 0) > 0 for e in trainer.state.log_history)
