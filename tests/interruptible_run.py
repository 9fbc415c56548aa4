"""
A training run that saves a checkpoint every step, for the SIGTERM test of `test_checkpoints.py`.

    python -m tests.interruptible_run MODEL_PATH OUTPUT_DIR

Run from the repository root. At its `STOP_CALL`-th call the reward function writes `OUTPUT_DIR/reward-call-<n>` and
then waits, so the test knows exactly where the run is when it sends the signal: in step n's reward computation, with
the checkpoints of steps 1..n-1 complete.
"""

import sys
import time
from pathlib import Path

from datasets import Dataset

from . import conftest


MAX_STEPS = 4
STOP_CALL = 2
# How long each reward call waits after writing its marker: long enough that the test's signal always lands in it.
WAIT_S = 120.0


def make_reward(output_dir: str | None, wait_s: float):
    calls = []

    def distinct_chars(completions, **kwargs):
        calls.append(1)
        if output_dir is not None and len(calls) == STOP_CALL:
            Path(output_dir, f"reward-call-{len(calls)}").touch()
            time.sleep(wait_s)
        return [float(len(set(c))) / 8 for c in completions]

    return distinct_chars


def make_trainer(model_path: str, output_dir: str, marked: bool = True):
    dataset = Dataset.from_dict({"prompt": [f"{a}+{b}=" for a in range(4) for b in range(4)]})
    reward = make_reward(output_dir if marked else None, WAIT_S)
    return conftest.make_trainer(
        output_dir, model_path, dataset, reward, max_steps=MAX_STEPS, max_completion_length=4,
        save_strategy="steps", save_steps=1,
    )  # fmt: skip


if __name__ == "__main__":
    model_path, output_dir = sys.argv[1:3]
    make_trainer(model_path, output_dir).train()


def marked_reward(completions, **kwargs):
    """
    A reward for `opo-trl train` runs under test (`reward_funcs: [tests.interruptible_run.marked_reward]`): call n
    writes `$OPO_TRL_TEST_MARKERS/reward-call-<n>` and, from call `$OPO_TRL_TEST_WAIT_AT` on, waits for a signal.
    """
    import os

    marked_reward.calls = getattr(marked_reward, "calls", 0) + 1
    Path(os.environ["OPO_TRL_TEST_MARKERS"], f"reward-call-{marked_reward.calls}").touch()
    if marked_reward.calls >= int(os.environ["OPO_TRL_TEST_WAIT_AT"]):
        time.sleep(WAIT_S)
    return [float(len(set(c if isinstance(c, str) else c[-1]["content"]))) / 8 for c in completions]
