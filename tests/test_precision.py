"""bf16 on a CPU: OPO's loss and gradient under bf16 autocast against float32, and the check of the CPU's bf16."""

import warnings

import pytest
import torch

from opo_trl import OPOConfig
from opo_trl import precision as precision_module
from opo_trl.core import opo_sequence_loss
from opo_trl.precision import check_cpu_bf16

from .conftest import make_trainer


def test_log_ratio_and_quadratic_are_float32_for_bf16_log_probs():
    torch.manual_seed(0)
    logps, old = -torch.rand(3, 5) * 4, -torch.rand(3, 5) * 4
    mask, drive = torch.ones(3, 5), torch.tensor([0.5, -0.2, -0.3])
    half = opo_sequence_loss(logps.bfloat16(), old.bfloat16(), mask, drive, 1.0, aggregation="sum")
    # The same numbers, upcast before the sum: a bf16 sum of 5 tokens would round Delta to 2-3 significant digits.
    full = opo_sequence_loss(logps.bfloat16().float(), old.bfloat16().float(), mask, drive, 1.0, aggregation="sum")
    assert half.loss.dtype == half.delta.dtype == torch.float32
    assert torch.equal(half.loss, full.loss) and torch.equal(half.delta, full.delta)


@pytest.mark.slow
def test_bf16_autocast_loss_and_gradient_match_float32(tmp_path, tiny_model_path, prompt_dataset):
    """
    One micro-batch of a reused rollout (Delta != 0), its OPO loss and gradient in float32 and under bf16 autocast (what
    `bf16=True, use_cpu=True` runs): bf16 matmuls round to 8 bits of mantissa, so the two agree to a percent or two,
    not to float32 rounding.
    """
    trainer = make_trainer(tmp_path, tiny_model_path, prompt_dataset, steps_per_generation=2)
    model = trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    torch.manual_seed(0)
    inputs = trainer._generate_and_score_completions([{"prompt": "1+2="}] * 4 + [{"prompt": "3+1="}] * 4)
    # A policy that has moved since the rollout: old log-probs off by about 0.3 a token.
    old = inputs["old_per_token_logps"]
    inputs["old_per_token_logps"] = old + 0.3 * torch.randn_like(old)

    def loss_and_gradient(dtype):
        model.zero_grad()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = trainer._compute_loss(model, inputs)
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).double()

    (loss32, grad32), (loss16, grad16) = loss_and_gradient(None), loss_and_gradient(torch.bfloat16)
    # Measured here: loss within 0.1%, gradient within 0.5% (SmolLM2-135M: about 7% of the gradient's norm).
    assert loss16.dtype == torch.float32 and loss32 > 1e-3
    assert (loss16 - loss32).abs() <= 0.01 * loss32
    assert (grad16 - grad32).norm() <= 0.02 * grad32.norm()
    assert torch.nn.functional.cosine_similarity(grad16, grad32, 0) > 0.999
    # And not trivially: the two computations did differ.
    assert not torch.equal(grad16, grad32)


def test_bf16_on_a_cpu_without_bf16_instructions_warns(tmp_path, monkeypatch):
    args = OPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=True, report_to="none")
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match=r"bf16=True with use_cpu=True on a CPU without bf16 instructions"):
        check_cpu_bf16(args)
    # Native bf16, an unknown CPU, or float32: nothing to say.
    for native, bf16 in ((True, True), (None, True), (False, False)):
        monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda native=native: native)
        args.bf16 = bf16
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_cpu_bf16(args)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path, monkeypatch):
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n\nprocessor\t: 1\nflags\t\t: fpu avx2 avx512f\n")
    monkeypatch.setattr(precision_module, "CPUINFO", fake)
    precision_module.cpu_has_native_bf16.cache_clear()
    try:
        assert precision_module.cpu_has_native_bf16() is False
        fake.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16\n")
        precision_module.cpu_has_native_bf16.cache_clear()
        assert precision_module.cpu_has_native_bf16() is True
    finally:
        precision_module.cpu_has_native_bf16.cache_clear()
