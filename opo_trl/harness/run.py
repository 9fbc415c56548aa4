# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
The training job behind `opo-trl train`: data, rewards, model, trainer, held-out evaluation and the run's files.

    python -m opo_trl.harness.run --config recipe.yaml [--key value ...]    # what `opo-trl train` and `opo-trl compare` run
"""

import json
import os
import platform
import resource
import sys
import time

import torch

from .algorithms import ALGORITHMS
from .runfiles import RunFiles, RunPause, RunSummary


def train(script_args, training_args, model_args, dataset_args) -> dict:
    """
    Run one training job: data, rewards, model, trainer, held-out evaluation, and the run's files in `output_dir`
    (`runfiles`). Returns the run's summary as a dict.
    """
    from trl import get_peft_config

    from ..precision import check_cpu_bf16
    from ..trainer import OPOTrainer
    from ..validation import validate_dataset
    from ..vllm_cpu import check_cpu_vllm_args, cpu_colocate, engine_dtype, wants_cpu_vllm
    from .checkpoints import checkpoint_step, pause_on_file, resolve_resume_from_checkpoint
    from .data import load_datasets
    from .evaluation import HeldoutEvaluator
    from .models import resolve_model
    from .plots import plot_reward_curve
    from .rewards import accuracy_reward, answer_checker, get_reward_function

    began = time.perf_counter()
    algorithm = ALGORITHMS[script_args.algorithm]
    # Resolved first: a resume that cannot happen should fail before any data or model loads.
    training_args.resume_from_checkpoint = resolve_resume_from_checkpoint(
        training_args.resume_from_checkpoint, training_args.output_dir
    )
    # vLLM on a CPU (the quickstart's default): a missing install should fail before the model is built.
    if wants_cpu_vllm(training_args):
        check_cpu_vllm_args(training_args)
    reward_funcs = []
    if script_args.reward_model_name_or_path:
        reward_funcs.append(script_args.reward_model_name_or_path)
    reward_funcs += [get_reward_function(name) for name in script_args.reward_funcs]
    if not reward_funcs:
        raise ValueError("No reward function: set `reward_funcs` (e.g. ['accuracy']).")

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
    # OPOTrainer checks the datasets it is given and the CPU's bf16 before it loads the model; check here what it
    # will not see.
    if not issubclass(algorithm.trainer_cls, OPOTrainer):
        check_cpu_bf16(training_args)
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

    summary = RunSummary(
        algorithm=script_args.algorithm,
        seed=training_args.seed,
        model=model_id,
        learning_rate=training_args.learning_rate,
        # How `accuracy` decides (math-verify and its version): runs scored differently are not comparable. Only a run
        # that scores with it records it (reasoning_gym's reward, say, does its own scoring).
        answer_checker=answer_checker() if accuracy_reward in reward_funcs else None,
        threads=torch.get_num_threads(),
        cpu=cpu_description(),
        generator="vllm" if trainer.use_vllm else "transformers",
        precision={"bfloat16": "bf16", "float16": "fp16"}.get(engine_dtype(training_args), "fp32"),
    )
    files = RunFiles(training_args.output_dir)
    # A run that its pause_file paused goes on here: its summary counts its earlier parts.
    resumed_at = (
        checkpoint_step(training_args.resume_from_checkpoint) if training_args.resume_from_checkpoint else None
    )
    earlier = files.read_pause() if resumed_at is not None else None
    if earlier is not None and earlier.step != resumed_at:
        earlier = None  # resumed from another checkpoint than the one it paused at: its earlier parts are unknown
    evaluator = None
    if heldout is not None:
        evaluator = HeldoutEvaluator(trainer, heldout, script_args, files)
        before = evaluator.before(resumed_at=resumed_at)
        summary.heldout_split, summary.heldout_problems = script_args.heldout_split, len(heldout)
        summary.heldout_accuracy_before, summary.heldout_greedy_before = before.pass_at_1, before.greedy_accuracy
        trainer.accelerator.print(f"[opo-trl] held-out accuracy before training: {before.pass_at_1:.3f}")
        if script_args.heldout_eval_steps:
            trainer.add_callback(evaluator)

    pause = None
    if script_args.pause_file:
        pause = pause_on_file(script_args.pause_file)
        trainer.add_callback(pause)

    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    wall = time.perf_counter() - began + (earlier.wall_seconds if earlier else 0.0)
    peak_rss_mb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, earlier.peak_rss_mb if earlier else 0)
    resumes = (earlier.resumed_at if earlier else []) + ([resumed_at] if resumed_at is not None else [])
    if pause is not None and pause.paused_at is not None:
        if trainer.accelerator.is_main_process:
            files.write_pause(RunPause(pause.paused_at, wall, peak_rss_mb, summary.cpu, resumes))
        trainer.accelerator.print(
            f"[opo-trl] paused at step {pause.paused_at} of {trainer.state.max_steps} ({script_args.pause_file} "
            f"exists); resume with --resume_from_checkpoint last"
        )
        trainer.accelerator.wait_for_everyone()
        trainer.end()
        return {**summary.to_dict(), "paused_at": pause.paused_at}

    if evaluator is not None:
        after = evaluator.after()
        summary.heldout_accuracy_after, summary.heldout_greedy_after = after.pass_at_1, after.greedy_accuracy
        trainer.accelerator.print(
            f"[opo-trl] held-out accuracy: before {summary.heldout_accuracy_before:.3f} -> after "
            f"{after.pass_at_1:.3f} ({len(heldout)} prompts, {script_args.heldout_num_samples} sample(s) each, "
            f"temperature {training_args.temperature})"
        )
    step_times = [e["step_time"] for e in trainer.state.log_history if "step_time" in e]
    summary.seconds_per_step = sum(step_times) / len(step_times) if step_times else None
    summary.peak_rss_mb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, peak_rss_mb)
    summary.resumed_at = resumes or None
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
        trainer.accelerator.print(f"[opo-trl] model pushed to https://huggingface.co/{trainer.hub_model_id}")
    summary.wall_seconds = time.perf_counter() - began + (earlier.wall_seconds if earlier else 0.0)
    if trainer.accelerator.is_main_process:
        files.write_metrics(trainer.state.log_history)
        plot_reward_curve(trainer.state.log_history, script_args.algorithm, files.reward_plot_path)
        files.write_summary(summary)  # last: a summary marks a finished run
        files.paused_path.unlink(missing_ok=True)
    # Leave together and tear the process group down cleanly: a rank that exits while another still holds the group
    # can make gloo abort the other one at exit.
    trainer.accelerator.wait_for_everyone()
    trainer.end()
    return summary.to_dict()


def cpu_description() -> str:
    """The processor's model name and the instruction set torch dispatches its CPU kernels to, e.g. `AMD EPYC (AVX2)`."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            name = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


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


def exit_launched_process(ran_vllm: bool = False) -> None:
    """
    End a process started by `accelerate launch` or torchrun, or one whose run generated with vLLM (`ran_vllm`), once
    its job is done, without the interpreter's teardown. Does nothing in a single process whose run did not use vLLM
    (vLLM merely imported, as by a test, is not enough: the process goes on).

    vLLM imports triton, whose nanobind bindings print about 30 lines of "nanobind: leaked ..." at teardown, after the
    run's summary: the last screen of a run should be its summary.

    DeepSpeed ZeRO-3 keeps process-group handles alive after the group is destroyed (its module-level
    `FWD_MODULE_STACK` holds the model, whose parameters hold `ds_process_group`; `deepspeed.utils.groups` holds the
    world group). Their gloo worker threads are then torn down at interpreter exit, where destroying a still-joinable
    thread calls std::terminate: about one launch in ten died of SIGABRT ("terminate called without an active
    exception") after its run had finished and written everything. The exit handlers still run; only that teardown is
    skipped.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not ran_vllm:
        return
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


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
        summary = main()
    except KeyboardInterrupt:
        # A launched process: the `opo-trl` process that launched it says where the run stands.
        sys.exit(130)
    # A process of its own whose only job was this run.
    exit_launched_process(ran_vllm=summary.get("generator") == "vllm")
