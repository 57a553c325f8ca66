"""The precision policy of both training recipes' steps (SpikEmo's and the text fine-tune's).

``precision``: ``fp32``; ``bf16`` (autocast: linears and attention products in bfloat16, the rest in fp32);
``auto``: bf16 on a CUDA device that supports it, fp32 elsewhere. On CPUs bf16 pays only for large matrix
products: on a Xeon with AMX it runs an MPNet fine-tune step 1.9× faster but trains configs/meld.yaml's SpikEmo 1.8×
slower (docs/benchmarks.md), so a config names ``bf16`` where it was measured to pay. SpikEmo is evaluated in fp32
whatever trained it (training/evaluation.py), as ``spikemo predict`` and the served model score it.
"""

from __future__ import annotations

import torch


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether ``precision`` (auto | fp32 | bf16) means bf16 autocast on ``device``."""
    auto_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return precision == "bf16" or (precision == "auto" and auto_bf16)


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The autocast context for ``precision`` on ``device`` (disabled for fp32)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=uses_bf16(precision, device))
