"""Spikformer over the utterances of each dialogue: the spiking temporal feature extractor of SpikEmo.

The utterances of a dialogue are the tokens. A modality's features ``[B, L, D]`` enter in one of two ways
(``model.spike_encoding``):
- ``direct``: the real-valued features are the input of the first block, so its LIF neurons receive the
  projected features as input current at every timestep (as Spikformer does after its patch embedding)
  and their firing rates encode magnitudes;
- ``heaviside``: the paper's encoding, a Heaviside step (ATan surrogate) that keeps only the signs.
Either way the input is the same at every one of the ``T`` timesteps. It passes through ``depth`` blocks of
spiking self-attention (SSA, Zhou et al. 2023) and a spiking MLP; the output is LayerNorm-ed and averaged
over the timesteps. Per head, with spike tensors q, k, v ``[T, B, heads, L, d]``:
``x = (q @ k^T * 0.125) @ v`` (no softmax), followed by a neuron at half threshold. Keys at padded or absent
utterances are zero, so they never reach a real utterance. Linear weights start as Spikformer's
(truncated normal, std 0.02; zero bias).

Neurons follow spikingjelly's split of neuron, surrogate and reset (``model.neuron``): ``spiking_neuron``
builds a fused ``MultiStepLIF`` for the default (LIF, ATan, hard reset to 0, detached reset) and wraps
spikingjelly's multi-step ``LIFNode`` / ``ParametricLIFNode`` / ``IFNode`` for anything else.

What keeps this cheap without changing the mathematics:
- Linears, LayerNorms and neurons act on each token alone, so they run on the packed present utterances
  ``[T, N, D]``; only the attention products see the padded ``[T, B, heads, L, d]`` layout.
- The encoded input is the same at every timestep, so the first block's q/k/v linears and LayerNorms run
  once on ``[N, D]`` and only the neurons see the ``T`` steps (``LinearNormLIF`` takes either ``[N, D]``
  (constant over time) or ``[T, N, D]``).
- ``MultiStepLIF`` runs the whole time loop in one autograd node instead of spikingjelly's per-step autograd
  graph; with ``compile_neurons`` the loop over all ``T`` steps is one compiled kernel per direction. It equals ``neuron.LIFNode(tau, v_threshold, v_reset=0, decay_input=True,
  surrogate_function=surrogate.ATan(), detach_reset=True, step_mode="m")`` started from rest.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from spikingjelly.activation_based import neuron, surrogate
from torch import nn

from spikemo.config import ModelConfig, NeuronConfig

ATTENTION_SCALE = 0.125  # Spikformer's fixed scale for spike-product attention
ATAN_ALPHA = 2.0  # spikingjelly's surrogate.ATan default


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
    z = (h - threshold) * (math.pi / 2 * ATAN_ALPHA)
    grad_h = grad_spike * ((ATAN_ALPHA / 2) / (1 + z * z)) + grad_v * (h < threshold).to(h.dtype)
    grad_current.copy_(grad_h / tau)
    return grad_h - grad_h / tau


@functools.lru_cache(maxsize=None)
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
            z = (charged[t] - threshold) * (math.pi / 2 * ATAN_ALPHA)
            grad_h = grad_spikes[t].float() * ((ATAN_ALPHA / 2) / (1 + z * z)) + grad_v * (charged[t] < threshold).float()
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


SURROGATES = {
    "atan": surrogate.ATan,
    "sigmoid": surrogate.Sigmoid,
    "piecewise_quadratic": surrogate.PiecewiseQuadratic,
}


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
    return (
        settings.kind == "lif" and settings.surrogate == "atan" and settings.v_reset == 0.0 and settings.detach_reset
    )


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


class LinearNormLIF(nn.Module):
    """Linear -> LayerNorm -> spiking neuron. Input ``[N, D]`` is taken as constant over the timesteps."""

    def __init__(self, in_features: int, out_features: int, config: ModelConfig):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.norm = nn.LayerNorm(out_features)
        self.lif = spiking_neuron(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        current = self.norm(self.linear(x))
        return self.lif(current.unsqueeze(0) if x.dim() == 2 else current)


class SpikingSelfAttention(nn.Module):
    """Spikformer SSA across the utterances of each dialogue: per head (q @ k^T * scale) @ v, no softmax."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        dim, heads = config.model_dim, config.spikformer_heads
        if dim % heads:
            raise ValueError(f"model_dim {dim} is not divisible by spikformer_heads {heads}")
        self.heads = heads
        self.query = LinearNormLIF(dim, dim, config)
        self.key = LinearNormLIF(dim, dim, config)
        self.value = LinearNormLIF(dim, dim, config)
        self.attention_lif = spiking_neuron(config, threshold_scale=0.5)
        self.output = LinearNormLIF(dim, dim, config)
        self.causal = config.causal

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: ``[N, D]`` or ``[T, N, D]`` for the N present utterances of ``mask`` [B, L] -> ``[T, N, D]``; with
        ``model.causal`` an utterance attends to itself and the earlier ones only."""
        q, k, v = (self._split_heads(projection(x), mask) for projection in (self.query, self.key, self.value))
        scores = q @ k.transpose(-2, -1)  # [T, B, heads, L, L]
        if self.causal:
            scores = scores * torch.ones(scores.shape[-2:], dtype=scores.dtype, device=scores.device).tril()
        attended = scores * ATTENTION_SCALE @ v  # [T, B, heads, L, d]
        attended = attended.transpose(2, 3).flatten(-2)[:, mask]
        return self.output(self.attention_lif(attended))

    def _split_heads(self, spikes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[T, N, D]`` packed -> ``[T, B, heads, L, d]`` with zeros at the utterances that ``mask`` leaves out."""
        padded = spikes.new_zeros(spikes.shape[0], *mask.shape, spikes.shape[-1])
        padded[:, mask] = spikes
        return padded.unflatten(-1, (self.heads, -1)).transpose(2, 3)


class SpikingMLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = config.model_dim * config.mlp_ratio
        self.expand = LinearNormLIF(config.model_dim, hidden, config)
        self.contract = LinearNormLIF(hidden, config.model_dim, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.contract(self.expand(x))


class SpikformerBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention = SpikingSelfAttention(config)
        self.mlp = SpikingMLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(x, mask)  # broadcasts a constant [N, D] input over T
        return x + self.mlp(x)


class Spikformer(nn.Module):
    """Dialogue features ``[B, L, D]`` and presence mask ``[B, L]`` -> spiking features ``[B, L, D]``.

    Positions that ``mask`` leaves out are neither attended to nor computed: their output is zero.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.timesteps = config.timesteps
        self.encode = surrogate.ATan() if config.spike_encoding == "heaviside" else nn.Identity()
        self.blocks = nn.ModuleList(SpikformerBlock(config) for _ in range(config.spikformer_depth))
        self.norm = nn.LayerNorm(config.model_dim)
        self.apply(_spikformer_init)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.encode(features[mask])  # [N, D], identical at every timestep
        for block in self.blocks:
            x = block(x, mask)
        output = features.new_zeros(features.shape)
        output[mask] = self.norm(x).mean(0)
        return output


def _spikformer_init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
