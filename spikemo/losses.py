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
