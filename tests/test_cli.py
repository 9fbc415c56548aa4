"""The `opo-trl` command: parsing, recipes, errors, and a two-step run of a tiny model end to end."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset
from trl import GRPOConfig

from opo_trl import OPOConfig
from opo_trl.cli import BASELINES, RECIPES_DIR, main, parse_train_args
from opo_trl.data import validate_dataset
from opo_trl.rewards import accuracy_reward


RECIPES = sorted(p for p in RECIPES_DIR.glob("*.yaml"))


def write(tmp_path, recipe: dict, name="recipe.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def tiny_recipe(tmp_path, model_path, **overrides):
    recipe = {
        "model_name_or_path": model_path,
        "dataset_name": "arithmetic",
        "num_train_samples": 16,
        "num_test_samples": 4,
        "max_operand": 9,
        "reward_funcs": ["accuracy", "format"],
        "output_dir": str(tmp_path / "out"),
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "save_strategy": "no",
        "gradient_checkpointing": False,
        "per_device_train_batch_size": 4,
        "num_generations": 4,
        "max_completion_length": 8,
        "max_steps": 2,
        "logging_steps": 1,
        "learning_rate": 1e-3,
    }
    recipe.update(overrides)
    return recipe


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_parses(recipe):
    assert RECIPES, "no recipes found"
    # GPU recipes ask for bf16, which TrainingArguments only accepts on a CPU-only machine with use_cpu.
    cpu = [] if torch.cuda.is_available() else ["--use_cpu", "true"]
    script_args, training_args, model_args, _ = parse_train_args(["--config", str(recipe), *cpu])
    expected = OPOConfig if script_args.algorithm == "opo" else GRPOConfig
    assert type(training_args) is expected
    assert model_args.model_name_or_path


def test_a_trl_grpo_recipe_parses_unchanged(tmp_path):
    recipe = {
        "model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct",
        "dataset_name": "trl-lib/DeepMath-103K",
        "reward_funcs": ["accuracy_reward"],
        "output_dir": str(tmp_path / "out"),
        "learning_rate": 1e-6,
        "loss_type": "grpo",
        "beta": 0.0,
        "num_generations": 8,
        "use_peft": True,
        "lora_r": 16,
        "lora_target_modules": ["q_proj", "v_proj"],
        "use_cpu": True,
        "bf16": False,
    }
    with pytest.warns(UserWarning, match="loss_type='grpo'"):
        script_args, args, model_args, _ = parse_train_args(["--config", write(tmp_path, recipe)])
    assert isinstance(args, OPOConfig) and args.loss_type == "grpo" and args.num_generations == 8
    assert model_args.use_peft and model_args.lora_r == 16
    assert script_args.reward_funcs == ["accuracy_reward"]


def test_command_line_overrides_the_recipe(tmp_path):
    path = write(tmp_path, tiny_recipe(tmp_path, "m", alpha=0.2, learning_rate=1e-3))
    _, args, _, _ = parse_train_args(["--config", path, "--alpha", "0.7", "--learning_rate", "5e-4"])
    assert (args.alpha, args.learning_rate, args.mu) == (0.7, 5e-4, 1.0)


@pytest.mark.parametrize("algorithm", ["grpo", "dapo", "gspo"])
def test_algorithm_switch_gives_grpo_config_with_the_baseline_settings(tmp_path, algorithm):
    path = write(tmp_path, tiny_recipe(tmp_path, "m", alpha=0.2, mu=3.0, learning_rate=2e-3))
    script_args, args, _, _ = parse_train_args(["--config", path, "--algorithm", algorithm, "--mu", "2"])
    assert type(args) is GRPOConfig and script_args.algorithm == algorithm
    for key, value in BASELINES[algorithm].items():
        assert getattr(args, key) == value, key
    assert args.learning_rate == 2e-3 and args.num_generations == 4  # everything else is the recipe's


def test_unknown_key_fails_with_the_closest_valid_key(tmp_path):
    path = write(tmp_path, {**tiny_recipe(tmp_path, "m"), "learning_rat": 1e-3})
    with pytest.raises(ValueError, match="'learning_rat'.*Did you mean 'learning_rate'"):
        parse_train_args(["--config", path])
    with pytest.raises(ValueError, match="'alpah'.*Did you mean 'alpha'"):
        parse_train_args(["--config", write(tmp_path, tiny_recipe(tmp_path, "m"), "ok.yaml"), "--alpah", "0.3"])


def test_invalid_algorithm_and_missing_recipe(tmp_path):
    with pytest.raises(ValueError, match="algorithm='ppo' is invalid"):
        parse_train_args(["--config", write(tmp_path, tiny_recipe(tmp_path, "m")), "--algorithm", "ppo"])
    with pytest.raises(FileNotFoundError, match="Recipe not found"):
        parse_train_args(["--config", str(tmp_path / "nope.yaml")])


def test_dataset_checks_name_the_missing_column():
    no_answer = Dataset.from_dict({"prompt": ["1+1="], "solution": ["2"]})
    with pytest.raises(ValueError, match="'accuracy_reward' needs a 'answer' column"):
        validate_dataset(no_answer, [accuracy_reward], "train")
    with pytest.raises(ValueError, match="no 'prompt' column"):
        validate_dataset(Dataset.from_dict({"question": ["1+1="]}), [accuracy_reward], "train")
    with pytest.raises(ValueError, match="empty"):
        validate_dataset(Dataset.from_dict({"prompt": []}), [accuracy_reward], "train")


def test_unknown_reward_name_fails_before_the_model_loads(tmp_path):
    path = write(tmp_path, tiny_recipe(tmp_path, str(tmp_path / "does-not-exist"), reward_funcs=["acuracy"]))
    with pytest.raises(ValueError, match="Did you mean 'accuracy'"):
        main(["train", "--config", path])


@pytest.mark.slow
def test_two_step_training_run_through_the_command(tmp_path, tiny_model_path, capsys):
    path = write(tmp_path, tiny_recipe(tmp_path, tiny_model_path, heldout_eval=True))
    assert main(["train", "--config", path, "--max_steps", "2", "--mu", "2.0"]) == 0
    out = Path(tmp_path / "out")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "opo" and 0.0 <= summary["heldout_accuracy_after"] <= 1.0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(m.get("step", 0) for m in metrics) == 2
    assert any("opo/drive/abs_mean" in m for m in metrics)
    assert (out / "reward_curve.png").stat().st_size > 1000
    assert (out / "model.safetensors").exists()
    assert "held-out accuracy: before" in capsys.readouterr().out


@pytest.mark.slow
def test_baseline_runs_through_the_same_command(tmp_path, tiny_model_path):
    path = write(tmp_path, tiny_recipe(tmp_path, tiny_model_path, alpha=0.3))
    assert main(["train", "--config", path, "--algorithm", "dapo", "--max_steps", "1"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["algorithm"] == "dapo"
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert any("clip_ratio/region_mean" in m for m in metrics) and not any("opo/chi2" in m for m in metrics)


def test_baseline_recipes_differ_from_opo_only_in_the_algorithm():
    opo = yaml.safe_load((RECIPES_DIR / "math_l3_qwen3-1.7b_opo.yaml").read_text())
    for algorithm in ("grpo", "dapo", "gspo"):
        baseline = yaml.safe_load((RECIPES_DIR / f"math_l3_qwen3-1.7b_{algorithm}.yaml").read_text())
        assert {k: v for k, v in baseline.items() if k != "algorithm"} == {k: v for k, v in opo.items() if k != "algorithm"}
        assert baseline["algorithm"] == algorithm
