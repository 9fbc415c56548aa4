# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
Tiny models and tokenizers built in code, for tests and smoke runs on machines without the model hub, and the reference
advantage that tests and benchmarks compare OPO's drive against ([`group_advantages`], TRL's own advantage written
out).
"""

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config


SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<unk>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII with a chat template; eos = `<|end|>`."""
    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + chars)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|end|>",
        pad_token="<|pad|>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[2:5],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_causal_lm(vocab_size: int, hidden_size: int = 32, num_layers: int = 2, seed: int = 0):
    """A randomly initialised Qwen2 causal LM with a few thousand parameters."""
    import torch

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    return AutoModelForCausalLM.from_config(config)


def save_tiny_model(path: str | Path, hidden_size: int = 32, num_layers: int = 2, seed: int = 0) -> str:
    """Write a tiny model and its tokenizer to `path`, loadable by name like any hub checkpoint."""
    tokenizer = tiny_tokenizer()
    model = tiny_causal_lm(len(tokenizer), hidden_size, num_layers, seed)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def model_path(name: str, workdir: str | Path) -> str:
    """`"tiny"` (a tiny model written to `workdir`), `"smollm2"` (the offline default model) or any path or hub id."""
    if name == "tiny":
        return save_tiny_model(Path(workdir) / "tiny-model", hidden_size=64, seed=0)
    if name == "smollm2":
        from .models import resolve_model

        return resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    return name


def group_advantages(rewards, num_generations: int, scale_rewards: str = "none", eps: float = 1e-4):
    """
    Centre rewards within each prompt group, NaN-aware, as `GRPOTrainer` does with `sum_then_normalize`.

    Args:
        rewards (`torch.Tensor`):
            Flat tensor of shape `(num_groups * num_generations,)`; the completions of one prompt are consecutive.
            `NaN` marks a completion no reward function could score: it is left out of the group statistics and its
            advantage is `NaN`.
        num_generations (`int`):
            Completions per prompt (G).
        scale_rewards (`str`, *optional*, defaults to `"none"`):
            `"none"` only centres (the OPO paper); `"group"` divides by the group std, `"batch"` by the batch std.
        eps (`float`, *optional*, defaults to `1e-4`):
            Added to the std before dividing, as in TRL.

    Returns:
        `torch.Tensor`: Advantages, same shape as `rewards`.
    """
    import torch

    from ..core import SCALE_REWARDS

    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}.")
    grouped = rewards.view(-1, num_generations)
    advantages = grouped - torch.nanmean(grouped, dim=1, keepdim=True)
    if scale_rewards == "group":
        advantages = advantages / (_nanstd(grouped, dim=1, keepdim=True) + eps)
    elif scale_rewards == "batch":
        advantages = advantages / (_nanstd(rewards.view(-1), dim=0, keepdim=True) + eps)
    return advantages.reshape(rewards.shape)


def _nanstd(x, dim: int, keepdim: bool = False):
    import torch

    # Bessel-corrected std over the non-NaN entries, like TRL's `nanstd`.
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=True)
    var = torch.nanmean((x - torch.nanmean(x, dim=dim, keepdim=True)) ** 2, dim=dim, keepdim=True)
    std = torch.sqrt(var * count / (count - 1).clamp(min=1))
    return std if keepdim else std.squeeze(dim)
