# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
The algorithms `opo-trl` trains and compares: OPO and the GRPO-family baselines, each as a trainer, a config class and
the `GRPOConfig` settings that define it in TRL 1.16. The command, the comparison harness, the benchmarks and the tests
all read this one table.
"""

from dataclasses import dataclass, field

from trl import GRPOConfig, GRPOTrainer

from .config import OPOConfig
from .rollout_state import RolloutCheckpointMixin
from .trainer import OPOTrainer


class BaselineTrainer(RolloutCheckpointMixin, GRPOTrainer):
    """TRL's `GRPOTrainer` unchanged, but for checkpoints that hold the pending rollout, as OPOTrainer's do."""


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
