"""
DeepSpeed ZeRO-2 and ZeRO-3, with and without LoRA, through `opo-trl train --accelerate_config zero2|zero3`: TRL's own
accelerate configs, launched the way `trl grpo` launches them, on 2 CPU processes (DeepSpeed's CPU accelerator, gloo).
"""

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import failure_report, free_port, run_distributed, tiny_recipe


pytest.importorskip("deepspeed")

LORA = ["--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj", "v_proj"]


def launch(tmp_path, model_path, stage, extra=()):
    out = tmp_path / f"zero{stage}{'-lora' if extra else ''}"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            tiny_recipe(
                tmp_path, model_path, reward_funcs=["tests.conftest.distinct_chars_reward"], output_dir=str(out)
            )
        )
    )
    command = [sys.executable, "-m", "opo_trl.harness.cli", "train", "--config", str(recipe), "--use_cpu", "true", *extra,
               "--accelerate_config", f"zero{stage}", "--num_processes", "2", "--mixed_precision", "no",
               "--main_process_port", str(free_port())]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    result = run_distributed(command, env)
    assert result.returncode == 0, failure_report(result)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, metrics


def first_grad_norm(metrics):
    return next(m["grad_norm"] for m in metrics if "grad_norm" in m)


@pytest.mark.multiprocess
def test_zero2_and_zero3_train_and_agree(tmp_path, tiny_model_path):
    out2, metrics2 = launch(tmp_path, tiny_model_path, 2)
    out3, metrics3 = launch(tmp_path, tiny_model_path, 3)
    for metrics in (metrics2, metrics3):
        assert max(m.get("step", 0) for m in metrics) == 2
        assert any("opo/drive/abs_mean" in m for m in metrics)
    # Same data, same seed, same model: partitioning the optimizer (ZeRO-2) or also the parameters (ZeRO-3) must not
    # change the first gradient.
    assert first_grad_norm(metrics2) > 0
    assert first_grad_norm(metrics3) == pytest.approx(first_grad_norm(metrics2), rel=1e-4)
    assert (out2 / "model.safetensors").exists() and (out3 / "model.safetensors").exists()


@pytest.mark.multiprocess
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_with_lora_saves_an_adapter(tmp_path, tiny_model_path, stage):
    out, metrics = launch(tmp_path, tiny_model_path, stage, LORA)
    assert first_grad_norm(metrics) > 0
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    assert not (out / "model.safetensors").exists()
