"""
GPU check: OPOTrainer against GRPOTrainer in bf16 on one GPU, with DeepSpeed ZeRO-2, ZeRO-3 and LoRA, on a randomly
initialised ~0.5B-parameter Qwen2 model (no hub, no network). Prints step time and peak GPU memory of each, and the
OPO/GRPO ratios. Run by scripts/gpu_check.sh; one case per process so peak memory is the case's own:

    python scripts/gpu_check.py                  # all cases, each in a fresh `accelerate launch`
    python scripts/gpu_check.py --case zero2 --trainer opo   # one case in this process (what the launcher runs)
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


CASES = {"zero2": "zero2.yaml", "zero3": "zero3.yaml", "lora": None}
STEPS = 6


def run_case(case, trainer_name, out):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, Qwen2Config

    from opo_trl.harness.algorithms import tiny_trainer
    from opo_trl.harness.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model_dir = Path(out) / "model-0.5b"
    if not (model_dir / "config.json").exists():
        torch.manual_seed(0)
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=1280,
            intermediate_size=3456,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            dtype="bfloat16",
        )
        model = AutoModelForCausalLM.from_config(config)
        print(f"[gpu_check] model parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M", flush=True)
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)

    dataset = Dataset.from_dict({"prompt": [f"{a}+{b}=" for a in range(40) for b in range(40)]})

    def reward(completions, **kwargs):
        return [float(len(set(c))) / 10 for c in completions]

    peft_config = (
        LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM") if case == "lora" else None
    )
    # `trainer_name` is "opo" or "grpo": the algorithm table's trainer and settings, on the GPU in bf16.
    trainer = tiny_trainer(
        trainer_name, str(model_dir), reward, dataset, Path(out) / f"{case}-{trainer_name}", cpu=False,
        trainer_kwargs={"peft_config": peft_config}, bf16=True, max_steps=STEPS, learning_rate=1e-6,
        per_device_train_batch_size=16, num_generations=8, gradient_accumulation_steps=2, steps_per_generation=4,
        max_completion_length=256, gradient_checkpointing=True, model_init_kwargs={"dtype": torch.bfloat16},
    )  # fmt: skip
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    step_times = [e["step_time"] for e in trainer.state.log_history if "step_time" in e][1:]  # drop the warm-up
    if trainer.accelerator.is_main_process:
        result = {
            "case": case,
            "trainer": trainer_name,
            "median_step_s": statistics.median(step_times),
            "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30,
            "wall_s": wall,
        }
        print("[gpu_check] RESULT " + json.dumps(result), flush=True)
        Path(out, f"{case}-{trainer_name}.json").write_text(json.dumps(result))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=list(CASES))
    parser.add_argument("--trainer", choices=["opo", "grpo"])
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_check"))
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.case:
        return run_case(args.case, args.trainer, args.out)

    results = {}
    for case, accelerate_config in CASES.items():
        for trainer in ("grpo", "opo"):
            launcher = [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                "--num_processes",
                "1",
                "--mixed_precision",
                "bf16",
            ]
            if accelerate_config:  # TRL's shipped accelerate configs, as `opo-trl train --accelerate_config` uses them
                from importlib.resources import files

                launcher += ["--config_file", str(files("trl.accelerate_configs").joinpath(accelerate_config))]
            command = [*launcher, __file__, "--case", case, "--trainer", trainer, "--out", args.out]
            print(f"[gpu_check] {case} / {trainer}", flush=True)
            done = subprocess.run(command, timeout=300)
            path = Path(args.out, f"{case}-{trainer}.json")
            results[case, trainer] = json.loads(path.read_text()) if done.returncode == 0 and path.exists() else None

    print("\n| case | trainer | median step (s) | peak GPU memory (GiB) |\n|---|---|---|---|")
    for (case, trainer), r in results.items():
        print(
            f"| {case} | {trainer} | "
            + (f"{r['median_step_s']:.2f} | {r['peak_gpu_gib']:.2f} |" if r else "FAILED | |")
        )
    print("\n| case | OPO/GRPO step time | OPO/GRPO peak memory |\n|---|---|---|")
    for case in CASES:
        opo, grpo = results[case, "opo"], results[case, "grpo"]
        if opo and grpo:
            print(
                f"| {case} | {opo['median_step_s'] / grpo['median_step_s']:.3f} | {opo['peak_gpu_gib'] / grpo['peak_gpu_gib']:.3f} |"
            )
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
