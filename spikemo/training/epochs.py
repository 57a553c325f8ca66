"""The epoch loop shared by SpikEmo training (training/loop.py) and the text fine-tune (training/text_finetune.py).

Resume after the last completed epoch, train an epoch, score dev, keep the weights of the best dev
weighted-F1 (or of every epoch in turn), stop after ``patience`` epochs without a better one, checkpoint
after every epoch, then report it. What an epoch, a score and a checkpoint are is the task's business
(``EpochTask``); the order and the bookkeeping are this loop's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from spikemo.training.checkpoint import SelectionState

log = logging.getLogger(__name__)

SELECTION_KEY = "dev_weighted_f1"

EpochCallback = Callable[[int, dict[str, float]], None]


class EpochTask(Protocol):
    def load_last(self) -> SelectionState | None:
        """Where an interrupted run stood (its last checkpoint restored into the task), or None to start afresh."""

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch of training; its metrics, ``train_loss`` among them."""

    def evaluate_dev(self) -> dict[str, float]:
        """The current weights scored on dev: ``dev_weighted_f1`` (what selects) among them."""

    def save_best(self, epoch: int, metrics: dict[str, float]) -> None:
        """Keep the current weights as the selected ones."""

    def end_epoch(self, selection: SelectionState) -> None:
        """After selection: schedule steps that follow the dev score, then the checkpoint to resume from."""


@dataclass(frozen=True)
class EpochPlan:
    epochs: int
    patience: int  # epochs without a better dev score before stopping
    keep_last: bool = False  # keep every epoch's weights in turn (no early stopping)
    label: str = "epoch"  # how log lines name an epoch
    is_main: bool = True  # only the main process logs and reports


def run_epochs(task: EpochTask, plan: EpochPlan, on_epoch_end: EpochCallback | None = None) -> SelectionState:
    """Train ``task`` epoch by epoch from where its last checkpoint left off; the final selection state."""
    selection = task.load_last() or SelectionState(
        epoch=-1, best_epoch=-1, best_score=-math.inf, epochs_without_improvement=0
    )
    for epoch in range(selection.epoch + 1, plan.epochs):
        if selection.epochs_without_improvement >= plan.patience:
            break
        metrics = {"epoch": float(epoch), **task.train_epoch(epoch)}
        metrics.update(task.evaluate_dev())
        score = metrics[SELECTION_KEY]
        selection.epoch = epoch
        selection.history.append(metrics)
        if score > selection.best_score or plan.keep_last:
            selection.best_score, selection.best_epoch, selection.epochs_without_improvement = score, epoch, 0
            task.save_best(epoch, metrics)
        else:
            selection.epochs_without_improvement += 1
        task.end_epoch(selection)
        if plan.is_main:
            log.info(
                "%s %d of 0-%d: train loss %.4f, dev weighted-F1 %.2f (best %.2f at %s %d)",
                plan.label,
                epoch,
                plan.epochs - 1,
                metrics["train_loss"],
                score,
                selection.best_score,
                plan.label,
                selection.best_epoch,
            )
            if on_epoch_end is not None:
                on_epoch_end(epoch, metrics)
    return selection
