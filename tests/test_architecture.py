"""The package's shape: the algorithm imports nothing of the harness, and no module imports itself back."""

import ast
import doctest
import importlib
from pathlib import Path

import pytest


PACKAGE = Path(__file__).resolve().parents[1] / "opo_trl"
# The algorithm a TRL user imports: the math, the config, the trainer and what the trainer needs to run in TRL (dataset
# checks, the pending rollout in checkpoints, vLLM-CPU's weight sync).
ALGORITHM = {"core", "config", "trainer", "validation", "rollout_state", "vllm_cpu"}


def internal_imports() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.glob("*.py"):
        imports = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imports.add(node.module or "__init__")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("opo_trl."):
                imports.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                imports |= {a.name.split(".")[1] for a in node.names if a.name.startswith("opo_trl.")}
        graph[path.stem] = imports
    return graph


def test_the_algorithm_imports_nothing_of_the_harness():
    graph = internal_imports()
    assert graph["core"] == set()
    assert graph["config"] == {"core"}
    assert graph["trainer"] == {"config", "core", "validation", "rollout_state", "vllm_cpu"}
    assert graph["rollout_state"] == graph["vllm_cpu"] == set()
    for module in ALGORITHM:
        assert graph[module] <= ALGORITHM, f"{module} imports {graph[module] - ALGORITHM}"


def test_no_import_cycles():
    graph = internal_imports()

    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, (*seen, n))) for n in graph.get(start, ()))

    cycles = [m for m in graph if m != "__init__" and reaches(m, m)]
    assert cycles == [], f"modules on an import cycle: {cycles}"


@pytest.mark.parametrize("module", ["rewards", "core", "stats"])
def test_docstring_examples_run_as_written(module):
    result = doctest.testmod(importlib.import_module(f"opo_trl.{module}"))
    assert result.failed == 0
