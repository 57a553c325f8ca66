"""Running a model over dialogue batches: predicted label ids and the resulting metrics."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from spikemo.model.batch import IGNORE_INDEX, DialogueBatch
from spikemo.training.metrics import classification_metrics


def autocast_for(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA; a disabled autocast elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def predict(model: torch.nn.Module, batches: Iterable[DialogueBatch]) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted label ids of every labelled utterance, dialogue by dialogue, turn by turn."""
    device = next(model.parameters()).device
    model.eval()
    labels: list[torch.Tensor] = []
    predictions: list[torch.Tensor] = []
    for batch in batches:
        batch = batch.to(device, non_blocking=True)
        with autocast_for(device):
            logits = model(batch).logits
        labelled = batch.labels != IGNORE_INDEX
        labels.append(batch.labels[labelled].cpu())
        predictions.append(logits.argmax(dim=-1)[labelled].cpu())
    if not labels:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return torch.cat(labels).numpy(), torch.cat(predictions).numpy()


def evaluate(model: torch.nn.Module, batches: Iterable[DialogueBatch], label_names: Sequence[str]) -> dict[str, Any]:
    """Weighted-F1, macro-F1, accuracy (percent), per-class scores and confusion matrix over ``batches``."""
    labels, predictions = predict(model, batches)
    return classification_metrics(labels, predictions, label_names)
