# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""Checks that a dataset can feed `OPOTrainer` and its reward functions, run before any model loads."""

import inspect


# Keyword arguments `GRPOTrainer` passes to every reward function on top of the dataset columns.
REWARD_KWARGS = (
    "prompts",
    "completions",
    "completion_ids",
    "trainer_state",
    "log_extra",
    "log_metric",
    "environments",
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
