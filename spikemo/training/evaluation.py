"""Running a model over dialogue batches: predicted label ids and the resulting metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from spikemo.model.batch import IGNORE_INDEX, DialogueBatch
from spikemo.model.spikemo import SpikEmoOutput
from spikemo.training.metrics import classification_metrics


class LossTally:
    """Sums a loss (a mean over a batch's labelled utterances) over evaluation batches, weighted by each
    batch's labelled utterances, so that ``total / count`` is the mean over the split."""

    def __init__(self, loss: Callable[[SpikEmoOutput, DialogueBatch], torch.Tensor]):
        self.loss = loss
        self.total = 0.0
        self.count = 0

    def add(self, output: SpikEmoOutput, batch: DialogueBatch, labelled: int) -> None:
        if labelled:
            self.total += float(self.loss(output, batch)) * labelled
            self.count += labelled


@torch.no_grad()
def predict(
    model: torch.nn.Module, batches: Iterable[DialogueBatch], tally: LossTally | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted label ids of every labelled utterance, dialogue by dialogue, turn by turn; with
    ``tally``, the loss of every batch is added to it as well. In fp32 whatever precision trained the model: the
    scores are those that ``spikemo predict`` and the served model give."""
    device = next(model.parameters()).device
    model.eval()
    labels: list[torch.Tensor] = []
    predictions: list[torch.Tensor] = []
    for batch in batches:
        batch = batch.to(device, non_blocking=True)
        output = model(batch)
        logits = output.logits
        labelled = batch.labels != IGNORE_INDEX
        if tally is not None:
            tally.add(output, batch, int(labelled.sum()))
        labels.append(batch.labels[labelled].cpu())
        predictions.append(logits.argmax(dim=-1)[labelled].cpu())
    if not labels:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return torch.cat(labels).numpy(), torch.cat(predictions).numpy()


def evaluate(model: torch.nn.Module, batches: Iterable[DialogueBatch], label_names: Sequence[str]) -> dict[str, Any]:
    """Weighted-F1, macro-F1, accuracy (percent), per-class scores and confusion matrix over ``batches``."""
    labels, predictions = predict(model, batches)
    return classification_metrics(labels, predictions, label_names)
