"""SpikEmo losses against small hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from spikemo.config import LossWeights
from spikemo.losses import (
    PrototypicalContrastiveLoss,
    SpikEmoLoss,
    class_weights_from_counts,
    self_adjusting_dice_loss,
    soft_hgr_loss,
)
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
    f = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    # unit rows, already centred: E[f . f] = 1; cov(f) = diag(2, 0) (unbiased); loss = -(1 - 4 / 2) = 1
    assert soft_hgr_loss([f, f]).item() == pytest.approx(1.0)
    # per-sample normalisation: the features' scale changes nothing
    assert soft_hgr_loss([3.0 * f, 0.01 * f]).item() == pytest.approx(1.0)
    # orthogonal features: no correlation and no covariance overlap
    g = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    assert soft_hgr_loss([f, g]).item() == pytest.approx(0.0)
    # three modalities: the mean of the three pair losses
    assert soft_hgr_loss([f, f, g]).item() == pytest.approx((1.0 + 0.0 + 0.0) / 3)


@pytest.mark.parametrize("width", [2, 16, 256])
@pytest.mark.parametrize("scale", [0.01, 1.0, 1000.0])
def test_soft_hgr_stays_within_its_stated_range(width, scale):
    generator = torch.Generator().manual_seed(width)
    shared = torch.randn(64, width, generator=generator)
    for f, g in [
        (shared, shared),  # identical
        (shared, -shared),  # anti-correlated
        (shared, torch.randn(64, width, generator=generator)),  # unrelated
        (shared[:, :1].expand(64, width), shared[:, :1].expand(64, width)),  # rank one, the textbook form's worst case
    ]:
        loss = soft_hgr_loss([scale * f, scale * g]).item()
        assert -1.0 <= loss <= 1.5
    # the best case: identical features spread evenly over the directions -> -1 + 1/(2 width) at most
    best = soft_hgr_loss([shared, shared]).item()
    assert best < -0.5


def test_weighted_total_and_masked_soft_hgr():
    features = {
        "text": [[1.0, 0.0], [-1.0, 0.0], [100.0, 3.0]],
        "audio": [[1.0, 0.0], [-1.0, 0.0], [-100.0, 1.0]],
    }
    output, batch = single_dialogue([[0.0, 0.0]] * 3, [0, 1, 1], features)
    batch.modality_mask["audio"][0, 2] = False  # the third utterance lacks audio: left out of Soft-HGR
    weights = LossWeights(ce=0.4, dice=1.0, soft_hgr=0.3)
    breakdown = SpikEmoLoss(weights, 2)(output, batch)
    assert breakdown.terms["soft_hgr"].item() == pytest.approx(1.0)
    assert breakdown.terms["ce"].item() == pytest.approx(math.log(2))
    assert breakdown.terms["dice"].item() == pytest.approx(0.4909558, abs=1e-6)
    assert breakdown.weighted_terms["soft_hgr"].item() == pytest.approx(0.3)
    assert breakdown.weighted_terms["ce"].item() == pytest.approx(0.4 * math.log(2))
    expected = 0.4 * math.log(2) + 1.0 * 0.4909558 + 0.3 * 1.0
    assert breakdown.total.item() == pytest.approx(expected, abs=1e-5)
    assert breakdown.total.item() == pytest.approx(sum(v.item() for v in breakdown.weighted_terms.values()), abs=1e-6)


def test_class_weights_scale_each_utterance_cross_entropy():
    counts = torch.tensor([30, 10, 0])
    balanced = class_weights_from_counts(counts, "balanced")
    torch.testing.assert_close(balanced, torch.tensor([40 / 90, 40 / 30, 0.0]))
    torch.testing.assert_close(class_weights_from_counts(counts, "sqrt_balanced"), balanced.sqrt())
    assert class_weights_from_counts(counts, "none") is None
    output, batch = single_dialogue([[0.0, 0.0], [0.0, 0.0]], [0, 1], {"text": [[1.0], [1.0]]})
    weights = torch.tensor([1.0, 3.0])
    breakdown = SpikEmoLoss(LossWeights(ce=1.0, dice=0.0, soft_hgr=0.0), 2, class_weights=weights)(output, batch)
    assert breakdown.terms["ce"].item() == pytest.approx((1.0 + 3.0) * math.log(2) / 2)


def test_zero_weight_disables_a_term_and_single_modality_has_no_soft_hgr():
    output, batch = single_dialogue([[0.0, 1.0]] * 2, [0, 1], {"text": [[1.0], [2.0]]})
    breakdown = SpikEmoLoss(LossWeights(ce=0.0, dice=1.0, soft_hgr=0.3), 2)(output, batch)
    assert set(breakdown.terms) == {"dice"}


def test_loss_gradients_reach_logits_and_features():
    features = {"text": [[1.0, 0.2], [0.5, -0.3], [-1.0, 0.1]], "audio": [[0.2, 0.5], [0.1, -0.4], [0.9, 0.0]]}
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


def test_prototypical_contrastive_loss_pulls_same_class_vectors_and_prototypes_from_earlier_batches():
    loss = PrototypicalContrastiveLoss(num_classes=2, dim=2, memory=4, temperature=1.0)
    first = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 3.0]], requires_grad=True)
    value = loss(first, torch.tensor([0, 0, 1]))
    # no prototypes yet; each class-0 vector: positive the other (cos 1) against the class-1 one (cos 0); the
    # class-1 vector has no positive and is left out
    assert value.item() == pytest.approx(math.log(1 + math.exp(-1)))
    value.backward()
    assert first.grad is not None
    prototypes, classes = loss.prototypes()
    assert classes.tolist() == [0, 1] and torch.allclose(prototypes, torch.eye(2))

    loss.temperature = 0.5
    # a lone anchor of class 0 still has a positive and a negative: the prototypes (cos 0.6 and 0.8)
    second = loss(torch.tensor([[0.6, 0.8]]), torch.tensor([0]))
    assert second.item() == pytest.approx(math.log(1 + math.exp((0.8 - 0.6) / 0.5)))


def test_a_prototype_is_the_mean_of_its_class_latest_vectors():
    loss = PrototypicalContrastiveLoss(num_classes=3, dim=2, memory=2, temperature=0.1)
    loss(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0, 0, 0]))
    prototypes, classes = loss.prototypes()
    diagonal = torch.tensor([1.0, 1.0]) / math.sqrt(2)
    assert classes.tolist() == [0]  # the first vector did not fit in a memory of two
    assert torch.allclose(prototypes[0], torch.nn.functional.normalize(torch.tensor([0.0, 1.0]) + diagonal, dim=0))
    loss(torch.tensor([[-2.0, 0.0]]), torch.tensor([0]))  # replaces the oldest
    prototypes, _ = loss.prototypes()
    assert torch.allclose(prototypes[0], torch.nn.functional.normalize(torch.tensor([-1.0, 0.0]) + diagonal, dim=0))
