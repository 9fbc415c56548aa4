"""The training job behind `opo-trl train`: a tiny model trained end to end, run files, and early failures."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from opo_trl.harness.rewards import answer_checker
from opo_trl.harness.run import main
from opo_trl.harness.runfiles import RunFiles

from .conftest import tiny_recipe, write_recipe


def test_unknown_reward_name_fails_before_the_model_loads(tmp_path):
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, str(tmp_path / "does-not-exist"), reward_funcs=["acuracy"]))
    with pytest.raises(ValueError, match="Did you mean 'accuracy'"):
        main(["--config", path])


@pytest.mark.slow
def test_two_step_training_run_through_the_command(tmp_path, tiny_model_path, capsys):
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, tiny_model_path, heldout_eval=True))
    main(["--config", path, "--max_steps", "2", "--mu", "2.0"])
    out = Path(tmp_path / "out")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "opo" and 0.0 <= summary["heldout_accuracy_after"] <= 1.0
    assert summary["answer_checker"] == answer_checker() and summary["answer_checker"].startswith("math-verify ")
    # The job records its own cost: nothing else writes into its summary.
    recorded = RunFiles(out).read_summary()
    assert recorded.wall_seconds > 0 and recorded.threads >= 1 and recorded.learning_rate == summary["learning_rate"]
    assert recorded.extra == {}
    assert (recorded.generator, recorded.precision) == ("transformers", "fp32")
    assert recorded.cpu.endswith(f"({torch.backends.cpu.get_cpu_capability()})") and len(recorded.cpu) > 8
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(m.get("step", 0) for m in metrics) == 2
    assert any("opo/drive/abs_mean" in m for m in metrics)
    assert (out / "reward_curve.png").stat().st_size > 1000
    assert (out / "model.safetensors").exists()
    assert "held-out accuracy: before" in capsys.readouterr().out


@pytest.mark.slow
def test_baseline_runs_through_the_same_command(tmp_path, tiny_model_path):
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, tiny_model_path, alpha=0.3))
    main(["--config", path, "--algorithm", "dapo", "--max_steps", "1"])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["algorithm"] == "dapo"
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert any("clip_ratio/region_mean" in m for m in metrics) and not any("opo/chi2" in m for m in metrics)


# -- the dataset dispatcher --------------------------------------------------------------------------------------


def parse(tmp_path, drop=(), **overrides):
    from opo_trl.harness.arguments import parse_train_args

    recipe = tiny_recipe(tmp_path, "m", **overrides)
    for key in drop:
        del recipe[key]
    return parse_train_args(["--config", write_recipe(tmp_path, recipe)])


ARITHMETIC_KEYS = ("num_train_samples", "num_test_samples", "max_operand")


def test_one_dispatcher_for_every_dataset(tmp_path, monkeypatch):
    from datasets import Dataset

    from opo_trl.harness import data
    from opo_trl.harness.data import load_datasets, make_arithmetic_dataset

    script_args, args, _, dataset_args = parse(tmp_path, num_train_samples=6, num_test_samples=3, dataset_seed=5)
    train, heldout = load_datasets(script_args, dataset_args, seed=0)
    expected = make_arithmetic_dataset(6, 3, seed=5, max_operand=9)
    assert train.to_list() == expected["train"].to_list() and heldout["test"].to_list() == expected["test"].to_list()

    gsm8k = Dataset.from_dict({"question": ["q?"], "answer": ["so #### 7"]})
    monkeypatch.setattr(data.datasets, "load_dataset", lambda *a, **k: gsm8k)
    script_args, _, _, dataset_args = parse(tmp_path, ARITHMETIC_KEYS, dataset_name="gsm8k")
    train, heldout = load_datasets(script_args, dataset_args, seed=0)
    assert train["answer"] == ["7"] and heldout["test"]["answer"] == ["7"]


def test_unknown_dataset_name_suggests_the_closest_built_in(tmp_path, monkeypatch):
    import datasets

    from opo_trl.harness.data import load_datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    script_args, _, _, dataset_args = parse(tmp_path, ARITHMETIC_KEYS, dataset_name="gsm8")
    with pytest.raises(ValueError, match=r"'gsm8' is not a built-in dataset.*not a local path.*Did you mean 'gsm8k'"):
        load_datasets(script_args, dataset_args, seed=0)


@pytest.mark.parametrize(
    "recipe, message",
    [
        ({"math_levels": [3]}, r"math_levels=\[3\] applies to dataset_name 'math' only, not to 'arithmetic'"),
        ({"dataset_streaming": True}, r"dataset_streaming=True applies to dataset_name 'hub' only"),
        ({"dataset_options": {"min_terms": 2}}, r"dataset_options=.* applies to dataset_name 'reasoning_gym' only"),
        ({"num_validation_samples": 8}, r"num_validation_samples=8 applies to dataset_name 'reasoning_gym' only"),
    ],
)
def test_a_dataset_argument_the_dataset_does_not_read_is_an_error_at_parse_time(tmp_path, recipe, message):
    with pytest.raises(ValueError, match=message):
        parse(tmp_path, **recipe)


def test_a_dataset_mixture_rejects_the_built_in_datasets_arguments(tmp_path):
    mixture = {"datasets": [{"path": str(tmp_path / "data")}], "dataset_name": None}
    with pytest.raises(
        ValueError, match=r"max_operand=9 applies to dataset_name 'arithmetic' only, not to 'a dataset"
    ):
        parse(tmp_path, ("num_train_samples", "num_test_samples"), **mixture)


# -- reasoning-gym and the held-out evaluation through the job -----------------------------------------------------


@pytest.mark.slow
def test_reasoning_gym_task_trains_and_records_per_problem_heldout_outcomes(tmp_path, tiny_model_path):
    pytest.importorskip("reasoning_gym")
    recipe = tiny_recipe(
        tmp_path, tiny_model_path, dataset_name="reasoning_gym/chain_sum", reward_funcs=["reasoning_gym"],
        dataset_options={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}, dataset_seed=0,
        num_train_samples=16, num_validation_samples=6, num_test_samples=5, heldout_eval=True,
        heldout_split="validation", heldout_num_samples=2, heldout_greedy=True, heldout_eval_steps=1,
        heldout_interim_max_samples=3, max_steps=2,
    )  # fmt: skip
    del recipe["max_operand"]
    summary = main(["--config", write_recipe(tmp_path, recipe)])
    records = RunFiles(tmp_path / "out").read_heldout()
    # before (all 6 validation problems, 2 samples + greedy), step 1 (the first 3, one sample), after (all 6).
    assert [(r.step, r.problems) for r in records] == [(0, 6), (1, 3), (2, 6)]
    assert [len(s) for s in records[0].sampled] == [2] * 6 and len(records[0].greedy) == 6
    assert records[1].greedy is None and records[0].fingerprint == records[2].fingerprint is not None
    assert [r.full for r in records] == [True, False, True]
    mean = sum(sum(s) / 2 for s in records[2].sampled) / 6
    assert summary["heldout_accuracy_after"] == pytest.approx(mean) and summary["heldout_split"] == "validation"
    assert "answer_checker" not in summary  # reasoning_gym's reward does its own scoring
    assert summary["heldout_greedy_after"] == pytest.approx(sum(records[2].greedy) / 6)
    history = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    interim = [(e["step"], e["heldout/interim_accuracy"]) for e in history if "heldout/interim_accuracy" in e]
    assert [step for step, _ in interim] == [0, 1, 2]
    assert interim[0][1] == pytest.approx(sum(sum(s) / 2 for s in records[0].sampled[:3]) / 3)

    # Another run of the same seed reuses that evaluation of the initial model instead of measuring it again.
    again = {**recipe, "output_dir": str(tmp_path / "again"), "heldout_before_from": str(tmp_path / "out"),
             "heldout_eval_steps": None, "max_steps": 1}  # fmt: skip
    summary = main(["--config", write_recipe(tmp_path, again, "again.yaml")])
    reused = RunFiles(tmp_path / "again").read_heldout()[0]
    assert reused.seconds == 0.0 and records[0].seconds > 0  # not measured again
    assert dataclasses.replace(reused, seconds=None) == dataclasses.replace(records[0], seconds=None)
    assert summary["heldout_accuracy_before"] == pytest.approx(sum(sum(s) / 2 for s in records[0].sampled) / 6)
    # ... but not of another held-out set.
    other = {**again, "output_dir": str(tmp_path / "other"), "heldout_split": "test"}
    with pytest.raises(ValueError, match="not of this held-out set before training"):
        main(["--config", write_recipe(tmp_path, other, "other.yaml")])


# -- trl grpo parity: every script argument is honoured or rejected ------------------------------------------------

# Each OPOScriptArguments field, and how a test below sees it act. A new field fails the first test until it is here.
FIELD_EFFECTS = {
    "algorithm": "parsed", "reward_funcs": "parsed", "reward_model_name_or_path": "trainer",
    "dataset_name": "data", "dataset_config": "data", "dataset_train_split": "data", "dataset_test_split": "data",
    "dataset_streaming": "data", "dataset_options": "data", "dataset_seed": "data", "num_train_samples": "data",
    "num_test_samples": "data", "num_validation_samples": "data", "min_operand": "data", "max_operand": "data",
    "operations": "data", "math_levels": "data", "ignore_bias_buffers": "trainer", "heldout_eval": "heldout",
    "heldout_split": "heldout", "heldout_max_samples": "heldout", "heldout_num_samples": "heldout",
    "heldout_greedy": "heldout", "heldout_eval_steps": "heldout", "heldout_interim_max_samples": "heldout",
    "heldout_before_from": "heldout", "heldout_batch_size": "heldout",
    "pause_file": "run",  # test_a_paused_run_resumes_to_the_uninterrupted_runs_files
}  # fmt: skip


def test_every_script_argument_is_classified():
    from opo_trl.harness.arguments import OPOScriptArguments

    assert {f.name for f in dataclasses.fields(OPOScriptArguments)} == set(FIELD_EFFECTS)


@pytest.mark.parametrize("name", [n for n, kind in FIELD_EFFECTS.items() if kind == "data"])
def test_dataset_arguments_change_the_data_or_are_rejected(tmp_path, monkeypatch, name):
    import datasets

    from opo_trl.harness.data import DATASET_ARGUMENTS, load_datasets

    # A dataset argument either changes what an arithmetic run loads, or is rejected for it (and then it is one that
    # another dataset reads).
    base = parse(tmp_path, num_train_samples=8, num_test_samples=4)
    values = {"dataset_name": "arithmetic", "num_train_samples": 6, "num_test_samples": 3, "min_operand": 3,
              "max_operand": 7, "operations": ["*"], "dataset_seed": 9}  # fmt: skip
    changed = {"dataset_config": "main", "dataset_train_split": "other", "dataset_test_split": "other",
               "dataset_streaming": True, "dataset_options": {"min_terms": 3}, "num_validation_samples": 4,
               "math_levels": [3]}  # fmt: skip
    if name == "dataset_name":
        monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError()))
        script_args, _, _, dataset_args = parse(tmp_path, ARITHMETIC_KEYS, dataset_name="not_a_dataset")
        with pytest.raises(ValueError, match="not a built-in dataset"):
            load_datasets(script_args, dataset_args, seed=0)
        return
    if name in values:
        script_args, _, _, dataset_args = parse(
            tmp_path, **{"num_train_samples": 8, "num_test_samples": 4, name: values[name]}
        )

        def loaded(script_args, dataset_args):
            train, heldout = load_datasets(script_args, dataset_args, 0)
            return train.to_list(), heldout["test"].to_list()

        assert loaded(script_args, dataset_args) != loaded(base[0], base[3])
    else:
        assert "arithmetic" not in DATASET_ARGUMENTS[name]
        with pytest.raises(ValueError, match=f"{name}=.* applies to dataset_name"):
            parse(tmp_path, **{name: changed[name]})


@pytest.mark.parametrize("name", [n for n, kind in FIELD_EFFECTS.items() if kind == "heldout" and n != "heldout_eval"])
def test_heldout_arguments_without_heldout_eval_are_rejected(tmp_path, name):
    from opo_trl.harness.arguments import OPOScriptArguments

    value = {"heldout_split": "validation", "heldout_greedy": True, "heldout_before_from": "x"}.get(name, 3)
    assert getattr(OPOScriptArguments(), name) != value
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, str(tmp_path / "never-loaded"), **{name: value}))
    with pytest.raises(ValueError, match=f"{name} only apply with heldout_eval: true"):
        main(["--config", path])


def test_heldout_batch_size_must_be_positive():
    from opo_trl.harness.arguments import OPOScriptArguments

    with pytest.raises(ValueError, match="heldout_batch_size must be >= 1, got 0"):
        OPOScriptArguments(heldout_eval=True, heldout_batch_size=0)


def test_qlora_without_a_gpu_is_a_clear_error_before_the_model_loads(tmp_path, monkeypatch):
    import importlib.util

    import torch

    path = write_recipe(tmp_path, tiny_recipe(tmp_path, str(tmp_path / "never-loaded"), load_in_4bit=True))
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(
            ImportError, match=r"load_in_4bit=True needs bitsandbytes: pip install 'opo-trl\[quantization\]'"
        ):
            main(["--config", path])
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes" else None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"load_in_4bit=True \(QLoRA\) needs a CUDA GPU .* CUDA available: False"):
        main(["--config", path])


@pytest.mark.slow
def test_reward_model_and_bias_buffers_reach_the_trainer(tmp_path, tiny_model_path, monkeypatch):
    from opo_trl.harness import run
    from opo_trl.trainer import OPOTrainer

    seen = {}

    class Recording(OPOTrainer):
        def train(self, *args, **kwargs):
            seen["reward_funcs"] = list(self.reward_funcs)
            seen["ignored"] = getattr(self.model, "_ddp_params_and_buffers_to_ignore", None)
            return super().train(*args, **kwargs)

    monkeypatch.setitem(
        run.ALGORITHMS, "opo", run.ALGORITHMS["opo"].__class__("opo", Recording, run.ALGORITHMS["opo"].config_cls)
    )
    recipe = tiny_recipe(tmp_path, tiny_model_path, max_steps=1, ignore_bias_buffers=True,
                         reward_model_name_or_path=tiny_model_path)  # fmt: skip
    main(["--config", write_recipe(tmp_path, recipe)])
    assert isinstance(seen["ignored"], list)  # set (the tiny model has no boolean buffers)
    model, *functions = seen["reward_funcs"]
    assert type(model).__name__.endswith("ForSequenceClassification")  # the reward model comes first
    assert [f.__name__ for f in functions] == ["accuracy_reward", "format_reward"]


@pytest.mark.slow
def test_push_to_hub_at_the_end_names_the_dataset(tmp_path, tiny_model_path, monkeypatch):
    import transformers

    from opo_trl.trainer import OPOTrainer

    pushed = []
    monkeypatch.setattr(transformers.Trainer, "init_hf_repo", lambda self, *a, **k: None)  # no hub here
    monkeypatch.setattr(OPOTrainer, "push_to_hub", lambda self, **kwargs: pushed.append(kwargs))
    monkeypatch.setattr(OPOTrainer, "hub_model_id", "me/tiny-opo", raising=False)
    recipe = tiny_recipe(tmp_path, tiny_model_path, max_steps=1, push_to_hub=True, hub_model_id="me/tiny-opo")
    main(["--config", write_recipe(tmp_path, recipe)])
    # save_model pushes the weights as it always does with push_to_hub; then the job pushes once more, as trl grpo
    # does, with the dataset name for the model card.
    assert pushed[-1] == {"dataset_name": "arithmetic"}


def test_only_a_run_that_generated_with_vllm_skips_the_teardown(monkeypatch):
    """vLLM imported in this process (a test did it) is no reason to end it; a run that generated with vLLM is."""
    import atexit
    import os
    import types

    from opo_trl.harness.run import exit_launched_process

    exits = []
    monkeypatch.setattr(os, "_exit", lambda code: exits.append(code))
    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: None)
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    exit_launched_process()
    assert exits == []
    exit_launched_process(ran_vllm=True)
    assert exits == [0]


@pytest.mark.slow
def test_a_paused_run_resumes_to_the_uninterrupted_runs_files(tmp_path, tiny_model_path):
    from opo_trl.harness.runfiles import PAUSED_FILE

    # Each rollout serves 2 optimizer steps, so a pause after an odd step is mid-rollout; an interim evaluation follows
    # every step, so the resumed part has evaluations of its own to repeat.
    recipe = tiny_recipe(tmp_path, tiny_model_path, heldout_eval=True, heldout_eval_steps=1, heldout_num_samples=2,
                         num_iterations=2, max_steps=4)  # fmt: skip
    path = write_recipe(tmp_path, recipe)
    whole, parts, pause = tmp_path / "whole", tmp_path / "parts", tmp_path / "PAUSE"
    main(["--config", path, "--output_dir", str(whole)])

    pause.touch()  # there from the start: each part pauses after its first step
    first = main(["--config", path, "--output_dir", str(parts), "--pause_file", str(pause)])
    assert first["paused_at"] == 1 and not (parts / "summary.json").exists() and (parts / "checkpoint-1").is_dir()
    second = main(["--config", path, "--output_dir", str(parts), "--pause_file", str(pause),
                   "--resume_from_checkpoint", "last"])  # fmt: skip
    assert second["paused_at"] == 2
    paused = json.loads((parts / PAUSED_FILE).read_text())
    assert paused["step"] == 2 and paused["resumed_at"] == [1] and paused["wall_seconds"] > 0
    pause.unlink()
    main(
        ["--config", path, "--output_dir", str(parts), "--pause_file", str(pause), "--resume_from_checkpoint", "last"]
    )

    a, b = RunFiles(whole), RunFiles(parts)
    summary = b.read_summary()
    assert summary.resumed_at == [1, 2] and summary.wall_seconds > paused["wall_seconds"]
    assert a.read_summary().resumed_at is None and not (parts / PAUSED_FILE).exists()
    # The same held-out evaluations, each once: the initial model's, one after every step, and the final one.
    assert [r.step for r in b.read_heldout()] == [r.step for r in a.read_heldout()] == [0, 1, 2, 3, 4]
    assert [r.sampled for r in b.read_heldout()] == [r.sampled for r in a.read_heldout()]

    def untimed(entries):
        return [{k: v for k, v in e.items() if "time" not in k and "per_second" not in k} for e in entries]

    assert untimed(b.read_metrics()) == untimed(a.read_metrics())
    from safetensors.torch import load_file

    trained, resumed = load_file(whole / "model.safetensors"), load_file(parts / "model.safetensors")
    assert trained.keys() == resumed.keys() and all(torch.equal(trained[k], resumed[k]) for k in trained)
