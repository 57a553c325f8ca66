"""The accuracy an ideal model could reach on the demo corpus, per modality subset and context.

The ideal model knows the generative model (``spikemo.data.demo.plan``) and reads each modality's cue
perfectly. Three settings:

- ``utterance``: one utterance at a time; exact, by enumerating every combination of cues.
- ``past``: also sees the same speaker's earlier turns (forward filtering of the speaker's emotion chain).
- ``dialogue``: sees the whole dialogue (forward-backward smoothing); Monte Carlo over drawn dialogues.

Speakers' emotion chains are independent, so other speakers' turns carry no information about a speaker.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from spikemo.config import MODALITIES
from spikemo.data.demo.plan import cue_likelihood, draw_dialogue, prior
from spikemo.data.demo.settings import EMOTIONS, DemoCorpusSettings


@dataclass(frozen=True)
class IdealAccuracy:
    """Bayes-optimal accuracy for one modality subset, without and with dialogue context."""

    modalities: tuple[str, ...]
    utterance: float
    past: float
    dialogue: float


def modality_subsets() -> list[tuple[str, ...]]:
    return [subset for size in range(1, len(MODALITIES) + 1) for subset in combinations(MODALITIES, size)]


def ideal_accuracies(settings: DemoCorpusSettings, dialogues: int = 20000) -> list[IdealAccuracy]:
    """For every non-empty modality subset: exact per-utterance accuracy, Monte Carlo context accuracies.

    The Monte Carlo draws ``dialogues`` dialogues from the corpus's own generator (seeded by ``settings.seed``).
    """
    likelihoods = {m: cue_likelihood(settings.cue_reliability[m], settings.neutral_when_hidden) for m in MODALITIES}
    truths, cues, lengths = _speaker_sequences(settings, dialogues)
    results = []
    for subset in modality_subsets():
        emissions = np.ones(cues[MODALITIES[0]].shape + (len(EMOTIONS),))
        for modality in subset:
            emissions *= likelihoods[modality][cues[modality]]
        past, smoothed = _filter_and_smooth(emissions, settings.persistence)
        valid = np.arange(truths.shape[1])[None, :] < lengths[:, None]
        results.append(
            IdealAccuracy(
                modalities=subset,
                utterance=_exact_utterance_accuracy([likelihoods[m] for m in subset]),
                past=float((past.argmax(-1) == truths)[valid].mean()),
                dialogue=float((smoothed.argmax(-1) == truths)[valid].mean()),
            )
        )
    return results


def majority_accuracy() -> float:
    """Accuracy of always answering the most frequent emotion (neutral)."""
    return float(prior().max())


def _exact_utterance_accuracy(likelihoods: list[np.ndarray]) -> float:
    """sum over cue combinations of max over emotions of P(emotion) * prod P(cue | emotion)."""
    joint = prior()  # shape (emotion,)
    for likelihood in likelihoods:
        joint = joint[..., None, :] * likelihood.reshape((1,) * (joint.ndim - 1) + likelihood.shape)
    return float(joint.max(axis=-1).sum())


def _speaker_sequences(
    settings: DemoCorpusSettings, dialogues: int
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Each speaker's turns in each drawn dialogue, as padded arrays of emotion ids and cue ids."""
    sequences: list[list[tuple[int, dict[str, int]]]] = []
    for index in range(dialogues):
        by_speaker: dict[str, list[tuple[int, dict[str, int]]]] = {}
        for u in draw_dialogue(settings, "train", index, index):
            cues = {"text": u.text_cue, "audio": u.audio_cue, "visual": u.visual_cue}
            by_speaker.setdefault(u.speaker, []).append(
                (EMOTIONS.index(u.emotion), {m: EMOTIONS.index(cues[m]) for m in MODALITIES})
            )
        sequences.extend(by_speaker.values())
    longest = max(len(sequence) for sequence in sequences)
    truths = np.zeros((len(sequences), longest), dtype=np.int64)
    cues = {m: np.zeros((len(sequences), longest), dtype=np.int64) for m in MODALITIES}
    lengths = np.array([len(sequence) for sequence in sequences])
    for row, sequence in enumerate(sequences):
        for column, (truth, cue) in enumerate(sequence):
            truths[row, column] = truth
            for modality in MODALITIES:
                cues[modality][row, column] = cue[modality]
    return truths, cues, lengths


def _filter_and_smooth(emissions: np.ndarray, persistence: float) -> tuple[np.ndarray, np.ndarray]:
    """Filtered and smoothed posteriors of a speaker's emotion chain (emissions: sequence x turn x emotion).

    The chain keeps the last emotion with probability ``persistence`` and otherwise redraws from the prior.
    Padding after a sequence's end must have emission 1 (it then leaves every posterior unchanged).
    """
    emotion_prior = prior()

    def step(belief: np.ndarray) -> np.ndarray:
        return persistence * belief + (1 - persistence) * emotion_prior * belief.sum(-1, keepdims=True)

    turns = emissions.shape[1]
    forward = np.empty_like(emissions)
    belief = emotion_prior * emissions[:, 0]
    forward[:, 0] = belief / belief.sum(-1, keepdims=True)
    for t in range(1, turns):
        belief = step(forward[:, t - 1]) * emissions[:, t]
        forward[:, t] = belief / belief.sum(-1, keepdims=True)
    backward = np.ones_like(emissions)
    for t in range(turns - 2, -1, -1):
        message = backward[:, t + 1] * emissions[:, t + 1]
        # sum over next emotion j of A[i, j] * message[j], A = persistence * I + (1 - persistence) * 1 prior^T
        backward[:, t] = persistence * message + (1 - persistence) * (message @ emotion_prior)[:, None]
        backward[:, t] /= backward[:, t].sum(-1, keepdims=True)
    smoothed = forward * backward
    return forward, smoothed / smoothed.sum(-1, keepdims=True)
