# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
Finding the checkpoint to resume from after a run was interrupted, and what to tell the user when it is; pausing a run
on request (a checkpoint, then a clean stop) so that a later process finishes it.

`transformers.Trainer` writes a `checkpoint-N` folder in order: model, optimizer, scheduler, RNG state, and
`trainer_state.json` last. A run killed while saving leaves a folder without (or with a truncated)
`trainer_state.json`, which `transformers.trainer_utils.get_last_checkpoint` still returns, and resuming from it then
fails or silently restarts the optimizer. [`last_complete_checkpoint`] only returns folders that were fully written.
"""

import json
import os
import re


TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")

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


def checkpoint_step(checkpoint: str) -> int:
    """The optimizer step a complete checkpoint was saved at (its `trainer_state.json`'s `global_step`)."""
    with open(os.path.join(checkpoint, TRAINER_STATE_NAME)) as f:
        return int(json.load(f)["global_step"])


def pause_on_file(path: str | os.PathLike):
    """
    A `TrainerCallback` that, once the file `path` exists, has the Trainer save a checkpoint at the end of the current
    optimizer step and stop training; its `paused_at` is then that step (else `None`). A file that is already there
    when training starts pauses the run after its first step. The last step never pauses: the run just ends.
    """
    from transformers import TrainerCallback

    class PauseOnFile(TrainerCallback):
        def __init__(self):
            self.path, self.paused_at = os.fspath(path), None

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step < state.max_steps and os.path.exists(self.path):
                # Trainer saves (even under save_strategy "no") before it acts on should_training_stop.
                control.should_save = control.should_training_stop = True
                self.paused_at = state.global_step
            return control

    return PauseOnFile()


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
