"""A killed run resumes from its last complete checkpoint to the same result as a run that was never interrupted."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from opo_trl.harness.checkpoints import last_complete_checkpoint, resolve_resume_from_checkpoint
from opo_trl.harness.run import main
from opo_trl.rollout_state import rollout_state_file

from . import interruptible_run
from .conftest import make_trainer


REPO_ROOT = Path(__file__).resolve().parent.parent


class StopAt(TrainerCallback):
    """Stop a run at a given step, after that step's checkpoint is written, as a crash there would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def optimizer_state(trainer):
    return trainer.optimizer.state_dict()["state"]


def assert_same_training_state(full, resumed):
    """Bitwise equal weights and optimizer state."""
    for name, p in full.model.named_parameters():
        assert torch.equal(p, dict(resumed.model.named_parameters())[name]), name
    full_state, resumed_state = optimizer_state(full), optimizer_state(resumed)
    assert full_state.keys() == resumed_state.keys()
    for key in full_state:
        for field, value in full_state[key].items():
            assert torch.equal(value, resumed_state[key][field]), (key, field)


@pytest.mark.slow
def test_resumed_run_matches_the_uninterrupted_run(tmp_path, tiny_model_path, prompt_dataset):
    # On-policy: steps_per_generation == gradient_accumulation_steps == 1. The interrupted run has the same config
    # (max_steps=4, so the same LR schedule) and stops after step 2, when checkpoint-2 is on disk.
    config = {"max_steps": 4, "save_strategy": "steps", "save_steps": 2, "max_completion_length": 4}
    full = make_trainer(tmp_path / "full", tiny_model_path, prompt_dataset, **config)
    full.train()

    run = tmp_path / "run"
    stopped = make_trainer(run, tiny_model_path, prompt_dataset, callbacks=[StopAt(2)], **config)
    stopped.train()
    assert stopped.state.global_step == 2
    checkpoint = last_complete_checkpoint(run)
    assert checkpoint == str(run / "checkpoint-2")

    resumed = make_trainer(run, tiny_model_path, prompt_dataset, **config)
    resumed.train(resume_from_checkpoint=checkpoint)
    assert resumed.state.global_step == 4

    # Bitwise equal: the checkpoint restores the weights, Adam's moments, the scheduler, the sampler position and the
    # torch RNG that generation samples from, and nothing in between consumes randomness differently.
    rewards = [[e["reward"] for e in t.state.log_history if "reward" in e] for t in (full, resumed)]
    assert rewards[0][2:] == rewards[1][-2:]
    assert_same_training_state(full, resumed)
    assert full.lr_scheduler.get_last_lr() == resumed.lr_scheduler.get_last_lr()


def make_algorithm_trainer(algorithm, output_dir, model, dataset, callbacks=None, **overrides):
    """The trainer `opo-trl train --algorithm ALGORITHM` builds, on the tiny CPU settings."""
    return make_trainer(output_dir, model, dataset, callbacks=callbacks, algorithm=algorithm, **overrides)


# Two optimizer steps per rollout, each rollout used twice: a rollout serves micro-steps 0-3, and checkpoint-3 is
# saved with one micro-batch of it still to be used (step 4), before the next rollout is generated (step 5).
MID_ROLLOUT = {
    "max_steps": 5,
    "steps_per_generation": 2,
    "num_iterations": 2,
    "save_strategy": "steps",
    "save_steps": 3,
    "max_completion_length": 4,
}


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["opo", "grpo"])
def test_resume_mid_rollout_matches_the_uninterrupted_run(tmp_path, tiny_model_path, prompt_dataset, algorithm):
    full = make_algorithm_trainer(algorithm, tmp_path / "full", tiny_model_path, prompt_dataset, **MID_ROLLOUT)
    full.train()

    run = tmp_path / "run"
    stopped = make_algorithm_trainer(
        algorithm, run, tiny_model_path, prompt_dataset, callbacks=[StopAt(3)], **MID_ROLLOUT
    )
    stopped.train()
    checkpoint = last_complete_checkpoint(run)
    assert checkpoint == str(run / "checkpoint-3")
    assert os.path.isfile(rollout_state_file(checkpoint, 0, 1))

    resumed = make_algorithm_trainer(algorithm, run, tiny_model_path, prompt_dataset, **MID_ROLLOUT)
    resumed.train(resume_from_checkpoint=checkpoint)
    assert resumed.state.global_step == 5
    # Step 4 used the saved rollout: the resumed run generated once (step 5), as the uninterrupted run did after step 3.
    rewards = [[e["reward"] for e in t.state.log_history if "reward" in e] for t in (full, resumed)]
    assert len(rewards[0]) == 2 and rewards[0] == rewards[1]
    assert_same_training_state(full, resumed)


@pytest.mark.slow
def test_a_rollout_saved_in_format_1_is_upgraded_and_resumes_to_the_same_result(
    tmp_path, tiny_model_path, prompt_dataset, caplog
):
    # Format 1 kept OPO's drive under TRL's "advantages" key and, for the softmax mixture, whose drive is recomputed
    # from TRL's advantages at step 4, those under "opo_advantage". A file written that way must resume bit for bit.
    config = {**MID_ROLLOUT, "escort_form": "softmax_mixture", "alpha": 0.5}
    full = make_trainer(tmp_path / "full", tiny_model_path, prompt_dataset, **config)
    full.train()
    run = tmp_path / "run"
    make_trainer(run, tiny_model_path, prompt_dataset, callbacks=[StopAt(3)], **config).train()
    path = rollout_state_file(str(run / "checkpoint-3"), 0, 1)
    state = torch.load(path, weights_only=True)
    assert state["format"] == 2
    for chunk in state["buffered_inputs"]:
        chunk["opo_advantage"], chunk["advantages"] = chunk.pop("advantages"), chunk.pop("opo_drive")
    state["format"] = 1
    torch.save(state, path)

    resumed = make_trainer(run, tiny_model_path, prompt_dataset, **config)
    resumed.train(resume_from_checkpoint=str(run / "checkpoint-3"))
    assert not [r for r in caplog.records if r.name == "opo_trl.rollout_state"]  # no new rollout
    assert_same_training_state(full, resumed)


@pytest.mark.slow
def test_resume_mid_rollout_without_the_rollout_says_so(tmp_path, tiny_model_path, prompt_dataset, caplog):
    run = tmp_path / "run"
    stopped = make_trainer(run, tiny_model_path, prompt_dataset, callbacks=[StopAt(3)], **MID_ROLLOUT)
    stopped.train()
    checkpoint = str(run / "checkpoint-3")
    os.remove(rollout_state_file(checkpoint, 0, 1))  # as an older opo-trl saved it
    resumed = make_trainer(run, tiny_model_path, prompt_dataset, **{**MID_ROLLOUT, "max_steps": 4})
    resumed.train(resume_from_checkpoint=checkpoint)
    messages = [r.getMessage() for r in caplog.records if r.name == "opo_trl.rollout_state"]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "saved in the middle of a rollout (micro-step 3 of 4) and holds no rollout_state.pt" in messages[0]
    # It generated a new rollout for step 4, where the uninterrupted run would have reused step 3's.
    assert [e["step"] for e in resumed.state.log_history if "reward" in e] == [1, 4]


@pytest.mark.slow
def test_resume_mid_rollout_with_other_rollout_settings_says_so(tmp_path, tiny_model_path, prompt_dataset, caplog):
    run = tmp_path / "run"
    stopped = make_trainer(run, tiny_model_path, prompt_dataset, callbacks=[StopAt(3)], **MID_ROLLOUT)
    stopped.train()
    changed = {**MID_ROLLOUT, "max_steps": 4, "num_iterations": 1}
    resumed = make_trainer(run, tiny_model_path, prompt_dataset, **changed)
    resumed.train(resume_from_checkpoint=str(run / "checkpoint-3"))
    messages = [r.getMessage() for r in caplog.records if r.name == "opo_trl.rollout_state"]
    assert len(messages) == 1
    assert "holds a rollout in progress that this run cannot continue (num_iterations 2 -> 1)" in messages[0]


@pytest.mark.slow
def test_sigterm_mid_run_leaves_a_checkpoint_that_loads_and_resumes(tmp_path, tiny_model_path):
    out, log = tmp_path / "run", tmp_path / "run.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "tests.interruptible_run", tiny_model_path, str(out)]
    # Once the marker exists the child is inside step 2's reward computation, and checkpoint-1 is complete.
    marker = out / f"reward-call-{interruptible_run.STOP_CALL}"
    with log.open("w") as stderr:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            while not marker.exists():
                assert proc.poll() is None, f"training exited before step 2:\n{log.read_text()[-3000:]}"
                proc_wait(proc, 0.05)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGTERM

    checkpoint = last_complete_checkpoint(out)
    assert checkpoint == str(out / f"checkpoint-{interruptible_run.STOP_CALL - 1}")
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert all(torch.isfinite(p).all() for p in model.parameters())

    trainer = interruptible_run.make_trainer(tiny_model_path, str(out), marked=False)
    trainer.train(resume_from_checkpoint=checkpoint)
    assert trainer.state.global_step == interruptible_run.MAX_STEPS
    assert last_complete_checkpoint(out) == str(out / f"checkpoint-{interruptible_run.MAX_STEPS}")


def proc_wait(proc, seconds):
    """Wait for the child to exit, at most `seconds` (a poll interval, not a timing assumption)."""
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pass


def write_checkpoint(output_dir, step, state="{}"):
    path = output_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"\0" * 8)
    if state is not None:
        (path / "trainer_state.json").write_text(state)
    return str(path)


def test_incomplete_checkpoints_are_skipped(tmp_path):
    out = tmp_path / "run"
    assert last_complete_checkpoint(out) is None  # no output_dir yet
    out.mkdir()
    assert last_complete_checkpoint(out) is None
    write_checkpoint(out, 2)
    nine = write_checkpoint(out, 9, json.dumps({"global_step": 9}))
    write_checkpoint(out, 11, state='{"global_step": 1')  # killed while writing trainer_state.json
    write_checkpoint(out, 12, state=None)  # killed before trainer_state.json
    (out / "checkpoint-30").write_text("not a folder")
    write_checkpoint(out, "40.tmp")
    assert last_complete_checkpoint(out) == nine  # numeric order: 9 < 11, and 11, 12 are incomplete
    assert get_last_checkpoint(str(out)) == str(out / "checkpoint-12")  # what transformers would resume from


def test_resume_setting_resolves_to_the_last_complete_checkpoint(tmp_path):
    out = tmp_path / "run"
    for value in ("last", "true", "True", True):
        with pytest.raises(ValueError, match=rf"resume_from_checkpoint={value!r}: no complete checkpoint in {out}"):
            resolve_resume_from_checkpoint(value, out)
    write_checkpoint(out, 3)
    write_checkpoint(out, 4, state=None)
    for value in ("last", "true", "LAST", True):
        assert resolve_resume_from_checkpoint(value, out) == str(out / "checkpoint-3")
    for value in (None, False, "false"):
        assert resolve_resume_from_checkpoint(value, out) is None
    assert resolve_resume_from_checkpoint(str(out / "checkpoint-4"), out) == str(out / "checkpoint-4")


def test_cli_resume_last_without_checkpoint_fails_before_loading(tmp_path):
    recipe = {
        "model_name_or_path": str(tmp_path / "does-not-exist"),
        "output_dir": str(tmp_path / "out"),
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "resume_from_checkpoint": "last",
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ValueError, match="resume_from_checkpoint='last': no complete checkpoint"):
        main(["--config", str(path)])
