"""SpikEmo's training entry points: one training (loop.py), or with speaker evidence fitted out of fold
(cross_fit.py) when ``train.speaker_evidence_fit`` is ``cross_fitted``; with ``model.members`` > 1, each member
of the seed ensemble (model/ensemble.py) trained so, then the ensemble scored."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from spikemo.config import SpikEmoConfig
from spikemo.training.cross_fit import train_with_cross_fitted_evidence
from spikemo.training.data import DialogueData, build_dialogue_data
from spikemo.training.epochs import EpochCallback
from spikemo.training.loop import TrainResult, result_with_weights, train_once

log = logging.getLogger(__name__)


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
    if config.model.members > 1:
        return train_seed_ensemble(config, data, label_names, Path(run_dir), on_epoch_end, resume)
    if config.model.speaker_evidence_rounds and config.train.speaker_evidence_fit == "cross_fitted":
        return train_with_cross_fitted_evidence(config, data, label_names, Path(run_dir), on_epoch_end, resume)
    return train_once(config, data, label_names, run_dir, on_epoch_end, resume)


def train_seed_ensemble(
    config: SpikEmoConfig,
    data: DialogueData,
    label_names: list[str],
    run_dir: Path,
    on_epoch_end: EpochCallback | None,
    resume: bool,
) -> TrainResult:
    """``train_on_dialogue_data`` for a seed ensemble: member i is trained alone as ``model.members: 1`` with seed
    ``train.seed * members + i`` trains it (dev picks its epoch), in ``run_dir/member<i>``, without seeing test;
    the averaged model is then scored on dev and, once, on test. The result keeps member 0's history and kept
    epoch; each member's epochs reach ``on_epoch_end``, member i > 0's metric names prefixed ``member<i>.``."""
    members = []
    for index in range(config.model.members):
        member_config = config.model_copy(
            update={
                "model": config.model.model_copy(update={"members": 1}),
                "train": config.train.model_copy(update={"seed": config.train.seed * config.model.members + index}),
            }
        )
        log.info("seed ensemble: member %d of %d, seed %d", index + 1, config.model.members, member_config.train.seed)
        member_dir = run_dir / f"member{index}"
        callback = _member_epochs(on_epoch_end, index)
        members.append(
            train_on_dialogue_data(member_config, data.without_test(), label_names, member_dir, callback, resume)
        )
    weights = {
        f"members.{index}.{name}": tensor.cpu()
        for index, member in enumerate(members)
        for name, tensor in member.model.state_dict().items()
    }
    return result_with_weights(config, data, label_names, run_dir, weights, members[0])


def _member_epochs(on_epoch_end: EpochCallback | None, index: int) -> EpochCallback | None:
    if on_epoch_end is None or index == 0:
        return on_epoch_end
    return lambda epoch, metrics: on_epoch_end(
        epoch, {(name if name == "epoch" else f"member{index}.{name}"): value for name, value in metrics.items()}
    )
