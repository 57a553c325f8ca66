"""The linear probe every training run is compared with: logistic regression on the same cached features.

The probe sees what the model sees (``as_model_reads``): with ``model.speaker_relative_inputs`` each modality is
first standardised with the training split's statistics and made relative to each speaker in each dialogue, by the
model's own function. Each modality is then standardised with statistics of the training split's utterances that
have it; an absent modality contributes zeros (its training mean) and a presence indicator. The modalities are
concatenated and one multinomial logistic regression per inverse regularisation strength ``C`` is fitted on
train; the ``C`` with the best dev weighted-F1 is kept (dev selects, exactly as it selects SpikEmo's epoch) and
scored once on test.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from spikemo.config import ModelConfig
from spikemo.model.spikemo import speaker_relative
from spikemo.training.data import DialogueData, DialogueDataset
from spikemo.training.metrics import classification_metrics

C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
MAX_ITERATIONS = 500


@dataclass
class LinearProbeResult:
    C: float
    dev_metrics: dict[str, Any]
    test_metrics: dict[str, Any] | None  # None when there is no labelled test split
    dev_weighted_f1_by_C: dict[float, float]
    test_predictions: np.ndarray | None = None  # of the labelled test utterances, in storage order
    train_metrics: dict[str, Any] | None = (
        None  # the selected probe on its own training utterances: how far apart train and dev sit
    )
    probabilities: dict[str, np.ndarray] = field(
        default_factory=dict
    )  # split -> (labelled utterances, labels), storage order


def as_model_reads(data: DialogueData, model: ModelConfig) -> DialogueData:
    """``data`` with each modality's features as ``model`` reads them before its first layer: with speaker-relative
    inputs, standardised with the training split's statistics, then relative to each speaker's utterances in each
    dialogue (``speaker_relative``, with the model's mode, causality and fallback); unchanged otherwise."""
    if model.speaker_relative_inputs == "off":
        return data
    statistics = data.splits["train"].feature_statistics()
    splits = {}
    for split, dataset in data.splits.items():
        party, masks, bounds = torch.from_numpy(dataset.party), dataset.modality_mask, dataset.dialogue_offsets
        features = {}
        for modality, matrix in dataset.features.items():
            mean, std = statistics[modality]
            standardised = (torch.from_numpy(matrix) - mean) / torch.where(std > 1e-6, std, torch.ones_like(std))
            present = torch.from_numpy(masks[modality])
            features[modality] = torch.cat(
                [
                    speaker_relative(
                        standardised[None, begin:end],
                        party[None, begin:end],
                        present[None, begin:end],
                        model.speaker_relative_inputs,
                        model.causal,
                        model.speaker_min_utterances,
                    )[0]
                    for begin, end in zip(bounds[:-1], bounds[1:])
                ]
            ).numpy()
        splits[split] = dataset.with_features(features)
    return DialogueData(splits, {modality: matrix.shape[1] for modality, matrix in splits["train"].features.items()})


def fit_linear_probe(
    data: DialogueData, label_names: list[str], seed: int = 0, model: ModelConfig | None = None, kind: str = "logistic"
) -> LinearProbeResult:
    """Fit on train for every ``C`` in ``C_GRID`` (warm-started from the previous one), select on dev, test once;
    on the inputs as ``model`` reads them when given. ``kind``: ``logistic`` regression or a linear ``svm``
    (one-vs-rest, squared hinge; no class probabilities)."""
    if model is not None:
        data = as_model_reads(data, model)
    scalers = _fit_scalers(data.splits["train"])
    train_x, train_y = _labelled_inputs(data.splits["train"], scalers)
    dev_x, dev_y = _labelled_inputs(data.splits["dev"], scalers)
    if kind == "svm":
        classifier: LogisticRegression | LinearSVC = LinearSVC(max_iter=MAX_ITERATIONS * 4, random_state=seed)
    else:
        classifier = LogisticRegression(max_iter=MAX_ITERATIONS, warm_start=True, random_state=seed)
    best: tuple[float, float, np.ndarray] | None = None
    scores: dict[float, float] = {}
    for C in C_GRID:
        classifier.set_params(C=C)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            classifier.fit(train_x, train_y)
        scores[C] = classification_metrics(dev_y, classifier.predict(dev_x), label_names)["weighted_f1"]
        if best is None or scores[C] > best[1]:
            best = (C, scores[C], _parameters(classifier))
    C, _, parameters = best
    classifier.coef_, classifier.intercept_ = parameters
    dev_metrics = classification_metrics(dev_y, classifier.predict(dev_x), label_names)
    train_metrics = classification_metrics(train_y, classifier.predict(train_x), label_names)
    has_probabilities = hasattr(classifier, "predict_proba")
    probabilities = {"dev": _probabilities(classifier, dev_x, len(label_names))} if has_probabilities else {}
    test_metrics = test_predictions = None
    test_set = data.splits.get("test")
    if test_set is not None and (test_set.labels >= 0).any():
        test_x, test_y = _labelled_inputs(test_set, scalers)
        test_predictions = classifier.predict(test_x)
        test_metrics = classification_metrics(test_y, test_predictions, label_names)
        if has_probabilities:
            probabilities["test"] = _probabilities(classifier, test_x, len(label_names))
    return LinearProbeResult(C, dev_metrics, test_metrics, scores, test_predictions, train_metrics, probabilities)


def _probabilities(classifier: LogisticRegression, inputs: np.ndarray, num_classes: int) -> np.ndarray:
    """Class probabilities with a column for every label id (zero for labels absent from training)."""
    placed = np.zeros((len(inputs), num_classes))
    placed[:, classifier.classes_] = classifier.predict_proba(inputs)
    return placed


def _parameters(classifier: LogisticRegression | LinearSVC) -> tuple[np.ndarray, np.ndarray]:
    return classifier.coef_.copy(), classifier.intercept_.copy()


def _fit_scalers(train: DialogueDataset) -> dict[str, StandardScaler]:
    features, masks = train.features, train.modality_mask
    return {
        modality: StandardScaler().fit(matrix[masks[modality]])
        for modality, matrix in features.items()
        if masks[modality].sum() > 1
    }


def _labelled_inputs(dataset: DialogueDataset, scalers: dict[str, StandardScaler]) -> tuple[np.ndarray, np.ndarray]:
    labelled = dataset.labels >= 0
    features, masks = dataset.features, dataset.modality_mask
    columns = []
    for modality, scaler in scalers.items():
        present = masks[modality][labelled]
        standardised = np.where(present[:, None], scaler.transform(features[modality][labelled]), 0.0)
        columns += [standardised, present[:, None].astype(np.float64)]
    return np.concatenate(columns, axis=1), dataset.labels[labelled]
