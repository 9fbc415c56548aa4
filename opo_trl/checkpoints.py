# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
Finding the checkpoint to resume from after a run was interrupted.

`transformers.Trainer` writes a `checkpoint-N` folder in order: model, optimizer, scheduler, RNG state, and
`trainer_state.json` last. A run killed while saving leaves a folder without (or with a truncated)
`trainer_state.json`, which `transformers.trainer_utils.get_last_checkpoint` still returns, and resuming from it then
fails or silently restarts the optimizer. [`last_complete_checkpoint`] only returns folders that were fully written.
"""

import json
import logging
import os
import re


TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
logger = logging.getLogger(__name__)

# Values of `resume_from_checkpoint` that mean "the newest complete checkpoint in output_dir".
RESUME_LAST = ("last", "true")
RESUME_NONE = ("", "false", "none")


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """
    The highest-step `checkpoint-N` folder of `output_dir` that was completely written.

    A checkpoint counts as complete when its `trainer_state.json` exists and parses as JSON: the Trainer writes that
    file after the model, optimizer, scheduler and RNG state, so its presence means everything before it is on disk.

    Args:
        output_dir (`str` or `os.PathLike`):
            The training `output_dir`.

    Returns:
        `str` or `None`: Path of the checkpoint folder, or `None` if `output_dir` has no complete checkpoint (or does
        not exist).
    """
    if not os.path.isdir(output_dir):
        return None
    steps = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_RE.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            steps.append((int(match.group(1)), name))
    for _, name in sorted(steps, reverse=True):
        path = os.path.join(output_dir, name)
        if _is_complete(path):
            return path
    return None


def _is_complete(checkpoint: str) -> bool:
    # A kill while trainer_state.json itself is being written leaves it truncated: that checkpoint is not complete.
    try:
        with open(os.path.join(checkpoint, TRAINER_STATE_NAME)) as f:
            json.load(f)
    except (OSError, ValueError):
        return False
    return True


def resolve_resume_from_checkpoint(value: str | bool | None, output_dir: str | os.PathLike) -> str | None:
    """
    Turn a `resume_from_checkpoint` setting into the checkpoint folder to resume from.

    Args:
        value (`str`, `bool` or `None`):
            `None`, `False` or `"false"`: start from scratch. `True`, `"true"` or `"last"`: the newest complete
            checkpoint of `output_dir` (see [`last_complete_checkpoint`]). Any other string: that path, unchanged.
        output_dir (`str` or `os.PathLike`):
            The training `output_dir`.

    Returns:
        `str` or `None`: The checkpoint path, or `None` to start from scratch.

    Raises:
        ValueError: If the newest checkpoint is asked for and `output_dir` has no complete one.
    """
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in RESUME_NONE):
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() in RESUME_LAST):
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint is None:
            raise ValueError(
                f"resume_from_checkpoint={value!r}: no complete checkpoint in {output_dir} (a 'checkpoint-N' folder "
                f"with a readable {TRAINER_STATE_NAME}). Drop resume_from_checkpoint to start from scratch, or pass "
                "the path of a checkpoint."
            )
        return checkpoint
    return value


# The pending rollout in a checkpoint. `GRPOTrainer` generates a rollout every `steps_per_generation * num_iterations`
# micro-steps and serves it from `_buffered_inputs`, indexed by its micro-step counter `_step`; neither is in a
# `transformers` checkpoint, so a run resumed mid-rollout would generate a new rollout where the uninterrupted run
# reuses the pending one. [`RolloutCheckpointMixin`] saves both, per process, beside the RNG state.
ROLLOUT_STATE_FORMAT = 1
ROLLOUT_STATE_NAME = "rollout_state"
# The config fields that shape a rollout and how it is split into micro-steps.
ROLLOUT_FIELDS = (
    "steps_per_generation",
    "num_iterations",
    "num_generations",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "world_size",
)


def rollout_state_file(checkpoint: str, process_index: int, world_size: int) -> str:
    name = ROLLOUT_STATE_NAME if world_size <= 1 else f"{ROLLOUT_STATE_NAME}_{process_index}"
    return os.path.join(checkpoint, f"{name}.pt")


def rollout_fingerprint(args) -> dict:
    return {name: getattr(args, name) for name in ROLLOUT_FIELDS}


class RolloutCheckpointMixin:
    """
    Makes a `GRPOTrainer` (or a subclass) resume bit for bit from any checkpoint, including one saved in the middle of
    a rollout (`steps_per_generation > gradient_accumulation_steps` or `num_iterations > 1`).

    Each checkpoint gets `rollout_state.pt` (`rollout_state_<rank>.pt` with several processes): the micro-step counter
    `_step` and the buffered rollout, every key of every micro-batch as it is (so keys a subclass adds, such as OPO's
    drive and `opo_mu`, come back too), with a format version and the config fields that shape a rollout. It is
    written with the RNG state, before `trainer_state.json`, so [`last_complete_checkpoint`] still means complete.
    On resume it is restored with the RNG state, before the first step. A checkpoint saved mid-rollout that has no
    such file (an older format) or was saved with other rollout settings resumes with a new rollout, and says so.
    """

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        import torch

        state = {
            "format": ROLLOUT_STATE_FORMAT,
            "fingerprint": rollout_fingerprint(self.args),
            "step": self._step,
            "buffered_inputs": self._buffered_inputs,
        }
        path = rollout_state_file(output_dir, self.args.process_index, self.args.world_size)
        # Written to a temporary name first: a kill mid-write leaves no truncated file under the real name.
        torch.save(state, path + ".tmp")
        os.replace(path + ".tmp", path)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        if checkpoint is not None:
            restore_rollout_state(self, checkpoint)


def restore_rollout_state(trainer, checkpoint: str) -> None:
    """Restore `trainer._step` and `trainer._buffered_inputs` from `checkpoint` (see [`RolloutCheckpointMixin`])."""
    import torch

    args = trainer.args
    generate_every = args.steps_per_generation * trainer.num_iterations
    path = rollout_state_file(checkpoint, args.process_index, args.world_size)
    if not os.path.isfile(path):
        step = trainer.state.global_step * args.gradient_accumulation_steps
        if step % generate_every:
            logger.warning(
                f"{checkpoint} was saved in the middle of a rollout (micro-step {step % generate_every} of "
                f"{generate_every}) and holds no {os.path.basename(path)} (saved by an older opo-trl or without "
                "RolloutCheckpointMixin): the resumed run generates a new rollout there, so it will not match an "
                "uninterrupted run bit for bit."
            )
        return

    def to_device(storage, location):
        return storage if location == "cpu" else storage.to(trainer.accelerator.device)

    try:
        state = torch.load(path, map_location=to_device, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} cannot be read ({type(e).__name__}: {e}); resume from another checkpoint.") from e
    saved, current = state.get("fingerprint"), rollout_fingerprint(args)
    if state.get("format") != ROLLOUT_STATE_FORMAT or saved != current:
        if state["step"] % generate_every:
            if state.get("format") != ROLLOUT_STATE_FORMAT:
                why = f"format {state.get('format')!r}, this opo-trl reads {ROLLOUT_STATE_FORMAT}"
            else:
                why = ", ".join(f"{k} {saved.get(k)} -> {v}" for k, v in current.items() if saved.get(k) != v)
            logger.warning(
                f"{path} holds a rollout in progress that this run cannot continue ({why}): the resumed run "
                "generates a new rollout, so it will not match an uninterrupted run bit for bit."
            )
        return
    trainer._step = state["step"]
    trainer._buffered_inputs = state["buffered_inputs"]


def interrupted_message(output_dir: str, created: bool, save_strategy: str, resume_command: list[str]) -> str:
    """
    The one line `opo-trl` prints when a run is interrupted (Ctrl-C): where its last checkpoint is and the command
    that resumes from it, or that there is none and how to make a run resumable.

    A run folder that this run created and that holds no complete checkpoint is removed: it could not be resumed,
    and a later run with the same `output_dir` would otherwise start beside its leftovers.

    Args:
        output_dir (`str`):
            The run's `output_dir`.
        created (`bool`):
            Whether `output_dir` did not exist before this run started.
        save_strategy (`str`):
            The run's `save_strategy`.
        resume_command (`list[str]`):
            The interrupted command line, without any `--resume_from_checkpoint`.
    """
    import shlex
    import shutil

    checkpoint = last_complete_checkpoint(output_dir)
    if checkpoint is not None:
        with open(os.path.join(checkpoint, TRAINER_STATE_NAME)) as f:
            state = json.load(f)
        command = shlex.join([*resume_command, "--resume_from_checkpoint", "last"])
        return (
            f"interrupted; the last checkpoint is {checkpoint} (step {state.get('global_step')} of "
            f"{state.get('max_steps')}). Resume with: {command}"
        )
    removed = ""
    if created and os.path.isdir(output_dir):
        shutil.rmtree(output_dir, ignore_errors=True)
        removed = f" (removed {output_dir}, which it created)"
    if getattr(save_strategy, "value", save_strategy) == "no":
        return (
            f"interrupted; this run saves no checkpoints (save_strategy: no), so there is nothing to resume{removed}. "
            "To make a run resumable: --save_strategy steps --save_steps N."
        )
    return f"interrupted before its first checkpoint, so there is nothing to resume{removed}."


def without_resume_option(argv: list[str]) -> list[str]:
    """`argv` without `--resume_from_checkpoint VALUE` (or `=VALUE`)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume_from_checkpoint":
            skip = True
        elif not arg.startswith("--resume_from_checkpoint="):
            out.append(arg)
    return out
