# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
import logging
import os.path
import sys
import threading
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

from opo_trl.harness import rewards
from opo_trl.harness.rewards import (
    REWARD_FUNCTIONS,
    STRINGS_AND_NUMBERS,
    accuracy_reward,
    answer_checker,
    answers_match,
    extract_answer,
    extract_boxed,
    format_reward,
    get_reward_function,
)


@pytest.fixture
def without_math_verify(monkeypatch):
    monkeypatch.setattr(rewards, "_load_math_verify", lambda: None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{\frac{1}{2}}}{2}}", r"\frac{\sqrt{\frac{1}{2}}}{2}"),
        (r"first \boxed{1}, then \boxed{2}", "2"),
        (r"\boxed{3} and then cut off \boxed{\frac{1}{", "3"),
        (r"\fbox{ 7 }", "7"),
        ("The total is 1,234.", "1,234"),
        ("It drops to -3 degrees", "-3"),
        ("10 - 3 = 7", "7"),
        ("5-3", "3"),
        ("about 2.5 then 0.75", "0.75"),
        ("three quarters, 3/4", "3/4"),
        ("no answer here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_boxed_ignores_numbers():
    assert extract_boxed("the answer is 5") is None
    assert extract_boxed(r"\boxed{} \boxed{x+1}") == "x+1"


@pytest.mark.parametrize(
    ("pred", "ref"),
    [
        ("1/2", "0.5"),
        (r"\frac{1}{2}", "0.5"),
        (r"\dfrac{1}{2}", "1/2"),
        (r"-\frac{3}{4}", "-0.75"),
        ("1,234", "1234"),
        ("1,000", "1000"),
        ("-3", "-3.0"),
        ("$19$", "19"),
        ("50\\%", "50"),
        ("x = 5", "5"),
        (r"\text{Monday}", "Monday"),
    ],
)
def test_answers_match_without_math_verify(without_math_verify, pred, ref):
    assert answers_match(pred, ref)


@pytest.mark.parametrize(("pred", "ref"), [("3", "4"), ("0.5", "0.55"), ("-3", "3"), ("1,234", "124"), ("", "")])
def test_answers_differ(pred, ref):
    assert not answers_match(pred, ref)


def test_symbolic_match_needs_math_verify(monkeypatch):
    pytest.importorskip("math_verify")
    assert answers_match(r"2\sqrt{2}", r"\sqrt{8}")
    assert answers_match(r"\frac{\sqrt{2}}{2}", r"\sqrt{2}/2")
    assert not answers_match(r"2\sqrt{3}", r"\sqrt{8}")
    monkeypatch.setattr(rewards, "_load_math_verify", lambda: None)
    assert not answers_match(r"2\sqrt{2}", r"\sqrt{8}")


@pytest.fixture
def unimportable_math_verify(monkeypatch):
    # As in an install made without it: `import math_verify` raises ImportError.
    monkeypatch.setitem(sys.modules, "math_verify", None)
    rewards._load_math_verify.cache_clear()
    yield
    rewards._load_math_verify.cache_clear()


def test_math_verify_is_a_base_dependency_and_the_checker_names_its_version():
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert any(r.startswith("math-verify") for r in project["dependencies"])
    assert project["optional-dependencies"]["math"] == ["math-verify>=0.8"]  # old install lines keep working
    assert answer_checker() == f"math-verify {version('math-verify')}"
    assert accuracy_reward([r"\boxed{2\sqrt{2}}"], answer=[r"\sqrt{8}"]) == [1.0]


def test_without_math_verify_accuracy_warns_once_and_says_so_in_the_checker(unimportable_math_verify, caplog):
    with caplog.at_level(logging.WARNING, logger="opo_trl.harness.rewards"):
        # The first call warns, though its answers need no symbolic check; the symbolic one scores 0.
        assert accuracy_reward([r"\boxed{4}"], answer=["4"]) == [1.0]
        assert accuracy_reward([r"\boxed{2\sqrt{2}}", "It is 4"], answer=[r"\sqrt{8}", "4"]) == [0.0, 1.0]
        assert answer_checker() == STRINGS_AND_NUMBERS
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "strings and numbers only" in warning and "pip install 'math-verify>=0.8'" in warning


def test_math_verify_failures_are_mismatches(monkeypatch):
    math_verify = pytest.importorskip("math_verify")
    from math_verify.errors import TimeoutException

    def timeout(*args, **kwargs):
        raise TimeoutException("Operation timed out!")

    monkeypatch.setattr(math_verify, "parse", timeout)
    assert not answers_match(r"2\sqrt{2}", r"\sqrt{8}")
    monkeypatch.setattr(math_verify, "parse", lambda *args, **kwargs: 1 / 0)
    assert not answers_match(r"2\sqrt{2}", r"\sqrt{8}")


def test_math_verify_off_the_main_thread():
    # signal.alarm timeouts are unavailable in threads: the symbolic check must still run, not raise.
    pytest.importorskip("math_verify")
    result = []
    thread = threading.Thread(target=lambda: result.append(answers_match(r"2\sqrt{2}", r"\sqrt{8}")))
    thread.start()
    thread.join()
    assert result == [True]


def test_accuracy_reward_standard():
    completions = [
        r"Half is \boxed{1/2}",
        r"\boxed{\frac{1}{2}}",
        r"Try \boxed{3}, no: \boxed{0.5}",
        r"\boxed{0.5} was wrong, it is \boxed{2}",
        "The answer is 0.5",
        "I don't know",
    ]
    assert accuracy_reward(completions, answer=["0.5"] * 6) == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]


def test_accuracy_reward_numbers(without_math_verify):
    completions = ["So 1,234 in total", r"\boxed{-3}", r"\boxed{3}", r"\boxed{1,000}", "It is 18."]
    assert accuracy_reward(completions, answer=["1234", "-3.0", "-3", "1000", "19"]) == [1.0, 1.0, 0.0, 1.0, 0.0]


def test_accuracy_reward_conversational():
    completions = [
        [{"role": "assistant", "content": r"\boxed{19}"}],
        [{"role": "assistant", "content": "It is 20"}],
        [{"role": "assistant", "content": None}],
        [
            {"role": "assistant", "content": "Let me compute."},
            {"role": "tool", "content": "19"},
            {"role": "assistant", "content": r"\boxed{19}"},
        ],
    ]
    assert accuracy_reward(completions, answer=["19"] * 4) == [1.0, 0.0, 0.0, 1.0]


def test_accuracy_reward_reference_forms():
    completions = [r"\boxed{72}", r"\boxed{\frac{1}{2}}", r"\boxed{1}", r"\boxed{1}"]
    answers = ["Natalia sold 48 + 24 = 72 clips.\n#### 72", r"so \boxed{0.5}", "", None]
    assert accuracy_reward(completions, answer=answers) == [1.0, 1.0, None, None]


def test_accuracy_reward_length_mismatch():
    with pytest.raises(ValueError):
        accuracy_reward(["1", "2"], answer=["1"])


def test_format_reward():
    completions = [
        r"\boxed{1}",
        r"\boxed{}",
        "1",
        r"\boxed{unclosed",
        [{"role": "assistant", "content": r"so \boxed{\frac{1}{2}}"}],
    ]
    assert format_reward(completions) == [1.0, 0.0, 0.0, 0.0, 1.0]


def test_registry():
    assert get_reward_function("accuracy") is accuracy_reward
    assert get_reward_function("format") is format_reward
    assert {name: func.__name__ for name, func in REWARD_FUNCTIONS.items()} == {
        "accuracy": "accuracy_reward",
        "format": "format_reward",
        "reasoning_gym": "reasoning_gym_reward",
    }


def test_dotted_paths():
    assert get_reward_function("opo_trl.harness.rewards.format_reward") is format_reward
    assert get_reward_function("opo_trl.harness.rewards:accuracy_reward") is accuracy_reward
    assert get_reward_function("os.path:join") is os.path.join
    assert get_reward_function("os.path.join") is os.path.join


def test_unknown_name_suggests_closest():
    with pytest.raises(ValueError, match="'acuracy'") as info:
        get_reward_function("acuracy")
    assert "Did you mean 'accuracy'?" in str(info.value)
    assert "'format'" in str(info.value)
    with pytest.raises(ValueError, match="Did you mean") as info:
        get_reward_function("formatt")
    assert "'format'" in str(info.value)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("opo_trl.no_such_module.f", "Cannot import module 'opo_trl.no_such_module'"),
        ("opo_trl.harness.rewards.no_such_function", "has no attribute 'no_such_function'"),
        ("os.path:join.nested", "has no attribute 'join.nested'"),
        (":f", "Invalid reward function path"),
    ],
)
def test_bad_dotted_paths(name, message):
    with pytest.raises(ValueError, match=message):
        get_reward_function(name)


def test_non_callable_path():
    with pytest.raises(TypeError, match="'os.sep' resolves to a str, which is not callable"):
        get_reward_function("os.sep")


def test_trl_grpo_reward_names_resolve_to_trl_functions():
    import trl.rewards

    assert get_reward_function("accuracy_reward") is trl.rewards.accuracy_reward
    assert get_reward_function("think_format_reward") is trl.rewards.think_format_reward
    assert callable(get_reward_function("get_soft_overlong_punishment"))


def test_dotted_path_imports_from_the_current_directory(tmp_path, monkeypatch):
    import sys

    (tmp_path / "my_rewards_here.py").write_text(
        "def fn(completions, **kwargs):\n    return [1.0] * len(completions)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert get_reward_function("my_rewards_here.fn")(["a", "b"]) == [1.0, 1.0]
