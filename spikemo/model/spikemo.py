"""SpikEmo (Yu, Wang, Qiao 2024): projection -> dialogue context -> spiking gate -> MultiAttn fusion -> classifier.

Per modality m with features u_m [B, L, D_m]:
    h_m = Linear(u_m)                                      (zeroed where m is absent)
    h_m = DialogueRNN(h_m)                                 if m in config.dialogue_context
    s_m = Spikformer(h_m)                                  shared across modalities, real utterances only
    h_m = h_m + h_m * softmax_over_utterances(s_m)         padding and absent positions excluded
    f_m = MultiAttn_m(h_m; other modalities)
logits = MLP(Linear(concat_m f_m)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from spikemo.config import MODALITIES, ModelConfig
from spikemo.model.batch import DialogueBatch
from spikemo.model.context import DialogueRNN
from spikemo.model.fusion import MultiAttnFusion
from spikemo.model.spiking import Spikformer


@dataclass
class SpikEmoOutput:
    logits: torch.Tensor  # [B, L, num_classes]
    modality_features: dict[str, torch.Tensor]  # modality -> fused features [B, L, H] fed to the classifier


class SpikEmo(nn.Module):
    def __init__(self, config: ModelConfig, input_dims: dict[str, int], num_classes: int):
        super().__init__()
        unknown = set(input_dims) - set(MODALITIES)
        if not input_dims or unknown:
            raise ValueError(f"input_dims must name a non-empty subset of {MODALITIES}; got {sorted(input_dims)}")
        self.config = config
        self.modalities = [m for m in MODALITIES if m in input_dims]
        dim = config.model_dim
        self.projections = nn.ModuleDict({m: nn.Linear(input_dims[m], dim) for m in self.modalities})
        self.contexts = nn.ModuleDict(
            {m: DialogueRNN(dim, config.dropout) for m in self.modalities if m in config.dialogue_context}
        )
        self.spikformer = Spikformer(config) if config.use_spiking else None
        self.fusion = MultiAttnFusion(self.modalities, config)
        self.merge = nn.Linear(dim * len(self.modalities), dim)
        self.classifier = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(2 * dim, num_classes)
        )

    def forward(self, batch: DialogueBatch) -> SpikEmoOutput:
        missing = [m for m in self.modalities if m not in batch.features]
        if missing:
            raise ValueError(f"batch lacks modalities {missing} that the model was built with")
        present = {m: batch.modality_mask[m] & batch.utterance_mask for m in self.modalities}
        hidden = {}
        for m in self.modalities:
            h = self.projections[m](batch.features[m]) * present[m].unsqueeze(-1).to(batch.features[m].dtype)
            if m in self.contexts:
                h = self.contexts[m](h, batch.party)
            hidden[m] = h
        if self.spikformer is not None:
            hidden = self._spike_gate(hidden, present)
        fused = self.fusion(hidden, present)
        merged = self.merge(torch.cat([fused[m] for m in self.modalities], dim=-1))
        return SpikEmoOutput(logits=self.classifier(merged), modality_features=fused)

    def _spike_gate(self, hidden: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """h + h * softmax(s) over each dialogue's present utterances; one Spikformer pass for all modalities.

        Absent positions get the lowest score, so they take no weight (and h is zero there anyway).
        """
        packed = torch.cat([hidden[m][present[m]] for m in self.modalities])
        spikes = self.spikformer(packed)
        gated = {}
        offset = 0
        for m in self.modalities:
            count = int(present[m].sum())
            scores = hidden[m].new_full(hidden[m].shape, torch.finfo(hidden[m].dtype).min)
            scores = scores.masked_scatter(present[m].unsqueeze(-1), spikes[offset : offset + count])
            offset += count
            weights = torch.softmax(scores, dim=1)
            gated[m] = hidden[m] + hidden[m] * weights
        return gated
