"""Recipes and command-line values read into TRL's dataclasses: overrides, the algorithm switch, errors."""

import warnings
from pathlib import Path

import pytest
import torch
from trl import GRPOConfig

from opo_trl import OPOConfig
from opo_trl.harness.algorithms import ALGORITHMS
from opo_trl.harness.arguments import RECIPES_DIR, parse_command, parse_train_args, shipped_recipes

from .conftest import tiny_recipe, write_recipe


# The shipped recipes and the benchmarks' own (benchmarks/recipes/, not shipped).
RECIPES = sorted(
    [*RECIPES_DIR.glob("*.yaml"), *(Path(__file__).resolve().parents[1] / "benchmarks" / "recipes").glob("*.yaml")]
)


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
        script_args, args, model_args, _ = parse_train_args(["--config", write_recipe(tmp_path, recipe)])
    assert isinstance(args, OPOConfig) and args.loss_type == "grpo" and args.num_generations == 8
    assert model_args.use_peft and model_args.lora_r == 16
    assert script_args.reward_funcs == ["accuracy_reward"]


def test_command_line_overrides_the_recipe(tmp_path):
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, "m", alpha=0.2, learning_rate=1e-3))
    _, args, _, _ = parse_train_args(["--config", path, "--alpha", "0.7", "--learning_rate", "5e-4"])
    assert (args.alpha, args.learning_rate, args.mu) == (0.7, 5e-4, 1.0)


@pytest.mark.parametrize("algorithm", ["grpo", "dapo", "gspo"])
def test_algorithm_switch_gives_grpo_config_with_the_baseline_settings(tmp_path, algorithm):
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, "m", alpha=0.2, mu=3.0, learning_rate=2e-3))
    script_args, args, _, _ = parse_train_args(["--config", path, "--algorithm", algorithm, "--mu", "2"])
    assert type(args) is GRPOConfig and script_args.algorithm == algorithm
    for key, value in ALGORITHMS[algorithm].settings.items():
        assert getattr(args, key) == value, key
    assert args.learning_rate == 2e-3 and args.num_generations == 4  # everything else is the recipe's


def test_unknown_key_fails_with_the_closest_valid_key(tmp_path):
    path = write_recipe(tmp_path, {**tiny_recipe(tmp_path, "m"), "learning_rat": 1e-3})
    with pytest.raises(ValueError, match=r"'learning_rat' \(did you mean 'learning_rate'\?\)"):
        parse_train_args(["--config", path])
    with pytest.raises(ValueError, match=r"'alpah' \(did you mean 'alpha'\?\)"):
        parse_train_args(["--config", write_recipe(tmp_path, tiny_recipe(tmp_path, "m"), "ok.yaml"), "--alpah", "0.3"])


def test_invalid_algorithm_and_missing_recipe(tmp_path):
    with pytest.raises(ValueError, match="algorithm='ppo' is invalid"):
        parse_train_args(["--config", write_recipe(tmp_path, tiny_recipe(tmp_path, "m")), "--algorithm", "ppo"])
    with pytest.raises(FileNotFoundError, match="Recipe not found"):
        parse_train_args(["--config", str(tmp_path / "nope.yaml")])


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_shipped_recipes_parse_without_a_warning(name):
    # The GPU recipes set bf16: on a machine without one the config refuses it unless asked to use the CPU.
    cpu = [] if torch.cuda.is_available() else ["--use_cpu", "true"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parse_command(["--config", name, *cpu])
    assert [str(w.message) for w in caught] == []


def test_the_deprecated_gradient_checkpointing_key_still_works(tmp_path):
    # As in `trl grpo`: transformers maps it to activation_checkpointing, with its own FutureWarning.
    recipe = write_recipe(tmp_path, {"use_cpu": True, "bf16": False, "gradient_checkpointing": True})
    with pytest.warns(FutureWarning, match="`gradient_checkpointing` is deprecated"):
        args = parse_command(["--config", recipe]).training_args
    assert args.activation_checkpointing is True


def test_trls_own_deprecation_warnings_are_hidden_from_a_run(tiny_model_path):
    from transformers import AutoModelForCausalLM

    from opo_trl.harness.run import quiet_library_deprecations

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_library_deprecations()
        model.is_gradient_checkpointing  # what TRL 1.16 reads when it generates  # noqa: B018
    assert caught == []
