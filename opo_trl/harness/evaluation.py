# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""Held-out evaluation: how often a policy answers prompts it was not trained on, problem by problem."""

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import TrainerCallback

from .runfiles import HeldoutRecord, RunFiles


@dataclass
class HeldoutResult:
    """
    Per-problem outcomes of a held-out evaluation (1.0 correct, 0.0 not), kept so that confidence intervals and paired
    differences can be computed over problems later.

    Args:
        sampled (`list[list[float]]`):
            For each problem, one outcome per sample drawn at the sampling temperature.
        greedy (`list[float]`, *optional*):
            For each problem, the outcome of greedy decoding, if it was measured.
        seconds (`float`, *optional*):
            Wall time of the evaluation.
    """

    sampled: list[list[float]]
    greedy: list[float] | None = field(default=None)
    seconds: float | None = field(default=None, compare=False)

    @property
    def pass_at_1(self) -> float:
        """Mean over problems of the fraction of correct samples (pass@1 estimated with every sample)."""
        per_problem = [sum(s) / len(s) for s in self.sampled if s]
        return sum(per_problem) / max(len(per_problem), 1)

    @property
    def greedy_accuracy(self) -> float | None:
        return None if self.greedy is None else sum(self.greedy) / max(len(self.greedy), 1)


@torch.no_grad()
def evaluate_heldout(
    model,
    tokenizer,
    dataset: Dataset,
    reward_func: Callable,
    num_samples: int = 1,
    greedy: bool = False,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
    desc: str = "held-out eval",
    disable_progress: bool = False,
) -> HeldoutResult:
    """
    Sample `num_samples` completions per prompt of `dataset` (and, with `greedy`, one greedy completion) and score each
    with `reward_func`; a completion counts as correct when its reward is at least 1.

    Sampling at the training temperature measures the policy RL actually optimises; greedy decoding measures its mode.
    The seed fixes the sampling, so a before/after comparison on the same model differs only in the weights, and the
    global torch RNG is restored afterwards, so evaluating does not change the training run's randomness.

    Args:
        model: A causal LM (a PEFT model works too).
        tokenizer: Its tokenizer; prompts in conversational format go through its chat template.
        dataset (`Dataset`): Rows with a `prompt` column and whatever columns `reward_func` reads (e.g. `answer`).
        reward_func (`Callable`): A TRL reward function.
        num_samples (`int`, *optional*, defaults to `1`): Sampled completions per prompt.
        greedy (`bool`, *optional*, defaults to `False`): Also decode one greedy completion per prompt.
        max_new_tokens (`int`, *optional*, defaults to `64`): Completion budget.
        temperature (`float`, *optional*, defaults to `1.0`): Sampling temperature.
        batch_size (`int`, *optional*, defaults to `32`): Sequences per `generate` call.
        seed (`int`, *optional*, defaults to `0`): Seed of the sampling.

    Returns:
        [`HeldoutResult`]: Per-problem outcomes; `None` rewards count as wrong.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    began = time.perf_counter()
    was_training = model.training
    model.eval()
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    prompts_per_batch = max(1, batch_size // num_samples)
    sampled: list[list[float]] = []
    greedy_outcomes: list[float] | None = [] if greedy else None
    try:
        for start in tqdm(range(0, len(dataset), prompts_per_batch), desc=desc, disable=disable_progress):
            rows = dataset[start : start + prompts_per_batch]
            encoded, conversational = encode_prompts(tokenizer, rows["prompt"], model.device)
            outcomes = _score(
                model, tokenizer, rows, encoded, conversational, reward_func, max_new_tokens,
                dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0, num_return_sequences=num_samples),
            )  # fmt: skip
            sampled += [outcomes[i : i + num_samples] for i in range(0, len(outcomes), num_samples)]
            if greedy:
                greedy_outcomes += _score(
                    model, tokenizer, rows, encoded, conversational, reward_func, max_new_tokens, dict(do_sample=False)
                )
    finally:
        tokenizer.padding_side = padding_side
        torch.random.set_rng_state(generator_state)
        model.train(was_training)
    return HeldoutResult(sampled=sampled, greedy=greedy_outcomes, seconds=time.perf_counter() - began)


def sampled_accuracy(model, tokenizer, dataset: Dataset, reward_func: Callable, **kwargs) -> float:
    """Fraction of `dataset` prompts whose one sampled completion is correct; see [`evaluate_heldout`]."""
    return evaluate_heldout(model, tokenizer, dataset, reward_func, **kwargs).pass_at_1


def encode_prompts(tokenizer, prompts, device):
    """
    The batch of `prompts` as the held-out evaluation feeds them to `model.generate` (chat prompts through the chat
    template with the generation prompt, plain ones as they are; left padding is the tokenizer's setting), on `device`;
    and whether they were chat prompts.
    """
    conversational = isinstance(prompts[0], list)
    texts = (
        [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
        if conversational
        else prompts
    )
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not conversational)
    return encoded.to(device), conversational


def _score(model, tokenizer, rows, encoded, conversational, reward_func, max_new_tokens, generation_kwargs):
    generated = model.generate(
        **encoded, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **generation_kwargs
    )
    decoded = tokenizer.batch_decode(generated[:, encoded["input_ids"].size(1) :], skip_special_tokens=True)
    repeats = len(decoded) // len(rows["prompt"])
    completions = [[{"role": "assistant", "content": d}] for d in decoded] if conversational else decoded
    # Completions come prompt by prompt: repeat each row's columns once per completion.
    columns = {k: [v for v in values for _ in range(repeats)] for k, values in rows.items()}
    prompts = columns.pop("prompt")
    rewards = reward_func(completions=completions, prompts=prompts, **columns)
    return [1.0 if r is not None and r >= 1.0 else 0.0 for r in rewards]


class HeldoutEvaluator(TrainerCallback):
    """
    Held-out accuracy of a training run before training, every `heldout_eval_steps` optimizer steps and after
    training.

    Each evaluation is appended to the run's `heldout.jsonl` ([`~runfiles.HeldoutRecord`], with its per-problem
    outcomes, so that confidence intervals and paired differences can be computed later), and its accuracies to the
    trainer's log history: `heldout/accuracy` (pass@1 on the whole held-out set), `heldout/greedy_accuracy`, and
    `heldout/interim_accuracy` (pass@1 on the first `heldout_interim_max_samples` problems, the set the evaluations
    during training use).
    """

    def __init__(self, trainer, dataset, script_args, files: RunFiles):
        self.trainer, self.dataset, self.script_args, self.files = trainer, dataset, script_args, files
        self.interim_size = min(script_args.heldout_interim_max_samples or len(dataset), len(dataset))
        self.fingerprint = fingerprint(dataset)

    def before(self) -> HeldoutResult:
        source = self.script_args.heldout_before_from
        if source is not None:
            records = RunFiles(source).read_heldout()
            if not records or records[0].step != 0 or records[0].fingerprint != self.fingerprint:
                raise ValueError(
                    f"heldout_before_from={source!r}: its first evaluation is not of this held-out set before training."
                )
            result = HeldoutResult(records[0].sampled, records[0].greedy, seconds=0.0)
        else:
            result = self._evaluate("held-out eval (before)", self.dataset, self.script_args.heldout_greedy)
        if self.trainer.accelerator.is_main_process:
            self.files.start_heldout()
        # `Trainer.train` starts a fresh log history: the entry joins it after training.
        self._before_entry = self._record(0, result, full=True)
        return result

    def after(self) -> HeldoutResult:
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

    def _evaluate(self, desc, dataset, greedy, num_samples=None) -> HeldoutResult:
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

    def _record(self, step, result, full) -> dict:
        entry = {"step": step}
        if full:
            entry["heldout/accuracy"] = result.pass_at_1
            if result.greedy is not None:
                entry["heldout/greedy_accuracy"] = result.greedy_accuracy
        if self.interim_size < len(self.dataset) or not full:
            entry["heldout/interim_accuracy"] = HeldoutResult(result.sampled[: self.interim_size]).pass_at_1
        if self.trainer.accelerator.is_main_process:
            self.files.append_heldout(
                HeldoutRecord(
                    step=step,
                    problems=len(result.sampled),
                    fingerprint=self.fingerprint if full else None,
                    seconds=result.seconds,
                    sampled=result.sampled,
                    greedy=result.greedy,
                )  # fmt: skip
            )
        return entry


def fingerprint(dataset) -> str:
    """A short hash of a dataset's prompts: two evaluations compare only on the same held-out set."""
    return hashlib.sha256(json.dumps(list(dataset["prompt"]), sort_keys=True).encode()).hexdigest()[:16]
