# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
The pending rollout in a checkpoint, so that a run resumes bit for bit from any checkpoint.

`GRPOTrainer` generates a rollout every `steps_per_generation * num_iterations` micro-steps and serves it from
`_buffered_inputs`, indexed by its micro-step counter `_step`; neither is in a `transformers` checkpoint, so a run
resumed mid-rollout would generate a new rollout where the uninterrupted run reuses the pending one.
[`RolloutCheckpointMixin`] saves both, per process, beside the RNG state.
"""

import logging
import os


logger = logging.getLogger(__name__)


ROLLOUT_STATE_FORMAT = 2
# Older formats a trainer upgrades on load (`_upgrade_buffered_inputs`). Format 1 held OPO's drive under TRL's
# "advantages" key; TRL's own keys are the same in both.
UPGRADABLE_FORMATS = (1,)
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
    `opo_drive` and `opo_mu`, come back too), with a format version and the config fields that shape a rollout. It is
    written with the RNG state, before `trainer_state.json`, so a checkpoint whose `trainer_state.json` is written
    has it. On resume it is restored with the RNG state, before the first step; a file of an older format is upgraded
    (`_upgrade_buffered_inputs`). A checkpoint saved mid-rollout that has no such file (an older opo-trl) or was saved
    with other rollout settings resumes with a new rollout, and says so.
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

    def _upgrade_buffered_inputs(self, buffered_inputs: list, saved_format: int) -> list:
        """
        The buffered micro-batches of a file in an older format (one of `UPGRADABLE_FORMATS`), as this format holds
        them. TRL's own keys have not changed, so they stay as they are; a subclass upgrades the keys it adds.
        """
        return buffered_inputs


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
    saved, current, saved_format = state.get("fingerprint"), rollout_fingerprint(args), state.get("format")
    readable = saved_format == ROLLOUT_STATE_FORMAT or saved_format in UPGRADABLE_FORMATS
    if not readable or saved != current:
        if state["step"] % generate_every:
            if not readable:
                why = f"format {saved_format!r}, this opo-trl reads {[*UPGRADABLE_FORMATS, ROLLOUT_STATE_FORMAT]}"
            else:
                why = ", ".join(f"{k} {saved.get(k)} -> {v}" for k, v in current.items() if saved.get(k) != v)
            logger.warning(
                f"{path} holds a rollout in progress that this run cannot continue ({why}): the resumed run "
                "generates a new rollout, so it will not match an uninterrupted run bit for bit."
            )
        return
    buffered_inputs = state["buffered_inputs"]
    if saved_format != ROLLOUT_STATE_FORMAT:
        buffered_inputs = trainer._upgrade_buffered_inputs(buffered_inputs, saved_format)
    trainer._step = state["step"]
    trainer._buffered_inputs = buffered_inputs
