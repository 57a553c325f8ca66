"""Prediction for new conversations from registered models."""

from __future__ import annotations

import json
import warnings

import mlflow
import numpy as np
import pandas as pd
import pytest

from spikemo import stages
from spikemo.cli import main
from spikemo.config import SpikEmoConfig, with_overrides
from spikemo.predict import Predictor
from spikemo.tracking import connect

EMOTIONS = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]


@pytest.fixture(scope="module")
def text_model(tmp_path_factory, generated_text_config):
    """A text-only SpikEmo with speaker evidence, trained on generated transcripts (annotations only: 100 dialogues)."""
    root = tmp_path_factory.mktemp("generated-text")
    config = generated_text_config(
        root,
        "gentext",
        dialogues=100,
        seed=3,
        **{
            "model.model_dim": 32,
            "model.speaker_evidence_rounds": 2,
            "train.epochs": 15,
            "train.patience": 5,
        },
    )
    return config, stages.run_experiment(config), root


def test_predictions_have_the_schema_and_beat_the_majority_class(text_model, tmp_path):
    config, summary, root = text_model
    out = tmp_path / "predictions.jsonl"
    code = main(
        [
            "predict",
            "--workdir",
            str(config.workdir),
            "--cache",
            str(tmp_path / "cache"),
            "--model",
            "models:/spikemo-gentext@champion",
            "--input",
            str(root / "test_sent_emo.csv"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    rows = pd.read_json(out, lines=True)
    expected = [
        "utterance_key",
        "split",
        "dialogue_id",
        "utterance_index",
        "speaker",
        "label",
        *[f"prob_{e}" for e in EMOTIONS],
        "problem",
    ]
    assert list(rows.columns) == expected
    truth = pd.read_csv(root / "test_sent_emo.csv")
    assert len(rows) == len(truth)
    np.testing.assert_allclose(rows[[f"prob_{e}" for e in EMOTIONS]].sum(axis=1), 1.0, atol=1e-5)
    merged = rows.merge(truth, left_on=["dialogue_id", "utterance_index"], right_on=["Dialogue_ID", "Utterance_ID"])
    accuracy = (merged["label"] == merged["Emotion"]).mean()
    majority = truth["Emotion"].value_counts(normalize=True).max()  # a constant "neutral" predictor
    assert accuracy >= majority + 0.10, (accuracy, majority)


def test_python_api_and_pyfunc_agree(text_model):
    config, summary, root = text_model
    connect(config)
    conversations = pd.read_csv(root / "dev_sent_emo.csv", dtype={"Dialogue_ID": str}).rename(
        columns={
            "Dialogue_ID": "dialogue_id",
            "Utterance_ID": "utterance_index",
            "Speaker": "speaker",
            "Utterance": "text",
        }
    )[["dialogue_id", "utterance_index", "speaker", "text"]]
    direct = Predictor.from_uri("models:/spikemo-gentext@champion").predict_frame(conversations)
    through_mlflow = mlflow.pyfunc.load_model("models:/spikemo-gentext/1").predict(conversations)
    pd.testing.assert_frame_equal(direct.reset_index(drop=True), through_mlflow.reset_index(drop=True))


def _tiny_corpus_config(tmp_path, tiny_corpus, tiny_config, name: str, modalities: list[str]) -> SpikEmoConfig:
    """A one-epoch SpikEmo named ``name`` on the generated multimodal corpus, reading ``modalities``."""
    return tiny_config(
        tmp_path / "unused.csv",
        tmp_path / "work",
        tmp_path / "cache",
        **{
            "data.format": "meld",
            "data.root": str(tiny_corpus),
            "data.manifest": None,
            "data.name": name,
            "features.modalities": modalities,
            "features.frames_per_clip": 2,
            "train.epochs": 1,
        },
    )


def test_text_only_input_to_a_multimodal_model(tmp_path, tiny_corpus, tiny_config):
    config = _tiny_corpus_config(tmp_path, tiny_corpus, tiny_config, "tinymm", ["text", "audio", "visual"])
    stages.run_experiment(config)
    connect(config)
    predictor = Predictor.from_uri("models:/spikemo-tinymm@champion")
    assert predictor.spec.modalities == ["text", "audio", "visual"]
    conversation = pd.DataFrame(
        {
            "dialogue_id": ["x", "x", "x"],
            "utterance_index": [0, 1, 2],
            "speaker": ["A", "B", "A"],
            "text": ["I can't believe you did that!", "What do you mean?", "This is wonderful news."],
        }
    )
    predictions = predictor.predict_frame(conversation)
    assert predictions["label"].notna().all() and len(predictions) == 3


def test_an_audio_only_model_is_logged_without_a_text_example_it_cannot_score(
    tmp_path, tiny_corpus, tiny_config, capfd
):
    config = _tiny_corpus_config(tmp_path, tiny_corpus, tiny_config, "tinyaudio", ["audio"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stages.run_experiment(config)
    assert "Failed to validate serving input example" not in capfd.readouterr().err
    assert not [str(w.message) for w in caught if "input example" in str(w.message)]
    connect(config)
    logged = mlflow.models.get_model_info("models:/spikemo-tinyaudio@champion")
    assert logged.saved_input_example_info is None and logged.signature is not None


def test_a_seed_ensemble_registers_and_evaluates_to_its_training_runs_test_score(
    tmp_path, tiny_corpus, tiny_config, capsys
):
    config = _tiny_corpus_config(tmp_path, tiny_corpus, tiny_config, "tinyensemble", ["audio"])
    summary = stages.run_experiment(with_overrides(config, {"model.members": 2}))
    connect(config)
    logged = mlflow.get_run(summary["run_id"]).data.metrics
    assert "dev/weighted_f1" in logged and "member1.dev_weighted_f1" in logged
    scores = _evaluate_test_split(config, "tinyensemble", tiny_corpus, capsys)
    assert scores["weighted_f1"] == pytest.approx(summary["test_weighted_f1"], abs=1e-6)


def test_cli_unknown_alias_is_one_line(text_model, capsys):
    config, _, root = text_model
    code = main(
        [
            "predict",
            "--workdir",
            str(config.workdir),
            "--model",
            "models:/spikemo-gentext@nope",
            "--input",
            str(root / "test_sent_emo.csv"),
            "--out",
            "x.jsonl",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "alias 'nope'" in err[0]


def test_evaluate_reproduces_the_training_runs_test_score(text_model, tmp_path, capsys):
    config, summary, root = text_model
    scores = _evaluate_test_split(config, "gentext", root, capsys)
    assert scores["weighted_f1"] == pytest.approx(summary["test_weighted_f1"], abs=1e-6)
    assert scores["weighted_f1_ci"] == summary["test_weighted_f1_ci"]  # same dialogues, same seed, same resamples


def _evaluate_test_split(config: SpikEmoConfig, name: str, root, capsys) -> dict:
    """``spikemo evaluate`` of the champion ``spikemo-<name>`` on the test split of the MELD-layout corpus at
    ``root``: the scores it prints."""
    arguments = ["--workdir", str(config.workdir), "--cache", str(config.cache), "--split", "test"]
    model = ["--model", f"models:/spikemo-{name}@champion", "--format", "meld", "--root", str(root), "--name", name]
    assert main(["evaluate", *arguments, *model]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _as_manifest(root, out):
    """The generated test split as a generic manifest."""
    frame = pd.read_csv(root / "test_sent_emo.csv")
    manifest = pd.DataFrame(
        {
            "dialogue_id": frame["Dialogue_ID"].astype(str),
            "utterance_index": frame["Utterance_ID"],
            "speaker": frame["Speaker"],
            "text": frame["Utterance"],
            "label": frame["Emotion"],
            "split": "test",
        }
    )
    manifest.to_csv(out, index=False)
    return manifest


def test_evaluate_maps_labels_by_name_and_refuses_unknown_ones(text_model, tmp_path, capsys):
    config, summary, root = text_model
    manifest = _as_manifest(root, tmp_path / "gentext.csv")
    common = [
        "evaluate",
        "--workdir",
        str(config.workdir),
        "--cache",
        str(tmp_path / "cache"),
        "--model",
        "models:/spikemo-gentext@champion",
        "--split",
        "test",
        "--format",
        "manifest",
        "--manifest",
    ]
    reversed_labels = ",".join(reversed(EMOTIONS))  # same names, another order than the model's
    assert main([*common, str(tmp_path / "gentext.csv"), "--labels", reversed_labels]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["weighted_f1"] == pytest.approx(summary["test_weighted_f1"], abs=1e-6)
    assert scores["weighted_f1_ci"] == summary["test_weighted_f1_ci"]  # same dialogues, same seed, same resamples

    manifest.loc[0, "label"] = "sarcasm"
    manifest.to_csv(tmp_path / "sarcastic.csv", index=False)
    assert main([*common, str(tmp_path / "sarcastic.csv"), "--labels", f"{reversed_labels},sarcasm"]) == 3
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "sarcasm" in errors[0] and "model's label set" in errors[0]
