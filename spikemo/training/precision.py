"""The precision policy of both training recipes' steps (SpikEmo's and the text fine-tune's).

``precision``: ``fp32``; ``bf16`` (autocast: linears and attention products in bfloat16, the rest in fp32);
``auto``: bf16 where the device computes it natively, fp32 elsewhere. Natively: a CUDA device that supports bf16,
or a CPU with AVX512-BF16 or AMX (where bf16 matrix products run at about twice the fp32 rate). SpikEmo is evaluated
in fp32 whatever trained it (training/evaluation.py), as ``spikemo predict`` and the served model score it.
"""

from __future__ import annotations

import functools

import torch

PRECISIONS = ("auto", "fp32", "bf16")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether ``precision`` (auto | fp32 | bf16) means bf16 autocast on ``device``."""
    return precision == "bf16" or (precision == "auto" and native_bf16(device))


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The autocast context for ``precision`` on ``device`` (disabled for fp32)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=uses_bf16(precision, device))
