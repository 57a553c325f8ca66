"""Classification metrics of emotion predictions, computed with scikit-learn.

Rates are percentages (0-100), as the ERC literature reports them; ``weighted_f1`` is the headline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from spikemo.reports import BootstrapReport, Interval

HEADLINE_METRICS = ("weighted_f1", "macro_f1", "accuracy")
BOOTSTRAP_LEVEL = 0.95


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, label_names: Sequence[str]) -> dict[str, Any]:
    """Weighted-F1, macro-F1, accuracy, per-class precision/recall/F1/support and the confusion matrix.

    The confusion matrix is a list of rows, one per true label in ``label_names`` order.
    """
    class_ids = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=class_ids, zero_division=0
    )
    return {
        "weighted_f1": 100.0 * f1_score(labels, predictions, labels=class_ids, average="weighted", zero_division=0),
        "macro_f1": 100.0 * f1_score(labels, predictions, labels=class_ids, average="macro", zero_division=0),
        "accuracy": 100.0 * accuracy_score(labels, predictions),
        "num_utterances": int(len(labels)),
        "per_class": {
            name: {
                "precision": 100.0 * float(precision[i]),
                "recall": 100.0 * float(recall[i]),
                "f1": 100.0 * float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": confusion_matrix(labels, predictions, labels=class_ids).tolist(),
        "label_names": list(label_names),
    }


def firing_rates_by_group(rates: dict[str, float]) -> dict[str, float]:
    """Mean firing rate per layer group: a spiking layer's path cut after the component that follows its
    last block index (``spikformer.blocks.0.mlp.expand.lif`` -> ``spikformer.blocks.0.mlp``), or its parent
    module when the path has no index."""
    groups: dict[str, list[float]] = {}
    for name, rate in rates.items():
        parts = name.split(".")
        indices = [i for i, part in enumerate(parts) if part.isdigit()]
        end = indices[-1] + 2 if indices and indices[-1] + 2 < len(parts) else max(len(parts) - 1, 1)
        groups.setdefault(".".join(parts[:end]), []).append(rate)
    return {group: float(np.mean(values)) for group, values in groups.items()}


def dialogue_bootstrap(
    labels: np.ndarray,
    predictions: np.ndarray,
    dialogues: np.ndarray,
    num_classes: int,
    baseline_predictions: np.ndarray | None = None,
    draws: int = 1000,
    seed: int = 0,
) -> BootstrapReport:
    """Percentile intervals of weighted-F1, macro-F1 and accuracy (as ``classification_metrics`` computes them)
    over ``draws`` resamples of whole dialogues with replacement (utterances of one dialogue are not independent).
    A split of one dialogue (e.g. one speaker's session of clips) resamples its utterances instead, which takes them
    as independent; whole dialogues would give every draw the same score. With ``baseline_predictions`` each draw
    scores both on the same resample: a paired difference."""
    unit = "dialogue" if len(np.unique(dialogues)) > 1 else "utterance"
    weights = bootstrap_weights(dialogues if unit == "dialogue" else np.arange(len(labels)), draws, seed)
    model = weighted_scores(labels, predictions, weights, num_classes)
    scores = {name: interval(values) for name, values in model.items()}
    if baseline_predictions is None:
        return BootstrapReport(scores, draws=draws, unit=unit)
    other = weighted_scores(labels, baseline_predictions, weights, num_classes)
    baseline = {name: interval(values) for name, values in other.items()}
    difference = {name: interval(model[name] - other[name]) for name in model}
    return BootstrapReport(scores, baseline, difference, draws, unit)


def bootstrap_weights(units: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """``[draws + 1, items]`` multiplicities: row 0 all ones (the data as they are), then one row per resample
    of the distinct ``units`` (one per item, e.g. its dialogue) with replacement."""
    _, codes = np.unique(np.asarray(units), return_inverse=True)
    count = int(codes.max()) + 1
    resamples = np.random.default_rng(seed).multinomial(count, np.full(count, 1.0 / count), size=draws)
    return np.vstack([np.ones((1, len(codes))), resamples[:, codes]])


def interval(values: np.ndarray) -> Interval:
    """``values[0]`` the point estimate, ``values[1:]`` its bootstrap replicates: the 95% percentile interval."""
    tail = 100 * (1 - BOOTSTRAP_LEVEL) / 2
    low, high = np.percentile(values[1:], [tail, 100 - tail])
    return Interval(float(values[0]), float(low), float(high))


def weighted_scores(
    labels: np.ndarray, predictions: np.ndarray, weights: np.ndarray, num_classes: int
) -> dict[str, np.ndarray]:
    """Headline metrics (percent) for each row of ``weights`` [rows, utterances] (multiplicities), from weighted
    confusion matrices; the same definitions as scikit-learn's with ``labels=range(num_classes)``, zero_division=0."""
    pairs = np.asarray(labels, dtype=np.int64) * num_classes + np.asarray(predictions, dtype=np.int64)
    one_hot = np.zeros((len(pairs), num_classes * num_classes))
    one_hot[np.arange(len(pairs)), pairs] = 1.0
    confusion = (weights @ one_hot).reshape(-1, num_classes, num_classes)  # [draws, true, predicted]
    support, predicted = confusion.sum(2), confusion.sum(1)
    true_positive = np.diagonal(confusion, axis1=1, axis2=2)
    denominator = support + predicted
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    total = support.sum(1)
    return {
        "weighted_f1": 100 * (f1 * support).sum(1) / total,
        "macro_f1": 100 * f1.mean(1),
        "accuracy": 100 * true_positive.sum(1) / total,
    }
