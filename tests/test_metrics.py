"""Classification scores and their dialogue bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from spikemo.training.metrics import classification_metrics, dialogue_bootstrap


def test_the_point_estimates_are_scikit_learns() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 400)
    predictions = np.where(rng.random(400) < 0.5, labels, rng.integers(0, 5, 400))  # classes 5, 6 never predicted
    report = dialogue_bootstrap(labels, predictions, rng.integers(0, 40, 400), num_classes=7, draws=200)
    expected = classification_metrics(labels, predictions, list("abcdefg"))
    for name, interval in report.scores.items():
        assert interval.value == pytest.approx(expected[name])
        assert interval.low < interval.value < interval.high


def test_accuracy_interval_of_one_utterance_dialogues_matches_the_binomial_closed_form() -> None:
    """With one utterance per dialogue, resampled accuracy is Binomial(n, p) / n: its 95% interval is close to
    p ± 1.96 sqrt(p (1 - p) / n)."""
    n, correct = 2000, 1400
    labels = np.zeros(n, dtype=np.int64)
    predictions = np.where(np.arange(n) < correct, 0, 1)
    report = dialogue_bootstrap(labels, predictions, np.arange(n), num_classes=2, draws=20000, seed=3)
    p = correct / n
    half_width = 100 * 1.96 * np.sqrt(p * (1 - p) / n)
    accuracy = report.scores["accuracy"]
    assert accuracy.value == pytest.approx(70.0)
    assert accuracy.low == pytest.approx(70.0 - half_width, abs=0.15) and accuracy.high == pytest.approx(
        70.0 + half_width, abs=0.15
    )


def test_whole_dialogues_are_resampled_so_correlated_turns_widen_the_interval() -> None:
    """The same 1,000 outcomes, once as independent utterances and once as 50 dialogues whose 20 turns are all
    right or all wrong: the second interval is several times wider."""
    labels = np.zeros(1000, dtype=np.int64)
    predictions = np.repeat(np.arange(50) % 2, 20)
    independent = dialogue_bootstrap(labels, predictions, np.arange(1000), num_classes=2, seed=0).scores["accuracy"]
    clustered = dialogue_bootstrap(labels, predictions, np.repeat(np.arange(50), 20), num_classes=2, seed=0).scores[
        "accuracy"
    ]
    assert (clustered.high - clustered.low) > 3 * (independent.high - independent.low)


def test_paired_difference_verdicts_and_determinism_under_a_seed() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 600)
    dialogues = rng.integers(0, 80, 600)
    good = np.where(rng.random(600) < 0.8, labels, (labels + 1) % 4)
    poor = np.where(rng.random(600) < 0.5, labels, (labels + 1) % 4)
    report = dialogue_bootstrap(labels, good, dialogues, 4, baseline_predictions=poor, seed=5)
    assert report.verdict == "better"
    assert dialogue_bootstrap(labels, poor, dialogues, 4, baseline_predictions=good, seed=5).verdict == "worse"
    assert (
        dialogue_bootstrap(labels, good, dialogues, 4, baseline_predictions=good, seed=5).verdict
        == "no significant difference"
    )
    again = dialogue_bootstrap(labels, good, dialogues, 4, baseline_predictions=poor, seed=5)
    assert again == report
    assert dialogue_bootstrap(labels, good, dialogues, 4, baseline_predictions=poor, seed=6) != report
    difference = report.difference["weighted_f1"]
    assert difference.value == pytest.approx(report.scores["weighted_f1"].value - report.baseline["weighted_f1"].value)
    summary = report.summary("test_")
    assert summary["verdict_vs_baseline"] == "better" and summary["test_weighted_f1_minus_baseline"][0] == round(
        difference.value, 2
    )
    assert str(report.scores["accuracy"]).count("[") == 1


def test_a_split_of_one_dialogue_resamples_its_utterances() -> None:
    """One speaker's session as the whole test split: resampling whole dialogues would draw that one dialogue every
    time (an interval of zero width); its utterances are resampled instead, as if each were its own dialogue."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 7, 60)
    model = np.where(rng.random(60) < 0.8, labels, (labels + 1) % 7)
    probe = np.where(rng.random(60) < 0.7, labels, (labels + 1) % 7)
    one_session = dialogue_bootstrap(labels, model, np.zeros(60), 7, baseline_predictions=probe, seed=4)
    as_turns = dialogue_bootstrap(labels, model, np.arange(60), 7, baseline_predictions=probe, seed=4)
    assert one_session.unit == "utterance" and as_turns.unit == "dialogue"
    assert one_session.summary("test_")["test_interval_unit"] == "utterance"
    assert one_session.scores == as_turns.scores and one_session.difference == as_turns.difference
    weighted_f1 = one_session.scores["weighted_f1"]
    assert weighted_f1.high - weighted_f1.low > 5
