"""The README as a user reads it: every file it names exists, every `opo-trl` command it shows parses, every extra its
install lines name is in pyproject.toml, and its escort form of one's own registers and trains."""

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import torch

from opo_trl.harness import cli
from opo_trl.harness.arguments import parse_command


REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# Where a README image must point: the repository's files as served raw, so that it renders on an index page too.
RAW = PROJECT["urls"]["Repository"].replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
# Values for the README's placeholders and shell variables.
PLACEHOLDERS = {"<recipe name or path>": "quickstart", "<recipe>": "quickstart", "[--key value ...]": "",
                "$SLURM_NODEID": "0", "$MASTER_ADDR": "127.0.0.1"}  # fmt: skip


def bash_lines():
    """The command lines of the README's bash blocks, with continuation lines joined."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        lines += block.replace("\\\n", " ").splitlines()
    return lines


def opo_trl_commands():
    """Every `opo-trl ...` command line the README shows, as argument lists after `opo-trl`."""
    commands = []
    for line in bash_lines():
        # The command, not the repository's name in a URL or a folder.
        match = re.search(r"(?<![\w/.-])opo-trl (?=\w)", line)
        if match is None or line.lstrip().startswith(("pip ", "#")):
            continue
        text = line[match.start() :]
        for placeholder, value in PLACEHOLDERS.items():
            text = text.replace(placeholder, value)
        commands.append(shlex.split(text.rstrip("'"), comments=True)[1:])
    return commands


def test_every_path_the_readme_names_exists():
    paths = set(re.findall(r"(?<![\w/.])((?:tests|docs|scripts|opo_trl|recipes|benchmarks|\.ci)/[\w./-]*\w)", README))
    assert "tests/test_checkpoints.py" in paths and len(paths) > 10
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert missing == []


def test_images_are_absolute_urls_of_files_in_the_repository():
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert images
    for url in images:
        assert url.startswith(RAW), url
        assert (REPO / url.removeprefix(RAW)).is_file(), url


def test_install_lines_name_existing_extras():
    extras = set()
    for line in bash_lines():
        if line.lstrip().startswith(("pip install", "DS_BUILD_OPS=0 pip install")) or " pip install " in line:
            for group in re.findall(r"(?:\.|opo-trl)\[([\w,-]+)\]", line):
                extras |= set(group.split(","))
    assert {"math", "plot", "gguf", "test"} <= extras
    assert extras <= set(PROJECT["optional-dependencies"])


def test_the_test_extra_has_every_package_a_test_skips_without():
    skipped_without = set()
    for path in (REPO / "tests").glob("*.py"):
        skipped_without |= set(re.findall(r"importorskip\(\"(\w+)\"\)", path.read_text()))
    assert "deepspeed" in skipped_without
    test_extra = {re.split(r"[<>=\[ ]", req)[0].replace("-", "_") for req in PROJECT["optional-dependencies"]["test"]}
    assert skipped_without <= test_extra


@pytest.mark.parametrize("argv", opo_trl_commands(), ids=lambda argv: " ".join(argv)[:60])
def test_every_opo_trl_command_in_the_readme_parses(argv, monkeypatch, capsys):
    command, rest = argv[0], argv[1:]
    if command == "recipes":
        assert cli.main(argv) == 0
        return
    if command == "compare":
        import opo_trl.harness.compare

        runs = []
        monkeypatch.setattr(opo_trl.harness.compare, "run_comparison", lambda *args, **kwargs: runs.append(args))
        monkeypatch.setattr(opo_trl.harness.compare, "summary_markdown", lambda *args: "")
        assert cli.main(argv) == 0 and len(runs) == 1
        return
    assert command in ("train", "quickstart"), argv
    if command == "quickstart":
        rest = ["--config", "quickstart", *rest]
    # The GPU recipes set bf16, which a machine without a GPU accepts only with use_cpu.
    cpu = [] if torch.cuda.is_available() else ["--use_cpu", "true"]
    parsed = parse_command([*rest, *cpu])
    if parsed.launch_args:
        from trl.cli.accelerate_config import resolve_accelerate_config_argument

        resolved = resolve_accelerate_config_argument(list(parsed.launch_args))
        if "--config_file" in resolved:
            assert Path(resolved[resolved.index("--config_file") + 1]).is_file()


def test_commands_are_found():
    commands = {tuple(argv[:1]) for argv in opo_trl_commands()}
    assert {("train",), ("quickstart",), ("compare",), ("recipes",)} <= commands


@pytest.mark.slow
def test_the_own_escort_form_example_registers_and_trains(tmp_path, tiny_model_path):
    from opo_trl.core import ESCORT_FORMS

    section = README.split("### Your own escort form", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    # The tiny model, one step, on the CPU in float32 and without logging integrations.
    for text, value in [
        ('"HuggingFaceTB/SmolLM2-135M-Instruct"', repr(tiny_model_path)),
        ('"smollm2-opo-linear"', repr(str(tmp_path))),
        ("max_steps=10", 'max_steps=1, bf16=False, report_to="none"'),
    ]:
        assert text in code
        code = code.replace(text, value)
    namespace = {}
    try:
        exec(compile(code, "README.md", "exec"), namespace)
        trainer = namespace["trainer"]
        assert trainer.args.escort_form == "linear" and trainer.state.global_step == 1
        assert any("opo/drive/abs_mean" in entry for entry in trainer.state.log_history)
    finally:
        ESCORT_FORMS.pop("linear", None)
