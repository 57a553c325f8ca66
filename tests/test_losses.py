"""SpikEmo losses against small hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from spikemo.config import LossWeights
from spikemo.losses import SpikEmoLoss, self_adjusting_dice_loss, soft_hgr_loss
from spikemo.model.batch import IGNORE_INDEX, DialogueBatch
from spikemo.model.spikemo import SpikEmoOutput


def single_dialogue(logits: list[list[float]], labels: list[int], features: dict[str, list[list[float]]]):
    length = len(labels)
    batch = DialogueBatch(
        features={m: torch.zeros(1, length, 1) for m in features},
        modality_mask={m: torch.ones(1, length, dtype=torch.bool) for m in features},
        utterance_mask=torch.tensor([[label != IGNORE_INDEX for label in labels]]),
        party=torch.zeros(1, length, dtype=torch.long),
        labels=torch.tensor([labels]),
    )
    output = SpikEmoOutput(
        logits=torch.tensor([logits]),
        modality_features={m: torch.tensor([f]) for m, f in features.items()},
    )
    return output, batch


def test_cross_entropy_ignores_padding():
    logits = [[0.0, 0.0], [math.log(3.0), 0.0], [9.0, -9.0]]
    output, batch = single_dialogue(logits, [0, 1, IGNORE_INDEX], {"text": [[0.0]] * 3})
    breakdown = SpikEmoLoss(LossWeights(ce=1.0, dice=0.0, soft_hgr=0.0), 2)(output, batch)
    # utterance 1: p(gold) = 1/2; utterance 2: p(gold) = 1/(3 + 1) = 1/4; the padded one is ignored
    assert breakdown.terms["ce"].item() == pytest.approx((math.log(2) + math.log(4)) / 2)
    assert set(breakdown.terms) == {"ce"}
    assert breakdown.total.item() == pytest.approx(breakdown.terms["ce"].item())


def test_self_adjusting_dice_by_hand():
    # uniform over two classes: p = 0.5, p~ = (1 - p)^1.5 * p = 0.5^2.5
    loss = self_adjusting_dice_loss(torch.zeros(1, 2), torch.tensor([1]), alpha=1.5, gamma=0.5)
    assert loss.item() == pytest.approx(1 - (2 * 0.5**2.5 + 0.5) / (0.5**2.5 + 1.5))
    assert loss.item() == pytest.approx(0.4909558, abs=1e-6)
    # a certain prediction: p~ = 0 -> 1 - gamma / (1 + gamma)
    certain = self_adjusting_dice_loss(torch.tensor([[0.0, 50.0]]), torch.tensor([1]), alpha=1.5, gamma=0.5)
    assert certain.item() == pytest.approx(1 - 0.5 / 1.5)


def test_soft_hgr_by_hand():
    f = torch.tensor([[1.0], [-1.0]])
    g = torch.tensor([[2.0], [-2.0]])
    # E[f g] = 2; cov(f) = 2, cov(g) = 8 (unbiased); loss = -(2 - 2 * 8 / 2) = 6
    assert soft_hgr_loss([f, g]).item() == pytest.approx(6.0)
    # centring: a constant offset changes nothing
    assert soft_hgr_loss([f + 5.0, g - 1.0]).item() == pytest.approx(6.0)
    # three modalities: the mean of the three pair losses
    h = torch.tensor([[0.0], [0.0]])
    assert soft_hgr_loss([f, g, h]).item() == pytest.approx((6.0 + 0.0 + 0.0) / 3)


def test_weighted_total_and_masked_soft_hgr():
    features = {
        "text": [[1.0], [-1.0], [100.0]],
        "audio": [[2.0], [-2.0], [-100.0]],
    }
    output, batch = single_dialogue([[0.0, 0.0]] * 3, [0, 1, 1], features)
    batch.modality_mask["audio"][0, 2] = False  # the third utterance lacks audio: left out of Soft-HGR
    weights = LossWeights(ce=0.4, dice=1.0, soft_hgr=0.3)
    breakdown = SpikEmoLoss(weights, 2)(output, batch)
    assert breakdown.terms["soft_hgr"].item() == pytest.approx(6.0)
    assert breakdown.terms["ce"].item() == pytest.approx(math.log(2))
    assert breakdown.terms["dice"].item() == pytest.approx(0.4909558, abs=1e-6)
    expected = 0.4 * math.log(2) + 1.0 * 0.4909558 + 0.3 * 6.0
    assert breakdown.total.item() == pytest.approx(expected, abs=1e-5)


def test_zero_weight_disables_a_term_and_single_modality_has_no_soft_hgr():
    output, batch = single_dialogue([[0.0, 1.0]] * 2, [0, 1], {"text": [[1.0], [2.0]]})
    breakdown = SpikEmoLoss(LossWeights(ce=0.0, dice=1.0, soft_hgr=0.3), 2)(output, batch)
    assert set(breakdown.terms) == {"dice"}


def test_loss_gradients_reach_logits_and_features():
    features = {"text": [[1.0], [0.5], [-1.0]], "audio": [[0.2], [0.1], [0.9]]}
    output, batch = single_dialogue([[0.5, -0.5], [0.1, 0.3], [0.0, 0.0]], [0, 1, 0], features)
    output.logits.requires_grad_()
    for features in output.modality_features.values():
        features.requires_grad_()
    SpikEmoLoss(LossWeights(), 2)(output, batch).total.backward()
    assert output.logits.grad.abs().sum() > 0
    assert all(f.grad.abs().sum() > 0 for f in output.modality_features.values())


def test_batch_without_labels_gives_zero_loss():
    output, batch = single_dialogue([[0.0, 0.0]], [IGNORE_INDEX], {"text": [[0.0]]})
    breakdown = SpikEmoLoss(LossWeights(), 2)(output, batch)
    assert breakdown.total.item() == 0.0
