# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""Held-out evaluation: how often a policy answers prompts it was not trained on, problem by problem."""

import functools
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
    batch_size: int = 96,
    seed: int = 0,
    desc: str = "held-out eval",
    disable_progress: bool = False,
    autocast_dtype: torch.dtype | None = None,
    engine=None,
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
        batch_size (`int`, *optional*, defaults to `96`): Sequences per `generate` call.
        seed (`int`, *optional*, defaults to `0`): Seed of the sampling.
        autocast_dtype (`torch.dtype`, *optional*): Generate under `torch.autocast` in this dtype (a bf16 trainer's
            precision); float32 if unset.
        engine (`vllm.LLM`, *optional*): Generate with this vLLM engine instead of `model.generate`, all prompts at
            once (the engine batches them), seeded per request. It must hold the model's current weights.

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
    # The engine takes every prompt at once; model.generate a batch of about `batch_size` sequences at a time.
    prompts_per_batch = len(dataset) if engine is not None else max(1, batch_size // num_samples)
    sampled: list[list[float]] = []
    greedy_outcomes: list[float] | None = [] if greedy else None
    device_type = getattr(model.device, "type", "cpu")
    try:
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            for start in tqdm(range(0, len(dataset), prompts_per_batch), desc=desc, disable=disable_progress):
                rows = dataset[start : start + prompts_per_batch]
                texts, conversational = _prompt_texts(tokenizer, rows["prompt"])
                generate = functools.partial(
                    _generate_with_engine if engine is not None else _generate_with_model,
                    engine if engine is not None else model,
                    tokenizer,
                    texts,
                    conversational,
                    max_new_tokens,
                )
                decoded = generate(num_samples=num_samples, temperature=temperature, seed=seed)
                outcomes = _score(rows, decoded, conversational, reward_func)
                sampled += [outcomes[i : i + num_samples] for i in range(0, len(outcomes), num_samples)]
                if greedy:
                    greedy_outcomes += _score(
                        rows, generate(num_samples=1, temperature=0.0, seed=seed), conversational, reward_func
                    )
    finally:
        tokenizer.padding_side = padding_side
        torch.random.set_rng_state(generator_state)
        model.train(was_training)
    return HeldoutResult(sampled=sampled, greedy=greedy_outcomes, seconds=time.perf_counter() - began)


def sampled_accuracy(model, tokenizer, dataset: Dataset, reward_func: Callable, **kwargs) -> float:
    """Fraction of `dataset` prompts whose one sampled completion is correct; see [`evaluate_heldout`]."""
    return evaluate_heldout(model, tokenizer, dataset, reward_func, **kwargs).pass_at_1


def _prompt_texts(tokenizer, prompts):
    """The prompts as text, through the chat template when they are conversations."""
    conversational = isinstance(prompts[0], list)
    if not conversational:
        return prompts, False
    return [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts], True


def encode_prompts(tokenizer, prompts, device):
    """Prompts (text or conversations) as a padded batch for `generate`; returns it and whether they were
    conversations. Set the tokenizer's `padding_side` to `"left"` for generation."""
    texts, conversational = _prompt_texts(tokenizer, prompts)
    return _tokenize(tokenizer, texts, conversational).to(device), conversational


def _tokenize(tokenizer, texts, conversational):
    # A chat template already holds the special tokens.
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not conversational)


def _generate_with_model(model, tokenizer, texts, conversational, max_new_tokens, num_samples, temperature, seed):
    # The torch generator was seeded once for the whole evaluation: batches draw from one stream.
    encoded = _tokenize(tokenizer, texts, conversational).to(model.device)
    sampling = (
        dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0, num_return_sequences=num_samples)
        if temperature > 0
        else dict(do_sample=False)
    )
    generated = model.generate(
        **encoded, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
    )
    return tokenizer.batch_decode(generated[:, encoded["input_ids"].size(1) :], skip_special_tokens=True)


def _generate_with_engine(llm, tokenizer, texts, conversational, max_new_tokens, num_samples, temperature, seed):
    from vllm import SamplingParams

    # Token ids, as TRL gives its engine.
    prompts = [
        {"prompt_token_ids": ids} for ids in tokenizer(texts, add_special_tokens=not conversational)["input_ids"]
    ]
    # A seed per prompt: one seed for all would give every prompt the same random draws.
    params = [
        SamplingParams(
            n=num_samples,
            temperature=temperature,
            top_p=1.0,
            top_k=0,
            max_tokens=max_new_tokens,
            seed=seed * 100_003 + i,
        )
        for i in range(len(prompts))
    ]
    outputs = llm.generate(prompts, sampling_params=params, use_tqdm=False)
    return [completion.text for output in outputs for completion in output.outputs]


def _score(rows, decoded, conversational, reward_func):
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

    def before(self, resumed_at: int | None = None) -> HeldoutResult:
        """
        The initial model's evaluation: measured, or read from `heldout_before_from`. A run resuming from its own
        checkpoint at step `resumed_at` reads it from its own `heldout.jsonl` when that has it, and keeps the
        evaluations up to that step there.
        """
        own = self.files.read_heldout() if resumed_at is not None else []
        if own and own[0].step == 0 and own[0].fingerprint == self.fingerprint:
            result = HeldoutResult(own[0].sampled, own[0].greedy, seconds=0.0)
            if self.trainer.accelerator.is_main_process:
                self.files.keep_heldout_until(resumed_at)
            self._before_entry = self._record(0, result, full=True, write=False)
            return result
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
            batch_size=self.script_args.heldout_batch_size,
            seed=args.seed,
            desc=desc,
            disable_progress=not trainer.accelerator.is_main_process,
            # The trainer's precision, before training too (accelerate wraps the forward in autocast only in train()).
            autocast_dtype=torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None,
            engine=self._engine(),
        )

    def _engine(self):
        """The trainer's colocated vLLM engine, synced to the current weights; `None` to generate with the model."""
        trainer, args = self.trainer, self.trainer.args
        # Server mode has no engine in this process; a sleeping engine would need waking up.
        if not trainer.use_vllm or args.vllm_mode != "colocate" or args.vllm_enable_sleep_mode:
            return None
        # As GRPOTrainer does before it generates (`_generate_single_turn`), so its next generation does not sync again.
        if trainer.state.global_step != trainer._last_loaded_step:
            trainer.vllm_generation.sync_weights()
            trainer._last_loaded_step = trainer.state.global_step
        return trainer.vllm_generation.llm

    def _record(self, step, result, full, write=True) -> dict:
        entry = {"step": step}
        if full:
            entry["heldout/accuracy"] = result.pass_at_1
            if result.greedy is not None:
                entry["heldout/greedy_accuracy"] = result.greedy_accuracy
        if self.interim_size < len(self.dataset) or not full:
            entry["heldout/interim_accuracy"] = HeldoutResult(result.sampled[: self.interim_size]).pass_at_1
        if write and self.trainer.accelerator.is_main_process:
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
