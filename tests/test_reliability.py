"""What a long run relies on: bad data fails early, bad rewards and empty completions stay finite, and a killed run
resumes from its last complete checkpoint to the same result as a run that was never interrupted."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset, IterableDataset
from transformers import AutoModelForCausalLM, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl.trainer import grpo_trainer

from opo_trl import OPOConfig, OPOTrainer
from opo_trl.checkpoints import last_complete_checkpoint, resolve_resume_from_checkpoint
from opo_trl.cli import main

from . import interruptible_run
from .conftest import cpu_config_kwargs, digit_reward, make_trainer, snapshot


REPO_ROOT = Path(__file__).resolve().parent.parent


def assert_finite_run(trainer, steps):
    assert trainer.state.global_step == steps
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    grad_norms = [e["grad_norm"] for e in trainer.state.log_history if "grad_norm" in e]
    assert len(losses) == steps and all(math.isfinite(x) for x in losses + grad_norms), trainer.state.log_history
    for name, p in trainer.model.named_parameters():
        assert torch.isfinite(p).all(), name


# -- 1. bad data fails before the model loads ----------------------------------------------------------------------


def answer_reward(completions, answer, **kwargs):
    return [float(a in c) for c, a in zip(completions, answer)]


@pytest.fixture
def model_loads(monkeypatch):
    """Record, and refuse, every attempt of the trainer to load a model by name."""
    calls = []

    def refuse(model_id, **kwargs):
        calls.append(model_id)
        raise RuntimeError("the model was loaded")

    monkeypatch.setattr(grpo_trainer, "create_model_from_path", refuse)
    return calls


def build(tmp_path, reward_funcs=answer_reward, **datasets):
    args = OPOConfig(**cpu_config_kwargs(tmp_path))
    return OPOTrainer(model="tiny/never-loaded", reward_funcs=reward_funcs, args=args, **datasets)


GOOD = {"prompt": ["1+1="], "answer": ["2"]}


@pytest.mark.parametrize("which", ["train_dataset", "eval_dataset"])
@pytest.mark.parametrize(
    "columns, message",
    [
        (
            {"question": ["1+1="], "answer": ["2"]},
            r"The (train|eval) dataset has no 'prompt' column \(columns: \['answer', 'question'\]\)",
        ),
        (
            {"prompt": ["1+1="], "solution": ["2"]},
            r"'answer_reward' needs a 'answer' column, which the (train|eval) dataset lacks",
        ),
        ({"prompt": [], "answer": []}, r"The (train|eval) dataset is empty"),
    ],
    ids=["no-prompt", "reward-column-missing", "empty"],
)
def test_bad_dataset_fails_before_the_model_loads(tmp_path, model_loads, which, columns, message):
    datasets = {"train_dataset": Dataset.from_dict(GOOD), which: Dataset.from_dict(columns)}
    with pytest.raises(ValueError, match=message):
        build(tmp_path, **datasets)
    assert model_loads == []


def test_datasets_that_cannot_be_checked_or_need_no_prompt_reach_the_model(tmp_path, model_loads):
    # Control: with good data the trainer does go on to load the model (so the test above would see a load).
    with pytest.raises(RuntimeError, match="the model was loaded"):
        build(tmp_path, train_dataset=Dataset.from_dict(GOOD))
    # A reward model given by name reads tokenized text, not dataset columns.
    with pytest.raises(RuntimeError, match="the model was loaded"):
        build(tmp_path, reward_funcs=["tiny/reward-model", answer_reward], train_dataset=Dataset.from_dict(GOOD))
    # A stream whose columns are unknown until it is read is not read here.
    stream = IterableDataset.from_generator(lambda: iter([{"question": "1+1="}]))
    with pytest.raises(RuntimeError, match="the model was loaded"):
        build(tmp_path, reward_funcs=digit_reward, train_dataset=stream)
    # An environment supplies the prompts, so a dataset without `prompt` is fine.
    with pytest.raises(RuntimeError, match="the model was loaded"):
        build(
            tmp_path,
            reward_funcs=digit_reward,
            train_dataset=Dataset.from_dict({"task": ["a"]}),
            environment_factory=object,
        )
    assert len(model_loads) == 4

    # A stream with known columns is still checked.
    known = Dataset.from_dict({"question": ["1+1="]}).to_iterable_dataset()
    with pytest.raises(ValueError, match="no 'prompt' column"):
        build(tmp_path, reward_funcs=digit_reward, train_dataset=known)
    assert len(model_loads) == 4


# -- 2. bad rewards never poison training ---------------------------------------------------------------------------

NAN = float("nan")
# Rewards of the G = 4 completions of each prompt, in order. Drive and metrics below are checked against these.
SCENARIO = {
    "huge": [1e6, -1e6, 0.0, 1e6],  # exponent (1 - alpha) * A ~ 3e5: clipped at max_escort_exponent
    "some nan": [NAN, 1.0, 2.0, NAN],
    "some none": [None, 0.5, None, 0.0],
    "constant": [7.0, 7.0, 7.0, 7.0],  # no signal
    "unscorable": [None, None, None, None],  # no signal, all four unscorable
}
NO_SIGNAL = ("constant", "unscorable")
NUM_MISSING = 2 + 2 + 4
NUM_CLIPPED = 2  # the two +1e6 completions


def scenario_reward(prompts, completions, **kwargs):
    # The completions of one prompt are consecutive, so i % 4 is the index within the group.
    return [SCENARIO[prompt][i % 4] for i, prompt in enumerate(prompts)]


@pytest.mark.slow
def test_pathological_rewards_keep_training_finite_and_groups_without_signal_get_zero_drive(tmp_path, tiny_model_path):
    dataset = Dataset.from_dict({"prompt": list(SCENARIO)})
    # Every step sees all five groups.
    trainer = make_trainer(
        tmp_path,
        tiny_model_path,
        dataset,
        reward_funcs=scenario_reward,
        per_device_train_batch_size=20,
        max_completion_length=4,
    )
    before = snapshot(trainer.model)
    trainer.train()
    assert_finite_run(trainer, 2)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())  # still learns
    assert all(
        e["opo/escort_weight/max"] <= math.exp(20.0) * 1.0001
        for e in trainer.state.log_history
        if "opo/escort_weight/max" in e
    )

    trainer.model.train()
    batch = [{"prompt": prompt} for prompt in SCENARIO for _ in range(4)]
    drive = trainer._generate_and_score_completions(batch)["advantages"].view(len(SCENARIO), 4)
    assert torch.isfinite(drive).all()
    for row, (prompt, rewards) in zip(drive, SCENARIO.items()):
        missing = torch.tensor([r is None or math.isnan(r) for r in rewards])
        assert torch.all(row[missing] == 0), prompt
        if prompt in NO_SIGNAL:
            assert torch.all(row == 0), prompt
        else:
            assert row.abs().max() > 0, prompt
            assert abs(row.sum().item()) <= 1e-6 * row.abs().max().item(), prompt
    # The huge group: w = (e^20, 0, 0, e^20), so g = +-e^20 / 2.
    torch.testing.assert_close(drive[0], math.exp(20.0) / 2 * torch.tensor([1.0, -1.0, -1.0, 1.0]))

    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    assert metrics["opo/groups_without_signal"] == pytest.approx(len(NO_SIGNAL) / len(SCENARIO))
    assert metrics["opo/unscorable_frac"] == pytest.approx(NUM_MISSING / 20)
    assert metrics["opo/escort_weight/clipped_frac"] == pytest.approx(NUM_CLIPPED / (20 - NUM_MISSING))


@pytest.mark.slow
def test_constant_reward_gives_no_update(tmp_path, tiny_model_path, prompt_dataset):
    def constant(completions, **kwargs):
        return [3.0] * len(completions)

    trainer = make_trainer(tmp_path, tiny_model_path, prompt_dataset, reward_funcs=constant, max_completion_length=4)
    before = snapshot(trainer.model)
    trainer.train()
    assert_finite_run(trainer, 2)
    # Every group is tied, so the drive, the loss gradient and (weight_decay = 0) the Adam update are exactly 0.
    assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    logged = [e["opo/groups_without_signal"] for e in trainer.state.log_history if "opo/groups_without_signal" in e]
    assert logged == [1.0, 1.0]


# -- 3. degenerate completions ----------------------------------------------------------------------------------


def hand_batch(model, drive, mask, seed=0):
    torch.manual_seed(seed)
    vocab = model.config.vocab_size
    prompt_ids, completion_ids = torch.randint(6, vocab, (len(drive), 3)), torch.randint(6, vocab, (len(drive), 5))
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": mask,
        "advantages": drive,
        # Off-policy old log-probs, so that Delta != 0 where there are tokens.
        "old_per_token_logps": -5.0 + 0.3 * torch.randn(mask.shape),
        "ref_per_token_logps": torch.full(mask.shape, -5.0),
    }


def loss_and_grads(trainer, inputs):
    model = trainer.model
    model.zero_grad()
    loss = trainer._compute_loss(model, inputs)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_empty_completions_give_finite_loss_and_gradients(tmp_path, tiny_model_path, prompt_dataset, beta):
    trainer = make_trainer(tmp_path, tiny_model_path, prompt_dataset, mu=2.0, beta=beta)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])

    # One empty completion: finite, and its drive has no effect at all (Delta = 0 with no gradient path).
    loss, grads = loss_and_grads(trainer, hand_batch(trainer.model, torch.tensor([0.3, -0.4, -0.2, 0.3]), mask))
    loss_other, grads_other = loss_and_grads(
        trainer, hand_batch(trainer.model, torch.tensor([0.3, 9.0, -0.2, 0.3]), mask)
    )
    assert torch.isfinite(loss) and loss != 0
    assert all(torch.isfinite(g).all() for g in grads.values()) and any(g.abs().max() > 0 for g in grads.values())
    assert loss == loss_other and all(torch.equal(grads[n], grads_other[n]) for n in grads)

    # A micro-batch whose completions are all empty: loss exactly 0, gradients exactly 0, metrics finite.
    empty = hand_batch(trainer.model, torch.tensor([0.3, -0.4, -0.2, 0.3]), torch.zeros_like(mask))
    loss, grads = loss_and_grads(trainer, empty)
    assert loss == 0
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads.values())
    metrics = trainer._metrics["train"]
    assert all(math.isfinite(metrics[k][-1]) for k in ("entropy", "opo/delta/abs_max", "opo/chi2", "opo/policy_loss"))


@pytest.mark.slow
@pytest.mark.parametrize("mask_truncated", [False, True])
def test_all_completions_truncated(tmp_path, tiny_model_path, prompt_dataset, mask_truncated):
    trainer = make_trainer(
        tmp_path, tiny_model_path, prompt_dataset, max_completion_length=2, mask_truncated_completions=mask_truncated
    )
    trainer.train()
    assert_finite_run(trainer, 2)
    clipped = [e["completions/clipped_ratio"] for e in trainer.state.log_history if "completions/clipped_ratio" in e]
    assert clipped and min(clipped) > 0.5  # the setting does what it says: (nearly) everything is cut at 2 tokens


# -- 4. interruption and resume ----------------------------------------------------------------------------------


class StopAt(TrainerCallback):
    """Stop a run at a given step, after that step's checkpoint is written, as a crash there would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def optimizer_state(trainer):
    return trainer.optimizer.state_dict()["state"]


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
    for name, p in full.model.named_parameters():
        assert torch.equal(p, dict(resumed.model.named_parameters())[name]), name
    full_state, resumed_state = optimizer_state(full), optimizer_state(resumed)
    assert full_state.keys() == resumed_state.keys()
    for key in full_state:
        for field, value in full_state[key].items():
            assert torch.equal(value, resumed_state[key][field]), (key, field)
    assert full.lr_scheduler.get_last_lr() == resumed.lr_scheduler.get_last_lr()


@pytest.mark.slow
def test_sigterm_mid_run_leaves_a_checkpoint_that_loads_and_resumes(tmp_path, tiny_model_path):
    out, log = tmp_path / "run", tmp_path / "run.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "tests.interruptible_run", tiny_model_path, str(out)]
    with log.open("w") as stderr:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.monotonic() + 120
            while not (out / "checkpoint-1" / "trainer_state.json").exists():
                assert proc.poll() is None, f"training exited early:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no checkpoint within 120 s"
                time.sleep(0.05)
            time.sleep(interruptible_run.REWARD_DELAY_S / 2)  # into the next step's reward computation
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGTERM, "the run finished before it was killed"

    checkpoint = last_complete_checkpoint(out)
    assert checkpoint is not None
    step = int(Path(checkpoint).name.split("-")[1])
    assert 1 <= step < interruptible_run.MAX_STEPS
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert all(torch.isfinite(p).all() for p in model.parameters())

    trainer = interruptible_run.make_trainer(tiny_model_path, str(out), reward_delay_s=0.0)
    trainer.train(resume_from_checkpoint=checkpoint)
    assert trainer.state.global_step == interruptible_run.MAX_STEPS
    assert last_complete_checkpoint(out) == str(out / f"checkpoint-{interruptible_run.MAX_STEPS}")


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
        main(["train", "--config", str(path)])
