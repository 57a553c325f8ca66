"""Speaker-chain evidence: each utterance's logits corrected by what its speaker's other turns suggest.

A speaker's emotion persists from one turn to their next, so the class probabilities of the same speaker's
neighbouring turns are evidence about this one (what an emotion chain's forward-backward smoothing uses).
For utterance t of speaker s in a dialogue:
    e_t = [log p_prev; 1_prev; log p_next; 1_next; mean of log p over s's other turns; 1_others]
    logits_t <- logits_t + W e_t + b                      W, b start at zero (the identity)
where p are the model's current probabilities (held fixed for the correction, as a stacked classifier treats
its first level), prev/next are the nearest earlier/later turns of s, and the indicators say whether they
exist. The correction is applied ``rounds`` times with the same W, b, each round reading the previous round's
probabilities, so evidence travels beyond the nearest turns (like loopy belief propagation, a round also
echoes t's own evidence back through its neighbours; the learned W absorbs that). Padding never contributes.
With ``model.causal`` only earlier turns are read: the next-turn part is always absent and the mean runs over
the speaker's earlier turns.
"""

from __future__ import annotations

import torch
from torch import nn

LOG_PROBABILITY_FLOOR = -20.0


def _same_speaker(party: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, t, j]: j is another real utterance of t's speaker (party [B, L], mask [B, L] real utterances)."""
    same = (party.unsqueeze(2) == party.unsqueeze(1)) & mask.unsqueeze(2) & mask.unsqueeze(1)
    return same & ~torch.eye(party.shape[1], dtype=torch.bool, device=party.device)


def _nearest(same_speaker: torch.Tensor, earlier: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Index [B, L] of each utterance's nearest earlier (or later) same-speaker turn, and whether it exists."""
    length = same_speaker.shape[-1]
    positions = torch.arange(length, device=same_speaker.device)
    before = positions.unsqueeze(0) < positions.unsqueeze(1)  # [t, j]: j earlier than t
    candidates = same_speaker & (before if earlier else before.transpose(0, 1))
    score = torch.where(candidates, positions if earlier else length - positions, -1)  # nearest has the top score
    best, index = score.max(dim=-1)
    return index, best >= 0


class SpeakerEvidence(nn.Module):
    def __init__(self, num_classes: int, rounds: int, causal: bool = False):
        super().__init__()
        self.rounds = rounds
        self.causal = causal  # read earlier turns only: no next turn, the mean over the speaker's earlier turns
        self.mix = nn.Linear(3 * (num_classes + 1), num_classes)
        nn.init.zeros_(self.mix.weight)
        nn.init.zeros_(self.mix.bias)

    def forward(self, logits: torch.Tensor, party: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """logits [B, L, C] (any values at padding), party [B, L], mask [B, L] real utterances -> [B, L, C]."""
        same_speaker = _same_speaker(party, mask)
        if self.causal:
            length = party.shape[1]
            same_speaker = same_speaker & torch.ones(length, length, dtype=torch.bool, device=party.device).tril()
        neighbours = [_nearest(same_speaker, earlier) for earlier in (True, False)]  # causal: no later turn is found
        others = same_speaker.to(logits.dtype)
        count = others.sum(-1, keepdim=True)
        others_mean = others / count.clamp(min=1)  # [B, t, j]: averages over t's speaker's other turns
        present = [exists.unsqueeze(-1).to(logits.dtype) for _, exists in neighbours] + [(count > 0).to(logits.dtype)]
        corrected = logits
        for _ in range(self.rounds):
            log_probs = torch.log_softmax(corrected.detach(), -1).clamp(min=LOG_PROBABILITY_FLOOR) * mask.unsqueeze(-1)
            read = [torch.gather(log_probs, 1, index.unsqueeze(-1).expand_as(log_probs)) for index, _ in neighbours]
            read.append(others_mean @ log_probs)
            parts = [part for value, indicator in zip(read, present) for part in (value * indicator, indicator)]
            corrected = logits + (self.mix(torch.cat(parts, -1)) * mask.unsqueeze(-1)).to(logits.dtype)
        return corrected
