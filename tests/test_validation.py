"""Bad datasets fail before any model loads, with a message naming the split, the column and what is there."""

import pytest
from datasets import Dataset, IterableDataset
from trl.trainer import grpo_trainer

from opo_trl import OPOConfig, OPOTrainer
from opo_trl.harness.rewards import accuracy_reward
from opo_trl.validation import validate_dataset

from .conftest import cpu_config_kwargs, digit_reward


def answer_reward(completions, answer, **kwargs):
    return [float(a in c) for c, a in zip(completions, answer, strict=True)]


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


def test_dataset_checks_name_the_missing_column():
    no_answer = Dataset.from_dict({"prompt": ["1+1="], "solution": ["2"]})
    with pytest.raises(ValueError, match="'accuracy_reward' needs a 'answer' column"):
        validate_dataset(no_answer, [accuracy_reward], "train")
    with pytest.raises(ValueError, match="no 'prompt' column"):
        validate_dataset(Dataset.from_dict({"question": ["1+1="]}), [accuracy_reward], "train")
    with pytest.raises(ValueError, match="empty"):
        validate_dataset(Dataset.from_dict({"prompt": []}), [accuracy_reward], "train")
