# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
import math
import textwrap
import warnings

import torch
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import get_config_model_id

from .config import OPOConfig
from .core import (
    ESCORT_FORMS,
    EscortBatch,
    entropy_bonus,
    masked_mean,
    opo_sequence_loss,
    sequence_importance_weight,
    sequence_log_prob,
    sequence_log_ratio,
    trust_region_mu,
)
from .diagnostics import escort_statistics, ratio_statistics, rollout_kl
from .precision import check_cpu_bf16
from .rollout_state import RolloutCheckpointMixin
from .validation import validate_dataset
from .vllm_cpu import cpu_colocate


class OPOTrainer(RolloutCheckpointMixin, GRPOTrainer):
    """
    Trainer for Orthogonalized Policy Optimization (OPO).

    OPO ([Wang, 2026](https://huggingface.co/papers/2601.12415)) is a drop-in replacement for [`GRPOTrainer`]: the
    same arguments, generation, rewards (reward functions, reward models or an environment's `get_reward`), PEFT,
    DeepSpeed and vLLM support. Two things change, and nothing else:

    - the loss is weighted by the escort drive instead of the advantages: by default the alpha-escort drive
      `g = w - mean(w)`, `w = exp((1 - alpha) * (A - c))`, computed per prompt group on the advantages of all processes
      and then sliced for this process (`_generate_and_score_completions`). Each batch carries it under `"opo_drive"`,
      beside TRL's own `"advantages"`, the scorable mask (`"opo_scorable"`), the rollout's mu (`"opo_mu"`) and each
      completion's row in the rollout (`"opo_row"`);
    - the clipped token loss becomes the per-sequence quadratic ratio loss `-g * Delta + (mu / 2) * Delta**2`
      (`_compute_loss`).

    The math lives in `opo_trl.core`, the drive of each `escort_form` in its entry of `opo_trl.core.ESCORT_FORMS`; this
    class only wires them into TRL, asking the form, never its name. `train_dataset` and `eval_dataset` are checked
    with [`~validation.validate_dataset`] before the model loads.

    Example:

    ```python
    from datasets import load_dataset
    from trl.rewards import accuracy_reward

    from opo_trl import OPOConfig, OPOTrainer

    dataset = load_dataset("trl-lib/DeepMath-103K", split="train")
    trainer = OPOTrainer(
        model="Qwen/Qwen2.5-0.5B-Instruct",
        reward_funcs=accuracy_reward,
        args=OPOConfig(output_dir="Qwen2.5-0.5B-OPO"),
        train_dataset=dataset,
    )
    trainer.train()
    ```
    """

    _tag_names = ["trl", "opo", "opo-trl"]
    _name = "OPO"
    _paper = {
        "title": "Policy Optimization as Orthogonal Projection in Hilbert Space (Orthogonalized Policy Optimization)",
        "id": "2601.12415",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{wang2026opo,
                title        = {{Policy Optimization as Orthogonal Projection in Hilbert Space}},
                author       = {Zixian Wang},
                year         = 2026,
                eprint       = {arXiv:2601.12415},
            }"""),
    }

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: OPOConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_classes=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
        tools=None,
        rollout_func=None,
        environment_factory=None,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = OPOConfig(f"{model_name.split('/')[-1]}-OPO")
        elif not isinstance(args, OPOConfig):
            raise TypeError(
                f"OPOTrainer needs an OPOConfig, got {type(args).__name__}. OPOConfig accepts every GRPOConfig "
                "argument: replace `GRPOConfig(...)` with `OPOConfig(...)`."
            )
        # Bad data otherwise shows up as a KeyError in the first generation step, after the model has loaded.
        require_prompt = environment_factory is None
        validate_dataset(train_dataset, reward_funcs, "train", require_prompt=require_prompt)
        validate_dataset(eval_dataset, reward_funcs, "eval", require_prompt=require_prompt)
        check_cpu_bf16(args)
        # vLLM on a CPU (use_vllm and use_cpu) needs its own weight sync: opo_trl.vllm_cpu.
        with cpu_colocate(args):
            super().__init__(
                model,
                reward_funcs,
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                reward_processing_classes=reward_processing_classes,
                callbacks=callbacks,
                optimizers=optimizers,
                quantization_config=quantization_config,
                peft_config=peft_config,
                tools=tools,
                rollout_func=rollout_func,
                environment_factory=environment_factory,
            )
        # The completions table's Delta column: row of the last rollout -> Delta at the micro-batch that used it.
        self._opo_delta_by_row = {}
        _warn_where_opo_does_less(self)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # TRL returns the rewards of all processes; keep them to know which completions could not be scored.
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._opo_rewards_per_func = rewards_per_func
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        args = self.args

        # TRL's advantages (centred, optionally std-scaled) are already sliced per process. The escort mean needs
        # whole groups, and a group can straddle processes, so work on the gathered advantages and slice again.
        local_advantages = output["advantages"]
        advantages = self.accelerator.gather(local_advantages)
        scorable = ~torch.isnan(self._opo_rewards_per_func).all(dim=1)
        rank, n_local = self.accelerator.process_index, local_advantages.size(0)
        rows = torch.arange(rank * n_local, (rank + 1) * n_local, device=local_advantages.device)

        def log_reference(aggregation):
            local = sequence_log_prob(self._rollout_logps(output, mode), loss_mask(output), aggregation)
            return self.accelerator.gather(local)

        # The policy has not moved since generation: Delta = 0 (`log_ratio=None`). A form whose drive depends on Delta
        # gets it recomputed at every later optimizer step on this rollout (`_refresh_drive`), from TRL's advantages
        # and the scorable mask kept in the batch.
        escort = self._escort_form.drive(args, EscortBatch(advantages, num_generations, scorable, None, log_reference))
        if args.mu_target_chi2 is None:
            mu = torch.tensor(args.mu, device=advantages.device)
        else:
            mu = trust_region_mu(
                escort.drive, args.mu_target_chi2, scorable=scorable, mu_min=args.mu_min, mu_max=args.mu_max
            )
        # Per sequence, so that they follow each completion through TRL's shuffling and splitting into micro-batches.
        # TRL's "advantages" stay what TRL computed; OPO's loss reads the drive.
        output["opo_drive"] = escort.drive[rows]
        output["opo_scorable"] = scorable[rows]
        output["opo_mu"] = mu.to(local_advantages.dtype).expand(n_local).clone()
        output["opo_row"] = rows

        if self.log_completions:
            # The completions table shows OPO's drive, not GRPO's advantage, in its "advantage" column.
            table, drive = self._logs["advantages"], escort.drive.tolist()
            for k in range(1, min(len(table), len(drive)) + 1):
                table[-k] = drive[-k]
            self._opo_delta_by_row = {}

        self._log_escort(mode, escort, num_generations, mu, scorable)
        return output

    def _log_escort(self, mode, escort, num_generations, mu, scorable):
        stats = escort_statistics(escort, num_generations, mu, scorable=scorable)
        stats["mu"] = float(mu)
        for name, value in stats.items():
            self._metrics[mode][f"opo/{name}"].append(value)

    @property
    def _escort_form(self):
        return ESCORT_FORMS[self.args.escort_form]

    def _prepare_inputs(self, generation_batch):
        step, buffered = self._step, self._buffered_inputs
        inputs = super()._prepare_inputs(generation_batch)
        # A drive that depends on the current policy (the softmax mixture's p): at the first micro-batch of every
        # optimizer step that reuses a rollout, recompute the drive of the whole rollout (a group's completions are
        # spread over the rollout's micro-batches and over processes, so no micro-batch can do it alone).
        if (
            self.model.training
            and self._escort_form.refresh_each_step
            and self._buffered_inputs is buffered
            and step % self.args.gradient_accumulation_steps == 0
        ):
            self._refresh_drive()
        return inputs

    def _refresh_drive(self):
        """Recompute the drive of the buffered rollout from the policy's current log-ratios."""
        args, chunks = self.args, self._buffered_inputs
        deltas = []
        for chunk in chunks:
            if chunk.get("old_per_token_logps") is None:
                raise RuntimeError(f"escort_form={args.escort_form!r} reuses a rollout without its old log-probs.")
            logps = self._current_logps(chunk, args.per_device_train_batch_size)
            deltas.append(
                sequence_log_ratio(logps, chunk["old_per_token_logps"], loss_mask(chunk), args.log_ratio_aggregation)
            )
        advantages, scorable, delta = self._gather_rollout(
            [c["advantages"] for c in chunks], [c["opo_scorable"] for c in chunks], deltas
        )

        def log_reference(aggregation):
            (values,) = self._gather_rollout(
                [sequence_log_prob(c["old_per_token_logps"], loss_mask(c), aggregation) for c in chunks]
            )
            return values

        batch = EscortBatch(advantages, self.num_generations, scorable.bool(), delta, log_reference)
        escort = self._escort_form.drive(args, batch)
        for chunk in chunks:
            chunk["opo_drive"] = escort.drive[chunk["opo_row"]].to(chunk["opo_drive"].dtype)
        mu = args.mu if args.mu_target_chi2 is None else chunks[0]["opo_mu"][0]
        self._log_escort("train", escort, self.num_generations, mu, batch.scorable)

    def _gather_rollout(self, *columns):
        """
        Per-completion values of the buffered rollout, one list of per-micro-batch tensors each, gathered from all
        processes in the rollout's order (by `opo_row`), in the dtype of the last.
        """
        dtype = columns[-1][0].dtype
        rows = torch.cat([c["opo_row"].to(dtype) for c in self._buffered_inputs])
        local = torch.stack([rows, *(torch.cat([v.to(dtype) for v in column]) for column in columns)], dim=1)
        gathered = self.accelerator.gather(local)
        return gathered[torch.argsort(gathered[:, 0]), 1:].unbind(1)

    def _upgrade_buffered_inputs(self, buffered_inputs, saved_format):
        buffered_inputs = super()._upgrade_buffered_inputs(buffered_inputs, saved_format)
        if saved_format == 1:
            # Format 1 held OPO's drive under "advantages", and TRL's advantages under "opo_advantage" for a form that
            # refreshes its drive (for the others they were not kept).
            for chunk in buffered_inputs:
                if "opo_mu" in chunk and "opo_drive" not in chunk:
                    chunk["opo_drive"] = chunk.pop("advantages")
                    if "opo_advantage" in chunk:
                        chunk["advantages"] = chunk.pop("opo_advantage")
        return buffered_inputs

    def _rollout_logps(self, output, mode):
        """Token log-probs of the completions under the rollout policy pi_k."""
        # TRL computes them whenever a rollout is reused or vLLM's sampler is corrected: with vLLM these are the
        # trainer's own log-probs at generation time, the same pi_k that Delta is measured against.
        if output.get("old_per_token_logps") is not None:
            return output["old_per_token_logps"]
        # Otherwise the policy has not moved since generation: one no-grad forward.
        batch_size = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        return self._current_logps(output, batch_size)

    def _current_logps(self, batch, batch_size):
        """Token log-probs of a batch's completions under the current policy: one no-grad forward, TRL's own helper."""
        input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            logps, _, _ = self._get_per_token_logps_and_entropies(
                self.model,
                input_ids,
                attention_mask,
                batch["completion_ids"].size(1),
                batch_size=batch_size,
                **{key: batch[key] for key in MULTIMODAL_KEYS if key in batch},
            )
        return logps

    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = loss_mask(inputs)

        per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **{key: inputs.get(key) for key in MULTIMODAL_KEYS},
        )
        # Without a reused rollout TRL skips the old log-probs: pi_k = pi_theta, so Delta = 0 but carries the gradient.
        old_per_token_logps = inputs.get("old_per_token_logps")
        if old_per_token_logps is None:
            old_per_token_logps = per_token_logps.detach()

        importance_weight = None
        if self.use_vllm and self.vllm_importance_sampling_correction:
            importance_weight = sequence_importance_weight(inputs["importance_sampling_ratio"], mask)
        # One mu per sequence, set at generation (fixed, or chosen per rollout with mu_target_chi2).
        mu = inputs["opo_mu"]
        out = opo_sequence_loss(
            per_token_logps,
            old_per_token_logps,
            mask,
            inputs["opo_drive"],
            mu,
            aggregation=self.args.log_ratio_aggregation,
            ratio_form=self.args.ratio_form,
            importance_weight=importance_weight,
            ref_per_token_logps=inputs.get("ref_per_token_logps"),
            beta=self.beta,
            kl_ratio_correction=self.args.use_bias_correction_kl,
            log_ratio_clip=self.args.log_ratio_clip if self._escort_form.clip_quadratic else None,
        )

        mode = "train" if self.model.training else "eval"
        # TRL turns off the Trainer's own gradient-accumulation scaling (`loss_is_scaled_for_ga`), so scale here.
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        loss = out.loss.mean()
        policy_loss = loss.detach()
        loss = loss / normalizer
        if self._entropy_bonus_enabled:
            # TRL's static entropy bonus, beside the policy term and independent of how that term is normalised.
            loss = loss - self.entropy_coef * entropy_bonus(entropies, mask) / normalizer
            # TRL's keys, with TRL's meaning: the loss before the bonus, so that policy_loss - loss = coef * entropy.
            self._metrics[mode]["policy_loss"].append(self.accelerator.gather(policy_loss).nanmean().item())
            if mode == "train" and self.accelerator.sync_gradients:
                self._metrics[mode]["entropy_coef"].append(self.entropy_coef)
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / normalizer
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather(aux_loss.detach()).mean().item())

        kl = rollout_kl(per_token_logps, old_per_token_logps)
        self._log_loss_metrics(mode, mask, entropies, out, inputs, mu, policy_loss, kl)
        return loss

    def _log_loss_metrics(self, mode, mask, entropies, out, inputs, mu, policy_loss, kl_to_rollout):
        def global_masked_mean(x):
            return masked_mean(x, mask, sum_processes=lambda t: self.accelerator.reduce(t, reduction="sum")).item()

        metrics = self._metrics[mode]
        metrics["entropy"].append(global_masked_mean(entropies))
        metrics["rollout_kl"].append(global_masked_mean(kl_to_rollout))
        if out.kl is not None:
            metrics["kl"].append(global_masked_mean(out.kl))
        # One value per sequence from every process: these are what the paper's claims are about.
        drive = inputs["opo_drive"]
        rows = inputs.get("opo_row", torch.full_like(drive, -1))
        per_sequence = torch.stack([out.delta.detach(), drive.detach(), mu.to(drive.dtype), rows.to(drive.dtype)], 1)
        delta, drive, mu, rows = self.accelerator.gather(per_sequence).unbind(1)
        for name, value in ratio_statistics(delta, drive, mu, self.args.ratio_form).items():
            metrics[f"opo/{name}"].append(value)
        metrics["opo/policy_loss"].append(self.accelerator.gather(policy_loss).mean().item())
        if self.log_completions:
            self._opo_delta_by_row.update(zip(rows.long().tolist(), delta.tolist(), strict=True))

    def log(self, logs, start_time=None):
        mode = "train" if self.model.training else "eval"
        # The paper's gradient-response efficiency: gradient norm per unit of drive (half its range in a group).
        half_ranges = self._metrics[mode].get("opo/drive/half_range")
        if "grad_norm" in logs and half_ranges:
            half_range = sum(half_ranges) / len(half_ranges)
            if half_range > 0 and math.isfinite(float(logs["grad_norm"])):
                logs["opo/grad_response"] = float(logs["grad_norm"]) / half_range
        if self.log_completions:
            rows = range(len(self._logs["prompt"]))
            self._logs["extra"]["delta"].clear()
            self._logs["extra"]["delta"].extend(self._opo_delta_by_row.get(i, float("nan")) for i in rows)
        super().log(logs, start_time)


# Multimodal inputs of GRPOTrainer's forward pass, as its generation output carries them.
MULTIMODAL_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


def loss_mask(batch):
    """The tokens a batch's loss and statistics count: `completion_mask`, times `tool_mask` when the batch has one."""
    mask = batch["completion_mask"]
    return mask if batch.get("tool_mask") is None else mask * batch["tool_mask"]


def _warn_where_opo_does_less(trainer) -> None:
    """One warning at trainer start for each setting under which OPO quietly does less than it was asked to."""
    args = trainer.args
    generate_every = args.steps_per_generation * args.num_iterations
    if args.gradient_accumulation_steps % generate_every == 0:
        mu = "mu_target_chi2" if args.mu_target_chi2 is not None else "mu"
        warnings.warn(
            f"OPO's {mu}={getattr(args, mu)} has no effect: every rollout is used for exactly one optimizer step "
            f"(steps_per_generation={args.steps_per_generation}, gradient_accumulation_steps="
            f"{args.gradient_accumulation_steps}, num_iterations={args.num_iterations}), so Delta = 0 and the update "
            f"is REINFORCE weighted by the escort drive. For the chi-square trust region to act, reuse each rollout: "
            f"e.g. steps_per_generation={2 * args.gradient_accumulation_steps} or num_iterations=2.",
            UserWarning,
            stacklevel=3,
        )
    if args.multi_objective_aggregation == "normalize_then_sum":
        warnings.warn(
            f"multi_objective_aggregation='normalize_then_sum' overrides scale_rewards={args.scale_rewards!r}: TRL "
            "normalises each reward function per group and the sum by the batch std before OPO's escort drive sees "
            "the advantages. Use multi_objective_aggregation='sum_then_normalize' for scale_rewards to apply.",
            UserWarning,
            stacklevel=3,
        )
    if trainer.use_vllm and trainer.vllm_importance_sampling_correction:
        if args.vllm_importance_sampling_mode.startswith("token"):
            warnings.warn(
                f"vllm_importance_sampling_mode={args.vllm_importance_sampling_mode!r} is applied by OPO as one weight "
                "per sequence, the masked mean of the token ratios, because OPO's loss is per sequence. Use "
                "'sequence_mask' or 'sequence_truncate' for TRL's own sequence-level correction.",
                UserWarning,
                stacklevel=3,
            )
