"""The learning-rate schedule: linear warm-up per step, then cosine decay per step or plateau per epoch."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, ReduceLROnPlateau, SequentialLR

from spikemo.config import TrainConfig

WARMUP_START_FACTOR = 0.01


class LearningRateSchedule:
    """``after_step()`` after every optimizer step, ``after_epoch(dev_score)`` after every epoch.

    ``cosine``: from 1% of ``lr`` up to ``lr`` over ``warmup_epochs``, then a cosine down to 0 at ``epochs``
    (early stopping usually ends training before). ``plateau``: the same warm-up, then ReduceLROnPlateau
    on the dev score.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
        self.kind = config.lr_schedule
        self.warmup_steps = round(config.warmup_epochs * steps_per_epoch)
        self.steps = 0
        warmup = (
            LinearLR(optimizer, WARMUP_START_FACTOR, total_iters=max(self.warmup_steps, 1))
            if self.warmup_steps
            else None
        )
        self.plateau: ReduceLROnPlateau | None = None
        if self.kind == "cosine":
            decay_steps = max(config.epochs * steps_per_epoch - self.warmup_steps, 1)
            cosine = CosineAnnealingLR(optimizer, T_max=decay_steps)
            self.per_step = (
                SequentialLR(optimizer, [warmup, cosine], milestones=[self.warmup_steps]) if warmup else cosine
            )
        else:
            self.per_step = warmup
            self.plateau = ReduceLROnPlateau(
                optimizer, mode="max", factor=config.lr_plateau_factor, patience=config.lr_plateau_patience
            )

    def after_step(self) -> None:
        self.steps += 1
        if self.per_step is not None and (self.kind == "cosine" or self.steps <= self.warmup_steps):
            self.per_step.step()

    def after_epoch(self, dev_score: float) -> None:
        if self.plateau is not None:
            self.plateau.step(dev_score)

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "per_step": self.per_step.state_dict() if self.per_step is not None else None,
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
        if self.per_step is not None:
            self.per_step.load_state_dict(state["per_step"])
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])
