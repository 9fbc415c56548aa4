import os

import pytest
from datasets import Dataset

from opo_trl.testing import save_tiny_model


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


def cpu_config_kwargs(tmp_path, **overrides):
    """Settings that make a tiny model train in well under a second a step on a CPU."""
    kwargs = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=2,
        learning_rate=1e-2,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        gradient_checkpointing=False,
        seed=0,
    )
    kwargs.update(overrides)
    return kwargs


def make_trainer(tmp_path, model, dataset, reward_funcs=None, peft_config=None, callbacks=None, **overrides):
    """An OPOTrainer on the CPU settings above; `overrides` go to OPOConfig."""
    from opo_trl import OPOConfig, OPOTrainer

    args = OPOConfig(**cpu_config_kwargs(tmp_path, **overrides))
    return OPOTrainer(model=model, reward_funcs=reward_funcs or distinct_chars_reward, args=args,
                      train_dataset=dataset, peft_config=peft_config, callbacks=callbacks)


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


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
    keep = [line for line in text.splitlines() if "Traceback" in line or "Error" in line or line.startswith(("  File", "[rank"))]
    keep = [line for line in keep if "Warning" not in line]
    return f"exit code {result.returncode}\n" + "\n".join(keep[-lines:])


def free_port() -> int:
    """A TCP port nobody listens on now, for a test's rendezvous (fixed ports collide between runs)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_distributed(command, env, timeout=600):
    """
    Run a multi-process command; rerun it once if a child was killed by a signal.

    On a loaded 2-core machine a gloo rank has been seen to die of SIGABRT ("Signal 6 (SIGABRT) received by PID")
    in a fresh environment. An exception or a wrong result is not retried, and a second signal death fails the test.
    """
    import subprocess
    import warnings

    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 and "Signal " in (result.stdout or "") + (result.stderr or ""):
        warnings.warn(f"a child process died of a signal; rerunning once:\n{failure_report(result)}")
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    return result
