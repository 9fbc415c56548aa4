# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""Held-out evaluation: sampled accuracy of a policy on prompts it was not trained on."""

from collections.abc import Callable

import torch
from datasets import Dataset
from tqdm.auto import tqdm


@torch.no_grad()
def sampled_accuracy(
    model,
    tokenizer,
    dataset: Dataset,
    reward_func: Callable,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
    desc: str = "held-out eval",
    disable_progress: bool = False,
) -> float:
    """
    Fraction of `dataset` prompts whose one sampled completion `reward_func` scores 1.

    Sampling (not greedy decoding) at the training temperature measures the policy RL actually optimises. The seed
    fixes the sampling, so a before/after comparison on the same model differs only in the weights.

    Args:
        model: A causal LM (a PEFT model works too).
        tokenizer: Its tokenizer; prompts in conversational format go through its chat template.
        dataset (`Dataset`): Rows with a `prompt` column and whatever columns `reward_func` reads (e.g. `answer`).
        reward_func (`Callable`): A TRL reward function.
        max_new_tokens (`int`, *optional*, defaults to `64`): Completion budget.
        temperature (`float`, *optional*, defaults to `1.0`): Sampling temperature.
        batch_size (`int`, *optional*, defaults to `32`): Prompts per `generate` call.
        seed (`int`, *optional*, defaults to `0`): Seed of the sampling.

    Returns:
        `float`: Accuracy in [0, 1]; a `None` reward counts as wrong.
    """
    was_training = model.training
    model.eval()
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    correct = 0
    try:
        for start in tqdm(range(0, len(dataset), batch_size), desc=desc, disable=disable_progress):
            rows = dataset[start : start + batch_size]
            prompts = rows["prompt"]
            conversational = isinstance(prompts[0], list)
            texts = (
                [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
                if conversational
                else prompts
            )
            encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not conversational)
            encoded = encoded.to(model.device)
            generated = model.generate(
                **encoded,
                do_sample=True,
                temperature=temperature,
                top_p=1.0,
                top_k=0,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
            decoded = tokenizer.batch_decode(generated[:, encoded["input_ids"].size(1) :], skip_special_tokens=True)
            completions = [[{"role": "assistant", "content": d}] for d in decoded] if conversational else decoded
            extra = {k: v for k, v in rows.items() if k != "prompt"}
            rewards = reward_func(completions=completions, prompts=prompts, **extra)
            correct += sum(1 for r in rewards if r is not None and r >= 1.0)
    finally:
        tokenizer.padding_side = padding_side
        torch.random.set_rng_state(generator_state)
        model.train(was_training)
    return correct / max(len(dataset), 1)
