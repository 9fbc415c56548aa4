# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
What OPO costs next to GRPO: loss time, training-step time and peak memory, on a CPU.

Three measurements, all with `torch.set_num_threads(--threads)` in every process:

(a) `_compute_loss` forward + backward. One model instance is shared by three trainers, `OPOTrainer` (default
    `OPOConfig`), `GRPOTrainer` with the default `GRPOConfig` loss (`loss_type="dapo"` in TRL 1.16) and `GRPOTrainer`
    with `loss_type="grpo"`, and each gets identical inputs (same ids, masks and per-sequence advantages; OPO's are the
    escort drive of the same rewards). No `old_per_token_logps`, as in training with one optimizer step per rollout.
    The calls are interleaved O G g O G g ... for `--repeats` rounds after `--warmup` rounds, so that drifts in machine
    load (this machine is shared) hit every variant alike. Reported: min / median / max seconds per call, the ratio of
    medians and the min / max of the per-round ratios.

(b) A full training step, generation included. Rather than calling `train()` with `max_steps=1` many times (each
    call re-creates the dataloader, optimizer and scheduler, which would be timed with the step), each run is one
    short `train()` of `--train-steps` steps in a fresh subprocess, and the runs are interleaved O G O G ... for
    `--train-repeats` rounds. Every run starts from the same weights and seed and generates completions of exactly
    `--completion-length` tokens (`min_new_tokens`), so every step does the same work whatever the sampled text. The
    metric is TRL's own `step_time` (wall time of `training_step`: generation, scoring and the loss forward/backward;
    the optimizer step is outside it) from `state.log_history`; the first step of every run is a warm-up and is left
    out. Reported: median per algorithm and the ratio of medians.

(c) Peak memory. Each (b) run and one `_compute_loss` run per algorithm (`--warmup + --repeats` calls) execute in a
    fresh subprocess (this script re-invoked with `--child`), which reports its own peak RSS
    (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) at exit.

Usage:

```bash
python benchmarks/cost.py                           # SmolLM2-135M-Instruct, ~10 min on one thread
python benchmarks/cost.py --model tiny --repeats 3  # seconds
```

Writes `cost.md` and `cost.json` to `--out` and prints the markdown tables.
"""

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch
from transformers.utils import logging as hf_logging

from opo_trl.harness.testing import model_path as resolve_model_path


hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

# name -> config overrides. OPO variants (OPOTrainer, OPOConfig defaults plus these) and GRPO variants (GRPOTrainer).
OPO_VARIANTS = {"opo": {}, "opo_ref_mean": {"escort_reference": "mean"}}
# On the `grpo` algorithm's settings (loss_type "grpo"): grpo_default restores TRL's default loss_type, "dapo".
LOSS_VARIANTS = {"grpo_default": {"loss_type": "dapo"}, "grpo_loss_grpo": {}}
# escort_reference="mean" adds a no-grad forward at generation when the rollout is used once (as here).
TRAIN_VARIANTS = ("opo", "opo_ref_mean", "grpo_default")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default="smollm2", help="'smollm2' (default), 'tiny' (in-code Qwen2) or a path")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in every process (default: 1)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per batch (default: 8)")
    parser.add_argument("--num-generations", type=int, default=4, help="completions per prompt (default: 4)")
    parser.add_argument("--prompt-length", type=int, default=16, help="prompt tokens in (a) (default: 16)")
    parser.add_argument("--completion-length", type=int, default=64, help="completion tokens (default: 64)")
    parser.add_argument("--repeats", type=int, default=10, help="(a) timed rounds (default: 10)")
    parser.add_argument("--warmup", type=int, default=2, help="(a) untimed rounds first (default: 2)")
    parser.add_argument("--train-steps", type=int, default=3, help="(b) steps per train() run (default: 3)")
    parser.add_argument("--train-repeats", type=int, default=2, help="(b) interleaved runs per algorithm (default: 2)")
    parser.add_argument("--skip-train", action="store_true", help="skip (b) and its memory runs")
    parser.add_argument("--skip-memory", action="store_true", help="skip the per-algorithm loss subprocesses of (c)")
    parser.add_argument("--out", default="docs/cost", help="output directory (default: docs/cost)")
    parser.add_argument("--child", choices=["loss", "train"], help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def deterministic_reward(completions, **kwargs):
    """Share of distinct characters: cheap, deterministic, and varied across completions."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [len(set(t)) / max(len(t), 1) for t in texts]


def prompt_dataset():
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [f"What is {a} + {b}? Answer:" for a in range(8) for b in range(8)]})


def build_trainer(variant: str, model, workdir: str, args, **overrides):
    from opo_trl.harness.algorithms import tiny_trainer

    # An OPO variant is OPO's settings plus its own; any other is GRPO's with its loss settings.
    algorithm, settings = (
        ("opo", OPO_VARIANTS[variant]) if variant in OPO_VARIANTS else ("grpo", LOSS_VARIANTS[variant])
    )
    with warnings.catch_warnings():  # TrainingArguments deprecation notices
        warnings.simplefilter("ignore")
        return tiny_trainer(
            algorithm, model, deterministic_reward, prompt_dataset(), Path(workdir) / variant,
            per_device_train_batch_size=args.batch_size, num_generations=args.num_generations,
            max_completion_length=args.completion_length, disable_tqdm=True, **settings, **overrides,
        )  # fmt: skip


def loss_inputs(trainer, args, variant: str) -> dict[str, torch.Tensor]:
    """A fixed generation batch: left-padded prompts, right-padded completions, per-variant advantages."""
    from opo_trl.core import escort_drive
    from opo_trl.harness.testing import group_advantages

    g = torch.Generator().manual_seed(0)
    vocab, b, p, c = trainer.model.config.vocab_size, args.batch_size, args.prompt_length, args.completion_length
    prompt_ids = torch.randint(10, vocab, (b, p), generator=g)
    completion_ids = torch.randint(10, vocab, (b, c), generator=g)
    prompt_lengths = torch.randint(p // 2, p + 1, (b,), generator=g)
    completion_lengths = torch.randint(c // 2, c + 1, (b,), generator=g)
    prompt_mask = (torch.arange(p) >= (p - prompt_lengths).unsqueeze(1)).long()
    completion_mask = (torch.arange(c) < completion_lengths.unsqueeze(1)).long()
    rewards = torch.rand(b, generator=g)
    if variant in OPO_VARIANTS:
        centred = group_advantages(rewards, args.num_generations, "none")
        advantages = escort_drive(centred, args.num_generations, alpha=0.4).drive  # OPOConfig's defaults
    else:
        advantages = group_advantages(rewards, args.num_generations, "group")
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
            "completion_mask": completion_mask, "advantages": advantages, "opo_drive": advantages,
            "opo_mu": torch.ones_like(advantages),  # OPO's per-sequence mu (OPOConfig's default); GRPO ignores it
            "num_items_in_batch": completion_mask.sum()}  # fmt: skip


def timed_loss_call(trainer, inputs) -> float:
    model = trainer.model
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    trainer._compute_loss(model, inputs).backward()
    return time.perf_counter() - start


def loaded_model(model_path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).train()


def measure_loss(args, model_path: str, workdir: str) -> dict:
    """(a): interleaved `_compute_loss` forward + backward of every variant on one shared model."""
    model = loaded_model(model_path)
    trainers = {v: build_trainer(v, model, workdir, args) for v in ("opo", *LOSS_VARIANTS)}
    inputs = {v: loss_inputs(t, args, v) for v, t in trainers.items()}
    for trainer in trainers.values():
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
    times = {v: [] for v in trainers}
    for round_ in range(args.warmup + args.repeats):
        for v, trainer in trainers.items():
            elapsed = timed_loss_call(trainer, inputs[v])
            if round_ >= args.warmup:
                times[v].append(elapsed)
    result = {"seconds": times, "stats": {v: summary(t) for v, t in times.items()}}
    for baseline in ("grpo_default", "grpo_loss_grpo"):
        pairs = [o / g for o, g in zip(times["opo"], times[baseline], strict=True)]
        result[f"opo_over_{baseline}"] = {
            "ratio_of_medians": statistics.median(times["opo"]) / statistics.median(times[baseline]),
            "pair_min": min(pairs),
            "pair_max": max(pairs),
        }
    return result


def summary(values) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def peak_rss_mib() -> float:
    # Linux reports kilobytes, macOS bytes.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def child_main(args) -> None:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as workdir:
        if args.child == "loss":
            trainer = build_trainer(args.variant, loaded_model(args.model_path), workdir, args)
            trainer.model.train()
            trainer.current_gradient_accumulation_steps = 1
            inputs = loss_inputs(trainer, args, args.variant)
            seconds = [timed_loss_call(trainer, inputs) for _ in range(args.warmup + args.repeats)]
            result = {"seconds": seconds[args.warmup :]}
        else:
            torch.manual_seed(0)
            trainer = build_trainer(
                args.variant, args.model_path, workdir, args, max_steps=args.train_steps, logging_steps=1,
                learning_rate=1e-6, generation_kwargs={"min_new_tokens": args.completion_length},
            )  # fmt: skip
            start = time.perf_counter()
            trainer.train()
            wall = time.perf_counter() - start
            step_times = [e["step_time"] for e in trainer.state.log_history if "step_time" in e]
            history = trainer.state.log_history
            lengths = [e["completions/mean_length"] for e in history if "completions/mean_length" in e]
            result = {"step_time": step_times, "train_wall_s": wall, "completion_mean_length": lengths}
    result["peak_rss_mib"] = peak_rss_mib()
    Path(args.child_out).write_text(json.dumps(result))


def run_child(kind: str, variant: str, model_path: str, args, workdir: str) -> dict:
    out = Path(workdir) / f"child-{kind}-{variant}-{time.monotonic_ns()}.json"
    keep = ["--threads", "--batch-size", "--num-generations", "--prompt-length", "--completion-length", "--repeats",
            "--warmup", "--train-steps"]  # fmt: skip
    command = [sys.executable, os.path.abspath(__file__), "--child", kind, "--variant", variant,
               "--model-path", model_path, "--child-out", str(out)]  # fmt: skip
    for flag in keep:
        command += [flag, str(getattr(args, flag[2:].replace("-", "_")))]
    process = subprocess.run(command, capture_output=True, text=True, check=False)
    if process.returncode != 0 or not out.exists():
        raise RuntimeError(f"{shlex.join(command)} failed ({process.returncode}):\n{process.stderr[-3000:]}")
    return json.loads(out.read_text())


def measure_train(args, model_path: str, workdir: str) -> dict:
    """(b) and its half of (c): interleaved short train() runs, each in a fresh subprocess."""
    runs = {v: [] for v in TRAIN_VARIANTS}
    for _ in range(args.train_repeats):
        for v in TRAIN_VARIANTS:
            runs[v].append(run_child("train", v, model_path, args, workdir))
    # The first step of each run pays for lazy initialisation; keep the others.
    steps = {v: [t for r in rs for t in r["step_time"][1:]] or [t for r in rs for t in r["step_time"]]
             for v, rs in runs.items()}  # fmt: skip
    result = {
        "runs": runs,
        "step_time": {v: summary(s) for v, s in steps.items()},
        "opo_over_grpo_step_time": statistics.median(steps["opo"]) / statistics.median(steps["grpo_default"]),
        "opo_ref_mean_over_opo_step_time": statistics.median(steps["opo_ref_mean"]) / statistics.median(steps["opo"]),
        "opo_ref_mean_over_grpo_step_time": (
            statistics.median(steps["opo_ref_mean"]) / statistics.median(steps["grpo_default"])
        ),
        "peak_rss_mib": {v: max(r["peak_rss_mib"] for r in rs) for v, rs in runs.items()},
    }
    result["opo_over_grpo_peak_rss"] = result["peak_rss_mib"]["opo"] / result["peak_rss_mib"]["grpo_default"]
    return result


def measure_loss_memory(args, model_path: str, workdir: str) -> dict:
    """(c) for the loss alone: one fresh subprocess per algorithm."""
    runs = {v: run_child("loss", v, model_path, args, workdir) for v in TRAIN_VARIANTS}
    return {
        "peak_rss_mib": {v: r["peak_rss_mib"] for v, r in runs.items()},
        "opo_over_grpo_peak_rss": runs["opo"]["peak_rss_mib"] / runs["grpo_default"]["peak_rss_mib"],
        "seconds": {v: r["seconds"] for v, r in runs.items()},
    }


def report(result: dict) -> str:
    setup = result["setup"]
    lines = [
        f"`$ {result['command']}`",
        "",
        (
            f"model `{setup['model']}`, {setup['threads']} torch thread(s) in every process, {setup['batch_size']} "
            f"sequences (G={setup['num_generations']}) x {setup['completion_length']} completion tokens, torch "
            f"{setup['torch']}, trl {setup['trl']}, {setup['cpu_count']} CPU cores (shared with other jobs)."
        ),
        "",
        (
            f"(a) `_compute_loss` forward + backward, interleaved, {setup['repeats']} rounds after "
            f"{setup['warmup']} warm-up rounds:"
        ),
        "",
        "| variant | min s | median s | max s | OPO / this (ratio of medians) | per-round ratio min-max |",
        "|---|---|---|---|---|---|",
    ]
    loss = result["loss"]
    for v, s in loss["stats"].items():
        ratio = loss.get(f"opo_over_{v}")
        ratio_cells = "- | -"
        if ratio is not None:
            ratio_cells = f"{ratio['ratio_of_medians']:.3f} | {ratio['pair_min']:.3f}-{ratio['pair_max']:.3f}"
        lines.append(f"| {v} | {s['min']:.4f} | {s['median']:.4f} | {s['max']:.4f} | {ratio_cells} |")
    if "train" in result:
        train = result["train"]
        lines += [
            "",
            (
                f"(b) training step (`step_time`, generation included), {setup['train_repeats']} interleaved runs "
                f"of {setup['train_steps']} steps per algorithm, first step of each run left out; (c) peak RSS of "
                "each run's process:"
            ),
            "",
            "| algorithm | steps | min s | median s | max s | peak RSS MiB |",
            "|---|---|---|---|---|---|",
        ]
        for v, s in train["step_time"].items():
            lines.append(f"| {v} | {s['n']} | {s['min']:.3f} | {s['median']:.3f} | {s['max']:.3f} "
                         f"| {train['peak_rss_mib'][v]:.0f} |")  # fmt: skip
        lines.append(f"| **OPO / GRPO** | | | **{train['opo_over_grpo_step_time']:.3f}** | "
                     f"| **{train['opo_over_grpo_peak_rss']:.3f}** |")  # fmt: skip
        lines.append(
            f"| **OPO escort_reference=mean / OPO** | | | **{train['opo_ref_mean_over_opo_step_time']:.3f}** | | |"
        )
        lines.append(
            f"| **OPO escort_reference=mean / GRPO** | | | **{train['opo_ref_mean_over_grpo_step_time']:.3f}** | | |"
        )
    if "loss_memory" in result:
        mem = result["loss_memory"]
        lines += [
            "",
            "(c) peak RSS of a fresh process that loads the model and runs only `_compute_loss` forward + backward:",
            "",
            "| algorithm | peak RSS MiB | median s (not interleaved) |",
            "|---|---|---|",
        ]
        for v, rss in mem["peak_rss_mib"].items():
            lines.append(f"| {v} | {rss:.0f} | {statistics.median(mem['seconds'][v]):.4f} |")
        lines.append(f"| **OPO / GRPO** | **{mem['opo_over_grpo_peak_rss']:.3f}** | |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return {}
    command = shlex.join(["python", "benchmarks/cost.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"$ {command}", flush=True)
    torch.set_num_threads(args.threads)
    import trl

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setup = {k: v for k, v in vars(args).items() if k not in ("child", "child_out", "variant", "model_path")}
    setup.update(torch=torch.__version__, trl=trl.__version__, cpu_count=os.cpu_count(),
                 python=platform.python_version())  # fmt: skip
    result = {"command": command, "setup": setup}
    with tempfile.TemporaryDirectory() as workdir:
        model_path = resolve_model_path(args.model, workdir)
        start = time.perf_counter()
        result["loss"] = measure_loss(args, model_path, workdir)
        print(f"(a) done in {time.perf_counter() - start:.0f} s", flush=True)
        if not args.skip_train:
            start = time.perf_counter()
            result["train"] = measure_train(args, model_path, workdir)
            print(f"(b) done in {time.perf_counter() - start:.0f} s", flush=True)
        if not args.skip_memory:
            start = time.perf_counter()
            result["loss_memory"] = measure_loss_memory(args, model_path, workdir)
            print(f"(c) done in {time.perf_counter() - start:.0f} s", flush=True)
    text = report(result)
    print("\n" + text)
    (out / "cost.md").write_text("# OPO vs GRPO: cost\n\n" + text + "\n")
    (out / "cost.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out / 'cost.md'} and {out / 'cost.json'}")
    return result


if __name__ == "__main__":
    main()
