"""The learning-rate schedules of both training recipes, stepped per optimizer step (and per epoch for plateau).

SpikEmo (``TrainConfig``): linear warm-up, then cosine decay per step or plateau per epoch. The text fine-tune:
``linear``, BERT's warm-up from 0 and linear decay to 0 at the last step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LinearLR, LRScheduler, ReduceLROnPlateau, SequentialLR

from spikemo.config import TrainConfig

WARMUP_START_FACTOR = 0.01


class LearningRateSchedule:
    """``after_step()`` after every optimizer step, ``after_epoch(dev_score)`` after every epoch.

    ``cosine``: from 1% of ``lr`` up to ``lr`` over ``warmup_epochs``, then a cosine down to 0 at ``epochs``
    (early stopping usually ends training before). ``plateau``: the same warm-up, then ReduceLROnPlateau
    on the dev score. ``linear`` (``LearningRateSchedule.linear``): from 0 up to ``lr``, then down to 0.
    """

    def __init__(
        self, kind: str, per_step: LRScheduler | None, warmup_steps: int, plateau: ReduceLROnPlateau | None = None
    ):
        self.kind = kind
        self.per_step = per_step
        self.warmup_steps = warmup_steps
        self.plateau = plateau
        self.steps = 0

    @classmethod
    def for_training(
        cls, optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
    ) -> LearningRateSchedule:
        warmup_steps = round(config.warmup_epochs * steps_per_epoch)
        warmup = LinearLR(optimizer, WARMUP_START_FACTOR, total_iters=max(warmup_steps, 1)) if warmup_steps else None
        if config.lr_schedule == "cosine":
            cosine = CosineAnnealingLR(optimizer, T_max=max(config.epochs * steps_per_epoch - warmup_steps, 1))
            per_step = SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps]) if warmup else cosine
            return cls("cosine", per_step, warmup_steps)
        plateau = ReduceLROnPlateau(
            optimizer, mode="max", factor=config.lr_plateau_factor, patience=config.lr_plateau_patience
        )
        return cls("plateau", warmup, warmup_steps, plateau)

    @classmethod
    def linear(cls, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LearningRateSchedule:
        """From 0 up to the groups' lr over ``warmup_steps``, then down to 0 at ``total_steps``."""

        def factor(step: int) -> float:
            if step < warmup_steps:
                return float(step) / float(max(1, warmup_steps))
            return max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup_steps)))

        return cls("linear", LambdaLR(optimizer, factor), warmup_steps)

    def after_step(self) -> None:
        self.steps += 1
        if self.per_step is not None and (self.kind != "plateau" or self.steps <= self.warmup_steps):
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
