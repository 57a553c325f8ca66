"""A seed ensemble: ``model.members`` SpikEmo networks trained apart, their class probabilities averaged.

On a few hundred training utterances (EmoDB) one network's score moves by points from seed to seed; the average
of networks trained independently (a deep ensemble, Lakshminarayanan et al. 2017) keeps what they agree on.
Member i is the SpikEmo that ``members: 1`` trains with seed ``train.seed * members + i`` (training/recipe.py;
ensembles of different seeds share no member), so the ensemble is exactly the average of those networks:
    logits = log(mean_i softmax(logits_i))                 zero at padding, as a single network's
Each modality's fused features are the members' side by side (``[B, L, members * model_dim]``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from spikemo.config import ModelConfig
from spikemo.model.batch import DialogueBatch
from spikemo.model.spikemo import SpikEmo, SpikEmoOutput


class SpikEmoEnsemble(nn.Module):
    def __init__(self, config: ModelConfig, input_dims: dict[str, int], num_classes: int):
        super().__init__()
        self.config = config
        member = config.model_copy(update={"members": 1})
        self.members = nn.ModuleList(SpikEmo(member, input_dims, num_classes) for _ in range(config.members))

    def set_input_statistics(self, statistics: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        for member in self.members:
            member.set_input_statistics(statistics)

    def forward(self, batch: DialogueBatch) -> SpikEmoOutput:
        outputs = [member(batch) for member in self.members]
        log_probabilities = torch.stack([output.logits.float().log_softmax(-1) for output in outputs])
        averaged = log_probabilities.logsumexp(0) - math.log(len(outputs))
        logits = (averaged * batch.utterance_mask.unsqueeze(-1)).to(outputs[0].logits.dtype)
        features = {
            modality: torch.cat([output.modality_features[modality] for output in outputs], -1)
            for modality in outputs[0].modality_features
        }
        return SpikEmoOutput(logits=logits, modality_features=features)


EmotionModel = SpikEmo | SpikEmoEnsemble


def build_model(config: ModelConfig, input_dims: dict[str, int], num_classes: int) -> EmotionModel:
    """The network ``config`` describes: one SpikEmo, or a seed ensemble of ``config.members`` of them."""
    if config.members == 1:
        return SpikEmo(config, input_dims, num_classes)
    return SpikEmoEnsemble(config, input_dims, num_classes)
