"""Spiking neurons, following spikingjelly's split of neuron, surrogate and reset (``model.neuron``).

``spiking_neuron`` builds a fused ``MultiStepLIF`` for the default (LIF, ATan surrogate, hard reset to 0,
detached reset) and wraps spikingjelly's multi-step ``LIFNode`` / ``ParametricLIFNode`` / ``IFNode`` for
anything else. ``MultiStepLIF`` runs the whole time loop in one autograd node instead of spikingjelly's
per-step autograd graph; with ``compile_neurons`` the loop over all ``T`` steps is one compiled kernel per
direction. It equals ``neuron.LIFNode(tau, v_threshold, v_reset=0, decay_input=True,
surrogate_function=surrogate.ATan(), detach_reset=True, step_mode="m")`` started from rest.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from spikingjelly.activation_based import neuron
from torch import nn

from spikemo.config import ModelConfig, NeuronConfig
from spikemo.model.surrogate import SURROGATES, atan_gradient


def lif_step(
    current: torch.Tensor, v: torch.Tensor, spike: torch.Tensor, h: torch.Tensor, tau: float, threshold: float
) -> torch.Tensor:
    """One step into ``spike`` and ``h``: h = v + (x - v) / tau; spike = h >= threshold -> v' = h * (1 - spike)."""
    charged = v + (current - v) / tau
    fired = (charged >= threshold).to(charged.dtype)
    h.copy_(charged)
    spike.copy_(fired)
    return charged * (1 - fired)


def lif_step_backward(
    grad_spike: torch.Tensor,
    h: torch.Tensor,
    grad_v: torch.Tensor,
    grad_current: torch.Tensor,
    tau: float,
    threshold: float,
) -> torch.Tensor:
    """One step back through the ATan surrogate with a detached reset: dL/dx into ``grad_current`` -> dL/dv before."""
    grad_h = grad_spike * atan_gradient(h, threshold) + grad_v * (h < threshold).to(h.dtype)
    grad_current.copy_(grad_h / tau)
    return grad_h - grad_h / tau


@functools.cache
def fused_lif(timesteps: int, tau: float, threshold: float) -> tuple[Callable, Callable]:
    """Compiled forward and backward of the whole time loop of ``lif_step``: the loop over the ``timesteps``
    (a constant here) unrolls into one kernel per direction, so the membrane stays in registers instead of
    making a round trip through memory at every step. Same arithmetic as the eager loop, step for step, in
    fp32 whatever the current's dtype; spikes and the current's gradient come out in that dtype."""

    def forward(current: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = torch.zeros_like(current[0], dtype=torch.float32)
        spikes, charged = [], []
        for t in range(timesteps):
            h = v + (current[t].float() - v) / tau
            fired = (h >= threshold).float()
            spikes.append(fired.to(current.dtype))
            charged.append(h)
            v = h * (1 - fired)
        return torch.stack(spikes), torch.stack(charged)

    def backward(grad_spikes: torch.Tensor, charged: torch.Tensor) -> torch.Tensor:
        grad_v = torch.zeros_like(charged[0])
        grad_current: list[torch.Tensor] = []
        for t in reversed(range(timesteps)):
            grad_h = (
                grad_spikes[t].float() * atan_gradient(charged[t], threshold)
                + grad_v * (charged[t] < threshold).float()
            )
            grad_current.append((grad_h / tau).to(grad_spikes.dtype))
            grad_v = grad_h - grad_h / tau
        return torch.stack(grad_current[::-1])

    return torch.compile(forward, dynamic=True), torch.compile(backward, dynamic=True)


class _MultiStepLIFFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, current, timesteps, tau, threshold, compiled):
        if compiled:
            spikes, charged = fused_lif(timesteps, tau, threshold)[0](current.expand(timesteps, *current.shape[1:]))
        else:
            spikes = current.new_empty(timesteps, *current.shape[1:])
            charged = torch.empty_like(spikes)  # membrane before reset, all the backward pass needs
            v = torch.zeros_like(current[0])
            for t in range(timesteps):
                v = lif_step(current[min(t, len(current) - 1)], v, spikes[t], charged[t], tau, threshold)
        ctx.save_for_backward(charged)
        ctx.settings = (tau, threshold, len(current) == 1, compiled)
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        (charged,) = ctx.saved_tensors
        tau, threshold, constant, compiled = ctx.settings
        if compiled:
            grad_current = fused_lif(len(charged), tau, threshold)[1](grad_spikes.contiguous(), charged)
        else:
            grad_current = torch.empty_like(charged)
            grad_v = torch.zeros_like(charged[0])
            for t in reversed(range(len(charged))):
                grad_v = lif_step_backward(grad_spikes[t], charged[t], grad_v, grad_current[t], tau, threshold)
        if constant:
            grad_current = grad_current.sum(0, keepdim=True)
        return grad_current, None, None, None, None


class SpikingNeuron(nn.Module):
    """Multi-step neurons at rest before each call: input current ``[T, ...]``, or ``[1, ...]`` for a current
    that is the same at every one of the ``timesteps`` steps -> spikes ``[T, ...]``."""

    timesteps: int


class MultiStepLIF(SpikingNeuron):
    """Multi-step LIF neurons (hard reset to 0, ATan surrogate, detached reset), at rest before each call.

    Input current ``[T, ...]``, or ``[1, ...]`` for a current that is the same at every one of the ``timesteps``
    steps; output spikes ``[T, ...]``. ``compiled`` fuses each step's arithmetic into one kernel.
    """

    def __init__(self, timesteps: int, tau: float, threshold: float, compiled: bool = False):
        super().__init__()
        self.timesteps = timesteps
        self.tau = tau
        self.threshold = threshold
        self.compiled = compiled

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        """Under bf16 autocast the membrane stays fp32 (cast inside the fused kernel when compiled); the spikes
        (0/1, exact) come out in the current's dtype."""
        if self.compiled:
            return _MultiStepLIFFunction.apply(current, self.timesteps, self.tau, self.threshold, True)
        spikes = _MultiStepLIFFunction.apply(current.float(), self.timesteps, self.tau, self.threshold, False)
        return spikes.to(current.dtype)

    def extra_repr(self) -> str:
        return f"timesteps={self.timesteps}, tau={self.tau}, threshold={self.threshold}, compiled={self.compiled}"


class SpikingJellyNeuron(SpikingNeuron):
    """A spikingjelly multi-step node, reset to rest before each call."""

    def __init__(self, timesteps: int, node: nn.Module):
        super().__init__()
        self.timesteps = timesteps
        self.node = node

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        self.node.reset()
        return self.node(current.float().expand(self.timesteps, *current.shape[1:])).to(current.dtype)


def is_fused_lif(settings: NeuronConfig) -> bool:
    """The settings that ``MultiStepLIF`` implements."""
    return settings.kind == "lif" and settings.surrogate == "atan" and settings.v_reset == 0.0 and settings.detach_reset


def spiking_neuron(config: ModelConfig, threshold_scale: float = 1.0) -> SpikingNeuron:
    settings = config.neuron
    threshold = settings.v_threshold * threshold_scale
    if is_fused_lif(settings):
        return MultiStepLIF(config.timesteps, settings.tau, threshold, compiled=config.compile_neurons)
    common = {
        "v_threshold": threshold,
        "v_reset": settings.v_reset,
        "surrogate_function": SURROGATES[settings.surrogate](),
        "detach_reset": settings.detach_reset,
        "step_mode": "m",
    }
    if settings.kind == "lif":
        node = neuron.LIFNode(tau=settings.tau, **common)
    elif settings.kind == "plif":
        node = neuron.ParametricLIFNode(init_tau=settings.tau, **common)
    else:
        node = neuron.IFNode(**common)
    return SpikingJellyNeuron(config.timesteps, node)
