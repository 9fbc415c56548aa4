# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
The training job behind `opo-trl train`: data, rewards, model, trainer, held-out evaluation and the run's files.

    python -m opo_trl.run --config recipe.yaml [--key value ...]    # what `opo-trl train` and `opo-trl compare` run
"""

import json
import os
import resource
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from .algorithms import ALGORITHMS
from .data import REASONING_GYM_PREFIX


# Script arguments that only some datasets read, and which: set for any other dataset, they are an error rather than
# silently ignored. "hub" is any dataset `datasets.load_dataset` reads.
DATASET_ARGUMENTS = {
    "dataset_train_split": ("gsm8k", "math", "hub", "mixture"),
    "dataset_test_split": ("gsm8k", "math", "hub", "mixture"),
    "dataset_config": ("hub",),
    "dataset_streaming": ("hub",),
    "dataset_options": ("reasoning_gym",),
    "dataset_seed": ("arithmetic", "reasoning_gym"),
    "num_train_samples": ("arithmetic", "reasoning_gym"),
    "num_test_samples": ("arithmetic", "reasoning_gym"),
    "num_validation_samples": ("reasoning_gym",),
    "min_operand": ("arithmetic",),
    "max_operand": ("arithmetic",),
    "operations": ("arithmetic",),
    "math_levels": ("math",),
}
BUILTIN_DATASETS = ("arithmetic", "gsm8k", "math", "reasoning_gym/<task>")


def dataset_kind(script_args, dataset_args) -> str:
    if dataset_args.datasets:
        return "mixture"
    name = script_args.dataset_name
    if name is None:
        raise ValueError("No dataset: set `dataset_name` (e.g. 'arithmetic') or `datasets` (a dataset mixture).")
    if name.startswith(REASONING_GYM_PREFIX):
        return "reasoning_gym"
    return name if name in ("arithmetic", "gsm8k", "math") else "hub"


def load_datasets(script_args, dataset_args, seed: int):
    """
    The train split and the held-out splits (a dict, e.g. `{"test": ..., "validation": ...}`) of a run, each with a
    `prompt` column and whatever its reward functions read.

    The one place that turns a `dataset_name` (or a `trl grpo` dataset mixture) into datasets.
    """
    from .arguments import changed_fields
    from .data import load_gsm8k, load_math, load_reasoning_gym, make_arithmetic_dataset

    kind = dataset_kind(script_args, dataset_args)
    for name in changed_fields(script_args, DATASET_ARGUMENTS):
        kinds = DATASET_ARGUMENTS[name]
        if kind not in kinds:
            # A misspelt built-in name reads as a hub id: the name is the mistake to report, not the option.
            if kind == "hub":
                _check_not_a_misspelled_builtin(script_args.dataset_name)
            raise ValueError(
                f"{name}={getattr(script_args, name)!r} applies to dataset_name {' or '.join(map(repr, kinds))} only, "
                f"not to {script_args.dataset_name if kind != 'mixture' else 'a dataset mixture'!r}; remove it."
            )
    data_seed = seed if script_args.dataset_seed is None else script_args.dataset_seed
    train_split, test_split = script_args.dataset_train_split, script_args.dataset_test_split

    if kind == "mixture":  # a `trl grpo` dataset mixture
        from trl import get_dataset

        mixture = get_dataset(dataset_args)
        return mixture[train_split], _present({test_split: mixture.get(test_split)})
    if kind == "arithmetic":
        splits = make_arithmetic_dataset(
            script_args.num_train_samples,
            script_args.num_test_samples,
            seed=data_seed,
            min_operand=script_args.min_operand,
            max_operand=script_args.max_operand,
            operations=script_args.operations,
        )
        return splits["train"], {"test": splits["test"]}
    if kind == "reasoning_gym":
        options = script_args.dataset_options
        options = json.loads(options) if isinstance(options, str) else options
        sizes = {
            "train": script_args.num_train_samples,
            "validation": script_args.num_validation_samples,
            "test": script_args.num_test_samples,
        }
        splits = load_reasoning_gym(
            script_args.dataset_name.removeprefix(REASONING_GYM_PREFIX), sizes, data_seed, options
        )
        return splits["train"], {name: split for name, split in splits.items() if name != "train"}
    if kind == "gsm8k":
        return load_gsm8k(train_split), {"test": load_gsm8k(test_split)}
    if kind == "math":
        levels = script_args.math_levels
        return load_math(train_split, levels), {"test": load_math(test_split, levels)}
    return _load_hub_dataset(script_args)


def _check_not_a_misspelled_builtin(name: str) -> None:
    """Raise if `name`, not a path, is close to a built-in dataset's name, saying which one."""
    import difflib

    if os.path.exists(name):
        return
    close = difflib.get_close_matches(name, ["arithmetic", "gsm8k", "math"], n=1)
    if close:
        raise ValueError(
            f"dataset_name={name!r} is not a built-in dataset ({', '.join(BUILTIN_DATASETS)}) and not a local "
            f"path. Did you mean {close[0]!r}?"
        )


def _load_hub_dataset(script_args):
    import difflib
    import os

    from datasets import load_dataset

    name = script_args.dataset_name
    try:
        dataset = load_dataset(name, name=script_args.dataset_config, streaming=script_args.dataset_streaming)
    except Exception as e:
        if os.path.exists(name):
            raise
        close = difflib.get_close_matches(name, ["arithmetic", "gsm8k", "math"], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"dataset_name={name!r} is not a built-in dataset ({', '.join(BUILTIN_DATASETS)}), not a local path, and "
            f"could not be loaded from the hub ({type(e).__name__}).{hint}"
        ) from e
    test = dataset[script_args.dataset_test_split] if script_args.dataset_test_split in dataset else None
    return dataset[script_args.dataset_train_split], _present({script_args.dataset_test_split: test})


def _present(splits: dict) -> dict:
    return {name: split for name, split in splits.items() if split is not None}


def train(script_args, training_args, model_args, dataset_args) -> dict:
    """Run one training job; returns a summary (held-out accuracy before/after, final metrics, output paths)."""
    from trl import get_peft_config

    from .checkpoints import resolve_resume_from_checkpoint
    from .models import resolve_model
    from .rewards import answer_checker, get_reward_function
    from .trainer import OPOTrainer
    from .validation import validate_dataset
    from .vllm_cpu import cpu_colocate

    algorithm = ALGORITHMS[script_args.algorithm]
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

    _check_heldout_arguments(script_args)
    quantization_config = _quantization_config(model_args, training_args)
    train_dataset, heldout_splits = load_datasets(script_args, dataset_args, seed=training_args.seed)
    test_dataset = heldout_splits.get(script_args.dataset_test_split)
    eval_dataset = test_dataset if training_args.eval_strategy != "no" else None
    heldout = None
    if script_args.heldout_eval:
        if script_args.heldout_split not in heldout_splits:
            raise ValueError(
                f"heldout_split={script_args.heldout_split!r}: this dataset has the held-out splits "
                f"{sorted(heldout_splits)} (reasoning_gym tasks get a 'validation' split with num_validation_samples)."
            )
        heldout = heldout_splits[script_args.heldout_split]
        if script_args.heldout_max_samples is not None:
            heldout = heldout.select(range(min(script_args.heldout_max_samples, len(heldout))))
    # OPOTrainer checks the datasets it is given before it loads the model; check here what it will not see.
    if not issubclass(algorithm.trainer_cls, OPOTrainer):
        validate_dataset(train_dataset, reward_funcs, "train")
    for name, split in heldout_splits.items():
        if split is not eval_dataset or not issubclass(algorithm.trainer_cls, OPOTrainer):
            validate_dataset(split, reward_funcs, name)

    model_id = resolve_model(model_args.model_name_or_path or "HuggingFaceTB/SmolLM2-135M-Instruct")
    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs

    # GRPOTrainer and the baselines get vLLM's CPU weight sync here; OPOTrainer sets it up itself.
    with cpu_colocate(training_args):
        trainer = algorithm.trainer_cls(
            model=model_id,
            reward_funcs=reward_funcs,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            quantization_config=quantization_config,
            peft_config=get_peft_config(model_args),
        )
    if script_args.ignore_bias_buffers:
        # torch DDP cannot broadcast boolean buffers (e.g. attention masks): leave them out, as TRL's scripts do.
        trainer.model._ddp_params_and_buffers_to_ignore = [
            name for name, buffer in trainer.model.named_buffers() if buffer.dtype == torch.bool
        ]

    summary = {
        "algorithm": script_args.algorithm,
        "model": model_id,
        "seed": training_args.seed,
        "learning_rate": training_args.learning_rate,
        # How `accuracy` decides (math-verify and its version): runs scored differently are not comparable.
        "answer_checker": answer_checker(),
    }
    evaluator = None
    if heldout is not None:
        evaluator = HeldoutEvaluator(trainer, heldout, script_args)
        before = evaluator.before()
        summary.update(heldout_split=script_args.heldout_split, heldout_problems=len(heldout))
        summary.update(heldout_accuracy_before=before.pass_at_1, heldout_greedy_before=before.greedy_accuracy)
        trainer.accelerator.print(f"[opo-trl] held-out accuracy before training: {before.pass_at_1:.3f}")
        if script_args.heldout_eval_steps:
            trainer.add_callback(evaluator)

    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    if evaluator is not None:
        after = evaluator.after()
        summary.update(heldout_accuracy_after=after.pass_at_1, heldout_greedy_after=after.greedy_accuracy)
        trainer.accelerator.print(
            f"[opo-trl] held-out accuracy: before {summary['heldout_accuracy_before']:.3f} -> after "
            f"{after.pass_at_1:.3f} ({len(heldout)} prompts, {script_args.heldout_num_samples} sample(s) each, "
            f"temperature {training_args.temperature})"
        )
    step_times = [e["step_time"] for e in trainer.state.log_history if "step_time" in e]
    summary["seconds_per_step"] = sum(step_times) / len(step_times) if step_times else None
    summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
        trainer.accelerator.print(f"[opo-trl] model pushed to https://huggingface.co/{trainer.hub_model_id}")
    if trainer.accelerator.is_main_process:
        summary.update(write_run_files(trainer.state.log_history, summary, training_args.output_dir))
    # Leave together and tear the process group down cleanly: a rank that exits while another still holds the group
    # can make gloo abort the other one at exit.
    trainer.accelerator.wait_for_everyone()
    trainer.end()
    return summary


# Script arguments that shape the held-out evaluation: without `heldout_eval` they would do nothing.
HELDOUT_ARGUMENTS = (
    "heldout_split", "heldout_max_samples", "heldout_num_samples", "heldout_greedy", "heldout_eval_steps",
    "heldout_interim_max_samples", "heldout_before_from",
)  # fmt: skip


def _check_heldout_arguments(script_args) -> None:
    from .arguments import changed_fields

    set_ = [] if script_args.heldout_eval else changed_fields(script_args, HELDOUT_ARGUMENTS)
    if set_:
        raise ValueError(f"{', '.join(set_)} only apply with heldout_eval: true; set it or remove them.")


def _quantization_config(model_args, training_args):
    """`trl grpo`'s QLoRA: a bitsandbytes config from `load_in_4bit`/`load_in_8bit`, checked before the model loads."""
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return None
    import importlib.util

    import torch
    from trl import get_quantization_config

    flag = "load_in_4bit" if model_args.load_in_4bit else "load_in_8bit"
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(f"{flag}=True needs bitsandbytes: pip install 'opo-trl[quantization]'.")
    if training_args.use_cpu or not torch.cuda.is_available():
        raise ValueError(
            f"{flag}=True (QLoRA) needs a CUDA GPU for bitsandbytes, and this run has none "
            f"(use_cpu={training_args.use_cpu}, CUDA available: {torch.cuda.is_available()}); drop {flag}."
        )
    return get_quantization_config(model_args)


def exit_launched_process() -> None:
    """
    End a process started by `accelerate launch` or torchrun once its job is done, without the interpreter's teardown.
    Does nothing in a single process.

    DeepSpeed ZeRO-3 keeps process-group handles alive after the group is destroyed (its module-level
    `FWD_MODULE_STACK` holds the model, whose parameters hold `ds_process_group`; `deepspeed.utils.groups` holds the
    world group). Their gloo worker threads are then torn down at interpreter exit, where destroying a still-joinable
    thread calls std::terminate: about one launch in ten died of SIGABRT ("terminate called without an active
    exception") after its run had finished and written everything. The exit handlers still run; only that teardown is
    skipped.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


HELDOUT_FILE = "heldout.jsonl"


class HeldoutEvaluator(TrainerCallback):
    """
    Held-out accuracy before training, every `heldout_eval_steps` optimizer steps and after training.

    Each evaluation is appended to `<output_dir>/heldout.jsonl` with its per-problem outcomes, so that confidence
    intervals and paired differences can be computed later, and its accuracies to the trainer's log history:
    `heldout/accuracy` (pass@1 on the whole held-out set), `heldout/greedy_accuracy`, and `heldout/interim_accuracy`
    (pass@1 on the first `heldout_interim_max_samples` problems, the set the evaluations during training use).
    """

    def __init__(self, trainer, dataset, script_args):
        self.trainer, self.dataset, self.script_args = trainer, dataset, script_args
        self.interim_size = min(script_args.heldout_interim_max_samples or len(dataset), len(dataset))
        self.path = Path(trainer.args.output_dir) / HELDOUT_FILE
        self.fingerprint = _fingerprint(dataset)

    def before(self):
        from .evaluation import HeldoutResult

        source = self.script_args.heldout_before_from
        if source is not None:
            record = read_heldout(source)[0]
            if record["step"] != 0 or record["fingerprint"] != self.fingerprint:
                raise ValueError(
                    f"heldout_before_from={source!r}: its first evaluation is not of this held-out set before training."
                )
            result = HeldoutResult(record["sampled"], record["greedy"], seconds=0.0)
        else:
            result = self._evaluate("held-out eval (before)", self.dataset, self.script_args.heldout_greedy)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        # `Trainer.train` starts a fresh log history: the entry joins it after training.
        self._before_entry = self._record(0, result, full=True)
        return result

    def after(self):
        result = self._evaluate("held-out eval (after)", self.dataset, self.script_args.heldout_greedy)
        log_history = self.trainer.state.log_history
        log_history.insert(0, self._before_entry)
        log_history.append(self._record(self.trainer.state.global_step, result, full=True))
        return result

    def on_step_end(self, args, state, control, **kwargs):
        every = self.script_args.heldout_eval_steps
        if state.global_step % every == 0 and state.global_step < state.max_steps:
            subset = self.dataset.select(range(self.interim_size))
            result = self._evaluate(f"held-out eval (step {state.global_step})", subset, greedy=False, num_samples=1)
            state.log_history.append(
                self._record(state.global_step, result, full=self.interim_size == len(self.dataset))
            )
        return control

    def _evaluate(self, desc, dataset, greedy, num_samples=None):
        from .evaluation import evaluate_heldout

        trainer, args = self.trainer, self.trainer.args
        # Accuracy is what the held-out number means: the first reward function named like it, else the first one.
        named = trainer.reward_funcs[-len(self.script_args.reward_funcs) :]
        reward = next((f for f in named if "accuracy" in getattr(f, "__name__", "")), named[0])
        return evaluate_heldout(
            trainer.model,
            trainer.processing_class,
            dataset,
            reward,
            num_samples=num_samples or self.script_args.heldout_num_samples,
            greedy=greedy,
            max_new_tokens=args.max_completion_length,
            temperature=args.temperature,
            batch_size=max(args.per_device_eval_batch_size, 16),
            seed=args.seed,
            desc=desc,
            disable_progress=not trainer.accelerator.is_main_process,
        )

    def _record(self, step, result, full):
        from .evaluation import HeldoutResult

        entry = {"step": step}
        if full:
            entry["heldout/accuracy"] = result.pass_at_1
            if result.greedy is not None:
                entry["heldout/greedy_accuracy"] = result.greedy_accuracy
        if self.interim_size < len(self.dataset) or not full:
            entry["heldout/interim_accuracy"] = HeldoutResult(result.sampled[: self.interim_size]).pass_at_1
        if self.trainer.accelerator.is_main_process:
            record = {"step": step, "problems": len(result.sampled), "fingerprint": self.fingerprint if full else None,
                      "seconds": result.seconds, "sampled": result.sampled, "greedy": result.greedy}  # fmt: skip
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        return entry


def read_heldout(run_dir) -> list[dict]:
    """The held-out evaluations of a run, in order (see [`HeldoutEvaluator`])."""
    return [json.loads(line) for line in (Path(run_dir) / HELDOUT_FILE).read_text().splitlines() if line]


def _fingerprint(dataset) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(list(dataset["prompt"]), sort_keys=True).encode()).hexdigest()[:16]


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
            ax.plot(*zip(*steps, strict=True), marker="o", markersize=3)
            ax.set(xlabel="step", ylabel="mean training reward", title=f"{summary['algorithm'].upper()} reward")
            ax.grid(alpha=0.3)
            fig.tight_layout()
            fig.savefig(out / "reward_curve.png", dpi=120)
            plt.close(fig)
            paths["reward_plot"] = str(out / "reward_curve.png")
    (out / "summary.json").write_text(json.dumps({**summary, **paths}, indent=2) + "\n")
    return paths


def quiet_library_deprecations() -> None:
    """
    Hide the deprecation warnings that TRL's own code raises in transformers 5.x on every run: the user can do nothing
    about them. (`gradient_checkpointing` in a recipe is the user's and still warns; the shipped recipes use
    `activation_checkpointing`.)
    """
    import warnings

    # TRL 1.16 reads `model.is_gradient_checkpointing` when it generates (trl.models.utils).
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def main(argv: list[str] | None = None) -> dict:
    """Parse `opo-trl train` arguments and run the job; prints and returns the summary."""
    from .arguments import parse_train_args

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_library_deprecations()
    summary = train(*parse_train_args(sys.argv[1:] if argv is None else argv))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        # A launched process: the `opo-trl` process that launched it says where the run stands.
        sys.exit(130)
    exit_launched_process()
