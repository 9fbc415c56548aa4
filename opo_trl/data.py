# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
r"""
Prompt datasets for math RL, all in one schema: a conversational `prompt` (a list of messages, as TRL expects) and a
string `answer` that [`~rewards.accuracy_reward`] checks completions against.

`make_arithmetic_dataset` builds a synthetic set in memory (no hub access, exact answers); `load_gsm8k` and
`load_math` map the hub datasets to the same schema.
"""

import difflib
import inspect
import logging
import random
from collections.abc import Iterable, Sequence

import datasets
from datasets import Dataset, DatasetDict, Features, List, Value

from .rewards import extract_boxed


logger = logging.getLogger(__name__)

ANSWER_INSTRUCTION = "Put the final answer in \\boxed{}."
OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
FEATURES = Features({"prompt": List({"role": Value("string"), "content": Value("string")}), "answer": Value("string")})


def _prompt(question: str, system_prompt: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    return messages + [{"role": "user", "content": question}]


def make_arithmetic_dataset(
    num_train: int,
    num_eval: int,
    seed: int = 0,
    min_operand: int = 1,
    max_operand: int = 50,
    operations: Sequence[str] = ("+",),
    system_prompt: str | None = None,
) -> DatasetDict:
    r"""
    Build a synthetic arithmetic dataset of problems `a <op> b` with operands in `[min_operand, max_operand]`.

    Problems are distinct `(a, op, b)` triples drawn without replacement, so no prompt appears twice and none is in
    both splits. The same arguments always give the same rows.

    Args:
        num_train (`int`):
            Number of training problems.
        num_eval (`int`):
            Number of evaluation problems (the `test` split).
        seed (`int`, *optional*, defaults to `0`):
            Seed of the sampling.
        min_operand (`int`, *optional*, defaults to `1`):
            Smallest operand, inclusive.
        max_operand (`int`, *optional*, defaults to `50`):
            Largest operand, inclusive.
        operations (`Sequence[str]`, *optional*, defaults to `("+",)`):
            Operations to draw from, among `"+"`, `"-"` and `"*"`.
        system_prompt (`str`, *optional*):
            If given, a system message placed before the question.

    Returns:
        `DatasetDict`: Splits `train` and `test`, with columns `prompt` (e.g. `[{"role": "user", "content": "What is
        12 + 7? Put the final answer in \\boxed{}."}]`) and `answer` (e.g. `"19"`).

    Raises:
        ValueError: On a negative count, `min_operand > max_operand`, an unknown or empty set of operations, or more
            problems requested than there are distinct ones.
    """
    if num_train < 0 or num_eval < 0:
        raise ValueError(f"num_train and num_eval must be non-negative, got {num_train} and {num_eval}.")
    if min_operand > max_operand:
        raise ValueError(f"min_operand ({min_operand}) must not exceed max_operand ({max_operand}).")
    operations = list(dict.fromkeys(operations))
    if not operations:
        raise ValueError(f"operations must not be empty; choose among {list(OPERATIONS)}.")
    unknown = [op for op in operations if op not in OPERATIONS]
    if unknown:
        raise ValueError(f"Unknown operation(s) {unknown}; supported operations are {list(OPERATIONS)}.")
    num_operands = max_operand - min_operand + 1
    num_problems = len(operations) * num_operands**2
    if num_train + num_eval > num_problems:
        raise ValueError(
            f"Requested {num_train} + {num_eval} problems, but operands in [{min_operand}, {max_operand}] with "
            f"operations {operations} give only {num_problems} distinct problems."
        )

    # Sampling indices of the (op, a, b) grid draws distinct problems without materialising the grid.
    indices = random.Random(seed).sample(range(num_problems), num_train + num_eval)
    rows = {"prompt": [], "answer": []}
    for index in indices:
        op_index, rest = divmod(index, num_operands**2)
        a, b = (min_operand + i for i in divmod(rest, num_operands))
        op = operations[op_index]
        # Parenthesise negative operands so the prompt reads as ordinary arithmetic: "3 - (-5)", not "3 - -5".
        a_text, b_text = (f"({x})" if x < 0 else str(x) for x in (a, b))
        rows["prompt"].append(_prompt(f"What is {a_text} {op} {b_text}? {ANSWER_INSTRUCTION}", system_prompt))
        rows["answer"].append(str(OPERATIONS[op](a, b)))
    return DatasetDict(
        {
            "train": Dataset.from_dict({k: v[:num_train] for k, v in rows.items()}, features=FEATURES),
            "test": Dataset.from_dict({k: v[num_train:] for k, v in rows.items()}, features=FEATURES),
        }
    )


# Keyword arguments `GRPOTrainer` passes to every reward function on top of the dataset columns.
REWARD_KWARGS = (
    "prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments"
)


def validate_dataset(dataset, reward_funcs, split_name: str, require_prompt: bool = True) -> None:
    """
    Fail before training, and before any model loads, when a dataset cannot feed the trainer or its reward functions.

    Without this check an empty dataset or a missing column only surfaces as a `KeyError` deep inside the first
    generation step, after the model has loaded.

    Args:
        dataset (`Dataset`, `IterableDataset`, `dict` or `None`):
            The dataset to check. `None` passes; a `dict` (e.g. a `DatasetDict` of eval splits) is checked split by
            split. A dataset whose columns or length are unknown without reading it (a streaming `IterableDataset`)
            is only checked as far as it can be.
        reward_funcs (callable, `str` or list of them):
            The reward functions. Every parameter a callable requires must be a column of the dataset or one of the
            arguments the trainer passes itself (`prompts`, `completions`, ...). Strings (reward model ids) and
            `torch.nn.Module`s take tokenized text, not columns, and are skipped.
        split_name (`str`):
            Name of the split for the error message, e.g. `"train"`.
        require_prompt (`bool`, *optional*, defaults to `True`):
            Whether a `prompt` column is required. `False` when an `environment_factory` supplies the prompts.

    Raises:
        ValueError: If the dataset is empty, has no `prompt` column, or lacks a column a reward function needs.
    """
    if dataset is None:
        return
    if isinstance(dataset, dict):
        for name, split in dataset.items():
            validate_dataset(split, reward_funcs, f"{split_name} ({name})", require_prompt)
        return
    if hasattr(dataset, "__len__") and len(dataset) == 0:
        raise ValueError(f"The {split_name} dataset is empty.")
    if getattr(dataset, "column_names", None) is None:
        return
    columns = set(dataset.column_names)
    if require_prompt and "prompt" not in columns:
        raise ValueError(f"The {split_name} dataset has no 'prompt' column (columns: {sorted(columns)}).")
    provided = columns | set(REWARD_KWARGS)
    if reward_funcs is None:
        reward_funcs = []
    elif not isinstance(reward_funcs, (list, tuple)):
        reward_funcs = [reward_funcs]
    for func in reward_funcs:
        if not callable(func) or _is_module(func):
            continue
        try:
            parameters = inspect.signature(func).parameters
        except (TypeError, ValueError):  # builtins and some C callables have no inspectable signature
            continue
        for name, param in parameters.items():
            required = param.default is inspect.Parameter.empty and param.kind in (
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                inspect.Parameter.KEYWORD_ONLY,
            )
            if required and name not in provided:
                raise ValueError(
                    f"Reward function '{getattr(func, '__name__', func)}' needs a '{name}' column, which the "
                    f"{split_name} dataset lacks (columns: {sorted(columns)})."
                )


def _is_module(obj) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module)


def _check_columns(dataset: Dataset, required: Iterable[str], name: str) -> None:
    for column in required:
        if column not in dataset.column_names:
            raise ValueError(
                f"{name} dataset is missing the column {column!r}; it has the columns {dataset.column_names}."
            )


def _select_split(dataset: Dataset | DatasetDict, split: str) -> Dataset:
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise ValueError(f"Split {split!r} not found; available splits are {list(dataset)}.")
        return dataset[split]
    return dataset


def load_gsm8k(
    split: str = "train", dataset: Dataset | DatasetDict | None = None, system_prompt: str | None = None
) -> Dataset:
    """
    Load GSM8K (`openai/gsm8k`, config `main`) as `prompt` / `answer` rows.

    The answer is the number after the final `#### ` of the GSM8K solution, with thousands separators removed.

    Args:
        split (`str`, *optional*, defaults to `"train"`):
            Split to load (`"train"` or `"test"`).
        dataset (`Dataset` or `DatasetDict`, *optional*):
            A dataset with GSM8K's columns (`question`, `answer`) to use instead of downloading it.
        system_prompt (`str`, *optional*):
            If given, a system message placed before each question.

    Returns:
        `Dataset`: Columns `prompt` (conversational) and `answer` (string).

    Raises:
        ValueError: If a required column is missing or a solution has no `####` answer.
    """
    if dataset is None:
        dataset = datasets.load_dataset("openai/gsm8k", "main", split=split)
    dataset = _select_split(dataset, split)
    _check_columns(dataset, ("question", "answer"), "GSM8K")

    def convert(row, index):
        if "####" not in row["answer"]:
            raise ValueError(f"GSM8K row {index} has no '#### <answer>' in its answer: {row['answer']!r}")
        return {
            "prompt": _prompt(f"{row['question']}\n{ANSWER_INSTRUCTION}", system_prompt),
            "answer": row["answer"].rsplit("####", 1)[1].strip().replace(",", ""),
        }

    return dataset.map(convert, with_indices=True, remove_columns=dataset.column_names, features=FEATURES)


def _level(level: str) -> int | None:
    # MATH levels read "Level 3"; a few rows have "Level ?".
    try:
        return int(str(level).removeprefix("Level").strip())
    except ValueError:
        return None


def load_math(
    split: str = "train",
    levels: Iterable[int] | None = None,
    dataset: Dataset | DatasetDict | None = None,
    system_prompt: str | None = None,
) -> Dataset:
    r"""
    Load MATH (`DigitalLearningGmbH/MATH-lighteval`) as `prompt` / `answer` rows.

    The answer is the content of the last `\boxed{...}` of the solution; the rare solutions without one are dropped.

    Args:
        split (`str`, *optional*, defaults to `"train"`):
            Split to load (`"train"` or `"test"`).
        levels (`Iterable[int]`, *optional*):
            Difficulty levels to keep (1 to 5), e.g. `[3]`. By default all rows are kept.
        dataset (`Dataset` or `DatasetDict`, *optional*):
            A dataset with MATH's columns (`problem`, `solution`, and `level` when filtering by level) to use instead
            of downloading it.
        system_prompt (`str`, *optional*):
            If given, a system message placed before each problem.

    Returns:
        `Dataset`: Columns `prompt` (conversational) and `answer` (string).

    Raises:
        ValueError: If a required column is missing.
    """
    if dataset is None:
        dataset = datasets.load_dataset("DigitalLearningGmbH/MATH-lighteval", split=split)
    dataset = _select_split(dataset, split)
    _check_columns(dataset, ("problem", "solution") + (("level",) if levels is not None else ()), "MATH")
    if levels is not None:
        levels = {int(level) for level in levels}
        dataset = dataset.filter(lambda row: _level(row["level"]) in levels)
    num_rows = len(dataset)
    dataset = dataset.filter(lambda row: extract_boxed(row["solution"]) is not None)
    if len(dataset) < num_rows:
        logger.warning("Dropped %d MATH rows whose solution has no \\boxed{} answer.", num_rows - len(dataset))
    return dataset.map(
        lambda row: {
            "prompt": _prompt(f"{row['problem']}\n{ANSWER_INSTRUCTION}", system_prompt),
            "answer": extract_boxed(row["solution"]),
        },
        remove_columns=dataset.column_names,
        features=FEATURES,
    )


DATASETS = ("arithmetic", "gsm8k", "math")


def load_dataset_by_name(name: str, split: str, **kwargs) -> Dataset:
    """
    Load one split of a dataset of this module by name.

    Args:
        name (`str`):
            One of `"arithmetic"` ([`make_arithmetic_dataset`], splits `"train"` and `"test"`), `"gsm8k"`
            ([`load_gsm8k`]) or `"math"` ([`load_math`]).
        split (`str`):
            Split to return.
        **kwargs:
            Passed to the loader, e.g. `num_train` and `num_eval` for `"arithmetic"`, `levels` for `"math"`.

    Returns:
        `Dataset`: Columns `prompt` (conversational) and `answer` (string).

    Raises:
        ValueError: If the name or split is unknown.
    """
    if name == "arithmetic":
        return _select_split(make_arithmetic_dataset(**kwargs), split)
    if name == "gsm8k":
        return load_gsm8k(split=split, **kwargs)
    if name == "math":
        return load_math(split=split, **kwargs)
    message = f"Unknown dataset {name!r}; available datasets are {list(DATASETS)}."
    close = difflib.get_close_matches(name, DATASETS, n=1)
    raise ValueError(message + (f" Did you mean {close[0]!r}?" if close else ""))
