"""
One OPO step on fixed completions, run by 1 or 2 processes (gloo), for the multi-process equivalence test.

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 tests/distributed/equivalence.py OUT_DIR MODEL_DIR ['{"alpha": 0.5}']

Completions come from a `rollout_func` that derives them from the prompt and the global row index, so a 1-process
and a 2-process run see the very same completions and rewards. With 12 rows per step and G = 4, the second prompt's
group straddles the two processes. An optional third argument, a JSON mapping, overrides OPOConfig fields.
"""

import json
import sys

import torch
from datasets import Dataset

from opo_trl.core import sequence_log_prob
from opo_trl.harness.algorithms import tiny_trainer


ROWS_PER_STEP, G = 12, 4


def rollout_func(prompts, trainer):
    tokenizer = trainer.processing_class
    rank, n = trainer.accelerator.process_index, len(prompts)
    prompt_ids, completion_ids = [], []
    for i, prompt in enumerate(prompts):
        index = rank * n + i
        prompt_ids.append(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        text = (prompt[-3:] + "0123456789"[: 1 + (index * 7) % 9])[: 4 + index % 5]
        completion_ids.append(tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}


def reward(completions, **kwargs):
    return [float(sum(ch.isdigit() for ch in c)) - 0.1 * len(c) for c in completions]


def main(out_dir, model_dir, overrides=None):
    dataset = Dataset.from_dict({"prompt": [f"{a}+{b}=" for a in range(6) for b in range(6)]})
    settings = dict(
        learning_rate=1e-2,
        max_steps=1,
        num_generations=G,
        max_completion_length=16,
        alpha=0.3,
        per_device_train_batch_size=ROWS_PER_STEP // int(__import__("os").environ.get("WORLD_SIZE", "1")),
    )
    trainer = tiny_trainer(
        "opo", model_dir, reward, dataset, out_dir, trainer_kwargs={"rollout_func": rollout_func},
        **{**settings, **(overrides or {})},
    )  # fmt: skip

    seen = {}
    generate, rollout_logps = trainer._generate_and_score_completions, trainer._rollout_logps

    def record_reference(output, mode):
        logps = rollout_logps(output, mode)
        local = sequence_log_prob(logps, output["completion_mask"], "sum")
        seen["log_reference"] = trainer.accelerator.gather(local).tolist()
        return logps

    def record(inputs):
        output = generate(inputs)
        seen["prompts"] = trainer.accelerator.gather_for_metrics([x["prompt"] for x in inputs])
        seen["drive"] = trainer.accelerator.gather(output["opo_drive"]).tolist()
        seen["local_drive"] = output["opo_drive"].tolist()
        seen["rewards"] = trainer._opo_rewards_per_func[:, 0].tolist()
        seen["mu"] = trainer.accelerator.gather(output["opo_mu"]).tolist()
        return output

    def record_refresh():
        refresh()
        # The drive of every completion after the softmax mixture's refresh, in global row order.
        chunks = trainer._buffered_inputs
        local = torch.stack(
            [torch.cat([c["opo_row"].float() for c in chunks]), torch.cat([c["opo_drive"] for c in chunks])], 1
        )
        rows, drive = trainer.accelerator.gather(local).unbind(1)
        seen["refreshed_drive"] = drive[rows.argsort()].tolist()

    refresh = trainer._refresh_drive
    trainer._generate_and_score_completions = record
    trainer._rollout_logps = record_reference
    trainer._refresh_drive = record_refresh
    trainer.train()
    if trainer.accelerator.is_main_process:
        params = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        step = next(e for e in trainer.state.log_history if "grad_norm" in e)
        seen["losses"] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        json.dump(
            {
                **seen,
                "params": params.tolist(),
                "grad_norm": step["grad_norm"],
                "loss": step["loss"],
                "world_size": trainer.accelerator.num_processes,
            },
            open(f"{out_dir}/result.json", "w"),
        )
    trainer.accelerator.wait_for_everyone()
    trainer.end()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else None)
