# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
Gradient-response probe: how OPO, GRPO, DAPO and GSPO respond as the policy moves away from the rollout policy.

The OPO paper's saturation argument, made visible on one fixed batch. Every algorithm starts from the same weights,
sees the same prompt and completion token ids, and is anchored to the same rollout policy (`old_per_token_logps` =
the log-probs of the initial weights). Each then takes `--steps` plain SGD steps (same fixed learning rate, no
gradient clipping, no momentum) on that batch, through its trainer's real `_compute_loss`:

- GRPO, DAPO and GSPO: `trl.GRPOTrainer` with the baseline settings of `opo_trl.harness.algorithms`. Their advantages are their own
  group-centred rewards (divided by the group std where `scale_rewards` is `"group"`). Once a token's ratio leaves the
  clip range on the side its advantage pushes, its gradient is exactly zero: the objective stops responding however
  far the ratio goes.
- OPO: `opo_trl.OPOTrainer`, whose "opo_drive" is the escort drive `g = escort_drive(group_advantages(R))` of the
  same rewards. Its per-sequence gradient in Delta is `mu * Delta - g`: a restoring force linear in the deviation, so
  Delta is driven to the equilibrium `g / mu` and pulled back if it overshoots. Two values of `mu` show the stiffness.

Delta is the per-sequence mean-token log-ratio of the current vs the rollout policy (OPO's default
`log_ratio_aggregation="mean"`, GSPO's sequence ratio). Recorded per step: the gradient norm, mean and max |Delta|,
the fraction of tokens outside the clip range (of sequences for GSPO; `clip_frac`), the fraction clipped on the side
that zeroes the gradient (TRL's `clip_ratio/region_mean`; `zero_grad_frac`) and, for OPO, mean |mu * Delta - g|
(`opo_force`).

Usage:

```bash
python benchmarks/gradient_probe.py                                # tiny in-code model, 40 steps, < 1 min
python benchmarks/gradient_probe.py --model smollm2 --steps 20     # SmolLM2-135M-Instruct
```

Writes `gradient_probe.csv` and `gradient_probe.png` to `--out` and prints a markdown summary table.
"""

import argparse
import csv
import math
import os
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch
from transformers.utils import logging as hf_logging

from opo_trl.harness.algorithms import ALGORITHMS
from opo_trl.harness.testing import model_path as resolve_model_path


hf_logging.set_verbosity_error()

BASELINES = {name: a.settings for name, a in ALGORITHMS.items() if a.settings}
hf_logging.disable_progress_bar()


# Two prompts, G = 8 completions each; the first four of each group are rewarded above the group mean, the last four
# below. Group 1 has binary rewards, group 2 graded ones, so the drive g is not the same for every sequence.
PROMPTS = ("What is 2 + 3? ", "What is 7 * 6? ")
COMPLETIONS = (
    ("5", "The answer is 5.", "2 + 3 = 5", "It is 5", "6", "The answer is 23.", "2 + 3 = 6, I think", "Four"),
    ("42", "7 * 6 = 42", "The product is 42.", "Forty-two, so 42", "13", "7 * 6 = 36", "It is 76.", "It is 48"),
)
REWARDS = ((1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0), (1.0, 0.9, 0.8, 0.6, 0.4, 0.2, 0.1, 0.0))

# Plain SGD on OPO's quadratic is stable only while lr * mu * (largest curvature of Delta) < 2; these rates keep
# mu = 4 stable. SmolLM2 trains its last 4 layers by default so that 20 steps of 5 algorithms fit in ~3 CPU minutes.
DEFAULT_LR = {"tiny": 0.1, "smollm2": 1e-3}
DEFAULT_LAST_LAYERS = {"smollm2": 4}
CSV_FIELDS = (
    "algorithm", "step", "grad_norm", "delta_mean_abs", "delta_max_abs", "clip_frac", "zero_grad_frac", "opo_force"
)  # fmt: skip


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default="tiny", help="'tiny' (in-code Qwen2, hidden 64), 'smollm2' or a path")
    parser.add_argument("--steps", type=int, default=40, help="SGD steps K per algorithm (default: 40)")
    parser.add_argument("--lr", type=float, default=None, help=f"SGD learning rate (default: {DEFAULT_LR})")
    parser.add_argument("--mus", type=float, nargs="+", default=[1.0, 4.0], help="OPO stiffness values (default: 1 4)")
    parser.add_argument("--alpha", type=float, default=0.4, help="OPO escort exponent (default: 0.4)")
    parser.add_argument("--last-layers", default=None,
                        help="train only the last N decoder layers and the final norm, or 'all' (default: 4 for\n"
                        "smollm2, which more than halves its CPU step time; all for tiny)")  # fmt: skip
    parser.add_argument("--algorithms", nargs="+", default=None,
                        help="subset to run, e.g. opo_mu1 gspo (default: each OPO mu, grpo, dapo, gspo)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default: 1)")
    parser.add_argument("--out", default="docs/probe", help="output directory (default: docs/probe)")
    parser.add_argument("--no-plot", action="store_true", help="skip gradient_probe.png")
    return parser.parse_args(argv)


def build_trainer(algorithm: str, model_path: str, workdir: str, batch_size: int, num_generations: int, args):
    from datasets import Dataset

    from opo_trl.harness.algorithms import tiny_trainer

    if algorithm.startswith("opo"):
        name, settings = "opo", {"alpha": args.alpha, "mu": float(algorithm.split("_mu")[1])}
    else:
        name, settings = "grpo", BASELINES[algorithm]
    with warnings.catch_warnings():  # TrainingArguments deprecation notices, not about this probe
        warnings.simplefilter("ignore")
        return tiny_trainer(
            name, model_path, lambda completions, **kw: [0.0] * len(completions),
            Dataset.from_dict({"prompt": list(PROMPTS) * 4}), Path(workdir) / algorithm,
            per_device_train_batch_size=batch_size, num_generations=num_generations, **settings,
        )  # fmt: skip


def build_batch(tokenizer) -> dict[str, torch.Tensor]:
    """Left-padded prompts and right-padded, eos-terminated completions, as `_generate_and_score_completions` does."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    prompts, completions = [], []
    for prompt, group in zip(PROMPTS, COMPLETIONS, strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for text in group:
            prompts.append(prompt_ids)
            completions.append(tokenizer(text, add_special_tokens=False)["input_ids"] + [eos])
    p_len, c_len = max(map(len, prompts)), max(map(len, completions))
    prompt_ids = torch.tensor([[pad] * (p_len - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (p_len - len(p)) + [1] * len(p) for p in prompts])
    completion_ids = torch.tensor([c + [pad] * (c_len - len(c)) for c in completions])
    completion_mask = torch.tensor([[1] * len(c) + [0] * (c_len - len(c)) for c in completions])
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
            "completion_mask": completion_mask}  # fmt: skip


def advantages_for(algorithm: str, rewards: torch.Tensor, num_generations: int, alpha: float) -> torch.Tensor:
    from trl import GRPOConfig

    from opo_trl.core import escort_drive
    from opo_trl.harness.testing import group_advantages

    if algorithm.startswith("opo"):
        # OPOConfig's default scale_rewards="none": centre only, then the escort drive.
        return escort_drive(group_advantages(rewards, num_generations, "none"), num_generations, alpha).drive
    scale = BASELINES[algorithm].get("scale_rewards", GRPOConfig.scale_rewards)
    return group_advantages(rewards, num_generations, scale)


def advantage_source(algorithm: str, alpha: float) -> str:
    from trl import GRPOConfig

    if algorithm.startswith("opo"):
        return f"escort drive g (alpha={alpha:g}) of centred R"
    scale = BASELINES[algorithm].get("scale_rewards", GRPOConfig.scale_rewards)
    return "centred R" if scale == "none" else f"centred R / {scale} std"


def sequence_log_ratio(logps, old_logps, mask):
    return ((logps - old_logps) * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def probe(algorithm: str, model_path: str, workdir: str, batch, old_logps, rewards, num_generations, args):
    """K plain SGD steps on the fixed batch with the algorithm's own `_compute_loss`; one row per step 0..K."""
    trainer = build_trainer(algorithm, model_path, workdir, rewards.numel(), num_generations, args)
    model = trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    mask = batch["completion_mask"].float()
    advantages = advantages_for(algorithm, rewards, num_generations, args.alpha)
    inputs = {**batch, "advantages": advantages, "old_per_token_logps": old_logps,
              "num_items_in_batch": mask.sum()}  # fmt: skip
    if algorithm.startswith("opo"):
        inputs["opo_drive"] = advantages  # OPO's loss reads its drive here
        inputs["opo_mu"] = torch.full_like(advantages, trainer.args.mu)  # per sequence, as OPO's rollout sets it

    # Keep the current log-probs of the loss's own forward pass instead of paying for a second one.
    captured = {}
    get_logps = trainer._get_per_token_logps_and_entropies

    def capturing(*a, **kw):
        out = get_logps(*a, **kw)
        captured["logps"] = out[0].detach()
        return out

    trainer._get_per_token_logps_and_entropies = capturing
    if args.last_layers is not None:
        freeze_below(model, args.last_layers)
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for step in range(args.steps + 1):
        model.zero_grad(set_to_none=True)
        loss = trainer._compute_loss(model, inputs)
        loss.backward()
        with torch.no_grad():
            grad_norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in params if p.grad is not None)).item()
        delta = sequence_log_ratio(captured["logps"], old_logps, mask)
        row = {"algorithm": algorithm, "step": step, "grad_norm": grad_norm,
               "delta_mean_abs": delta.abs().mean().item(), "delta_max_abs": delta.abs().max().item(),
               "clip_frac": "", "zero_grad_frac": "", "opo_force": ""}  # fmt: skip
        if algorithm.startswith("opo"):
            row["opo_force"] = (trainer.args.mu * delta - advantages).abs().mean().item()
        else:
            low, high = trainer.epsilon_low, trainer.epsilon_high
            if trainer.importance_sampling_level == "sequence":
                ratio = delta.exp()
                row["clip_frac"] = ((ratio < 1 - low) | (ratio > 1 + high)).float().mean().item()
            else:
                ratio = (captured["logps"] - old_logps).exp()
                outside = ((ratio < 1 - low) | (ratio > 1 + high)).float()
                row["clip_frac"] = ((outside * mask).sum() / mask.sum()).item()
            row["zero_grad_frac"] = trainer._metrics["train"]["clip_ratio/region_mean"][-1]
        rows.append(row)
        if step < args.steps:
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-args.lr)
    equilibrium = (advantages.abs().mean().item() / trainer.args.mu) if algorithm.startswith("opo") else None
    del trainer, model
    return rows, advantages, equilibrium


def freeze_below(model, last_layers: int) -> None:
    """Leave only the last `last_layers` decoder layers and the final norm trainable."""
    first = model.config.num_hidden_layers - last_layers
    for name, param in model.named_parameters():
        layer = name.split("layers.")[1].split(".")[0] if "layers." in name else None
        param.requires_grad_(int(layer) >= first if layer is not None else name.endswith("model.norm.weight"))


def first_below(rows, fraction=0.01):
    initial = rows[0]["grad_norm"]
    return next((str(r["step"]) for r in rows if r["grad_norm"] < fraction * initial), "never")


def summary_table(results, steps) -> str:
    half = steps // 2
    lines = [
        (
            f"| algorithm | advantages fed to `_compute_loss` | grad norm @0 | @{half} | @{steps} "
            f"| mean abs Delta @{steps} | max abs Delta @{steps} | clip frac @{steps} | zero-grad frac @{steps} "
            f"| mean abs(mu Delta - g) @{steps} | first step grad < 1% of @0 |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(value, spec=".2f"):
        return "-" if value == "" else format(value, spec)

    for algorithm, (rows, _, equilibrium, source) in results.items():
        end = rows[-1]
        delta = f"{end['delta_mean_abs']:.4f}" + (f" (g/mu {equilibrium:.4f})" if equilibrium is not None else "")
        lines.append(
            f"| {algorithm} | {source} | {rows[0]['grad_norm']:.4g} | {rows[half]['grad_norm']:.4g} "
            f"| {end['grad_norm']:.4g} | {delta} | {end['delta_max_abs']:.4f} | {fmt(end['clip_frac'])} "
            f"| {fmt(end['zero_grad_frac'])} | {fmt(end['opo_force'], '.4f')} | {first_below(rows)} |"
        )
    return "\n".join(lines)


def plot(results, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_grad, ax_delta) = plt.subplots(1, 2, figsize=(12, 4.5))
    # An exactly zero gradient (every ratio clipped) cannot sit on a log axis: draw it on the axis floor.
    floor = 1e-4 * max(rows[0]["grad_norm"] for rows, *_ in results.values())
    for algorithm, (rows, _, equilibrium, _) in results.items():
        steps = [r["step"] for r in rows]
        (line,) = ax_grad.semilogy(steps, [max(r["grad_norm"], floor) for r in rows], label=algorithm)
        ax_delta.plot(steps, [r["delta_mean_abs"] for r in rows], color=line.get_color())
        if equilibrium is not None:
            ax_delta.axhline(equilibrium, ls=":", lw=1, color=line.get_color(), label=f"{algorithm}: mean abs(g)/mu")
    ax_delta.axhline(math.log(1.2), ls="--", lw=0.8, color="grey", label="log(1.2): GRPO token clip edge")
    ax_grad.set_ylim(bottom=floor / 2)
    ax_grad.set(xlabel="SGD step", ylabel="gradient norm (exact 0 drawn at the floor)", title="gradient response")
    ax_delta.set(xlabel="SGD step", ylabel="mean |Delta| (mean-token log-ratio)",
                 title="distance from the rollout policy")  # fmt: skip
    ax_grad.legend(fontsize=8)
    ax_delta.legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    print("$ " + shlex.join(["python", "benchmarks/gradient_probe.py", *(sys.argv[1:] if argv is None else argv)]))
    if args.lr is None:
        args.lr = DEFAULT_LR.get(args.model, DEFAULT_LR["smollm2"])
    if args.last_layers is None:
        args.last_layers = DEFAULT_LAST_LAYERS.get(args.model, "all")
    args.last_layers = None if args.last_layers == "all" else int(args.last_layers)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    with tempfile.TemporaryDirectory() as workdir:
        model_path = resolve_model_path(args.model, workdir)
        num_generations = len(COMPLETIONS[0])
        rewards = torch.tensor(REWARDS, dtype=torch.float32).reshape(-1)
        algorithms = args.algorithms or [f"opo_mu{mu:g}" for mu in args.mus] + list(BASELINES)

        # The anchor: log-probs of the initial weights, shared by every algorithm.
        anchor = build_trainer("grpo", model_path, workdir, rewards.numel(), num_generations, args)
        batch = build_batch(anchor.processing_class)
        with torch.no_grad():
            input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
            attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
            old_logps = anchor._get_per_token_logps_and_entropies(
                anchor.model.train(), input_ids, attention_mask, batch["completion_ids"].size(1)
            )[0].detach()
        del anchor

        results = {}
        for algorithm in algorithms:
            rows, advantages, equilibrium = probe(
                algorithm, model_path, workdir, batch, old_logps, rewards, num_generations, args
            )
            results[algorithm] = (rows, advantages, equilibrium, advantage_source(algorithm, args.alpha))

    tokens = int(batch["completion_mask"].sum())
    print(
        f"\nmodel={args.model}  batch={rewards.numel()} sequences ({len(PROMPTS)} prompts x G={num_generations}), "
        f"{tokens} completion tokens  SGD lr={args.lr:g}  K={args.steps}  threads={args.threads}  "
        f"trainable={'all' if args.last_layers is None else f'last {args.last_layers} layers + final norm'}  "
        f"({time.perf_counter() - start:.0f} s)"
    )
    print("Rewards per group:", [list(r) for r in REWARDS])
    for algorithm, (_, advantages, _, _) in results.items():
        print(f"  {algorithm:8s} advantages: " + " ".join(f"{a:+.3f}" for a in advantages.tolist()))
    print(
        "Each loss gets its own advantages: GRPO/GSPO the group-normalised rewards (scale_rewards=group), DAPO the "
        "centred rewards (scale_rewards=none), OPO the escort drive of the centred rewards. All completions end in "
        "eos, so DAPO's mask_truncated_completions masks nothing.\n"
    )
    print(summary_table(results, args.steps))

    with open(out / "gradient_probe.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for rows, *_ in results.values():
            writer.writerows(rows)
    if not args.no_plot:
        plot(results, out / "gradient_probe.png", f"{args.model}: SGD lr={args.lr:g} on one fixed batch, "
             "anchored at the initial policy")  # fmt: skip
    print(f"\nwrote {out / 'gradient_probe.csv'}" + ("" if args.no_plot else f" and {out / 'gradient_probe.png'}"))
    return {name: value[0] for name, value in results.items()}


if __name__ == "__main__":
    main()
