# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
bf16 numerics on a CPU: how far SmolLM2-135M-Instruct's log-probs, OPO's gradient and OPO's sequence log-ratio Delta
under bf16 autocast (what `bf16=True, use_cpu=True` trains with) are from float32, on one rollout of the quickstart's
task.

    python benchmarks/bf16_numerics.py [--completions 16] [--steps 1 2 4] [--seed 0]

One rollout: `--completions` addition prompts, one completion each sampled at temperature 0.7 in float32, masked after
the first end-of-sequence token. Then, with the float32 model and with the same model under bf16 autocast:
- the completion tokens' log-probs (temperature 0.7, as TRL scores them): their difference per token;
- the gradient of OPO's loss at Delta = 0 (the first optimizer step on a rollout) for a fixed drive g: cosine and
  relative error of the bf16 gradient against the float32 one;
- the rollout reused: after N AdamW steps (learning rate 1e-5, float32 master weights, the float32 gradient, as the
  quickstart's optimizer), each completion's Delta = sum over tokens of log pi_theta - log pi_k, measured in float32 and
  in bf16 (both log-probs in the same precision): mean |Delta| in float32, mean |bf16 - float32|, their correlation.

Prints a table and writes it to `docs/cpu_speed/bf16_numerics.md`. Timings are not measured here (benchmarks/cpu_speed.py
does that); the figures do not depend on the machine's load.
"""

import argparse
import contextlib
from pathlib import Path

import torch


REPO = Path(__file__).resolve().parents[1]
TEMPERATURE = 0.7


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--completions", type=int, default=16)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opo_trl.harness.evaluation import encode_prompts
    from opo_trl.harness.models import prepare_smollm2

    torch.manual_seed(args.seed)
    path = prepare_smollm2()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    generator = torch.Generator().manual_seed(args.seed)
    pairs = torch.randint(1, 51, (args.completions, 2), generator=generator).tolist()
    prompts = [[{"role": "user", "content": f"What is {a} + {b}?"}] for a, b in pairs]
    encoded, _ = encode_prompts(tokenizer, prompts, "cpu")
    with torch.no_grad():
        ids = model.generate(**encoded, max_new_tokens=32, do_sample=True, temperature=TEMPERATURE, top_k=0,
                             pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    prompt_length = encoded["input_ids"].size(1)
    completions = ids[:, prompt_length:]
    attention = torch.cat([encoded["attention_mask"], torch.ones_like(completions)], 1)
    is_eos = completions == tokenizer.eos_token_id
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full((len(ids),), completions.size(1)))
    mask = (torch.arange(completions.size(1))[None] <= first[:, None]).float()

    def logps(bf16: bool) -> torch.Tensor:
        context = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with context:
            logits = model(input_ids=ids, attention_mask=attention).logits[:, prompt_length - 1 : -1]
        logits = logits.float() / TEMPERATURE
        return logits.log_softmax(-1).gather(-1, completions[..., None]).squeeze(-1)

    def delta(current, old):
        return ((current - old) * mask).sum(-1)

    drive = torch.randn(len(ids), generator=generator) * 0.3
    drive -= drive.mean()

    def loss_of(current, old):
        d = delta(current, old)
        return (-drive * d + 0.5 * d**2).mean()  # mu = 1

    rows = []
    with torch.no_grad():
        old = {bf16: logps(bf16) for bf16 in (False, True)}
    token_gap = ((old[True] - old[False]).abs() * mask).sum() / mask.sum()
    rows.append(("token log-prob, mean abs(bf16 - float32)", f"{token_gap:.4f}"))
    rows.append(("token log-prob, max abs(bf16 - float32)", f"{((old[True] - old[False]).abs() * mask).max():.3f}"))

    gradients = {}
    for bf16 in (False, True):
        model.zero_grad()
        current = logps(bf16)
        loss_of(current, current.detach()).backward()
        gradients[bf16] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).double()
    cosine = torch.nn.functional.cosine_similarity(gradients[True], gradients[False], 0)
    error = (gradients[True] - gradients[False]).norm() / gradients[False].norm()
    rows.append(("OPO gradient at Delta = 0: cosine bf16 vs float32", f"{cosine:.4f}"))
    rows.append(("OPO gradient at Delta = 0: relative error", f"{error:.3f}"))

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    done = 0
    for steps in sorted(args.steps):
        while done < steps:
            model.zero_grad()
            loss_of(logps(False), old[False]).backward()
            optimizer.step()
            done += 1
        with torch.no_grad():
            deltas = {bf16: delta(logps(bf16), old[bf16]) for bf16 in (False, True)}
        gap = (deltas[True] - deltas[False]).abs().mean()
        correlation = torch.corrcoef(torch.stack([deltas[True], deltas[False]]))[0, 1]
        rows.append(
            (
                f"after {steps} AdamW step(s): mean abs(Delta) float32 / mean abs(bf16 - float32) / correlation",
                f"{deltas[False].abs().mean():.3f} / {gap:.3f} / {correlation:.3f}",
            )
        )

    lines = [
        f"SmolLM2-135M-Instruct, {args.completions} completions of the quickstart's task, seed {args.seed} "
        f"(`python benchmarks/bf16_numerics.py`):",
        "",
        "| figure | value |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in rows],
    ]
    text = "\n".join(lines)
    out = REPO / "docs" / "cpu_speed" / "bf16_numerics.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
