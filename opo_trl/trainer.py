# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
import torch
from trl import GRPOTrainer
from trl.trainer.utils import get_config_model_id

from .config import OPOConfig
from .core import escort_drive, escort_statistics, opo_sequence_loss, ratio_statistics, sequence_importance_weight
from .validation import validate_dataset


class OPOTrainer(GRPOTrainer):
    """
    Trainer for Orthogonalized Policy Optimization (OPO).

    OPO ([Wang, 2026](https://huggingface.co/papers/2601.12415)) is a drop-in replacement for [`GRPOTrainer`]: same
    arguments, same generation, rewards, PEFT, DeepSpeed and vLLM support. Two things change, and nothing else:

    - the advantages become the alpha-escort drive `g = w - mean(w)`, `w = exp((1 - alpha) * A)`, computed per prompt
      group on the advantages of all processes and then sliced for this process (`_generate_and_score_completions`);
    - the clipped token loss becomes the per-sequence quadratic ratio loss `-g * Delta + (mu / 2) * Delta**2`
      (`_compute_loss`).

    The math lives in `opo_trl.core`; this class only wires it into TRL. `train_dataset` and `eval_dataset` are
    checked with [`~validation.validate_dataset`] before the model loads.

    Example:

    ```python
    from datasets import load_dataset
    from opo_trl import OPOConfig, OPOTrainer

    dataset = load_dataset("trl-lib/DeepMath-103K", split="train")
    trainer = OPOTrainer(
        model="Qwen/Qwen2.5-0.5B-Instruct",
        reward_funcs="accuracy_reward",
        args=OPOConfig(output_dir="Qwen2.5-0.5B-OPO"),
        train_dataset=dataset,
    )
    trainer.train()
    ```
    """

    _tag_names = ["trl", "opo"]
    _name = "OPO"

    def __init__(self, model, reward_funcs, args: OPOConfig | None = None, **kwargs):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = OPOConfig(f"{model_name.split('/')[-1]}-OPO")
        elif not isinstance(args, OPOConfig):
            raise TypeError(
                f"OPOTrainer needs an OPOConfig, got {type(args).__name__}. OPOConfig accepts every GRPOConfig "
                "argument: replace `GRPOConfig(...)` with `OPOConfig(...)`."
            )
        # Bad data otherwise shows up as a KeyError in the first generation step, after the model has loaded.
        require_prompt = kwargs.get("environment_factory") is None
        validate_dataset(kwargs.get("train_dataset"), reward_funcs, "train", require_prompt=require_prompt)
        validate_dataset(kwargs.get("eval_dataset"), reward_funcs, "eval", require_prompt=require_prompt)
        super().__init__(model, reward_funcs, args=args, **kwargs)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # TRL returns the rewards of all processes; keep them to know which completions could not be scored.
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._opo_rewards_per_func = rewards_per_func
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval

        # TRL's advantages (centred, optionally std-scaled) are already sliced per process. The escort mean needs
        # whole groups, and a group can straddle processes, so work on the gathered advantages and slice again.
        local_advantages = output["advantages"]
        advantages = self.accelerator.gather(local_advantages)
        scorable = ~torch.isnan(self._opo_rewards_per_func).all(dim=1)
        escort = escort_drive(
            advantages, num_generations, self.args.alpha, valid=scorable, max_exponent=self.args.max_escort_exponent
        )
        rank, n_local = self.accelerator.process_index, local_advantages.size(0)
        output["advantages"] = escort.drive[rank * n_local : (rank + 1) * n_local]

        stats = escort_statistics(escort, num_generations, self.args.mu, valid=scorable)
        for name, value in stats.items():
            self._metrics[mode][f"opo/{name}"].append(value)
        return output

    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]

        per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            pixel_values=inputs.get("pixel_values"),
            image_grid_thw=inputs.get("image_grid_thw"),
            num_images=inputs.get("num_images"),
            pixel_attention_mask=inputs.get("pixel_attention_mask"),
            spatial_shapes=inputs.get("spatial_shapes"),
            num_tiles=inputs.get("num_tiles"),
            image_sizes=inputs.get("image_sizes"),
            token_type_ids=inputs.get("token_type_ids"),
            mm_token_type_ids=inputs.get("mm_token_type_ids"),
            image_position_ids=inputs.get("image_position_ids"),
        )
        # Without a reused rollout TRL skips the old log-probs: pi_k = pi_theta, so Delta = 0 but carries the gradient.
        old_per_token_logps = inputs.get("old_per_token_logps")
        if old_per_token_logps is None:
            old_per_token_logps = per_token_logps.detach()

        importance_weight = None
        if self.use_vllm and self.vllm_importance_sampling_correction:
            importance_weight = sequence_importance_weight(inputs["importance_sampling_ratio"], mask)
        out = opo_sequence_loss(
            per_token_logps,
            old_per_token_logps,
            mask,
            inputs["advantages"],
            self.args.mu,
            aggregation=self.args.log_ratio_aggregation,
            ratio_form=self.args.ratio_form,
            importance_weight=importance_weight,
            ref_per_token_logps=inputs.get("ref_per_token_logps"),
            beta=self.beta,
            kl_ratio_correction=self.args.use_bias_correction_kl,
        )

        mode = "train" if self.model.training else "eval"
        # TRL turns off the Trainer's own gradient-accumulation scaling (`loss_is_scaled_for_ga`), so scale here.
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        loss = out.loss.mean()
        policy_loss = loss.detach()
        loss = loss / normalizer
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / normalizer
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather(aux_loss.detach()).mean().item())

        self._log_loss_metrics(mode, mask, entropies, out, inputs["advantages"], policy_loss)
        return loss

    def _log_loss_metrics(self, mode, mask, entropies, out, drive, policy_loss):
        def global_masked_mean(x):
            totals = self.accelerator.reduce(torch.stack([(x * mask).sum(), mask.sum().float()]), reduction="sum")
            return (totals[0] / totals[1].clamp(min=1.0)).item()

        metrics = self._metrics[mode]
        metrics["entropy"].append(global_masked_mean(entropies))
        if out.kl is not None:
            metrics["kl"].append(global_masked_mean(out.kl))
        # One value per sequence from every process: these are what the paper's claims are about.
        delta, drive = self.accelerator.gather(torch.stack([out.delta.detach(), drive.detach()], dim=1)).unbind(1)
        for name, value in ratio_statistics(delta, drive, self.args.mu).items():
            metrics[f"opo/{name}"].append(value)
        metrics["opo/policy_loss"].append(self.accelerator.gather(policy_loss).mean().item())
