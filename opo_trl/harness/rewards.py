# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
r"""
Math reward functions for `OPOTrainer` / `GRPOTrainer`.

Every reward function has TRL's signature `f(completions, **kwargs) -> list[float | None]`: `completions` is a list of
strings (standard format) or a list of message lists (conversational format), and every dataset column other than
`prompt` arrives as a keyword argument. The functions here read the reference answer from the `answer` column.

Answers are compared in three steps, cheapest first: normalised string equality, exact numeric equality (integers,
decimals, `a/b`, `\frac{a}{b}`, thousands separators), then symbolic equivalence with `math-verify`, a dependency of
opo-trl so that `accuracy` scores alike in every install. Which checker scored a run, with its version
([`answer_checker`]), is recorded in the run's `summary.json`, and `opo-trl compare` will not pair runs scored by
different checkers.
"""

import difflib
import functools
import importlib
import logging
import os
import re
import sys
import threading
from collections.abc import Callable
from fractions import Fraction


logger = logging.getLogger(__name__)

# Seconds math-verify may spend parsing or comparing one answer; sympy can otherwise hang on adversarial input.
MATH_VERIFY_TIMEOUT = 5

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# A sign only counts when it is not a binary minus: in "5-3" the last number is 3, not -3.
_NUMBER_RE = re.compile(r"(?<![\w.])-?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:/\d+)?(?![\d,]*\d)")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_FRAC_RE = re.compile(r"(-?)\\frac(?:\{(-?[\d.]+)\}\{(-?[\d.]+)\}|(\d)(\d))")
_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
# LaTeX spacing and sizing commands, degree signs and percent/dollar units: none of them changes the value.
_NOISE_RE = re.compile(r"\\left|\\right|\\[!,;:> ]|\^\{?\\circ\}?|\\?%|\\\$|\$")


def extract_boxed(text: str) -> str | None:
    r"""
    Return the content of the last complete `\boxed{...}` (or `\fbox{...}`) in `text`, nested braces included.

    Args:
        text (`str`):
            Text to search.

    Returns:
        `str` or `None`: The stripped content of the last balanced box, or `None` if there is none.

    Example:
    ```python
    >>> extract_boxed(r"so \boxed{1} or rather \boxed{\frac{1}{2}}")
    '\\frac{1}{2}'

    ```
    """
    # Scan from the last box backwards: a completion cut off by the length limit can end in an unclosed box.
    for match in reversed(list(_BOXED_RE.finditer(text))):
        depth = 1
        for i in range(match.end(), len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[match.end() : i].strip()
    return None


def extract_answer(text: str) -> str | None:
    r"""
    Extract the final answer of a completion: the last `\boxed{...}` if any, else the last number in the text.

    Numbers may be negative, decimal, use thousands separators (`1,234`) or be simple fractions (`3/4`).

    Args:
        text (`str`):
            Completion text.

    Returns:
        `str` or `None`: The answer as written (not normalised), or `None` if no answer is found.
    """
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1] if numbers else None


def _normalize(answer: str) -> str:
    answer = _TEXT_RE.sub(r"\1", answer)
    answer = _NOISE_RE.sub("", answer)
    answer = answer.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    answer = re.sub(r"\s+", "", answer).rstrip(".")
    # "x=5" answers the same question as "5"; only a single leading variable is dropped, never a real equation.
    if answer.count("=") == 1 and re.match(r"^[A-Za-z]=.", answer):
        answer = answer[2:]
    return answer


def _to_number(answer: str) -> Fraction | None:
    # Fractions, not floats: 0.1 + 0.2 style rounding must not turn a wrong answer into a right one or vice versa.
    if _THOUSANDS_RE.fullmatch(answer):
        answer = answer.replace(",", "")
    match = _FRAC_RE.fullmatch(answer)
    try:
        if match:
            sign, num, den, short_num, short_den = match.groups()
            value = Fraction(num or short_num) / Fraction(den or short_den)
            return -value if sign else value
        return Fraction(answer)
    except (ValueError, ZeroDivisionError):
        return None


# What `answer_checker` reports when math-verify cannot be imported (an install made without dependencies).
STRINGS_AND_NUMBERS = "strings and numbers (no math-verify)"


@functools.cache
def _load_math_verify():
    try:
        import math_verify
        from math_verify.errors import TimeoutException
    except ImportError as e:
        # Once per process (cached): a run without it scores some right answers 0 and is not comparable with others.
        logger.warning(
            "math-verify cannot be imported (%s): the accuracy reward compares answers as strings and numbers only and "
            "scores symbolically equal answers such as 2\\sqrt{2} and \\sqrt{8} as wrong; runs scored so are not "
            "comparable with runs scored by math-verify. Install it: pip install 'math-verify>=0.8'.",
            e,
        )
        return None
    return math_verify, TimeoutException


def answer_checker() -> str:
    """
    How [`answers_match`] decides in this install: `"math-verify <version>"`, or `STRINGS_AND_NUMBERS` when
    math-verify cannot be imported (which also logs a warning, once).
    """
    if _load_math_verify() is None:
        return STRINGS_AND_NUMBERS
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"math-verify {version('math-verify')}"
    except PackageNotFoundError:  # importable without package metadata, e.g. vendored
        return "math-verify (version unknown)"


def _symbolic_match(pred: str, ref: str) -> bool:
    loaded = _load_math_verify()
    if loaded is None:
        return False
    math_verify, timeout_exception = loaded
    # math-verify times out with signal.alarm, which only works in the main thread (as in `trl.rewards`).
    timeout = MATH_VERIFY_TIMEOUT if threading.current_thread() is threading.main_thread() else None
    try:
        # Boxing makes math-verify parse the whole string as one LaTeX expression rather than hunt for a number in it.
        gold = math_verify.parse(f"\\boxed{{{ref}}}", parsing_timeout=timeout)
        target = math_verify.parse(f"\\boxed{{{pred}}}", parsing_timeout=timeout)
        return bool(gold and target and math_verify.verify(gold, target, timeout_seconds=timeout))
    except (Exception, timeout_exception):  # TimeoutException derives from BaseException
        logger.debug("math-verify failed on %r vs %r", pred, ref, exc_info=True)
        return False


def answers_match(pred: str, ref: str) -> bool:
    r"""
    Whether a predicted answer equals a reference answer.

    Tries normalised string equality, then exact numeric equality (`\frac{1}{2}`, `1/2` and `0.5` are equal, as are
    `1,000` and `1000`), then symbolic equivalence with `math-verify` (see [`answer_checker`]). Two plain numbers that
    differ are never sent to `math-verify`, which keeps the common arithmetic case fast.

    Args:
        pred (`str`):
            Predicted answer, e.g. the output of [`extract_answer`].
        ref (`str`):
            Reference answer.

    Returns:
        `bool`: `True` if the answers are judged equal.
    """
    pred, ref = _normalize(pred), _normalize(ref)
    if not pred or not ref:
        return False
    if pred == ref:
        return True
    pred_number, ref_number = _to_number(pred), _to_number(ref)
    if pred_number is not None and ref_number is not None:
        return pred_number == ref_number
    return _symbolic_match(pred, ref)


def _completion_text(completion: str | list[dict]) -> str:
    if isinstance(completion, str):
        return completion
    # Conversational: with tool calls the answer is in the last assistant turn, not in the tool outputs.
    messages = [m for m in completion if m.get("role", "assistant") == "assistant"] or completion
    content = messages[-1].get("content") if messages else None
    if isinstance(content, list):  # multimodal content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def _reference_text(reference) -> str | None:
    if reference is None:
        return None
    reference = str(reference)
    boxed = extract_boxed(reference)
    if boxed is not None:
        reference = boxed
    elif "####" in reference:  # a raw GSM8K solution
        reference = reference.rsplit("####", 1)[1]
    return reference if _normalize(reference) else None


def accuracy_reward(completions: list, answer: list[str], **kwargs) -> list[float | None]:
    r"""
    Reward 1.0 when the final answer of a completion equals the reference answer, else 0.0.

    The final answer is the last `\boxed{...}` of the completion, or its last number when nothing is boxed (see
    [`extract_answer`]); equality is [`answers_match`].

    Args:
        completions (`list[str]` or `list[list[dict[str, str]]]`):
            Completions, as strings or as lists of messages whose last assistant message holds the answer.
        answer (`list[str]`):
            Reference answers, one per completion (the dataset's `answer` column). A reference may be a bare answer,
            contain a `\boxed{...}`, or be a GSM8K solution ending in `#### <answer>`.
        **kwargs:
            Other dataset columns and trainer arguments; unused.

    Returns:
        `list[float | None]`: 1.0 or 0.0 per completion, or `None` where the reference is empty or missing, which
        TRL treats as "no reward".

    Example:
    ```python
    >>> accuracy_reward([r"\boxed{\frac{1}{2}}", "It is 3."], answer=["0.5", "4"])
    [1.0, 0.0]

    ```
    """
    _load_math_verify()  # warns on the first call, not only at the first answer that needs it
    rewards = []
    for completion, reference in zip(completions, answer, strict=True):
        reference = _reference_text(reference)
        if reference is None:
            rewards.append(None)
            continue
        pred = extract_answer(_completion_text(completion))
        rewards.append(float(pred is not None and answers_match(pred, reference)))
    return rewards


def format_reward(completions: list, **kwargs) -> list[float]:
    r"""
    Reward 1.0 when a completion states its answer in a complete, non-empty `\boxed{...}`, else 0.0.

    Args:
        completions (`list[str]` or `list[list[dict[str, str]]]`):
            Completions, as strings or as lists of messages.
        **kwargs:
            Dataset columns and trainer arguments; unused.

    Returns:
        `list[float]`: 1.0 or 0.0 per completion.
    """
    return [float(bool(extract_boxed(_completion_text(completion)))) for completion in completions]


@functools.cache
def _gym_scorer(task: str) -> Callable:
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(task)


def reasoning_gym_reward(completions: list, rg_task: list[str], rg_entry: list[str], **kwargs) -> list[float]:
    r"""
    Score completions of [reasoning-gym](https://github.com/open-thought/reasoning-gym) problems with the task's own
    verifier, `score_answer(answer, entry)`.

    The answer handed to the verifier is the one [`extract_answer`] finds (the last `\boxed{...}`, else the last
    number); reasoning-gym decides whether it is right, and may give partial credit (e.g. `countdown` gives 0.01 for
    a well-formed wrong expression).

    Args:
        completions (`list[str]` or `list[list[dict[str, str]]]`):
            Completions, as strings or as lists of messages.
        rg_task (`list[str]`):
            The task of each row (the dataset's `rg_task` column, see [`~data.load_reasoning_gym`]).
        rg_entry (`list[str]`):
            The generator's entry of each row as JSON (the `rg_entry` column).
        **kwargs:
            Other dataset columns and trainer arguments; unused.

    Returns:
        `list[float]`: The verifier's score per completion, in [0, 1].
    """
    import json

    rewards = []
    for completion, task, entry in zip(completions, rg_task, rg_entry, strict=True):
        answer = extract_answer(_completion_text(completion))
        rewards.append(float(_gym_scorer(task)(answer, json.loads(entry))))
    return rewards


REWARD_FUNCTIONS: dict[str, Callable] = {
    "accuracy": accuracy_reward,
    "format": format_reward,
    "reasoning_gym": reasoning_gym_reward,
}

# The names `trl grpo` recipes use resolve to TRL's own functions, so those recipes run unchanged.
TRL_REWARD_NAMES = (
    "accuracy_reward",
    "reasoning_accuracy_reward",
    "think_format_reward",
    "get_soft_overlong_punishment",
)


def _trl_reward(name: str) -> Callable:
    import trl.rewards

    if name == "get_soft_overlong_punishment":  # a factory; `trl grpo` uses these values
        return trl.rewards.get_soft_overlong_punishment(max_completion_len=1280, soft_punish_cache=256)
    return getattr(trl.rewards, name)


def get_reward_function(name: str) -> Callable:
    """
    Resolve a reward function from a registry name or an import path.

    Args:
        name (`str`):
            A key of `REWARD_FUNCTIONS` (`"accuracy"`, `"format"`), a name of TRL's reward functions as `trl grpo`
            knows them (`TRL_REWARD_NAMES`), or the path of any importable callable, written
            `package.module.function` or `package.module:function` (the colon form allows nested attributes, e.g.
            `package.module:Class.method`).

    Returns:
        `Callable`: The reward function.

    Raises:
        ValueError: If the name is not registered, or the module or attribute of a path cannot be found.
        TypeError: If the path resolves to an object that is not callable.
    """
    if name in REWARD_FUNCTIONS:
        return REWARD_FUNCTIONS[name]
    if name in TRL_REWARD_NAMES:
        return _trl_reward(name)
    if ":" in name:
        module_name, attr_path = name.split(":", 1)
    elif "." in name:
        module_name, attr_path = name.rsplit(".", 1)
    else:
        known = sorted(REWARD_FUNCTIONS) + list(TRL_REWARD_NAMES)
        message = f"Unknown reward function {name!r}. Registered reward functions: {known}."
        close = difflib.get_close_matches(name, known, n=1)
        if close:
            message += f" Did you mean {close[0]!r}?"
        raise ValueError(message + " Pass 'package.module.function' to use any other callable.")
    if not module_name or not attr_path:
        raise ValueError(f"Invalid reward function path {name!r}: expected 'package.module.function'.")
    # As `trl grpo` does: a module next to where the command runs (`my_rewards.py`) is importable.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"Cannot import module {module_name!r} of reward function {name!r}: {e}") from e
    parts = attr_path.split(".")
    for i, attr in enumerate(parts):
        if not hasattr(obj, attr):
            missing = ".".join(parts[: i + 1])
            raise ValueError(f"Module {module_name!r} has no attribute {missing!r} (reward function {name!r}).")
        obj = getattr(obj, attr)
    if not callable(obj):
        raise TypeError(f"Reward function {name!r} resolves to a {type(obj).__name__}, which is not callable.")
    return obj
