"""The algorithm table: the baselines' settings are valid GRPOConfig settings, and the paper's recipes differ only in them."""

import dataclasses

import yaml
from trl import GRPOConfig

from opo_trl.harness.algorithms import ALGORITHMS
from opo_trl.harness.arguments import RECIPES_DIR


def test_baseline_recipes_differ_from_opo_only_in_the_algorithm():
    opo = yaml.safe_load((RECIPES_DIR / "math_l3_qwen3-1.7b_opo.yaml").read_text())
    for algorithm in ("grpo", "dapo", "gspo"):
        baseline = yaml.safe_load((RECIPES_DIR / f"math_l3_qwen3-1.7b_{algorithm}.yaml").read_text())
        assert {k: v for k, v in baseline.items() if k != "algorithm"} == {
            k: v for k, v in opo.items() if k != "algorithm"
        }
        assert baseline["algorithm"] == algorithm


def test_every_baseline_setting_is_a_grpo_config_field_with_a_value_it_accepts(tmp_path):
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    assert set(ALGORITHMS) == {"opo", "grpo", "dapo", "gspo"}
    assert ALGORITHMS["opo"].settings == {}  # OPO runs the recipe as written
    for name, algorithm in ALGORITHMS.items():
        assert set(algorithm.settings) <= fields, name
        config = algorithm.config_cls(output_dir=str(tmp_path), use_cpu=True, bf16=False, **algorithm.settings)
        for key, value in algorithm.settings.items():
            assert getattr(config, key) == value, (name, key)
