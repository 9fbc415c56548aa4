# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
r"""
Prompt datasets for math RL, all in one schema: a conversational `prompt` (a list of messages, as TRL expects) and a
string `answer` that [`~rewards.accuracy_reward`] checks completions against.

`make_arithmetic_dataset` builds a synthetic set in memory (no hub access, exact answers); `load_gsm8k` and
`load_math` map the hub datasets to the same schema.
"""

import difflib
import json
import logging
import os
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


REASONING_GYM_PREFIX = "reasoning_gym/"
# Train, validation and test come from different generator seeds, then are de-duplicated. reasoning-gym draws item i
# of seed s from Random(s + i), so seeds 1 and 2 give the same problems shifted by one: the seeds of the splits are
# SEED_STRIDE apart, which keeps their index ranges apart for any split smaller than that.
_GYM_SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}
SEED_STRIDE = 1_000_000


def load_reasoning_gym(
    task: str,
    sizes: dict[str, int],
    seed: int = 0,
    options: dict | None = None,
    system_prompt: str | None = None,
) -> DatasetDict:
    r"""
    Problems of a [reasoning-gym](https://github.com/open-thought/reasoning-gym) task as `prompt` / `answer` rows.

    Each split is generated with its own seed (`(3 * seed + k) * SEED_STRIDE`, k = 0, 1, 2 for train, validation,
    test: reasoning-gym seeds item i of seed s with s + i, so nearby seeds would give shifted copies of the same
    problems), and a problem whose question already appears in an earlier split (test before validation before train)
    is dropped and replaced by a fresh one, so the splits are disjoint by construction and checked. Every row also carries the task
    name (`rg_task`) and the generator's entry as JSON (`rg_entry`), which [`~rewards.reasoning_gym_reward`] hands to
    the task's own `score_answer`.

    Args:
        task (`str`):
            A registered reasoning-gym task, e.g. `"chain_sum"`, `"basic_arithmetic"`, `"leg_counting"`.
        sizes (`dict[str, int]`):
            Number of problems per split, e.g. `{"train": 2000, "validation": 256, "test": 256}`; a split with size 0
            is left out.
        seed (`int`, *optional*, defaults to `0`):
            Data seed.
        options (`dict`, *optional*):
            Options of the task's config, e.g. `{"min_terms": 2, "max_terms": 3}` for `chain_sum`.
        system_prompt (`str`, *optional*):
            If given, a system message placed before each question.

    Returns:
        `DatasetDict`: The requested splits, with columns `prompt`, `answer`, `rg_task` and `rg_entry`.

    Raises:
        ImportError: If reasoning-gym is not installed (`pip install opo-trl[gym]`).
        ValueError: On an unknown task (with the closest name), a bad option, or a task that cannot produce enough
            distinct problems.
    """
    import json

    try:
        import reasoning_gym
        from reasoning_gym.factory import DATASETS as GYM_TASKS
    except ImportError as e:
        raise ImportError("reasoning-gym tasks need the `reasoning-gym` package: pip install 'opo-trl[gym]'") from e
    if task not in GYM_TASKS:
        close = difflib.get_close_matches(task, list(GYM_TASKS), n=1)
        hint = f" Did you mean {REASONING_GYM_PREFIX}{close[0]!r}?" if close else ""
        raise ValueError(f"Unknown reasoning-gym task {task!r}.{hint} ({len(GYM_TASKS)} tasks are registered.)")
    options = dict(options or {})
    unknown = set(options) - set(GYM_TASKS[task][1].__dataclass_fields__) | ({"seed", "size"} & set(options))
    if unknown:
        allowed = sorted(set(GYM_TASKS[task][1].__dataclass_fields__) - {"seed", "size"})
        raise ValueError(f"Unknown option(s) {sorted(unknown)} of reasoning-gym task {task!r}; options are {allowed}.")

    seen: set[str] = set()
    splits = {}
    # Test first: it is the split whose problems must never leak into training.
    for split in sorted(sizes, key=lambda s: -_GYM_SPLIT_SEEDS.get(s, -1)):
        if split not in _GYM_SPLIT_SEEDS:
            raise ValueError(f"Unknown split {split!r}; reasoning-gym splits are {list(_GYM_SPLIT_SEEDS)}.")
        size = sizes[split]
        if size <= 0:
            continue
        rows = {"prompt": [], "answer": [], "rg_task": [], "rg_entry": []}
        # Ask for more than needed: the duplicates of other splits (and of this one) are skipped. Small problem spaces
        # repeat often (chain_sum draws a digit count, then the numbers: its 200 one-digit sums come up half the time).
        split_seed = (3 * seed + _GYM_SPLIT_SEEDS[split]) * SEED_STRIDE
        generated = reasoning_gym.create_dataset(task, size=4 * size + 64, seed=split_seed, **options)
        for entry in generated:
            if len(rows["prompt"]) == size:
                break
            question = entry["question"]
            if question in seen:
                continue
            seen.add(question)
            rows["prompt"].append(_prompt(f"{question}\n{ANSWER_INSTRUCTION}", system_prompt))
            rows["answer"].append(str(entry["answer"]))
            rows["rg_task"].append(task)
            rows["rg_entry"].append(json.dumps(entry, default=_json_default))
        if len(rows["prompt"]) < size:
            raise ValueError(
                f"reasoning-gym task {task!r} with options {options} gave only {len(rows['prompt'])} distinct problems "
                f"for the {split} split (asked for {size}); widen its options or ask for fewer."
            )
        splits[split] = Dataset.from_dict(rows)
    return DatasetDict({split: splits[split] for split in _GYM_SPLIT_SEEDS if split in splits})


def _json_default(value):
    # Entries' metadata hold tuples, sets and the odd numpy scalar; JSON keeps what score_answer reads.
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# -- one dispatcher: a run's dataset arguments to its splits ------------------------------------------------------

# Script arguments that only some datasets read, and which: set for any other dataset, they are an error rather than
# silently ignored. "hub" is any dataset `datasets.load_dataset` reads.
DATASET_ARGUMENTS = {
    "dataset_train_split": ("gsm8k", "math", "hub", "mixture"),
    "dataset_test_split": ("gsm8k", "math", "hub", "mixture"),
    "dataset_config": ("hub",),
    "dataset_streaming": ("hub",),
    "dataset_options": ("reasoning_gym",),
    "dataset_seed": ("arithmetic", "reasoning_gym"),
    "num_train_samples": ("arithmetic", "reasoning_gym"),
    "num_test_samples": ("arithmetic", "reasoning_gym"),
    "num_validation_samples": ("reasoning_gym",),
    "min_operand": ("arithmetic",),
    "max_operand": ("arithmetic",),
    "operations": ("arithmetic",),
    "math_levels": ("math",),
}
BUILTIN_DATASETS = ("arithmetic", "gsm8k", "math", "reasoning_gym/<task>")


def dataset_kind(script_args, dataset_args) -> str:
    """`mixture` (a `trl grpo` dataset mixture), or the kind of `dataset_name` (see [`dataset_kind_of_name`])."""
    if dataset_args.datasets:
        return "mixture"
    if script_args.dataset_name is None:
        raise ValueError("No dataset: set `dataset_name` (e.g. 'arithmetic') or `datasets` (a dataset mixture).")
    return dataset_kind_of_name(script_args.dataset_name)


def dataset_kind_of_name(name: str) -> str:
    """`arithmetic`, `gsm8k`, `math`, `reasoning_gym`, or `hub` (anything `datasets.load_dataset` reads)."""
    if name.startswith(REASONING_GYM_PREFIX):
        return "reasoning_gym"
    return name if name in ("arithmetic", "gsm8k", "math") else "hub"


def load_datasets(script_args, dataset_args, seed: int):
    """
    The train split and the held-out splits (a dict, e.g. `{"test": ..., "validation": ...}`) of a run, each with a
    `prompt` column and whatever its reward functions read.

    The one place that turns a `dataset_name` (or a `trl grpo` dataset mixture) into datasets.
    """
    kind = dataset_kind(script_args, dataset_args)
    data_seed = seed if script_args.dataset_seed is None else script_args.dataset_seed
    train_split, test_split = script_args.dataset_train_split, script_args.dataset_test_split

    if kind == "mixture":  # a `trl grpo` dataset mixture
        from trl import get_dataset

        mixture = get_dataset(dataset_args)
        return mixture[train_split], _present({test_split: mixture.get(test_split)})
    if kind == "arithmetic":
        splits = make_arithmetic_dataset(
            script_args.num_train_samples,
            script_args.num_test_samples,
            seed=data_seed,
            min_operand=script_args.min_operand,
            max_operand=script_args.max_operand,
            operations=script_args.operations,
        )
        return splits["train"], {"test": splits["test"]}
    if kind == "reasoning_gym":
        options = script_args.dataset_options
        options = json.loads(options) if isinstance(options, str) else options
        sizes = {
            "train": script_args.num_train_samples,
            "validation": script_args.num_validation_samples,
            "test": script_args.num_test_samples,
        }
        splits = load_reasoning_gym(
            script_args.dataset_name.removeprefix(REASONING_GYM_PREFIX), sizes, data_seed, options
        )
        return splits["train"], {name: split for name, split in splits.items() if name != "train"}
    if kind == "gsm8k":
        return load_gsm8k(train_split), {"test": load_gsm8k(test_split)}
    if kind == "math":
        levels = script_args.math_levels
        return load_math(train_split, levels), {"test": load_math(test_split, levels)}
    return _load_hub_dataset(script_args)


def check_not_a_misspelled_builtin(name: str) -> None:
    """Raise if `name`, not a path, is close to a built-in dataset's name, saying which one."""
    if os.path.exists(name):
        return
    close = difflib.get_close_matches(name, ["arithmetic", "gsm8k", "math"], n=1)
    if close:
        raise ValueError(
            f"dataset_name={name!r} is not a built-in dataset ({', '.join(BUILTIN_DATASETS)}) and not a local "
            f"path. Did you mean {close[0]!r}?"
        )


def _load_hub_dataset(script_args):
    name = script_args.dataset_name
    try:
        dataset = datasets.load_dataset(name, name=script_args.dataset_config, streaming=script_args.dataset_streaming)
    except Exception as e:
        if os.path.exists(name):
            raise
        close = difflib.get_close_matches(name, ["arithmetic", "gsm8k", "math"], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"dataset_name={name!r} is not a built-in dataset ({', '.join(BUILTIN_DATASETS)}), not a local path, and "
            f"could not be loaded from the hub ({type(e).__name__}).{hint}"
        ) from e
    test = dataset[script_args.dataset_test_split] if script_args.dataset_test_split in dataset else None
    return dataset[script_args.dataset_train_split], _present({script_args.dataset_test_split: test})


def _present(splits: dict) -> dict:
    return {name: split for name, split in splits.items() if split is not None}
