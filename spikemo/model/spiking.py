"""Spikformer over utterance features: the spiking temporal feature extractor of SpikEmo.

Every utterance is one token. Its projected feature is repeated over ``T`` timesteps, binarised by the
ATan surrogate Heaviside and passed through ``depth`` blocks of spiking self-attention and a spiking MLP
built from multi-step LIF neurons; the output is LayerNorm-ed and averaged over the timesteps.

Two facts keep this cheap without changing the mathematics:
- The encoded input is the same at every timestep, so the first block's q/k/v linears and LayerNorms run
  once on ``[N, D]`` and only the LIF neurons see the ``T`` copies (``LinearNormLIF`` takes either
  ``[N, D]`` (constant over time) or ``[T, N, D]``).
- Tokens never interact, so callers pack the real utterances of all modalities into one ``[N, D]`` batch.
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based import functional, neuron, surrogate
from torch import nn

from spikemo.config import ModelConfig

ATTENTION_SCALE = 0.125  # Spikformer's fixed scale for spike-product attention


def lif_neuron(config: ModelConfig, threshold_scale: float = 1.0) -> neuron.LIFNode:
    lif = neuron.LIFNode(
        tau=config.tau,
        v_threshold=config.v_threshold * threshold_scale,
        surrogate_function=surrogate.ATan(),
        detach_reset=True,
        step_mode="m",
    )
    if config.compile_neurons:
        lif.compile(dynamic=True)
    return lif


class LinearNormLIF(nn.Module):
    """Linear -> LayerNorm -> LIF. Input ``[N, D]`` is taken as constant over ``timesteps``."""

    def __init__(self, in_features: int, out_features: int, config: ModelConfig):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.norm = nn.LayerNorm(out_features)
        self.lif = lif_neuron(config)
        self.timesteps = config.timesteps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        current = self.norm(self.linear(x))
        if current.dim() == 2:
            current = current.expand(self.timesteps, *current.shape)
        return self.lif(current)


class SpikingSelfAttention(nn.Module):
    """Spikformer SSA on single-token sequences: per head, (q . k) * scale * v, no softmax."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        dim, heads = config.model_dim, config.spikformer_heads
        if dim % heads:
            raise ValueError(f"model_dim {dim} is not divisible by spikformer_heads {heads}")
        self.heads = heads
        self.query = LinearNormLIF(dim, dim, config)
        self.key = LinearNormLIF(dim, dim, config)
        self.value = LinearNormLIF(dim, dim, config)
        self.attention_lif = lif_neuron(config, threshold_scale=0.5)
        self.output = LinearNormLIF(dim, dim, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.query(x), self.key(x), self.value(x)  # [T, N, D] spikes
        split = (*q.shape[:-1], self.heads, -1)
        q, k, v = q.view(split), k.view(split), v.view(split)
        weights = (q * k).sum(-1, keepdim=True) * ATTENTION_SCALE
        attended = self.attention_lif((weights * v).flatten(-2))
        return self.output(attended)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(x)  # broadcasts a constant [N, D] input over T
        return x + self.mlp(x)


class Spikformer(nn.Module):
    """``[N, D]`` utterance features -> ``[N, D]`` spiking temporal features; resets its neurons each call."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.timesteps = config.timesteps
        self.encode = surrogate.ATan()
        self.blocks = nn.ModuleList(SpikformerBlock(config) for _ in range(config.spikformer_depth))
        self.norm = nn.LayerNorm(config.model_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        functional.reset_net(self)
        x = self.encode(features)  # [N, D] binary, identical at every timestep
        for block in self.blocks:
            x = block(x)
        if x.dim() == 2:
            x = x.expand(self.timesteps, *x.shape)
        return self.norm(x).mean(0)
