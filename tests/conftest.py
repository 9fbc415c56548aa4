"""Fixtures and helpers shared by the test modules: a tiny model, datasets, rewards, trainers and recipes."""

import os

import pytest
import torch
import yaml
from datasets import Dataset

from opo_trl.harness.testing import save_tiny_model


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def prompt_dataset():
    return Dataset.from_dict({"prompt": [f"{a}+{b}=" for a in range(4) for b in range(4)]})


@pytest.fixture
def conversational_dataset():
    return Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": f"{a}+{b}="}] for a in range(4) for b in range(4)]}
    )


# Small enough that a tiny model trains in well under a second a step on a CPU.
TINY_SETTINGS = dict(
    per_device_train_batch_size=4, num_generations=4, max_completion_length=8, max_steps=2, learning_rate=1e-2
)


def cpu_config_kwargs(tmp_path, **overrides):
    """Config fields of `make_trainer`'s trainer, for tests that build a config alone."""
    from opo_trl.harness.algorithms import CPU_SETTINGS, QUIET_SETTINGS

    return {"output_dir": str(tmp_path), **CPU_SETTINGS, **QUIET_SETTINGS, **TINY_SETTINGS, **overrides}


def make_trainer(
    tmp_path, model, dataset, reward_funcs=None, peft_config=None, callbacks=None, algorithm="opo", **overrides
):
    """The trainer of `algorithm` (OPO by default) on the tiny CPU settings; `overrides` go to its config."""
    from opo_trl.harness.algorithms import tiny_trainer

    return tiny_trainer(
        algorithm,
        model,
        reward_funcs or distinct_chars_reward,
        dataset,
        tmp_path,
        trainer_kwargs={"peft_config": peft_config, "callbacks": callbacks},
        **{**TINY_SETTINGS, **overrides},
    )


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def changed(before, model):
    return {name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())}


def logged(trainer):
    """Every key logged during training."""
    keys = set()
    for entry in trainer.state.log_history:
        keys |= set(entry)
    return keys


def hand_logps(model, prompt_ids, completion_ids):
    """Log-probs of the completion tokens, computed directly from the model's logits."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits
    logits = logits[:, prompt_ids.size(1) - 1 : -1]  # the logit at t predicts token t + 1
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)


def write_recipe(tmp_path, recipe: dict, name="recipe.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def tiny_recipe(tmp_path, model_path, **overrides):
    """An `opo-trl train` recipe that trains the tiny model on arithmetic in a few seconds."""
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


def distinct_chars_reward(completions, **kwargs):
    """A dense reward a random tiny model already varies on."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [float(len(set(t))) / 8 for t in texts]


def digit_reward(completions, **kwargs):
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [float(sum(ch.isdigit() for ch in t)) for t in texts]


def failure_report(result, lines=60):
    """The part of a failed subprocess's output that explains it: tracebacks and error lines, not progress bars."""
    text = (result.stdout or "") + "\n" + (result.stderr or "")
    keep = [
        line
        for line in text.splitlines()
        if "Traceback" in line
        or "Error" in line
        or line.startswith(("  File", "[rank"))
        # A native abort (SIGABRT) says why only in C++'s words.
        or any(m in line for m in ("terminate called", "what():", "Signal", "Aborted", "gloo"))
    ]
    keep = [line for line in keep if "Warning" not in line]
    return f"exit code {result.returncode}\n" + "\n".join(keep[-lines:])


def free_port() -> int:
    """A TCP port nobody listens on now, for a test's rendezvous (fixed ports collide between runs)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_distributed(command, env, timeout=600):
    """Run a multi-process command and capture its output."""
    import subprocess

    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
