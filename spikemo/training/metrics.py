"""Classification metrics of emotion predictions, computed with scikit-learn.

Rates are percentages (0-100), as the ERC literature reports them; ``weighted_f1`` is the headline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

HEADLINE_METRICS = ("weighted_f1", "macro_f1", "accuracy")


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
