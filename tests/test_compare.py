"""The comparison harness on a tiny model: two steps per algorithm, every file written, the table well-formed."""

import csv

import pytest
import yaml

from opo_trl.compare import run_comparison

from .conftest import tiny_recipe


@pytest.mark.slow
def test_comparison_writes_steps_summary_and_plots(tmp_path, tiny_model_path):
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(tiny_recipe(tmp_path, tiny_model_path, heldout_eval=True, heldout_eval_steps=1)))
    algorithms = ["opo", "grpo", "dapo", "gspo"]
    rows = run_comparison(config, algorithms, [0], tmp_path / "cmp", in_process=True, last_k=2)

    assert [r["algorithm"] for r in rows] == algorithms
    for row in rows:
        assert row["seeds"] == 1 and 0.0 <= row["heldout_after"]["mean"] <= 1.0
        assert row["seconds_per_step"]["mean"] > 0 and row["peak_rss_mb"]["mean"] > 0
    # Every algorithm starts from the same model: the "before" accuracy is measured once and shared.
    assert len({r["heldout_before"]["mean"] for r in rows}) == 1

    with (tmp_path / "cmp" / "steps.csv").open() as f:
        steps = list(csv.DictReader(f))
    assert {(r["algorithm"], r["step"]) for r in steps} >= {(a, s) for a in algorithms for s in ("1", "2")}
    opo_rows = [r for r in steps if r["algorithm"] == "opo" and r["step"] == "1"]
    assert opo_rows[0]["opo/drive/abs_mean"] != "" and opo_rows[0]["heldout_accuracy"] != ""

    table = (tmp_path / "cmp" / "summary.md").read_text().splitlines()
    assert table[0].startswith("| algorithm |") and len(table[2:6]) == 4
    assert all(line.count("|") == table[0].count("|") for line in table[:6])
    for name in ("reward.png", "heldout.png", "grad_norm.png"):
        assert (tmp_path / "cmp" / name).stat().st_size > 1000

    # A finished run is not run again.
    before = (tmp_path / "cmp" / "opo-seed0" / "summary.json").stat().st_mtime
    run_comparison(config, ["opo"], [0], tmp_path / "cmp", in_process=True)
    assert (tmp_path / "cmp" / "opo-seed0" / "summary.json").stat().st_mtime == before
