"""
A slow training run that saves a checkpoint every step, for the SIGTERM test of `test_reliability.py`.

    python -m tests.interruptible_run MODEL_PATH OUTPUT_DIR

Run from the repository root. The reward function sleeps, so that each step is slow enough to be killed in the middle.
"""

import sys
import time

from datasets import Dataset

from opo_trl import OPOConfig, OPOTrainer

from .conftest import cpu_config_kwargs


MAX_STEPS = 4
REWARD_DELAY_S = 0.3


def make_reward(delay_s: float):
    def distinct_chars(completions, **kwargs):
        time.sleep(delay_s)
        return [float(len(set(c))) / 8 for c in completions]

    return distinct_chars


def make_trainer(model_path: str, output_dir: str, reward_delay_s: float = REWARD_DELAY_S) -> OPOTrainer:
    args = OPOConfig(
        **cpu_config_kwargs(
            output_dir, max_steps=MAX_STEPS, max_completion_length=4, save_strategy="steps", save_steps=1
        )
    )
    dataset = Dataset.from_dict({"prompt": [f"{a}+{b}=" for a in range(4) for b in range(4)]})
    return OPOTrainer(model=model_path, reward_funcs=make_reward(reward_delay_s), args=args, train_dataset=dataset)


if __name__ == "__main__":
    model_path, output_dir = sys.argv[1:3]
    make_trainer(model_path, output_dir).train()
