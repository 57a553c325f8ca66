"""SpikEmo's training objective: weighted cross-entropy, self-adjusting Dice and Soft-HGR.

- ce: mean cross-entropy over labelled utterances, optionally class-weighted (``class_weights``) and with
  label smoothing.
- dice: self-adjusting Dice loss (Li et al. 2020, "Dice Loss for Data-imbalanced NLP Tasks") on the gold
  class probability p: with p~ = (1 - p)^alpha * p, loss = 1 - (2 p~ + gamma) / (p~ + 1 + gamma), averaged.
- soft_hgr: negative Soft-HGR maximal correlation (Wang et al. 2019) between every pair of the modalities'
  fused features f, g, on the real utterances where all modalities are present, averaged over pairs:
  -(E[f . g] - tr(cov(f) cov(g)) / 2). Needs two modalities and two such utterances.

  Normalisation. The textbook form grows with the feature width H and the features' scale (the fusion's
  LayerNorm makes |f|^2 ~ H, so the trace term reaches H^2), and the released code's form, which takes
  ``torch.cov`` over samples and divides by N twice, shrinks with the batch: neither is comparable to
  cross-entropy. Here each utterance's features are scaled to unit L2 norm (per sample) and then centred
  over the batch (per dimension). Then |E[f . g]| <= 1 and 0 <= tr(cov(f) cov(g)) <= 1, so the loss
  lies in [-1, 1.5]: -1 + 1/(2H) at best (f = g, spread evenly over the H directions), about 0 for
  unrelated features, against cross-entropy's ln(C) ~ 1.9 at the start for C = 7 classes.
Beside them, for the text fine-tune: ``PrototypicalContrastiveLoss``, SPCL's supervised prototypical contrastive loss
(Song et al. 2022) on the pooled utterance vectors.
A weight of 0 disables a term: it is neither computed nor reported. ``LossBreakdown.terms`` holds the
unweighted terms, ``weighted_terms`` what each adds to the total.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn

from spikemo.config import LossWeights
from spikemo.model.batch import IGNORE_INDEX, DialogueBatch
from spikemo.model.spikemo import SpikEmoOutput


@dataclass
class LossBreakdown:
    total: torch.Tensor  # scalar, weighted sum
    terms: dict[str, torch.Tensor]  # enabled terms, unweighted
    weighted_terms: dict[str, torch.Tensor]  # enabled terms times their weights (they add up to total)


def self_adjusting_dice_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """logits [N, C], targets [N] -> per-utterance self-adjusting Dice loss [N]."""
    gold_probability = torch.softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    weighted = (1 - gold_probability) ** alpha * gold_probability
    return 1 - (2 * weighted + gamma) / (weighted + 1 + gamma)


def soft_hgr_loss(features: list[torch.Tensor]) -> torch.Tensor:
    """features: per modality [N, H] (same rows) -> normalised negative Soft-HGR averaged over modality pairs."""
    unit = [F.normalize(f.float(), dim=-1) for f in features]
    centred = [f - f.mean(0, keepdim=True) for f in unit]
    num_samples = centred[0].shape[0]
    covariances = [f.T @ f / (num_samples - 1) for f in centred]
    pair_losses = []
    for i, j in combinations(range(len(centred)), 2):
        correlation = (centred[i] * centred[j]).sum(-1).mean()
        pair_losses.append(-(correlation - (covariances[i] * covariances[j].T).sum() / 2))
    return torch.stack(pair_losses).mean()


class SpikEmoLoss(nn.Module):
    def __init__(
        self,
        weights: LossWeights,
        num_classes: int,
        class_weights: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        dice_alpha: float = 1.5,
        dice_gamma: float = 0.5,
    ):
        super().__init__()
        self.weights = weights
        self.num_classes = num_classes
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.label_smoothing = label_smoothing
        self.dice_alpha = dice_alpha
        self.dice_gamma = dice_gamma

    def forward(self, output: SpikEmoOutput, batch: DialogueBatch) -> LossBreakdown:
        labelled = batch.labels != IGNORE_INDEX
        logits = output.logits[labelled].float()  # fp32 whatever the autocast of the forward pass
        targets = batch.labels[labelled]
        terms: dict[str, torch.Tensor] = {}
        count = max(targets.numel(), 1)  # a batch without labels gives zero, not NaN
        if self.weights.ce > 0:
            per_utterance = F.cross_entropy(logits, targets, reduction="none", label_smoothing=self.label_smoothing)
            if self.class_weights is not None:
                per_utterance = per_utterance * self.class_weights[targets]
            terms["ce"] = per_utterance.sum() / count
        if self.weights.dice > 0:
            terms["dice"] = self_adjusting_dice_loss(logits, targets, self.dice_alpha, self.dice_gamma).sum() / count
        if self.weights.soft_hgr > 0 and len(output.modality_features) > 1:
            complete = batch.utterance_mask.clone()
            for modality in output.modality_features:
                complete &= batch.modality_mask[modality]
            if int(complete.sum()) > 1:
                terms["soft_hgr"] = soft_hgr_loss([f[complete].float() for f in output.modality_features.values()])
        weighted = {name: getattr(self.weights, name) * value for name, value in terms.items()}
        total = sum(weighted.values(), logits.new_zeros(()))
        return LossBreakdown(total=total, terms=terms, weighted_terms=weighted)


def class_weights_from_counts(counts: torch.Tensor, scheme: str) -> torch.Tensor | None:
    """Cross-entropy weights from training label counts: ``balanced`` n / (C n_c) (sklearn's), its square root
    ``sqrt_balanced``, or None for ``none``. Classes absent from training get weight 0."""
    if scheme == "none":
        return None
    counts = counts.double()
    balanced = torch.where(counts > 0, counts.sum() / (len(counts) * counts.clamp(min=1)), torch.zeros_like(counts))
    return (balanced.sqrt() if scheme == "sqrt_balanced" else balanced).float()


class PrototypicalContrastiveLoss(nn.Module):
    """Supervised contrastive loss over a batch's labelled vectors and one prototype per class (SPCL, Song et al.
    2022), so that every class takes part in every batch, however small.

    Vectors are L2-normalised; a class's prototype is the normalised mean of its last ``memory`` vectors from
    earlier batches (a class not seen yet has none). For anchor i with label y, over the candidates a (the batch's
    other vectors and the prototypes) and the positives P (those of label y):
    loss_i = -1/|P| sum_{p in P} log(exp(s_ip / t) / sum_a exp(s_ia / t)), s the cosine similarity, t
    ``temperature``; averaged over the anchors with a positive. Each call then stores the batch's vectors (detached)
    in the memory, which is part of the module's state (a resumed run continues with it)."""

    def __init__(self, num_classes: int, dim: int, memory: int, temperature: float):
        super().__init__()
        self.temperature = temperature
        self.register_buffer("memory", torch.zeros(num_classes, memory, dim))
        self.register_buffer("stored", torch.zeros(num_classes, dtype=torch.long))  # vectors stored so far per class

    def prototypes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised prototypes [K, H] of the K classes with stored vectors, and those classes' ids [K]."""
        filled = self.stored.clamp(max=self.memory.shape[1])
        classes = torch.nonzero(filled).squeeze(1)
        means = self.memory[classes].sum(1) / filled[classes, None]
        return F.normalize(means, dim=-1), classes

    def forward(self, vectors: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        anchors = F.normalize(vectors.float(), dim=-1)
        prototypes, classes = self.prototypes()
        candidates = torch.cat([anchors, prototypes])
        candidate_labels = torch.cat([targets, classes])
        itself = torch.eye(len(anchors), len(candidates), dtype=torch.bool, device=anchors.device)
        logits = (anchors @ candidates.T / self.temperature).masked_fill(itself, float("-inf"))
        positive = (targets[:, None] == candidate_labels[None, :]) & ~itself
        log_probability = (logits - logits.logsumexp(1, keepdim=True)).masked_fill(~positive, 0.0)
        counts = positive.sum(1)
        per_anchor = -log_probability.sum(1)[counts > 0] / counts[counts > 0]
        self._remember(anchors.detach(), targets)
        return per_anchor.mean() if len(per_anchor) else anchors.sum() * 0.0

    @torch.no_grad()
    def _remember(self, anchors: torch.Tensor, targets: torch.Tensor) -> None:
        size = self.memory.shape[1]
        for label in targets.unique():
            rows = anchors[targets == label][-size:]
            slots = (self.stored[label] + torch.arange(len(rows), device=rows.device)) % size
            self.memory[label, slots] = rows
            self.stored[label] += len(rows)
