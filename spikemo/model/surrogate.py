"""Surrogate gradients of the spike (Heaviside) function: the hand-written ATan of the fused LIF neuron, and
the spikingjelly surrogates the other neurons take by name (``model.neuron.surrogate``)."""

from __future__ import annotations

import math

import torch
from spikingjelly.activation_based import surrogate

ATAN_ALPHA = 2.0  # spikingjelly's surrogate.ATan default

SURROGATES = {
    "atan": surrogate.ATan,
    "sigmoid": surrogate.Sigmoid,
    "piecewise_quadratic": surrogate.PiecewiseQuadratic,
}


def atan_gradient(membrane: torch.Tensor, threshold: float) -> torch.Tensor:
    """d spike / d membrane under spikingjelly's ATan surrogate:
    (alpha / 2) / (1 + (pi / 2 alpha (h - threshold))^2)."""
    z = (membrane - threshold) * (math.pi / 2 * ATAN_ALPHA)
    return (ATAN_ALPHA / 2) / (1 + z * z)
