"""``comfy.float``: casting weights to a lower precision with stochastic rounding."""

from __future__ import annotations

import torch

# (exponent bits, mantissa bits, exponent bias) of the fp8 formats.
_FP8_LAYOUT = {
    getattr(torch, "float8_e4m3fn", None): (4, 3, 7),
    getattr(torch, "float8_e5m2", None): (5, 2, 15),
}


def manual_stochastic_round_to_float8(
    x: torch.Tensor, dtype: torch.dtype, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``x`` rounded up or down to a neighbouring ``dtype`` value, with the probability of each
    proportional to closeness (so the expected value is ``x``); returned in fp16, clamped to
    the range of ``dtype``."""
    if dtype not in _FP8_LAYOUT or dtype is None:
        raise ValueError("Unsupported dtype")
    exp_bits, mantissa_bits, bias = _FP8_LAYOUT[dtype]
    x = x.half()
    magnitude = x.abs().float()
    # The spacing of representable values around each magnitude (subnormals share the lowest).
    exponent = torch.floor(torch.log2(magnitude.clamp_min(torch.finfo(torch.float32).tiny)))
    exponent = exponent.clamp(1 - bias, 2**exp_bits - 1 - bias)
    step = torch.pow(2.0, exponent - mantissa_bits)
    noise = torch.rand(magnitude.shape, dtype=magnitude.dtype, device=magnitude.device, generator=generator)
    rounded = torch.floor(magnitude / step + noise) * step
    info = torch.finfo(dtype)
    return (torch.sign(x).float() * rounded).clamp(info.min, info.max).half()


def stochastic_rounding(value: torch.Tensor, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """``value`` as ``dtype``: a plain cast for fp32/fp16/bf16, stochastic rounding (seeded) for fp8."""
    if dtype in (torch.float32, torch.float16, torch.bfloat16):
        return value.to(dtype=dtype)
    if dtype in _FP8_LAYOUT and dtype is not None:
        generator = torch.Generator(device=value.device)
        generator.manual_seed(seed)
        return manual_stochastic_round_to_float8(value, dtype, generator=generator).to(dtype=dtype)
    return value.to(dtype=dtype)
