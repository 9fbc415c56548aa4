"""Held-out evaluation on the tiny model: outcomes per problem and per sample, greedy decoding, untouched RNG."""

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from opo_trl.harness.evaluation import HeldoutResult, evaluate_heldout, sampled_accuracy


def test_outcomes_per_problem_and_sample_greedy_and_rng(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    dataset = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": f"{i}+1="}] for i in range(5)], "k": list(range(5))}
    )
    seen = []

    def reward(completions, prompts, k, **kwargs):
        # Correct exactly for the problems with an even k, whatever the completion: the bookkeeping is what is tested.
        seen.append((len(completions), list(k), [p[-1]["content"] for p in prompts]))
        return [1.0 if x % 2 == 0 else 0.0 for x in k]

    model.train()
    state = torch.random.get_rng_state()
    result = evaluate_heldout(model, tokenizer, dataset, reward, num_samples=3, greedy=True, max_new_tokens=4,
                              batch_size=6, seed=0)  # fmt: skip
    assert torch.equal(torch.random.get_rng_state(), state)  # evaluation leaves the training RNG alone
    assert result.sampled == [[1.0] * 3, [0.0] * 3, [1.0] * 3, [0.0] * 3, [1.0] * 3]
    assert result.greedy == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert result.pass_at_1 == 0.6 and result.greedy_accuracy == 0.6
    # 6 sequences per call: 2 prompts x 3 samples, their columns repeated per sample, then 2 greedy completions.
    assert seen[0] == (6, [0, 0, 0, 1, 1, 1], ["0+1="] * 3 + ["1+1="] * 3)
    assert seen[1] == (2, [0, 1], ["0+1=", "1+1="])
    assert model.training  # back in the mode it was in


def test_sampling_is_seeded_and_pass_at_1_averages_samples(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    dataset = Dataset.from_dict({"prompt": [f"{i}+{i}=" for i in range(8)]})
    texts = []

    def has_digit(completions, **kwargs):
        texts.extend(completions)
        return [float(any(ch.isdigit() for ch in c)) for c in completions]

    first = evaluate_heldout(model, tokenizer, dataset, has_digit, num_samples=2, max_new_tokens=6, seed=3)
    first_texts, texts[:] = list(texts), []
    again = evaluate_heldout(model, tokenizer, dataset, has_digit, num_samples=2, max_new_tokens=6, seed=3)
    assert texts == first_texts and again == first
    per_problem = [sum(s) / 2 for s in first.sampled]
    assert first.pass_at_1 == sum(per_problem) / 8 and first.greedy is None and first.greedy_accuracy is None
    one = sampled_accuracy(model, tokenizer, dataset, has_digit, max_new_tokens=6, seed=3)
    assert 0.0 <= one <= 1.0
    assert HeldoutResult(sampled=[[1.0, 0.0], [1.0, 1.0]]).pass_at_1 == 0.75


def test_generation_runs_in_the_requested_precision(tiny_model_path):
    """bf16 autocast reaches the model's matmuls during generation; without it they stay float32."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    dataset = Dataset.from_dict({"prompt": [f"{i}+{i}=" for i in range(4)]})
    dtypes = []
    hook = model.lm_head.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    try:
        for autocast_dtype in (None, torch.bfloat16):
            dtypes.clear()
            evaluate_heldout(model, tokenizer, dataset, lambda completions, **kw: [0.0] * len(completions),
                             max_new_tokens=3, autocast_dtype=autocast_dtype)  # fmt: skip
            assert dtypes and set(dtypes) == {autocast_dtype or torch.float32}
    finally:
        hook.remove()
    assert next(model.parameters()).dtype == torch.float32  # autocast leaves the weights alone
