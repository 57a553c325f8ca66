"""Speaker-aware dialogue context: a unidirectional DialogueRNN (Majumder et al. 2019) as used by
MultiEMO/SpikEmo on MELD (no listener state, simple attention over the global history).

For each utterance t with speaker s:
    g_t = GRU_g([u_t; q_{s,t-1}], g_{t-1})             global state
    c_t = attention pool of g_1..g_{t-1}                 (zeros at t = 0)
    q_{s,t} = GRU_p([u_t; c_t], q_{s,t-1})              speaker's party state (others unchanged)
    e_t = GRU_e(q_{s,t}, e_{t-1})                       emotion state -> ReLU(dropout(e_t))
The recurrence is causal and padding sits after the real utterances, so padding never reaches them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DialogueRNN(nn.Module):
    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.global_cell = nn.GRUCell(2 * dim, dim)
        self.party_cell = nn.GRUCell(2 * dim, dim)
        self.emotion_cell = nn.GRUCell(dim, dim)
        self.history_score = nn.Linear(dim, 1, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, utterances: torch.Tensor, party: torch.Tensor) -> torch.Tensor:
        """utterances [B, L, D], party [B, L] (speaker index) -> emotion features [B, L, D]."""
        batch, length, dim = utterances.shape
        party = party.clamp(min=0)
        num_parties = int(party.max().item()) + 1 if party.numel() else 1
        speaker = F.one_hot(party, num_parties).bool()  # [B, L, P]
        rows = torch.arange(batch, device=utterances.device)

        zeros = utterances.new_zeros(batch, dim)
        party_states = utterances.new_zeros(batch, num_parties, dim)
        global_state, emotion_state = zeros, zeros
        history: list[torch.Tensor] = []
        emotions = []
        for t in range(length):
            u = utterances[:, t]
            speaker_state = party_states[rows, party[:, t]]
            global_state = self.dropout(self.global_cell(torch.cat([u, speaker_state], -1), global_state))
            context = self._attend(torch.stack(history, 1)) if history else zeros
            new_speaker_state = self.dropout(self.party_cell(torch.cat([u, context], -1), speaker_state))
            party_states = torch.where(speaker[:, t, :, None], new_speaker_state[:, None], party_states)
            emotion_state = self.dropout(self.emotion_cell(new_speaker_state, emotion_state))
            history.append(global_state)
            emotions.append(emotion_state)
        return F.relu(self.dropout(torch.stack(emotions, 1)))

    def _attend(self, history: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.history_score(history), dim=1)  # [B, t, 1]
        return (weights * history).sum(1)
