# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
The files of a run: what `opo-trl train` writes into its `output_dir`, and what `opo-trl compare` and the benchmarks
read back. The one module that knows their names and their format.

    <output_dir>/summary.json       RunSummary: algorithm, seed, answer checker, held-out accuracy, cost
    <output_dir>/metrics.jsonl      the trainer's log history, one entry per line
    <output_dir>/heldout.jsonl      HeldoutRecord per evaluation: per-problem outcomes, for intervals and paired tests
    <output_dir>/reward_curve.png   the training reward (with matplotlib)
    <output_dir>/paused.json        RunPause, while a run paused by its `pause_file` waits to be resumed

The first three are a run's raw results (`RAW_FILES`): small, and what the benchmarks commit.
"""

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path


SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
HELDOUT_FILE = "heldout.jsonl"
REWARD_PLOT_FILE = "reward_curve.png"
PAUSED_FILE = "paused.json"
RAW_FILES = (SUMMARY_FILE, METRICS_FILE, HELDOUT_FILE)


@dataclass
class HeldoutRecord:
    """
    One held-out evaluation of a run.

    Args:
        step (`int`): Optimizer step it followed (0: the initial model).
        problems (`int`): Problems evaluated.
        fingerprint (`str` or `None`): Hash of the whole held-out set's prompts; `None` for an interim evaluation on
            its first problems only.
        seconds (`float` or `None`): Wall time of the evaluation.
        sampled (`list[list[float]]`): Per problem, the outcome (1.0 / 0.0) of each sample.
        greedy (`list[float]` or `None`): Per problem, the greedy outcome, if measured.
    """

    step: int
    problems: int
    fingerprint: str | None
    seconds: float | None
    sampled: list[list[float]]
    greedy: list[float] | None = None

    @property
    def full(self) -> bool:
        """An evaluation of the whole held-out set (not an interim one on its first problems)."""
        return self.fingerprint is not None


@dataclass
class RunSummary:
    """
    What a finished run records about itself in `summary.json`.

    Args:
        algorithm (`str`): `opo`, `grpo`, `dapo` or `gspo`.
        seed (`int`): The run's seed.
        model (`str`, *optional*): The model it trained.
        learning_rate (`float`, *optional*): Its learning rate.
        answer_checker (`str`, *optional*): How `accuracy` compared answers (runs scored differently do not compare).
        heldout_split (`str`, *optional*): The held-out split evaluated, and `heldout_problems` its size.
        heldout_accuracy_before, heldout_accuracy_after (`float`, *optional*): Held-out pass@1 before and after.
        heldout_greedy_before, heldout_greedy_after (`float`, *optional*): Greedy held-out accuracy, if measured.
        seconds_per_step (`float`, *optional*): Mean logged optimizer-step time.
        wall_seconds (`float`, *optional*): Wall time of the whole job (data, model, evaluations, training).
        threads (`int`, *optional*): torch's intra-op threads.
        cpu (`str`, *optional*): The processor and the instruction set torch's kernels used, e.g. `AMD EPYC (AVX2)`:
            wall times and numerics differ across machines, so runs compare as costs only on the same one.
        generator (`str`, *optional*): What generated the rollouts: `vllm` or `transformers` (`model.generate`).
        precision (`str`, *optional*): What the trainer computed in (autocast, else the loaded weights' dtype): `bf16`,
            `fp16` or `fp32`.
        peak_rss_mb (`float`, *optional*): Peak resident memory of the process.
        resumed_at (`list[int]`, *optional*): The optimizer steps at which the run went on from a checkpoint. Its wall
            time and peak memory cover the parts before a pause (`pause_file`), only the last part after any other
            interruption.
        extra (`dict`): Keys of the file this class does not know (files written by older versions keep them).
    """

    algorithm: str
    seed: int
    model: str | None = None
    learning_rate: float | None = None
    answer_checker: str | None = None
    heldout_split: str | None = None
    heldout_problems: int | None = None
    heldout_accuracy_before: float | None = None
    heldout_greedy_before: float | None = None
    heldout_accuracy_after: float | None = None
    heldout_greedy_after: float | None = None
    seconds_per_step: float | None = None
    wall_seconds: float | None = None
    threads: int | None = None
    cpu: str | None = None
    generator: str | None = None
    precision: str | None = None
    peak_rss_mb: float | None = None
    resumed_at: list[int] | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **{k: v for k, v in values.items() if v is not None}}

    @classmethod
    def from_dict(cls, values: dict) -> "RunSummary":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(
            **{k: v for k, v in values.items() if k in known},
            extra={k: v for k, v in values.items() if k not in known},
        )


@dataclass
class RunPause:
    """
    Where a run paused by its `pause_file` stands, so that the part that resumes it can finish its summary.

    Args:
        step (`int`): The optimizer step of the checkpoint it saved.
        wall_seconds (`float`): Wall time of its parts so far.
        peak_rss_mb (`float`): Peak resident memory of its parts so far.
        cpu (`str`): The machine it ran on (`run.cpu_description`): a run resumes on the machine it paused on.
        resumed_at (`list[int]`): The steps at which its earlier parts resumed.
    """

    step: int
    wall_seconds: float
    peak_rss_mb: float
    cpu: str
    resumed_at: list[int] = field(default_factory=list)


class RunFiles:
    """The files of the run in `directory`: paths, and reading and writing each."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.summary_path = self.directory / SUMMARY_FILE
        self.metrics_path = self.directory / METRICS_FILE
        self.heldout_path = self.directory / HELDOUT_FILE
        self.reward_plot_path = self.directory / REWARD_PLOT_FILE
        self.paused_path = self.directory / PAUSED_FILE

    @property
    def finished(self) -> bool:
        """A run that got to the end writes its summary last."""
        return self.summary_path.exists()

    def write_summary(self, summary: RunSummary) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.summary_path.write_text(json.dumps(summary.to_dict(), indent=2) + "\n")

    def read_summary(self) -> RunSummary:
        return RunSummary.from_dict(json.loads(self.summary_path.read_text()))

    def write_metrics(self, log_history: list[dict]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("w") as f:
            for entry in log_history:
                f.write(json.dumps(entry) + "\n")

    def read_metrics(self) -> list[dict]:
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def start_heldout(self) -> None:
        """Start the run's held-out record afresh (a restarted run evaluates the initial model again)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.heldout_path.write_text("")

    def keep_heldout_until(self, step: int) -> None:
        """Drop the held-out evaluations after optimizer step `step` (those of a part of the run that a resume from the
        checkpoint at `step` repeats)."""
        kept = [r for r in self.read_heldout() if r.step <= step]
        self.heldout_path.write_text("".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in kept))

    def write_pause(self, pause: RunPause) -> None:
        self.paused_path.write_text(json.dumps(dataclasses.asdict(pause), indent=2) + "\n")

    def read_pause(self) -> RunPause | None:
        """Where the run stands if it paused and has not finished since; `None` otherwise."""
        if self.finished or not self.paused_path.exists():
            return None
        return RunPause(**json.loads(self.paused_path.read_text()))

    def append_heldout(self, record: HeldoutRecord) -> None:
        with self.heldout_path.open("a") as f:
            f.write(json.dumps(dataclasses.asdict(record)) + "\n")

    def read_heldout(self) -> list[HeldoutRecord]:
        """The held-out evaluations, in order; none when the run evaluated nothing."""
        if not self.heldout_path.exists():
            return []
        return [HeldoutRecord(**json.loads(line)) for line in self.heldout_path.read_text().splitlines() if line]

    def copy_raw_files(self, destination) -> "RunFiles":
        """Copy the raw results (`RAW_FILES` that exist) into `destination`; returns the copy's files."""
        target = RunFiles(destination)
        target.directory.mkdir(parents=True, exist_ok=True)
        for name in RAW_FILES:
            if (self.directory / name).exists():
                shutil.copy(self.directory / name, target.directory / name)
        return target
