"""Emotions for new conversations: raw utterances → features with the model's own encoders → labels.

The model's spec names the encoder of every modality with a fingerprint; features are rebuilt with
encoders whose fingerprints match, or prediction refuses. Utterances without media for a modality are
masked for it; a text-only conversation works with a multimodal model.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch

from spikemo.bundle import ModelSpec, load_bundle
from spikemo.config import DataConfig, ModelConfig
from spikemo.data.ingest import REJECTED, ingest
from spikemo.data.readers import read_csv_strict, require_columns
from spikemo.data.schema import read_manifest
from spikemo.errors import ConfigError, DataError
from spikemo.features.base import build_encoder
from spikemo.features.extract import extract_modality, load_features
from spikemo.model.ensemble import EmotionModel
from spikemo.tracking import resolve_model_uri
from spikemo.training.data import build_dialogue_data, collate_dialogues
from spikemo.training.metrics import classification_metrics, dialogue_bootstrap

log = logging.getLogger(__name__)
KEY_COLUMNS = ["dialogue_id", "utterance_index"]


class Predictor:
    """A loaded model and the recipe for its inputs."""

    def __init__(self, model: EmotionModel, spec: ModelSpec, batch_dialogues: int = 32) -> None:
        self.model = model.eval()
        self.spec = spec
        self.batch_dialogues = batch_dialogues

    def _warn_about_isolated_utterances(self, manifest: pd.DataFrame) -> None:
        """A model that reads dialogue context, given no conversation of two turns or more, scores each utterance
        out of context; speakers with fewer utterances than ``model.speaker_min_utterances`` are normalised with
        the training population's statistics."""
        reads = _reads_dialogue_context(self.spec.model)
        sizes = manifest.groupby(["split", "dialogue_id"]).size()
        if reads and sizes.max() < 2:
            log.warning(
                "every conversation given holds a single utterance, but this model reads dialogue context (%s): "
                "give each conversation's turns together (same dialogue_id) for the scores it was trained for",
                ", ".join(reads),
            )
        if self.spec.model.speaker_relative_inputs != "off":
            per_speaker = manifest.groupby(["split", "dialogue_id", "party"]).size()
            few = int((per_speaker < self.spec.model.speaker_min_utterances).sum())
            if few:
                log.info(
                    "%d speaker(s) with fewer than %d utterances in their conversation: normalised with the training "
                    "population's statistics",
                    few,
                    self.spec.model.speaker_min_utterances,
                )

    @classmethod
    def from_bundle(cls, directory: Path) -> Predictor:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model, spec = load_bundle(directory, device)
        return cls(model, spec)

    @classmethod
    def from_uri(cls, model_uri: str) -> Predictor:
        """Load from MLflow (``models:/spikemo-meld@champion``, ``runs:/…``); one-line error if unknown."""
        try:
            loaded = mlflow.pyfunc.load_model(resolve_model_uri(model_uri))
        except (OSError, mlflow.exceptions.MlflowException) as error:
            raise ConfigError(f"{model_uri}: cannot load the model ({str(error).splitlines()[0]})") from None
        return loaded.unwrap_python_model().predictor

    def check_encoders(self) -> None:
        """Refuse when an encoder available here would not reproduce the model's training features."""
        for modality, recorded in self.spec.encoders.items():
            rebuilt = build_encoder(modality, self.spec.features).fingerprint
            if rebuilt != recorded.fingerprint:
                raise ConfigError(
                    f"the model's {modality} encoder {recorded.encoder.name!r} cannot be matched here "
                    f"(fingerprint {recorded.fingerprint[:12]} recorded, {rebuilt[:12]} available): "
                    "install the same encoder weights/versions or retrain"
                )

    def predict_frame(
        self, utterances: pd.DataFrame, media_root: Path | None = None, cache: Path | None = None
    ) -> pd.DataFrame:
        """Predict every utterance of a DataFrame in the generic manifest layout (labels optional)."""
        with tempfile.TemporaryDirectory(prefix="spikemo-predict-") as scratch:
            frame = utterances.copy()
            if "split" not in frame:
                frame["split"] = "test"
            manifest_file = Path(scratch) / "conversations.parquet"
            frame.astype({"dialogue_id": str}).to_parquet(manifest_file)
            data = DataConfig(
                format="manifest",
                manifest=manifest_file,
                root=media_root or Path(scratch),
                labels=self.spec.labels,
                name=self.spec.dataset,
            )
            return self.predict_dataset(data, Path(cache) if cache else Path(scratch) / "cache")

    def predict_dataset(self, data: DataConfig, cache: Path, splits: list[str] | None = None) -> pd.DataFrame:
        """Predict a dataset (any ingest format), or some of its splits; its features are cached under ``cache``."""
        self.check_encoders()
        manifest_path = Path(cache) / f"{data.dataset_name}-predict" / "manifest.parquet"
        ingested = ingest(data, manifest_path, require_labels=False)
        manifest = ingested.manifest
        if splits is not None:
            manifest = manifest[manifest["split"].isin(splits)].reset_index(drop=True)
            if manifest.empty:
                raise DataError(f"{data.dataset_name}: no utterance in split(s) {', '.join(splits)}")
        features = {}
        for modality in self.spec.modalities:
            extracted = extract_modality(manifest_path, modality, self.spec.features, cache)
            if extracted.failed:
                log.warning(
                    "%s: %d utterance(s) failed to encode; they are masked for this modality",
                    modality,
                    extracted.failed,
                )
            features[modality] = load_features(manifest, modality, self.spec.features, cache)
        predictions = self.predict_features(manifest, features)
        return _with_rejected(predictions, ingested.problems, self.spec.labels)

    @torch.inference_mode()
    def predict_features(
        self, manifest: pd.DataFrame, features: dict[str, pd.DataFrame], warn_isolated: bool = True
    ) -> pd.DataFrame:
        """Labels and probabilities of manifest rows (``utterance_key``, ``split``, ``dialogue_id``, ``turn``,
        ``party``, ``utterance_index``, ``speaker``) from their feature tables (``load_features``'s layout);
        ``warn_isolated`` False for a live conversation's first turn."""
        if not any((table["status"] == "ok").any() for table in features.values()):
            raise DataError(
                "no utterance has usable features for any of the model's modalities; check the input's text and media"
            )
        if warn_isolated:
            self._warn_about_isolated_utterances(manifest)
        unlabelled = manifest.assign(label_id=-1)  # predictions never read labels, whatever label set the data uses
        data = build_dialogue_data(unlabelled, features, len(self.spec.labels), input_dims=self.spec.input_dims)
        device = next(self.model.parameters()).device
        keys, probabilities = [], []
        for dataset in data.splits.values():
            for start in range(0, len(dataset), self.batch_dialogues):
                dialogues = [dataset[i] for i in range(start, min(start + self.batch_dialogues, len(dataset)))]
                batch = collate_dialogues(dialogues).to(device)
                probs = torch.softmax(self.model(batch).logits.float(), dim=-1)
                probabilities.append(probs[batch.utterance_mask].cpu().numpy())
            keys.append(dataset.utterance_keys)
        by_key = pd.DataFrame(
            np.concatenate(probabilities),
            index=np.concatenate(keys),
            columns=[f"prob_{label}" for label in self.spec.labels],
        )
        rows = manifest.set_index("utterance_key").loc[by_key.index]
        out = pd.DataFrame(
            {
                "utterance_key": by_key.index,
                "split": rows["split"].to_numpy(),
                "dialogue_id": rows["dialogue_id"].to_numpy(),
                "utterance_index": rows["utterance_index"].astype(np.int64).to_numpy(),
            }
        )
        out["speaker"] = rows["speaker"].to_numpy()
        out["label"] = np.asarray(self.spec.labels)[by_key.to_numpy().argmax(axis=1)]
        out[by_key.columns] = by_key.to_numpy().astype(np.float64)
        out["problem"] = None
        return out


def _reads_dialogue_context(config: ModelConfig) -> list[str]:
    """What in a model's settings draws on the other turns of a conversation."""
    reads = []
    if config.speaker_relative_inputs != "off":
        reads.append(f"speaker_relative_inputs {config.speaker_relative_inputs}")
    if config.speaker_evidence_rounds:
        reads.append("speaker evidence")
    if config.use_spiking or config.dialogue_context:
        reads.append("attention across turns")
    return reads


def _with_rejected(predictions: pd.DataFrame, problems: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    rejected = problems[problems["action"] == REJECTED]
    if rejected.empty:
        return predictions.reset_index(drop=True)
    extra = pd.DataFrame(
        {
            "utterance_key": None,
            "split": rejected["split"].to_numpy(),
            "dialogue_id": rejected["dialogue_id"].to_numpy(),
            "utterance_index": pd.to_numeric(rejected["utterance_index"], errors="coerce")
            .fillna(-1)
            .astype(np.int64)
            .to_numpy(),
            "speaker": None,
            "label": None,
            **{f"prob_{label}": np.nan for label in labels},
            "problem": rejected["reason"].to_numpy(),
        }
    )
    return pd.concat([predictions, extra], ignore_index=True)


MELD_TO_MANIFEST = {
    "Dialogue_ID": "dialogue_id",
    "Utterance_ID": "utterance_index",
    "Speaker": "speaker",
    "Utterance": "text",
    "Emotion": "label",
}


def read_conversations(path: Path) -> pd.DataFrame:
    """Conversations to predict: a generic manifest (CSV, JSONL, Parquet) or a MELD-style CSV.

    MELD rows get ``media_path = diaX_uttY.mp4`` (relative to ``--media-root``); absent clips leave the
    utterance text-only.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{path}: conversations file not found (or a directory); pass a CSV, JSONL or Parquet file")
    if suffix == ".csv":
        frame = read_csv_strict(path, [])
    elif suffix in (".jsonl", ".ndjson"):
        frame = pd.read_json(path, lines=True, dtype=False)
    elif suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        raise DataError(f"{path}: unknown conversations type {suffix!r}; use .csv, .jsonl or .parquet")
    if {"Dialogue_ID", "Utterance_ID", "Utterance"} <= set(frame.columns):
        frame = frame.rename(columns=MELD_TO_MANIFEST)
        frame["media_path"] = (
            "dia"
            + frame["dialogue_id"].astype(str).str.strip()
            + "_utt"
            + frame["utterance_index"].astype(str).str.strip()
            + ".mp4"
        )
    require_columns(frame, ["dialogue_id", "utterance_index", "speaker", "text"], path)
    return frame


def evaluate_predictions(
    predictor: Predictor,
    data: DataConfig | None,
    cache: Path,
    split: str,
    bootstrap_draws: int = 1000,
    bootstrap_seed: int = 0,
) -> dict[str, Any]:
    """Score ``predictor`` on one split of a dataset (default: the dataset the model was trained on), with
    95% intervals of the headline scores from resampling the split's dialogues (``weighted_f1_ci`` …)."""
    if data is None:
        raise ConfigError(
            "evaluate needs the dataset: pass --format/--root (or --manifest) or a --config with data.root"
        )
    predictions = predictor.predict_dataset(data, Path(cache), splits=[split])
    manifest, _ = read_manifest(Path(cache) / f"{data.dataset_name}-predict" / "manifest.parquet")
    by_key = manifest.set_index("utterance_key")
    scored = predictions[predictions["utterance_key"].notna()]
    names = (
        by_key["label"].reindex(scored["utterance_key"]).to_numpy()
    )  # by name: the label order may differ from the model's
    labelled = pd.notna(names)
    if not labelled.any():
        raise DataError(f"the {split} split has no labelled utterance to score")
    label_ids = {label: i for i, label in enumerate(predictor.spec.labels)}
    unknown = sorted(set(names[labelled]) - set(label_ids))
    if unknown:
        raise DataError(
            f"{data.dataset_name}: label(s) {', '.join(unknown)} in the {split} split are not among the model's "
            f"{', '.join(predictor.spec.labels)}; evaluate on data annotated with the model's label set"
        )
    truth_ids = np.array([label_ids[name] for name in names[labelled]], dtype=np.int64)
    predicted = scored["label"].map(label_ids).to_numpy()[labelled].astype(np.int64)
    dialogues = by_key["dialogue_id"].reindex(scored["utterance_key"]).to_numpy()[labelled]
    intervals = dialogue_bootstrap(
        truth_ids, predicted, dialogues, len(label_ids), draws=bootstrap_draws, seed=bootstrap_seed
    )
    return {**classification_metrics(truth_ids, predicted, predictor.spec.labels), **intervals.summary()}


def newest_turns(predictions: pd.DataFrame, newest: int) -> pd.DataFrame:
    """The ``newest`` last predicted turns of each dialogue (rejected rows, which have no prediction, dropped)."""
    predicted = predictions[predictions["label"].notna()].sort_values(
        ["split", "dialogue_id", "utterance_index"], kind="stable"
    )
    return predicted.groupby(["split", "dialogue_id"], sort=False).tail(newest).reset_index(drop=True)


def write_predictions(predictions: pd.DataFrame, out: Path) -> dict[str, Any]:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".parquet":
        predictions.to_parquet(out, index=False)
    elif out.suffix.lower() in (".jsonl", ".ndjson"):
        predictions.to_json(out, orient="records", lines=True, force_ascii=False)
    else:
        raise ConfigError(f"{out}: use a .jsonl or .parquet output file")
    return {
        "out": str(out),
        "utterances": int(len(predictions)),
        "predicted": int(predictions["label"].notna().sum()),
        "label_counts": {str(k): int(v) for k, v in predictions["label"].value_counts().items()},
    }
