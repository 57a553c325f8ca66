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

The neurons are ``spikemo/model/neuron.py``'s (``model.neuron``), their surrogate gradients
``spikemo/model/surrogate.py``'s.

What keeps this cheap without changing the mathematics:
- Linears, LayerNorms and neurons act on each token alone, so they run on the packed present utterances
  ``[T, N, D]``; only the attention products see the padded ``[T, B, heads, L, d]`` layout.
- The encoded input is the same at every timestep, so the first block's q/k/v linears and LayerNorms run
  once on ``[N, D]`` and only the neurons see the ``T`` steps (``LinearNormLIF`` takes either ``[N, D]``
  (constant over time) or ``[T, N, D]``).
- The default neuron runs its whole time loop in one autograd node (``MultiStepLIF``).
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based import surrogate
from torch import nn

from spikemo.config import ModelConfig
from spikemo.model.batch import scatter_to_padded
from spikemo.model.neuron import spiking_neuron

ATTENTION_SCALE = 0.125  # Spikformer's fixed scale for spike-product attention


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
        return scatter_to_padded(spikes, mask).unflatten(-1, (self.heads, -1)).transpose(2, 3)


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
        return scatter_to_padded(self.norm(x).mean(0).to(features.dtype), mask)


def _spikformer_init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
