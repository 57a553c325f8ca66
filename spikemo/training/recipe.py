"""SpikEmo's training entry points: one training (loop.py), or with speaker evidence fitted out of fold
(cross_fit.py) when ``train.speaker_evidence_fit`` is ``cross_fitted``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from spikemo.config import SpikEmoConfig
from spikemo.training.cross_fit import train_with_cross_fitted_evidence
from spikemo.training.data import DialogueData, build_dialogue_data
from spikemo.training.epochs import EpochCallback
from spikemo.training.loop import TrainResult, train_once


def train_model(
    config: SpikEmoConfig,
    manifest: pd.DataFrame,
    features: Mapping[str, pd.DataFrame],
    label_names: list[str],
    run_dir: Path,
    on_epoch_end: EpochCallback | None = None,
    resume: bool = True,
) -> TrainResult:
    """Train on ``train``, select on ``dev``, evaluate the selected weights once on ``test``.

    ``features`` maps each modality to its feature table (``utterance_key``, ``status``, ``embedding``).
    Checkpoints go to ``run_dir/checkpoints``; with ``resume`` a run continues after its last completed
    epoch. ``on_epoch_end(epoch, metrics)`` is called (rank 0 only) after that epoch's checkpoint is written.
    Raises ``DataError`` for unusable inputs and ``NonFiniteLossError`` when the loss diverges.
    """
    data = build_dialogue_data(manifest, features, len(label_names))
    return train_on_dialogue_data(config, data, label_names, run_dir, on_epoch_end, resume)


def train_on_dialogue_data(
    config: SpikEmoConfig,
    data: DialogueData,
    label_names: list[str],
    run_dir: Path,
    on_epoch_end: EpochCallback | None = None,
    resume: bool = True,
) -> TrainResult:
    """``train_model`` on dialogue data already built (``build_dialogue_data``), e.g. shared with a baseline."""
    if config.model.speaker_evidence_rounds and config.train.speaker_evidence_fit == "cross_fitted":
        return train_with_cross_fitted_evidence(config, data, label_names, Path(run_dir), on_epoch_end, resume)
    return train_once(config, data, label_names, run_dir, on_epoch_end, resume)
