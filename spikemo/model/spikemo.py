"""SpikEmo (Yu, Wang, Qiao 2024): projection -> dialogue context -> spiking gate -> MultiAttn fusion -> classifier.

Per modality m with features u_m [B, L, D_m]:
    h_m = Linear(u_m)                                      (zeroed where m is absent; u_m standardised, plus
                                                           model.input_noise Gaussian noise in training); with
                                                           model.speaker_relative_inputs, u_m relative to the
                                                           speaker's u_m in the dialogue: centred
                                                           Linear([u_m; u_m - mean]), zscore
                                                           Linear((u_m - mean) / std)
    h_m = DialogueRNN(h_m)                                 if m in config.dialogue_context (h_m + DialogueRNN(h_m)
                                                           with model.dialogue_context_residual)
    s_m = Spikformer(h_m [+ E_party + E_turn])             SSA across the dialogue's present utterances;
                                                           shared across modalities; speaker and position
                                                           embeddings with model.spike_speaker_context
    h_m = h_m * 2 sigmoid(W_m s_m + b_m) + U_m s_m + c_m   model.spike_gate "feature": per utterance and
                                                           feature; W, U, b, c start at 0 (the identity)
    h_m = h_m + h_m * softmax_over_utterances(s_m)         "utterance_softmax" (the paper's), padding and
                                                           absent positions excluded
    f_m = MultiAttn_m(h_m; other modalities)
logits = MLP(Linear(concat_m f_m))
logits = SpeakerEvidence(logits)                           model.speaker_evidence_rounds > 0: each utterance's
                                                           logits corrected by its speaker's other turns' class
                                                           probabilities (model/evidence.py)
From the fusion to the classifier, every step but the attention products acts on each utterance alone, so it runs
on the packed real utterances; logits and fused features are zero at padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from spikemo.config import MODALITIES, ModelConfig
from spikemo.model.batch import DialogueBatch, scatter_to_padded
from spikemo.model.context import DialogueRNN
from spikemo.model.evidence import SpeakerEvidence
from spikemo.model.fusion import MultiAttnFusion
from spikemo.model.spikformer import Spikformer

MAX_PARTIES = 16  # speakers per dialogue with their own embedding; later ones share the last
MAX_TURNS = 64  # turn positions with their own embedding; later ones share the last
SPEAKER_VARIANCE_FLOOR = 1e-2  # added to a speaker's variance (features are standardised: 1 is the corpus's)


@dataclass
class SpikEmoOutput:
    logits: torch.Tensor  # [B, L, num_classes], zero at padding
    modality_features: dict[str, torch.Tensor]  # modality -> fused features [B, L, H] fed to the classifier


def _speaker_peers(party: torch.Tensor, present: torch.Tensor, causal: bool) -> torch.Tensor:
    """``[B, t, j]`` bool: j is a present utterance of present utterance t's speaker in the dialogue (and not
    later than t when ``causal``); t itself included. Padding (``present`` False) never contributes."""
    same = (party.unsqueeze(2) == party.unsqueeze(1)) & present.unsqueeze(1) & present.unsqueeze(2)
    if causal:
        same = same & torch.ones(party.shape[1], party.shape[1], dtype=torch.bool, device=party.device).tril()
    return same


def _speaker_means(features: torch.Tensor, peers: torch.Tensor) -> torch.Tensor:
    """For each utterance, the mean of ``features`` [B, L, D] over its ``peers`` [B, L, L]; zeros where it has none."""
    weights = peers.to(features.dtype)
    return weights @ features / weights.sum(-1, keepdim=True).clamp(min=1)


def speaker_relative(
    features: torch.Tensor,
    party: torch.Tensor,
    present: torch.Tensor,
    mode: str,
    causal: bool = False,
    min_utterances: int = 1,
) -> torch.Tensor:
    """Standardised ``features`` [B, L, D] relative to their speaker's present utterances in the dialogue (the
    earlier and current ones when ``causal``): ``centred`` appends the features minus the speaker's mean;
    ``zscore`` gives them minus that mean over that speaker's standard deviation there (its variance plus
    ``SPEAKER_VARIANCE_FLOOR``). A speaker with fewer than ``min_utterances`` such utterances is taken as the
    training population (mean 0, standard deviation 1: the features are standardised with its statistics);
    with ``min_utterances`` 1 a lone utterance is its own speaker's mean (zero after centring)."""
    peers = _speaker_peers(party, present, causal)
    enough = peers.sum(-1, keepdim=True) >= min_utterances  # [B, L, 1]
    means = _speaker_means(features, peers)
    centred = features - means * enough
    if mode == "centred":
        return torch.cat([features, centred], -1)
    # each utterance's own peers about its own mean: E[x^2] - E[x]^2 over the same peers
    variance = (_speaker_means(features.square(), peers) - means.square()).clamp(min=0) + SPEAKER_VARIANCE_FLOOR
    return centred / torch.where(enough, variance.sqrt(), torch.ones_like(variance))


class SpikEmo(nn.Module):
    def __init__(self, config: ModelConfig, input_dims: dict[str, int], num_classes: int):
        super().__init__()
        unknown = set(input_dims) - set(MODALITIES)
        if not input_dims or unknown:
            raise ValueError(f"input_dims must name a non-empty subset of {MODALITIES}; got {sorted(input_dims)}")
        self.config = config
        self.modalities = [m for m in MODALITIES if m in input_dims]
        dim = config.model_dim
        for m in self.modalities:  # input standardisation, set from the training split (part of the weights)
            self.register_buffer(f"input_mean_{m}", torch.zeros(input_dims[m]))
            self.register_buffer(f"input_std_{m}", torch.ones(input_dims[m]))
        widening = 2 if config.speaker_relative_inputs == "centred" else 1
        self.projections = nn.ModuleDict({m: nn.Linear(widening * input_dims[m], dim) for m in self.modalities})
        self.input_dropout = nn.Dropout(config.dropout)
        self.contexts = nn.ModuleDict(
            {m: DialogueRNN(dim, config.dropout) for m in self.modalities if m in config.dialogue_context}
        )
        self.spikformer = Spikformer(config) if config.use_spiking else None
        self.party_embedding = self.turn_embedding = None
        if config.use_spiking and config.spike_speaker_context:
            self.party_embedding = nn.Embedding(MAX_PARTIES, dim)
            self.turn_embedding = nn.Embedding(MAX_TURNS, dim)
            for embedding in (self.party_embedding, self.turn_embedding):
                nn.init.normal_(embedding.weight, std=0.02)
        self.spike_gates = nn.ModuleDict()
        if config.use_spiking and config.spike_gate == "feature":
            self.spike_gates.update({m: nn.Linear(dim, 2 * dim) for m in self.modalities})
            for gate in self.spike_gates.values():
                nn.init.zeros_(gate.weight)
                nn.init.zeros_(gate.bias)
        self.fusion = MultiAttnFusion(self.modalities, config)
        self.merge = nn.Linear(dim * len(self.modalities), dim)
        self.classifier = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(2 * dim, num_classes)
        )
        self.speaker_evidence = (
            SpeakerEvidence(num_classes, config.speaker_evidence_rounds, config.causal)
            if config.speaker_evidence_rounds
            else None
        )

    def set_input_statistics(self, statistics: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Per modality, the mean and standard deviation of its features on the training split.

        Encoders differ wildly in scale (eGeMAPS values reach thousands, MiniLM's stay below 1), so each
        feature is standardised before its projection; constant features keep a unit scale.
        """
        for m, (mean, std) in statistics.items():
            getattr(self, f"input_mean_{m}").copy_(mean)
            getattr(self, f"input_std_{m}").copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, batch: DialogueBatch) -> SpikEmoOutput:
        missing = [m for m in self.modalities if m not in batch.features]
        if missing:
            raise ValueError(f"batch lacks modalities {missing} that the model was built with")
        present = {m: batch.modality_mask[m] & batch.utterance_mask for m in self.modalities}
        hidden = {}
        for m in self.modalities:
            standardised = (batch.features[m] - getattr(self, f"input_mean_{m}")) / getattr(self, f"input_std_{m}")
            if self.training and self.config.input_noise:
                standardised = standardised + self.config.input_noise * torch.randn_like(standardised)
            standardised = self._speaker_relative(standardised, batch.party, present[m])
            h = self.input_dropout(self.projections[m](standardised)) * present[m].unsqueeze(-1).to(
                batch.features[m].dtype
            )
            if m in self.contexts:
                context = self.contexts[m](h, batch.party)
                h = h + context if self.config.dialogue_context_residual else context
            hidden[m] = h
        if self.spikformer is not None:
            hidden = self._spike_gate(hidden, present, batch.party)
        real = batch.utterance_mask
        fused = self.fusion({m: hidden[m][real] for m in self.modalities}, real, present)  # [N, D] per modality
        logits = scatter_to_padded(
            self.classifier(self.merge(torch.cat([fused[m] for m in self.modalities], dim=-1))), real
        )
        if self.speaker_evidence is not None:
            logits = self.speaker_evidence(logits, batch.party, real)
        return SpikEmoOutput(logits=logits, modality_features={m: scatter_to_padded(f, real) for m, f in fused.items()})

    def _speaker_relative(self, features: torch.Tensor, party: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        config = self.config
        if config.speaker_relative_inputs == "off":
            return features
        return speaker_relative(
            features, party, present, config.speaker_relative_inputs, config.causal, config.speaker_min_utterances
        )

    def _spike_gate(
        self, hidden: dict[str, torch.Tensor], present: dict[str, torch.Tensor], party: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Gate each modality's features with the Spikformer's; one Spikformer pass for all modalities.

        The modalities go through the shared Spikformer as one batch of ``modalities * B`` dialogues. For the
        paper's softmax over utterances, absent positions get the lowest score, so they take no weight (and h
        is zero there anyway).
        """
        features = torch.cat([hidden[m] for m in self.modalities])
        if self.party_embedding is not None:
            turns = torch.arange(party.shape[1], device=party.device).clamp(max=MAX_TURNS - 1)
            context = self.party_embedding(party.clamp(0, MAX_PARTIES - 1)) + self.turn_embedding(turns)
            features = features + context.repeat(len(self.modalities), 1, 1)
        mask = torch.cat([present[m] for m in self.modalities])
        spikes = self.spikformer(features, mask).chunk(len(self.modalities))
        gated = {}
        for m, s in zip(self.modalities, spikes):
            if self.spike_gates:
                scale, shift = self.spike_gates[m](s).chunk(2, dim=-1)
                gated[m] = hidden[m] * 2 * torch.sigmoid(scale) + shift * present[m].unsqueeze(-1)
            else:
                scores = s.masked_fill(~present[m].unsqueeze(-1), torch.finfo(s.dtype).min)
                if self.config.causal:  # normalised over the utterances so far
                    weights = torch.exp(scores - torch.logcumsumexp(scores, dim=1))
                else:
                    weights = torch.softmax(scores, dim=1)
                gated[m] = hidden[m] + hidden[m] * weights
        return gated
