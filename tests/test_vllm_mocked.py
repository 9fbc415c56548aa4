"""
The vLLM path with the vLLM client mocked (vLLM does not run on CPU): TRL computes the importance-sampling correction
between the trainer's and the sampler's log-probs, and OPO must weight each sequence loss by it.
"""

from unittest.mock import MagicMock

import pytest
import torch

from opo_trl import OPOConfig, OPOTrainer

from .conftest import cpu_config_kwargs, digit_reward, hand_logps


def make_vllm_trainer(tmp_path, model_path, dataset, is_mode, vllm_mode):
    """An OPOTrainer whose generation backend is a mock standing in for vLLM's, sampler log-probs included."""

    def rollout(prompts, trainer):
        tokenizer, model = trainer.processing_class, trainer.model
        torch.manual_seed(len(prompts))
        prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        completion_ids = [torch.randint(6, 60, (3 + i % 4,)).tolist() for i in range(len(prompts))]
        logprobs = []
        with torch.no_grad():
            for p, c in zip(prompt_ids, completion_ids, strict=True):
                exact = hand_logps(model, torch.tensor([p]), torch.tensor([c]))[0]
                # A sampler that disagrees a little with the trainer, as vLLM's kernels do.
                logprobs.append((exact + 0.05 * torch.randn_like(exact)).tolist())
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs}

    args = OPOConfig(
        **cpu_config_kwargs(
            tmp_path,
            vllm_importance_sampling_mode=is_mode,
            vllm_importance_sampling_clip_min=0.5,
            vllm_importance_sampling_clip_max=1.5,
        )
    )
    trainer = OPOTrainer(
        model=model_path, reward_funcs=digit_reward, args=args, train_dataset=dataset, rollout_func=rollout
    )
    # What `use_vllm=True` would set up, with the vLLM client replaced by a mock.
    trainer.use_vllm, trainer.vllm_mode, trainer.vllm_generation = True, vllm_mode, MagicMock()
    trainer._last_loaded_step = -1
    return trainer


@pytest.mark.parametrize("is_mode", ["sequence_mask", "sequence_truncate", "token_truncate", "token_mask"])
def test_importance_sampling_ratio_weights_each_sequence_loss(tmp_path, tiny_model_path, prompt_dataset, is_mode):
    trainer = make_vllm_trainer(tmp_path, tiny_model_path, prompt_dataset, is_mode, "colocate")
    model = trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    inputs = trainer._generate_and_score_completions([{"prompt": "1+2="}] * 4 + [{"prompt": "3+4="}] * 4)
    ratio = inputs["importance_sampling_ratio"]
    assert ratio.shape == ((8, 1) if is_mode.startswith("sequence") else inputs["completion_mask"].shape)
    assert "old_per_token_logps" in inputs  # vLLM always gets the trainer's own log-probs as the anchor

    loss = trainer._compute_loss(model, inputs)
    (grad,) = torch.autograd.grad(loss, model.model.embed_tokens.weight)

    # By hand: each sequence loss -g Delta + mu/2 Delta^2 times its (detached) correction weight.
    mask = inputs["completion_mask"].float()
    logps = hand_logps(model, inputs["prompt_ids"], inputs["completion_ids"])
    delta = ((logps - inputs["old_per_token_logps"]) * mask).sum(-1) / mask.sum(-1)
    weight = ratio.squeeze(-1) if ratio.size(-1) == 1 else (ratio * mask).sum(-1) / mask.sum(-1)
    hand = (weight * (-inputs["opo_drive"] * delta + 0.5 * delta**2)).mean()
    (grad_hand,) = torch.autograd.grad(hand, model.model.embed_tokens.weight)
    assert not torch.allclose(weight, torch.ones_like(weight))  # the correction really is in play
    torch.testing.assert_close(grad, grad_hand, rtol=1e-4, atol=1e-8)


@pytest.mark.slow
@pytest.mark.parametrize("vllm_mode", ["colocate", "server"])
def test_training_with_mocked_vllm_runs_and_logs_the_correction(tmp_path, tiny_model_path, prompt_dataset, vllm_mode):
    trainer = make_vllm_trainer(tmp_path, tiny_model_path, prompt_dataset, "sequence_truncate", vllm_mode)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert {"sampling/importance_sampling_ratio/mean", "opo/drive/abs_mean"} <= logged
    trainer.vllm_generation.sync_weights.assert_called()
