"""The padded batch of dialogues that the model and the losses consume."""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass
class DialogueBatch:
    """``B`` dialogues padded to ``L`` utterances.

    features: modality ("text"/"audio"/"visual") -> [B, L, D_m] float32, zeros where absent.
    modality_mask: modality -> [B, L] bool, True where that modality's features exist.
    utterance_mask: [B, L] bool, True for real utterances, False for padding.
    party: [B, L] long, speaker index within the dialogue (0..).
    labels: [B, L] long, ``IGNORE_INDEX`` (-100) on padding and unlabelled utterances.
    """

    features: dict[str, torch.Tensor]
    modality_mask: dict[str, torch.Tensor]
    utterance_mask: torch.Tensor
    party: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> DialogueBatch:
        def move(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to(device, non_blocking=non_blocking)

        return DialogueBatch(
            features={name: move(value) for name, value in self.features.items()},
            modality_mask={name: move(value) for name, value in self.modality_mask.items()},
            utterance_mask=move(self.utterance_mask),
            party=move(self.party),
            labels=move(self.labels),
        )

    @property
    def modalities(self) -> list[str]:
        return list(self.features)

    @property
    def batch_size(self) -> int:
        return self.utterance_mask.shape[0]

    @property
    def max_length(self) -> int:
        return self.utterance_mask.shape[1]


def scatter_to_padded(packed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[..., N, D]`` rows for the N True positions of ``mask`` [B, L] -> ``[..., B, L, D]``, zeros elsewhere:
    the way back from the packed real (or present) utterances to the padded dialogue layout."""
    padded = packed.new_zeros(*packed.shape[:-2], *mask.shape, packed.shape[-1])
    padded[(slice(None),) * (packed.dim() - 2) + (mask,)] = packed
    return padded
