# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
The `opo-trl` command.

    opo-trl train --config recipes/<name>.yaml [--key value ...]    # any OPOConfig/GRPOConfig/ModelConfig key
    opo-trl train --config recipes/<name>.yaml --algorithm grpo     # the same recipe with a baseline
    opo-trl quickstart [--seed 1]                                   # recipes/quickstart.yaml, offline, on a CPU
    opo-trl compare --config recipes/compare_cpu.yaml --seeds 0 1 2 # OPO vs GRPO, DAPO, GSPO (opo_trl.compare)

Command-line values override the YAML, as in `trl grpo`. Works under `accelerate launch -m opo_trl.cli train ...`.
"""

import dataclasses
import difflib
import json
import os
import resource
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import TrainerCallback


ALGORITHMS = ("opo", "grpo", "dapo", "gspo")

# The baselines exactly as OPO_SPEC expresses them in TRL 1.16; they override the recipe so that a comparison
# differs only in the algorithm. DAPO's dynamic sampling is not in TRL.
BASELINES = {
    "grpo": {"loss_type": "grpo", "scale_rewards": "group", "epsilon": 0.2, "epsilon_high": None},
    "dapo": {
        "loss_type": "dapo",
        "epsilon": 0.2,
        "epsilon_high": 0.28,
        "mask_truncated_completions": True,
        "scale_rewards": "none",
    },
    "gspo": {
        "importance_sampling_level": "sequence",
        "loss_type": "grpo",
        "epsilon": 3e-4,
        "epsilon_high": 4e-4,
        "scale_rewards": "group",
    },
}

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


@dataclass
class OPOScriptArguments:
    """
    Script arguments of `opo-trl train`: which algorithm, data and rewards. A superset of `trl grpo`'s script
    arguments, so recipes written for `trl grpo` parse unchanged.
    """

    algorithm: str = field(
        default="opo",
        metadata={"help": "Trainer to run the recipe with: 'opo', or a baseline 'grpo', 'dapo', 'gspo'.", "choices": list(ALGORITHMS)},
    )
    dataset_name: str = field(
        default="arithmetic",
        metadata={
            "help": "'arithmetic' (offline generator), 'gsm8k', 'math' (MATH-lighteval), or any dataset id/path with "
            "a 'prompt' column for `datasets.load_dataset`."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(default="test", metadata={"help": "Split for evaluation and the held-out accuracy."})
    dataset_streaming: bool = field(default=False, metadata={"help": "Accepted for `trl grpo` recipes; not used."})
    ignore_bias_buffers: bool = field(default=False, metadata={"help": "Accepted for `trl grpo` recipes; not used."})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["accuracy"],
        metadata={"help": "Reward functions: 'accuracy', 'format', or dotted paths 'pkg.module.function'."},
    )
    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "A sequence-classification reward model, added before `reward_funcs`."}
    )
    num_train_samples: int = field(default=2000, metadata={"help": "arithmetic: number of training problems."})
    num_test_samples: int = field(default=64, metadata={"help": "arithmetic: number of held-out problems."})
    min_operand: int = field(default=1, metadata={"help": "arithmetic: smallest operand."})
    max_operand: int = field(default=50, metadata={"help": "arithmetic: largest operand."})
    operations: list[str] = field(default_factory=lambda: ["+"], metadata={"help": "arithmetic: among '+', '-', '*'."})
    math_levels: list[int] | None = field(default=None, metadata={"help": "math: keep only these levels, e.g. 3."})
    heldout_eval: bool = field(
        default=False,
        metadata={"help": "Measure sampled accuracy on the test split before and after training, and print both."},
    )
    heldout_max_samples: int | None = field(default=None, metadata={"help": "Cap on held-out prompts (all if unset)."})
    heldout_eval_steps: int | None = field(
        default=None, metadata={"help": "Also measure held-out accuracy every this many optimizer steps."}
    )
    heldout_accuracy_before: float | None = field(
        default=None,
        metadata={"help": "Known held-out accuracy of the initial model (same model, data and seed): skips measuring it."},
    )


def make_parser(config_cls):
    from trl import DatasetMixtureConfig, ModelConfig, TrlParser

    return TrlParser((OPOScriptArguments, config_cls, ModelConfig, DatasetMixtureConfig), prog="opo-trl train")


def parse_train_args(argv: list[str]):
    """
    Parse `opo-trl train` arguments into (script_args, training_args, model_args, dataset_args).

    The algorithm decides the config class: `OPOConfig` for OPO, `GRPOConfig` with the baseline settings otherwise.
    For a baseline, OPO-only keys of the recipe are dropped (they mean nothing to GRPO) and the baseline's settings
    override the recipe's.
    """
    from trl import GRPOConfig

    from .config import OPOConfig

    argv = list(argv)
    config_path = _option_value(argv, "--config")
    recipe = {}
    if config_path is not None:
        if not Path(config_path).is_file():
            raise FileNotFoundError(f"Recipe not found: {config_path}")
        recipe = yaml.safe_load(Path(config_path).read_text()) or {}
    algorithm = (_option_value(argv, "--algorithm") or recipe.get("algorithm", "opo")).lower()
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r} is invalid; algorithm must be one of {list(ALGORITHMS)}.")

    if algorithm != "opo":
        opo_only = {f.name for f in dataclasses.fields(OPOConfig)} - {f.name for f in dataclasses.fields(GRPOConfig)}
        recipe = {k: v for k, v in recipe.items() if k not in opo_only}
        recipe.update(BASELINES[algorithm])
        recipe["algorithm"] = algorithm
        argv = _drop_options(argv, opo_only | {"algorithm"})
        tmp = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        yaml.safe_dump(recipe, tmp)
        tmp.close()
        argv = _drop_options(argv, {"config"}) + ["--config", tmp.name]
        config_cls = GRPOConfig
    else:
        config_cls = OPOConfig

    parser = make_parser(config_cls)
    *parsed, config_unknown, cli_unknown = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True
    )
    unknown = [s for s in config_unknown + cli_unknown if s.startswith("--")]
    if unknown:
        valid = sorted({f.name for dc in parser.dataclass_types for f in dataclasses.fields(dc)})
        raise ValueError(_unknown_keys_message(unknown, valid, config_path))
    script_args = parsed[0]
    script_args.algorithm = algorithm
    return tuple(parsed)


def _unknown_keys_message(unknown, valid, config_path):
    lines = []
    for key in unknown:
        name = key[2:].split("=")[0]
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        lines.append(f"  '{name}' is not an OPOConfig/GRPOConfig, ModelConfig or script argument.{hint}")
    where = f" in {config_path} or on the command line" if config_path else ""
    return f"Unknown key(s){where}:\n" + "\n".join(lines)


def _option_value(argv, name):
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _drop_options(argv, names):
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        key = arg[2:].split("=")[0] if arg.startswith("--") else None
        if key in names:
            if "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                skip = True
            if key != "config":
                print(f"[opo-trl] dropping --{key}: not an option of {_option_value(argv, '--algorithm')}", file=sys.stderr)
            continue
        out.append(arg)
    return out


def load_train_and_test(script_args, seed: int):
    """The train and test splits, with a `prompt` column and the reference `answer`."""
    from datasets import load_dataset

    from .data import load_gsm8k, load_math, make_arithmetic_dataset

    name = script_args.dataset_name
    if name == "arithmetic":
        splits = make_arithmetic_dataset(
            script_args.num_train_samples,
            script_args.num_test_samples,
            seed=seed,
            min_operand=script_args.min_operand,
            max_operand=script_args.max_operand,
            operations=script_args.operations,
        )
        return splits["train"], splits["test"]
    if name == "gsm8k":
        return load_gsm8k(script_args.dataset_train_split), load_gsm8k(script_args.dataset_test_split)
    if name == "math":
        levels = script_args.math_levels
        return load_math(script_args.dataset_train_split, levels), load_math(script_args.dataset_test_split, levels)
    dataset = load_dataset(name, name=script_args.dataset_config)
    test = dataset[script_args.dataset_test_split] if script_args.dataset_test_split in dataset else None
    return dataset[script_args.dataset_train_split], test


def train(script_args, training_args, model_args, dataset_args) -> dict:
    """Run one training job; returns a summary (held-out accuracy before/after, final metrics, output paths)."""
    from trl import GRPOTrainer, get_peft_config

    from .checkpoints import resolve_resume_from_checkpoint
    from .data import validate_dataset
    from .models import resolve_model
    from .rewards import get_reward_function
    from .trainer import OPOTrainer

    # Resolved first: a resume that cannot happen should fail before any data or model loads.
    training_args.resume_from_checkpoint = resolve_resume_from_checkpoint(
        training_args.resume_from_checkpoint, training_args.output_dir
    )
    reward_funcs = []
    if script_args.reward_model_name_or_path:
        reward_funcs.append(script_args.reward_model_name_or_path)
    reward_funcs += [get_reward_function(name) for name in script_args.reward_funcs]
    if not reward_funcs:
        raise ValueError("No reward function: set `reward_funcs` (e.g. ['accuracy']).")

    if dataset_args.datasets:  # a `trl grpo` dataset mixture
        from trl import get_dataset

        mixture = get_dataset(dataset_args)
        train_dataset = mixture[script_args.dataset_train_split]
        test_dataset = mixture.get(script_args.dataset_test_split)
    else:
        train_dataset, test_dataset = load_train_and_test(script_args, seed=training_args.seed)
    validate_dataset(train_dataset, reward_funcs, "train")
    validate_dataset(test_dataset, reward_funcs, "test")

    model_id = resolve_model(model_args.model_name_or_path or "HuggingFaceTB/SmolLM2-135M-Instruct")
    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs

    trainer_cls = OPOTrainer if script_args.algorithm == "opo" else GRPOTrainer
    trainer = trainer_cls(
        model=model_id,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=test_dataset if training_args.eval_strategy != "no" else None,
        peft_config=get_peft_config(model_args),
    )

    summary = {"algorithm": script_args.algorithm, "model": model_id, "seed": training_args.seed}
    heldout = None
    if script_args.heldout_eval and test_dataset is not None:
        heldout = test_dataset
        if script_args.heldout_max_samples is not None:
            heldout = heldout.select(range(min(script_args.heldout_max_samples, len(heldout))))
        before = script_args.heldout_accuracy_before
        if before is None:
            before = _heldout(trainer, heldout, script_args, "held-out eval (before)")
        summary["heldout_accuracy_before"] = before
        trainer.accelerator.print(f"[opo-trl] held-out accuracy before training: {before:.3f}")
        if script_args.heldout_eval_steps:
            trainer.add_callback(_HeldoutCallback(trainer, heldout, script_args))

    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    if heldout is not None:
        summary["heldout_accuracy_after"] = _heldout(trainer, heldout, script_args, "held-out eval (after)")
        trainer.state.log_history.insert(0, {"step": 0, "heldout/accuracy": summary["heldout_accuracy_before"]})
        trainer.state.log_history.append(
            {"step": trainer.state.global_step, "heldout/accuracy": summary["heldout_accuracy_after"]}
        )
        trainer.accelerator.print(
            f"[opo-trl] held-out accuracy: before {summary['heldout_accuracy_before']:.3f} -> after "
            f"{summary['heldout_accuracy_after']:.3f} ({len(heldout)} prompts, one sample each, "
            f"temperature {training_args.temperature})"
        )
    step_times = [e["step_time"] for e in trainer.state.log_history if "step_time" in e]
    summary["seconds_per_step"] = sum(step_times) / len(step_times) if step_times else None
    summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        summary.update(write_run_files(trainer.state.log_history, summary, training_args.output_dir))
    # Leave together and tear the process group down cleanly: a rank that exits while another still holds the group
    # can make gloo abort the other one at exit.
    trainer.accelerator.wait_for_everyone()
    trainer.end()
    return summary


def _heldout(trainer, dataset, script_args, desc):
    from .evaluation import sampled_accuracy

    # Accuracy is what the held-out number means: the first reward function named like it, else the first one.
    named = trainer.reward_funcs[-len(script_args.reward_funcs) :]
    reward = next((f for f in named if "accuracy" in getattr(f, "__name__", "")), named[0])
    args = trainer.args
    return sampled_accuracy(
        trainer.model,
        trainer.processing_class,
        dataset,
        reward,
        max_new_tokens=args.max_completion_length,
        temperature=args.temperature,
        batch_size=max(args.per_device_eval_batch_size, 16),
        seed=args.seed,
        desc=desc,
        disable_progress=not trainer.accelerator.is_main_process,
    )


class _HeldoutCallback(TrainerCallback):
    """Held-out accuracy every `heldout_eval_steps` optimizer steps, recorded in the log history."""

    def __init__(self, trainer, dataset, script_args):
        self.trainer, self.dataset, self.script_args = trainer, dataset, script_args

    def on_step_end(self, args, state, control, **kwargs):
        every = self.script_args.heldout_eval_steps
        if state.global_step % every == 0 and state.global_step < state.max_steps:
            accuracy = _heldout(self.trainer, self.dataset, self.script_args, f"held-out eval (step {state.global_step})")
            state.log_history.append({"step": state.global_step, "heldout/accuracy": accuracy})
        return control


def write_run_files(log_history: list[dict], summary: dict, output_dir: str) -> dict:
    """Write metrics.jsonl, summary.json and (with matplotlib) reward_curve.png into `output_dir`."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    with metrics_path.open("w") as f:
        for entry in log_history:
            f.write(json.dumps(entry) + "\n")
    paths = {"metrics_file": str(metrics_path)}
    steps = [(e["step"], e["reward"]) for e in log_history if "reward" in e and "step" in e]
    if steps:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("[opo-trl] matplotlib not installed: no reward plot (pip install opo-trl[plot])", file=sys.stderr)
        else:
            fig, ax = plt.subplots(figsize=(6, 3.5))
            ax.plot(*zip(*steps), marker="o", markersize=3)
            ax.set(xlabel="step", ylabel="mean training reward", title=f"{summary['algorithm'].upper()} reward")
            ax.grid(alpha=0.3)
            fig.tight_layout()
            fig.savefig(out / "reward_curve.png", dpi=120)
            plt.close(fig)
            paths["reward_plot"] = str(out / "reward_curve.png")
    (out / "summary.json").write_text(json.dumps({**summary, **paths}, indent=2) + "\n")
    return paths


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    usage = "usage: opo-trl {train,quickstart,compare} [--config recipe.yaml] [--key value ...]"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage + "\n\n" + __doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "compare":
        from .compare import main as compare_main

        return compare_main(rest)
    if command == "quickstart":
        recipe = RECIPES_DIR / "quickstart.yaml"
        if not recipe.is_file():
            raise FileNotFoundError(f"{recipe} not found: run `opo-trl quickstart` from a clone of the repository.")
        rest = ["--config", str(recipe)] + rest
    elif command != "train":
        print(f"opo-trl: unknown command {command!r}\n{usage}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    summary = train(*parse_train_args(rest))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
