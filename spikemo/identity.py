"""What makes two runs or two stage outputs the same: one digest per stage, each over the config it reads, the
data it sees and the encoders that made its features.

- ``training_run_key``: a training's work folder, so a killed run resumes there: the config except where things
  are stored and logged, the manifest's training content, the encoders' fingerprints.
- ``checkpoint_identity``: what a training checkpoint must match to be resumed (epochs and patience may grow).
- ``finetune_key``: the text fine-tune's folder, so the same inputs reuse a finished fine-tune: the base
  encoder's spec, the fine-tune settings (with a dialogue head, the model and loss settings too) and the
  manifest's dialogue content.
- ``training_cache_key``: the Prefect train task's cache: the training run's inputs, the library's code and the
  MLflow store.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import spikemo
from spikemo.config import SpikEmoConfig

TRAINING_COLUMNS = ["utterance_key", "split", "label_id", "text", "media_fingerprint"]  # what training reads
FINETUNE_COLUMNS = ["utterance_key", "split", "dialogue_id", "turn", "speaker", "text", "label_id"]  # the fine-tune's
# fine-tune settings added after fine-tunes were made: at these defaults they are left out of the key, so those
# fine-tunes are found again
FINETUNE_SETTINGS_ADDED = {"head": "utterance", "head_lr": None, "contrastive": None}


def stable_digest(*parts: Any) -> str:
    """sha256 of JSON-serialisable ``parts`` (keys sorted; anything else by its ``str``)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def manifest_digest(manifest: pd.DataFrame, columns: list[str] = TRAINING_COLUMNS) -> str:
    """The manifest's content in ``columns`` (default: keys, splits, labels, text and media content)."""
    content = manifest[columns].astype(str)
    return hashlib.sha256(pd.util.hash_pandas_object(content, index=False).to_numpy().tobytes()).hexdigest()


@cache
def code_digest() -> str:
    """sha256 over the spikemo library's source files: a change to the code invalidates cached training."""
    package = Path(spikemo.__file__).parent
    hasher = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        hasher.update(str(path.relative_to(package)).encode())
        hasher.update(path.read_bytes())
    return hasher.hexdigest()


def training_run_key(config: SpikEmoConfig, manifest: pd.DataFrame, fingerprints: dict[str, str]) -> str:
    """``<dataset>-<digest>``: same config and same data (keys, labels, media and encoders) → same work folder."""
    digest = hashlib.sha256()
    identity = config.model_dump(mode="json", exclude={"workdir", "cache", "tracking"})
    digest.update(json.dumps(identity, sort_keys=True).encode())
    digest.update(manifest_digest(manifest).encode())
    digest.update(json.dumps(fingerprints, sort_keys=True).encode())
    return f"{config.data.dataset_name}-{digest.hexdigest()[:16]}"


def checkpoint_identity(
    config: SpikEmoConfig, splits: dict[str, Any], label_names: list[str], input_dims: dict[str, int]
) -> dict[str, Any]:
    """What must match for a training checkpoint to be resumed: settings (epochs may grow), labels and the
    train and dev dialogues (``splits``: ``DialogueDataset`` per split)."""
    digest = hashlib.sha256()
    for split in ("train", "dev"):
        dataset = splits[split]
        digest.update("\n".join(dataset.utterance_keys.tolist()).encode())
        digest.update(np.asarray(dataset.labels).tobytes())
    return {
        "model": config.model.model_dump(mode="json"),
        "train": config.train.model_dump(mode="json", exclude={"epochs", "patience", "device"}),
        "label_names": label_names,
        "input_dims": input_dims,
        "data_sha256": digest.hexdigest(),
    }


def finetune_key(config: SpikEmoConfig, manifest: pd.DataFrame, encoder_spec: dict[str, Any]) -> str:
    """``<dataset>-<digest>`` of a text fine-tune; ``encoder_spec``: the base encoder's ``spec()`` (name,
    parameters, input construction, weight hashes)."""
    spec = {**encoder_spec, "params": {k: v for k, v in encoder_spec["params"].items() if k != "model"}}
    text = config.features.text  # the same weights found at another path are the same base model (no "model")
    settings = text.finetune.model_dump() if text.finetune else None
    head: dict[str, Any] = {}
    if settings is not None:
        for name, default in FINETUNE_SETTINGS_ADDED.items():
            if settings[name] == default:
                del settings[name]
        if settings.get("head") == "dialogue":  # the head's architecture and loss shape the encoder too
            train = config.train
            head = {
                "model": config.model.model_dump(),
                "loss": train.loss_weights.model_dump(),
                "class_weighting": train.class_weighting,
                "label_smoothing": train.label_smoothing,
            }
    identity = {
        "encoder": spec,
        "finetune": settings,
        **({"dialogue_head": head} if head else {}),
        "data": manifest_digest(manifest, FINETUNE_COLUMNS),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"{config.data.dataset_name}-{digest[:16]}"


def training_cache_key(
    config: dict[str, Any], manifest: pd.DataFrame, fingerprints: dict[str, str], tracking_uri: str
) -> str:
    """Same config (wherever its cache lives), manifest content, encoders, library code and MLflow store (where
    the finished run lives) → the finished training is reused."""
    stored_anywhere = {key: value for key, value in config.items() if key != "cache"}
    return stable_digest("train", stored_anywhere, manifest_digest(manifest), fingerprints, code_digest(), tracking_uri)
