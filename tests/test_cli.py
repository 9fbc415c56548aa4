"""The `opo-trl` command dispatches to the training job, the quickstart recipe and the comparison harness."""

import pytest

from opo_trl import cli


def test_help_and_unknown_command(capsys):
    assert cli.main(["--help"]) == 0
    assert "usage: opo-trl" in capsys.readouterr().out
    assert cli.main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--config", "r.yaml", "--seed", "1"], ["--config", "r.yaml", "--seed", "1"]),
        (["quickstart", "--seed", "1"], ["--config", str(cli.RECIPES_DIR / "quickstart.yaml"), "--seed", "1"]),
    ],
)
def test_train_and_quickstart_run_the_training_job(monkeypatch, argv, expected):
    calls = []
    monkeypatch.setattr("opo_trl.run.main", calls.append)
    assert cli.main(argv) == 0
    assert calls == [expected]


def test_compare_runs_the_harness(monkeypatch):
    calls = []
    monkeypatch.setattr("opo_trl.compare.main", lambda argv: calls.append(argv) or 0)
    assert cli.main(["compare", "--config", "r.yaml"]) == 0
    assert calls == [["--config", "r.yaml"]]
