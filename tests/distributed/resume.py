"""
A short OPO run on 1 or 2 processes (gloo) with checkpoints mid-rollout, for the multi-process resume test.

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 tests/distributed/resume.py OUT_DIR MODEL_DIR full|stop|resume

`full` trains 5 steps; `stop` stops after step 3 (checkpoint-3, saved with a rollout still in use); `resume` resumes
from it. Each process writes the SHA-256 of its parameters' bytes to OUT_DIR/params-<rank>.txt.
"""

import hashlib
import sys
from pathlib import Path

from datasets import Dataset
from transformers import TrainerCallback

from opo_trl.harness.algorithms import tiny_trainer


def reward(completions, **kwargs):
    return [float(len(set(c))) / 8 for c in completions]


class StopAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= 3:
            control.should_training_stop = True


def main(out_dir, model_dir, mode):
    dataset = Dataset.from_dict({"prompt": [f"{a}+{b}=" for a in range(4) for b in range(4)]})
    callbacks = [StopAt()] if mode == "stop" else None
    trainer = tiny_trainer(
        "opo", model_dir, reward, dataset, out_dir, trainer_kwargs={"callbacks": callbacks},
        per_device_train_batch_size=4, num_generations=4, max_completion_length=4, learning_rate=1e-2, max_steps=5,
        steps_per_generation=2, num_iterations=2, save_strategy="steps", save_steps=3,
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=f"{out_dir}/checkpoint-3" if mode == "resume" else None)
    digest = hashlib.sha256()
    for p in trainer.model.parameters():
        digest.update(p.detach().cpu().numpy().tobytes())
    Path(out_dir, f"params-{trainer.accelerator.process_index}-{mode}.txt").write_text(digest.hexdigest())
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:4])
