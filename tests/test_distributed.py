"""Two processes (gloo) against one: the escort drive and the first update must not depend on the process count."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from .conftest import failure_report, free_port, run_distributed


SCRIPT = Path(__file__).parent / "distributed" / "equivalence.py"


def run(nproc, out_dir, model_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(SCRIPT.parents[2]),
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(free_port()),
        str(SCRIPT),
        str(out_dir),
        model_dir,
    ]
    result = run_distributed(command, env)
    assert result.returncode == 0, failure_report(result)
    return json.loads((out_dir / "result.json").read_text())


@pytest.mark.multiprocess
def test_two_processes_match_one(tmp_path, tiny_model_path):
    one = run(1, tmp_path / "one", tiny_model_path)
    two = run(2, tmp_path / "two", tiny_model_path)
    assert two["world_size"] == 2 and one["world_size"] == 1
    # Same rows, same rewards, in the same global order.
    assert one["prompts"] == two["prompts"]
    assert one["rewards"] == pytest.approx(two["rewards"])
    # The second prompt's group is split between the processes (rows 4-7 of 12; process 0 holds rows 0-5).
    assert len(set(one["prompts"][4:8])) == 1 and len(two["local_drive"]) == 6
    # The gathered drive of two processes is the single-process drive, to float32 rounding.
    torch.testing.assert_close(torch.tensor(two["drive"]), torch.tensor(one["drive"]), atol=1e-6, rtol=1e-6)
    assert sum(abs(g) for g in one["drive"]) > 0.1
    # One optimizer step: same loss (0 on-policy), same gradient norm, same parameters after the step.
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-6)
    assert one["grad_norm"] > 0 and two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)
    torch.testing.assert_close(torch.tensor(two["params"]), torch.tensor(one["params"]), atol=2e-5, rtol=1e-4)
