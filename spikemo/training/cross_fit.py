"""Cross-fitted speaker-chain evidence: the evidence layer learns from out-of-fold probabilities.

Trained jointly (``train.speaker_evidence_fit: joint``), the speaker-chain evidence (model/evidence.py) reads
the model's probabilities on the very dialogues the model is fitting: more confident and more often right than
on unseen ones, so the layer learns to trust a speaker's other turns more than it should at test time. With
``cross_fitted`` training is stacked in three steps:
1. the model without the evidence layer is trained on all training dialogues (dev picks its epoch);
2. it is trained again ``train.speaker_evidence_folds`` times, each time without one fold of the training
   dialogues (dev picks the epoch), and scores the fold it did not see: out-of-fold logits for every
   training utterance;
3. the evidence layer is fitted on those out-of-fold logits and the training labels (the training loss's
   class weights, full-batch Adam, weight decay) and put on top of the model from step 1; dev and test then
   score the whole model as they score any trained one.
Test is scored once, at the end; dev picks the epochs of steps 1 and 2 and nothing else.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from spikemo.config import SpikEmoConfig
from spikemo.errors import DataError
from spikemo.losses import class_weights_from_counts
from spikemo.model.batch import IGNORE_INDEX
from spikemo.model.evidence import SpeakerEvidence
from spikemo.training.data import DialogueData, DialogueDataset, collate_dialogues
from spikemo.training.loop import EpochCallback, TrainResult, result_with_weights, train_once

log = logging.getLogger(__name__)

FIT_STEPS = 300
FIT_LR = 0.02
FIT_WEIGHT_DECAY = 1e-3
SCORING_BATCH = 64  # dialogues per forward pass when scoring a held-out fold


def train_with_cross_fitted_evidence(
    config: SpikEmoConfig,
    data: DialogueData,
    label_names: list[str],
    run_dir: Path,
    on_epoch_end: EpochCallback | None,
    resume: bool,
) -> TrainResult:
    """``training.recipe.train_on_dialogue_data`` for a model with speaker evidence fitted out of fold (module
    docstring)."""
    base_config = config.model_copy(update={"model": config.model.model_copy(update={"speaker_evidence_rounds": 0})})
    without_test = data.without_test()  # test is scored once, on the stacked model
    base = train_once(base_config, without_test, label_names, run_dir / "base", on_epoch_end, resume)
    logits = out_of_fold_logits(base_config, data, label_names, run_dir / "folds", resume)
    train_set = data.splits["train"]
    evidence = fit_speaker_evidence(
        logits,
        train_set,
        SpeakerEvidence(len(label_names), config.model.speaker_evidence_rounds, config.model.causal),
        class_weights_from_counts(train_set.label_counts(len(label_names)), config.train.class_weighting),
    )
    weights = {name: tensor.detach().cpu() for name, tensor in base.model.state_dict().items()}
    weights.update(
        {f"speaker_evidence.{name}": tensor.detach().cpu() for name, tensor in evidence.state_dict().items()}
    )
    return result_with_weights(config, data, label_names, run_dir, weights, base)


def out_of_fold_logits(
    config: SpikEmoConfig, data: DialogueData, label_names: list[str], folds_dir: Path, resume: bool
) -> list[torch.Tensor]:
    """Per training dialogue, ``[turns, classes]`` logits of a model trained without its fold (dev picks each
    fold model's epoch). Folds are a permutation of the dialogues seeded with ``train.seed``."""
    train_set = data.splits["train"]
    folds = min(config.train.speaker_evidence_folds, len(train_set))
    if folds < 2:
        raise DataError(
            "cross-fitted speaker evidence needs at least 2 training dialogues; use train.speaker_evidence_fit joint"
        )
    order = np.random.default_rng(config.train.seed).permutation(len(train_set))
    logits: dict[int, torch.Tensor] = {}
    for fold, held_out in enumerate(np.array_split(order, folds)):
        kept = np.setdiff1d(order, held_out)
        fold_data = DialogueData(
            splits={"train": train_set.subset(kept), "dev": data.splits["dev"]}, input_dims=data.input_dims
        )
        result = train_once(config, fold_data, label_names, folds_dir / f"fold{fold}", resume=resume)
        log.info(
            "speaker evidence fold %d of %d: dev weighted-F1 %.2f without %d training dialogues",
            fold + 1,
            folds,
            result.dev_metrics["weighted_f1"],
            len(held_out),
        )
        for index, fold_logits in zip(held_out, _dialogue_logits(result.model, train_set.subset(held_out))):
            logits[int(index)] = fold_logits
    return [logits[index] for index in range(len(train_set))]


@torch.no_grad()
def _dialogue_logits(model: torch.nn.Module, dataset: DialogueDataset) -> list[torch.Tensor]:
    """The model's logits for each dialogue of ``dataset`` (``[turns, classes]``, CPU, float32), in order."""
    device = next(model.parameters()).device
    model.eval()
    logits = []
    for begin in range(0, len(dataset), SCORING_BATCH):
        dialogues = [dataset[index] for index in range(begin, min(begin + SCORING_BATCH, len(dataset)))]
        padded = model(collate_dialogues(dialogues).to(device)).logits.float().cpu()
        logits += [padded[row, : len(dialogue)] for row, dialogue in enumerate(dialogues)]
    return logits


def fit_speaker_evidence(
    logits: list[torch.Tensor], dataset: DialogueDataset, evidence: SpeakerEvidence, class_weights: torch.Tensor | None
) -> SpeakerEvidence:
    """Fit ``evidence`` (its weights start at the identity) on fixed per-dialogue ``logits`` of ``dataset``'s
    dialogues: weighted cross-entropy over the labelled utterances, full batch, in float32 on the CPU."""
    dialogues = [dataset[index] for index in range(len(dataset))]
    batch = collate_dialogues(dialogues)
    padded = torch.zeros(*batch.labels.shape, logits[0].shape[-1])
    for row, dialogue_logits in enumerate(logits):
        padded[row, : len(dialogue_logits)] = dialogue_logits
    labelled = batch.labels != IGNORE_INDEX
    optimizer = torch.optim.AdamW(evidence.parameters(), lr=FIT_LR, weight_decay=FIT_WEIGHT_DECAY)
    loss = torch.nn.CrossEntropyLoss(weight=class_weights)
    before = float(loss(padded[labelled], batch.labels[labelled]))
    with torch.enable_grad():
        for _ in range(FIT_STEPS):
            optimizer.zero_grad(set_to_none=True)
            error = loss(evidence(padded, batch.party, batch.utterance_mask)[labelled], batch.labels[labelled])
            error.backward()
            optimizer.step()
    log.info(
        "speaker evidence fitted on out-of-fold logits: training cross-entropy %.4f -> %.4f",
        before,
        float(error.detach()),
    )
    return evidence.eval()
