"""OPOTrainer on a tiny model built in code: the loss against the formula, and training in every supported setting."""

import inspect
import math

import pytest
import torch
import yaml
from peft import LoraConfig
from trl import GRPOConfig, GRPOTrainer

from opo_trl import OPOConfig, OPOTrainer
from opo_trl.core import escort_drive, group_advantages

from .conftest import cpu_config_kwargs, digit_reward, distinct_chars_reward, make_trainer, snapshot


def changed(before, model):
    return {name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())}


# -- the loss, by hand -------------------------------------------------------------------------------------------


def hand_logps(model, prompt_ids, completion_ids):
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits
    logits = logits[:, prompt_ids.size(1) - 1 : -1]  # the logit at t predicts token t + 1
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)


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
        "advantages": drive,
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
    torch.testing.assert_close(grad_trainer, grad_hand, rtol=1e-4, atol=1e-7)


def test_drive_is_escort_of_weighted_rewards_with_missing_rewards_left_out(tmp_path, tiny_model_path, prompt_dataset):
    def sometimes_missing(completions, **kwargs):
        return [None if i % 4 == 1 else float(len(c)) for i, c in enumerate(completions)]

    trainer = make_trainer(
        tmp_path, tiny_model_path, prompt_dataset, reward_funcs=[digit_reward, sometimes_missing],
        reward_weights=[1.0, 0.5], alpha=0.2,
    )
    trainer.model.train()
    batch = [{"prompt": row["prompt"]} for row in prompt_dataset.select(range(2)) for _ in range(4)]
    output = trainer._generate_and_score_completions(batch)

    rewards_per_func = trainer._opo_rewards_per_func
    assert rewards_per_func.shape == (8, 2) and torch.isnan(rewards_per_func[1::4, 1]).all()
    rewards = rewards_per_func[:, 0] + 0.5 * torch.nan_to_num(rewards_per_func[:, 1])
    expected, _ = escort_drive(group_advantages(rewards, 4, "none"), 4, alpha=0.2)
    torch.testing.assert_close(output["advantages"], expected)
    torch.testing.assert_close(output["advantages"].view(2, 4).sum(1), torch.zeros(2), atol=1e-5, rtol=0)


# -- training -------------------------------------------------------------------------------------------------


OPO_METRICS = ("opo/escort_weight/mean", "opo/drive/abs_mean", "opo/delta/abs_max", "opo/chi2", "opo/equilibrium_gap",
               "opo/positivity_violations", "opo/policy_loss")


def logged(trainer):
    keys = set()
    for entry in trainer.state.log_history:
        keys |= set(entry)
    return keys


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
        tmp_path, tiny_model_path, conversational_dataset, reward_funcs=[distinct_chars_reward, digit_reward],
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
        "self", "inputs", "prompts", "completions", "completion_ids_list"
    ]
    assert list(inspect.signature(GRPOTrainer._generate_and_score_completions).parameters) == ["self", "inputs"]
    assert list(inspect.signature(GRPOTrainer._compute_loss).parameters) == ["self", "model", "inputs"]
    # TRL scales the loss for gradient accumulation itself and tells the Trainer so; OPOTrainer does the same.
    assert GRPOTrainer.loss_is_scaled_for_ga is True

    trainer = make_trainer(tmp_path, tiny_model_path, prompt_dataset)
    for attribute in ("num_generations", "num_generations_eval", "beta", "use_vllm", "aux_loss_enabled", "_metrics"):
        assert hasattr(trainer, attribute), f"GRPOTrainer no longer sets `{attribute}`"
    assert hasattr(trainer, "vllm_importance_sampling_correction")
    # The generation output carries per-process advantages that OPOTrainer replaces with the escort drive.
    trainer.model.train()
    output = trainer._generate_and_score_completions([{"prompt": "1+1="}] * 4)
    assert output["advantages"].shape == (4,)
    assert {"prompt_ids", "prompt_mask", "completion_ids", "completion_mask"} <= set(output)
