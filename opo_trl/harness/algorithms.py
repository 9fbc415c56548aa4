# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
The algorithms `opo-trl` trains and compares: OPO and the GRPO-family baselines, each as a trainer, a config class and
the `GRPOConfig` settings that define it in TRL 1.16. The command, the comparison harness, the benchmarks and the tests
all read this one table.
"""

from dataclasses import dataclass, field

from trl import GRPOConfig, GRPOTrainer

from ..config import OPOConfig
from ..core import masked_mean
from ..diagnostics import rollout_kl
from ..rollout_state import RolloutCheckpointMixin
from ..trainer import OPOTrainer, loss_mask


class BaselineTrainer(RolloutCheckpointMixin, GRPOTrainer):
    """
    TRL's `GRPOTrainer` unchanged, but for checkpoints that hold the pending rollout, as OPOTrainer's do, and one more
    metric, `rollout_kl` (as OPOTrainer logs it): how far a reused rollout's policy has moved from the one that sampled
    it, which TRL does not log.
    """

    _loss_inputs = None

    def _compute_loss(self, model, inputs):
        self._loss_inputs = inputs  # read by the policy forward below, the only one inside `_compute_loss`
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._loss_inputs = None

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        output = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        inputs = self._loss_inputs
        if inputs is not None:
            logps = output[0]
            old = inputs.get("old_per_token_logps")
            kl = rollout_kl(logps, logps if old is None else old)
            mean = masked_mean(
                kl, loss_mask(inputs), sum_processes=lambda t: self.accelerator.reduce(t, reduction="sum")
            )
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["rollout_kl"].append(mean.item())
        return output


@dataclass(frozen=True)
class Algorithm:
    """
    One algorithm: the trainer and config classes that run it, and the settings that override a recipe's so that a
    comparison differs only in the algorithm.
    """

    name: str
    trainer_cls: type
    config_cls: type
    settings: dict = field(default_factory=dict)
    note: str = ""


ALGORITHMS = {
    "opo": Algorithm("opo", OPOTrainer, OPOConfig),
    "grpo": Algorithm(
        "grpo",
        BaselineTrainer,
        GRPOConfig,
        {"loss_type": "grpo", "scale_rewards": "group", "epsilon": 0.2, "epsilon_high": None},
    ),
    "dapo": Algorithm(
        "dapo",
        BaselineTrainer,
        GRPOConfig,
        {
            "loss_type": "dapo",
            "epsilon": 0.2,
            "epsilon_high": 0.28,
            "mask_truncated_completions": True,
            "scale_rewards": "none",
        },
        note="DAPO's dynamic sampling is not in TRL.",
    ),
    "gspo": Algorithm(
        "gspo",
        BaselineTrainer,
        GRPOConfig,
        {
            "importance_sampling_level": "sequence",
            "loss_type": "grpo",
            "epsilon": 3e-4,
            "epsilon_high": 4e-4,
            "scale_rewards": "group",
        },
    ),
}


def opo_only_fields() -> set[str]:
    """`OPOConfig` fields that `GRPOConfig` does not have: a baseline run drops them from a recipe."""
    import dataclasses

    return {f.name for f in dataclasses.fields(OPOConfig)} - {f.name for f in dataclasses.fields(GRPOConfig)}


# A trainer that runs on a CPU: what the tests and the benchmarks' probes build (`cpu=False` drops the first three).
CPU_SETTINGS = {"use_cpu": True, "bf16": False, "gradient_checkpointing": False}
QUIET_SETTINGS = {"report_to": "none", "save_strategy": "no", "logging_steps": 1, "seed": 0}


def tiny_trainer(
    algorithm: str, model, reward_funcs, train_dataset, output_dir, cpu: bool = True, trainer_kwargs=None, **config
):
    """
    A trainer of `algorithm` built from this table as `opo-trl train` builds one: the algorithm's config class with its
    settings, then `config` (which wins over them), for small runs without logging integrations or checkpoints.

    Args:
        algorithm (`str`): A key of `ALGORITHMS`.
        model (`str` or `PreTrainedModel`): The model, as `GRPOTrainer` takes it.
        reward_funcs: The reward function(s), as `GRPOTrainer` takes them.
        train_dataset (`Dataset`): Prompts.
        output_dir (`str` or `Path`): The run's output folder.
        cpu (`bool`, *optional*, defaults to `True`): Run on the CPU in float32, without gradient checkpointing.
        trainer_kwargs (`dict`, *optional*): Further trainer arguments (`peft_config`, `callbacks`, `rollout_func`).
        **config: Config fields, e.g. `num_generations=4` or `mu=2.0`.
    """
    spec = ALGORITHMS[algorithm]
    settings = {**(CPU_SETTINGS if cpu else {}), **QUIET_SETTINGS, **spec.settings, **config}
    args = spec.config_cls(output_dir=str(output_dir), **settings)
    return spec.trainer_cls(
        model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset, **(trainer_kwargs or {})
    )
