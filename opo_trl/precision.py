# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
bf16 on a CPU: what a `bf16=True, use_cpu=True` run gets, and a check that the CPU computes bf16 natively.

With `bf16=True` and `use_cpu=True`, accelerate wraps the model's forward in `torch.autocast("cpu",
dtype=torch.bfloat16)` once training starts: the weights and AdamW's state stay float32 (the master copy the optimizer
updates), matmuls run in bf16, log-softmax and norms in float32. That covers TRL's generation (`model.generate` calls
the wrapped forward) and its log-prob passes. OPO's sequence log-ratio and quadratic are float32 whatever the model's
precision (`opo_trl.core.opo_sequence_loss` upcasts the log-probs); opo-trl's held-out evaluation runs under the same
autocast (also before training, when accelerate has not yet wrapped the forward), and a colocated vLLM engine on a CPU
computes in the trainer's precision (`opo_trl.vllm_cpu`).

On a CPU with native bf16 (x86 `avx512_bf16` or `amx_bf16`, Arm `bf16`), a bf16 matmul runs several times faster than
a float32 one; elsewhere PyTorch emulates it, slower than float32, so [`check_cpu_bf16`] warns.
"""

import functools
import platform
import warnings
from pathlib import Path


# /proc/cpuinfo flags of CPUs with bf16 matmul instructions.
NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}
CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU has bf16 matmul instructions; `None` where it cannot be told (no `/proc/cpuinfo`)."""
    if platform.system() != "Linux" or not CPUINFO.exists():
        return None
    flags = set()
    for line in CPUINFO.read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & NATIVE_BF16_FLAGS)


def check_cpu_bf16(args) -> None:
    """Warn when a run asks for bf16 on a CPU that would only emulate it."""
    if not (getattr(args, "bf16", False) and getattr(args, "use_cpu", False)):
        return
    if cpu_has_native_bf16() is False:
        warnings.warn(
            "bf16=True with use_cpu=True on a CPU without bf16 instructions (avx512_bf16, amx_bf16 or Arm bf16): "
            "PyTorch emulates bf16 here, which is slower than float32. Set bf16=False (--bf16 false).",
            UserWarning,
            stacklevel=3,
        )
