"""Cross-modal fusion (MultiAttn, Shi & Huang 2023): each modality attends in turn to every other one.

A layer for query modality m: for each other modality o (in a fixed order), post-norm residual
multi-head cross-attention from m to o; then a post-norm residual feed-forward block. Keys are the
utterances of the same dialogue where modality o is present (with ``model.causal``, the query's own and earlier
ones only); a query with no such key gets a zero update.
The per-head Q/K/V linears of the released code are one linear each here (same function, one matmul).
Everything but the attention products acts on each utterance alone, so it runs on the packed real utterances
``[N, D]`` of the batch; only the products see the padded ``[B, heads, L, d]`` layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spikemo.config import ModelConfig
from spikemo.model.batch import scatter_to_padded


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int, causal: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"model_dim {dim} is not divisible by fusion_heads {heads}")
        self.heads = heads
        self.causal = causal  # a query sees keys at its own and earlier utterances only
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.output = nn.Linear(dim, dim)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, utterance_mask: torch.Tensor, key_mask: torch.Tensor
    ) -> torch.Tensor:
        """queries, keys [N, D] at the N real utterances of utterance_mask [B, L]; key_mask [B, L] bool -> [N, D]."""

        def split(x: torch.Tensor) -> torch.Tensor:
            return scatter_to_padded(x, utterance_mask).unflatten(-1, (self.heads, -1)).transpose(1, 2)

        length = utterance_mask.shape[1]
        visible = key_mask.unsqueeze(1).expand(-1, length, -1)  # [B, query, key]
        if self.causal:
            visible = visible & torch.ones(length, length, dtype=torch.bool, device=key_mask.device).tril()
        has_key = visible.any(-1)  # [B, L]
        allowed = (visible | ~has_key.unsqueeze(-1)).unsqueeze(1)  # avoid all-masked rows (NaN)
        attended = F.scaled_dot_product_attention(
            split(self.query(queries)), split(self.key(keys)), split(self.value(keys)), attn_mask=allowed
        )
        attended = attended.transpose(1, 2).flatten(-2)[utterance_mask]
        return self.output(attended) * has_key[utterance_mask].unsqueeze(-1)


class FusionLayer(nn.Module):
    def __init__(self, num_sources: int, config: ModelConfig):
        super().__init__()
        dim = config.model_dim
        self.attentions = nn.ModuleList(
            CrossAttention(dim, config.fusion_heads, config.causal) for _ in range(num_sources)
        )
        self.attention_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_sources))
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, config.fusion_hidden),
            nn.ReLU(),
            nn.Linear(config.fusion_hidden, dim),
            nn.Dropout(config.dropout),
        )
        self.feed_forward_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        sources: list[torch.Tensor],
        utterance_mask: torch.Tensor,
        source_masks: list[torch.Tensor],
    ) -> torch.Tensor:
        for attention, norm, source, mask in zip(self.attentions, self.attention_norms, sources, source_masks):
            x = norm(x + self.dropout(attention(x, source, utterance_mask, mask)))
        return self.feed_forward_norm(x + self.dropout(self.feed_forward(x)))


class MultiAttnFusion(nn.Module):
    """Per-modality stacks of ``fusion_layers`` cross-attention layers; identity for one modality."""

    def __init__(self, modalities: list[str], config: ModelConfig):
        super().__init__()
        self.modalities = list(modalities)
        num_sources = len(self.modalities) - 1
        self.stacks = nn.ModuleDict()
        if num_sources:
            for modality in self.modalities:
                layers = (FusionLayer(num_sources, config) for _ in range(config.fusion_layers))
                self.stacks[modality] = nn.ModuleList(layers)

    def forward(
        self, features: dict[str, torch.Tensor], utterance_mask: torch.Tensor, present: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """features: modality -> [N, D] at the real utterances of utterance_mask [B, L];
        present: modality -> [B, L] bool (real and available) -> modality -> fused [N, D]."""
        if not self.stacks:
            return dict(features)
        fused = {}
        for modality in self.modalities:
            others = [other for other in self.modalities if other != modality]
            x = features[modality]
            for layer in self.stacks[modality]:
                x = layer(x, [features[o] for o in others], utterance_mask, [present[o] for o in others])
            fused[modality] = x
        return fused
