# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
import operator
import re

import pytest
from datasets import Dataset, DatasetDict

from opo_trl.harness.data import load_gsm8k, load_math, load_reasoning_gym, make_arithmetic_dataset
from opo_trl.harness.rewards import accuracy_reward, reasoning_gym_reward


PROBLEM_RE = re.compile(r"What is (\(?-?\d+\)?) ([-+*]) (\(?-?\d+\)?)\? Put the final answer in \\boxed\{\}\.")
OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def solve(prompt):
    a, op, b = PROBLEM_RE.fullmatch(prompt[-1]["content"]).groups()
    return str(OPERATORS[op](int(a.strip("()")), int(b.strip("()"))))


def test_arithmetic_schema_and_answers():
    data = make_arithmetic_dataset(20, 10, operations=("+", "-", "*"), min_operand=-5, max_operand=12)
    assert set(data) == {"train", "test"}
    assert (len(data["train"]), len(data["test"])) == (20, 10)
    for split in data.values():
        assert split.column_names == ["prompt", "answer"]
        for row in split:
            assert [m["role"] for m in row["prompt"]] == ["user"]
            assert row["answer"] == solve(row["prompt"])


def test_arithmetic_is_determined_by_seed():
    first, again, other = (make_arithmetic_dataset(30, 10, seed=s)["train"] for s in (0, 0, 1))
    assert first.to_list() == again.to_list()
    assert first["prompt"] != other["prompt"]


def test_arithmetic_splits_are_disjoint_and_distinct():
    # 2 operations x 4^2 operand pairs = 32 problems: asking for all of them must use each exactly once.
    data = make_arithmetic_dataset(24, 8, min_operand=1, max_operand=4, operations="+-")
    train = [row[-1]["content"] for row in data["train"]["prompt"]]
    test = [row[-1]["content"] for row in data["test"]["prompt"]]
    assert len(set(train + test)) == 32
    assert not set(train) & set(test)


def test_arithmetic_system_prompt_and_empty_split():
    data = make_arithmetic_dataset(3, 0, system_prompt="Be brief.")
    assert data["train"][0]["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert data["train"][0]["prompt"][1]["content"].startswith("What is ")
    assert len(data["test"]) == 0 and data["test"].column_names == ["prompt", "answer"]


def test_arithmetic_answers_are_rewarded():
    test = make_arithmetic_dataset(5, 5, operations=("*",))["test"]
    completions = [rf"\boxed{{{answer}}}" for answer in test["answer"]]
    assert accuracy_reward(completions, answer=test["answer"]) == [1.0] * 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_train": -1, "num_eval": 1}, "non-negative"),
        ({"num_train": 1, "num_eval": -1}, "non-negative"),
        ({"num_train": 1, "num_eval": 1, "min_operand": 5, "max_operand": 4}, "must not exceed"),
        ({"num_train": 1, "num_eval": 1, "operations": ("/",)}, r"Unknown operation\(s\) \['/'\]"),
        ({"num_train": 1, "num_eval": 1, "operations": ()}, "must not be empty"),
        ({"num_train": 3, "num_eval": 2, "min_operand": 1, "max_operand": 2}, "only 4 distinct problems"),
    ],
)
def test_arithmetic_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_arithmetic_dataset(**kwargs)


GSM8K = Dataset.from_dict(
    {
        "question": ["Tom has 3 apples and buys 4. How many?", "A car costs $1,200 and a bike $300. Total?"],
        "answer": ["3 + 4 = <<3+4=7>>7\n#### 7", "1,200 + 300 = 1,500\n#### 1,500"],
    }
)


def test_gsm8k():
    data = load_gsm8k(dataset=GSM8K, system_prompt="Think.")
    assert data.column_names == ["prompt", "answer"]
    assert data["answer"] == ["7", "1500"]
    assert data[0]["prompt"] == [
        {"role": "system", "content": "Think."},
        {"role": "user", "content": "Tom has 3 apples and buys 4. How many?\nPut the final answer in \\boxed{}."},
    ]
    assert load_gsm8k("test", dataset=DatasetDict({"test": GSM8K}))["answer"] == ["7", "1500"]


def test_gsm8k_errors():
    with pytest.raises(ValueError, match=r"missing the column 'question'.*\['problem', 'answer'\]"):
        load_gsm8k(dataset=GSM8K.rename_column("question", "problem"))
    with pytest.raises(ValueError, match="row 0 has no '#### <answer>'"):
        load_gsm8k(dataset=Dataset.from_dict({"question": ["q"], "answer": ["no marker"]}))


MATH = Dataset.from_dict(
    {
        "problem": ["Simplify $\\frac{2}{4}$.", "What is $1+1$?", "Compute $\\sqrt{8}$.", "Broken."],
        "solution": [
            "It is $\\boxed{\\frac{1}{2}}$.",
            "Clearly $1+1=\\boxed{2}$.",
            "First \\boxed{8}, no: $\\boxed{2\\sqrt{2}}$.",
            "No box here.",
        ],
        "level": ["Level 3", "Level 1", "Level 3", "Level ?"],
        "type": ["Algebra", "Prealgebra", "Algebra", "Algebra"],
    }
)


def test_math():
    data = load_math(dataset=MATH)
    assert data.column_names == ["prompt", "answer"]
    assert data["answer"] == ["\\frac{1}{2}", "2", "2\\sqrt{2}"]
    assert data[1]["prompt"] == [{"role": "user", "content": "What is $1+1$?\nPut the final answer in \\boxed{}."}]


def test_math_levels():
    assert load_math(levels=[3], dataset=MATH)["answer"] == ["\\frac{1}{2}", "2\\sqrt{2}"]
    assert load_math(levels=[1, 2], dataset=MATH)["answer"] == ["2"]
    assert len(load_math(levels=[5], dataset=MATH)) == 0


def test_math_missing_columns():
    with pytest.raises(ValueError, match=r"missing the column 'solution'.*\['problem', 'level', 'type'\]"):
        load_math(dataset=MATH.remove_columns("solution"))
    without_level = MATH.remove_columns("level")
    assert len(load_math(dataset=without_level)) == 3
    with pytest.raises(ValueError, match="missing the column 'level'"):
        load_math(levels=[3], dataset=without_level)


# -- reasoning-gym ---------------------------------------------------------------------------------------------------

CHAIN_SUM = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


def test_reasoning_gym_splits_are_disjoint_seeded_and_scored_by_the_task():
    pytest.importorskip("reasoning_gym")
    sizes = {"train": 40, "validation": 10, "test": 10}
    data = load_reasoning_gym("chain_sum", sizes, seed=0, options=CHAIN_SUM)
    assert {split: len(rows) for split, rows in data.items()} == sizes
    questions = {split: {p[-1]["content"] for p in rows["prompt"]} for split, rows in data.items()}
    # 1-digit sums of two terms: only 100 distinct problems, so overlaps between seeds are certain and were dropped.
    assert not (questions["train"] & questions["test"]) and not (questions["validation"] & questions["test"])
    assert not questions["train"] & questions["validation"]
    assert all(len(q) == len(data[s]) for s, q in questions.items())  # no duplicates within a split
    assert (
        load_reasoning_gym("chain_sum", sizes, seed=0, options=CHAIN_SUM)["test"].to_list() == data["test"].to_list()
    )
    assert (
        load_reasoning_gym("chain_sum", sizes, seed=1, options=CHAIN_SUM)["test"]["prompt"] != data["test"]["prompt"]
    )

    test = data["test"]
    assert test.column_names == ["prompt", "answer", "rg_task", "rg_entry"]
    row = test[0]
    expression = row["prompt"][-1]["content"].split("=")[0].split(":")[-1]
    assert set(expression) <= set("0123456789 +-")
    assert row["answer"] == str(eval(expression)) and row["prompt"][-1]["content"].endswith(
        "Put the final answer in \\boxed{}."
    )
    right = [f"So the sum is \\boxed{{{answer}}}." for answer in test["answer"]]
    wrong = [f"\\boxed{{{int(answer) + 1}}}" for answer in test["answer"]]
    columns = {"rg_task": test["rg_task"], "rg_entry": test["rg_entry"]}
    assert reasoning_gym_reward(right, **columns) == [1.0] * 10
    assert reasoning_gym_reward(wrong, **columns) == [0.0] * 10
    # Conversational completions and the last-number fallback reach the same verifier.
    spoken = [[{"role": "assistant", "content": f"It is {answer}"}] for answer in test["answer"]]
    assert reasoning_gym_reward(spoken, **columns) == [1.0] * 10


def test_reasoning_gym_splits_are_not_shifted_copies_of_one_stream():
    pytest.importorskip("reasoning_gym")
    # Item i of a reasoning-gym seed s is item i - 1 of seed s + 1: the splits' seeds must be far apart, or most of a
    # split is dropped as a duplicate of another. Two-digit sums have 20,000 distinct problems: few real repeats.
    options = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}
    data = load_reasoning_gym("chain_sum", {"train": 2000, "validation": 128, "test": 256}, seed=0, options=options)
    assert {split: len(rows) for split, rows in data.items()} == {"train": 2000, "validation": 128, "test": 256}


def test_reasoning_gym_errors():
    pytest.importorskip("reasoning_gym")
    with pytest.raises(ValueError, match=r"Unknown reasoning-gym task 'chain_summ'.*Did you mean.*'chain_sum'"):
        load_reasoning_gym("chain_summ", {"test": 4})
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['max_term'\].*'max_terms'"):
        load_reasoning_gym("chain_sum", {"test": 4}, options={"max_term": 3})
    with pytest.raises(ValueError, match="gave only .* distinct problems"):
        load_reasoning_gym("chain_sum", {"train": 190, "test": 30}, options=CHAIN_SUM)  # 200 exist
    with pytest.raises(ValueError, match="Unknown split 'dev'"):
        load_reasoning_gym("chain_sum", {"dev": 4}, options=CHAIN_SUM)
