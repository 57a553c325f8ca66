"""The pipeline's stages, in order: ingest → text fine-tune (when configured) → extract → train → register.

The CLI, the Prefect flows and ``spikemo demo`` run these stages; each takes the config resolved once by its
command or flow run. ``preprocess`` runs the first three, ``train_and_register`` the last two and
``run_experiment`` all five (``spikemo train``). Each stage is carried out by a ``Stages`` object: in this process
by default; the Prefect flows hand their own, which runs each stage as a task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spikemo.config import SpikEmoConfig
from spikemo.data.ingest import ingest
from spikemo.experiment import TrainedRun, load_prepared, register, train_and_log, train_on_follower_rank
from spikemo.features.extract import extract_modality
from spikemo.training.distributed import broadcast_from_main, distributed_context
from spikemo.training.text_finetune import finetune_text_encoder, finetuned_text_config


class Stages:
    """How each stage is carried out: here, in this process, one after the other."""

    def ingest(self, config: SpikEmoConfig) -> dict[str, Any]:
        """Ingest ``config.data`` to ``config.manifest_path``; the summary names the manifest."""
        return ingest(config.data, config.manifest_path).summary()

    def finetune(self, config: SpikEmoConfig, manifest_path: Path) -> dict[str, Any]:
        """Fine-tune the text encoder (or find the finished fine-tune of the same inputs)."""
        return finetune_text_encoder(config, manifest_path).summary()

    def extract(self, config: SpikEmoConfig, manifest_path: Path) -> dict[str, dict[str, Any]]:
        """Each configured modality's cache, encoding what it lacks."""
        return {
            modality: extract_modality(manifest_path, modality, config.features, config.cache).summary()
            for modality in config.features.modalities
        }

    def train(self, config: SpikEmoConfig, preprocessed: dict[str, Any]) -> TrainedRun:
        """Train on the preprocessed data, select on dev, score test once, log one MLflow run."""
        return train_and_log(config, load_prepared(config, Path(preprocessed["manifest"]), preprocessed))

    def register(self, config: SpikEmoConfig, trained: TrainedRun) -> dict[str, Any]:
        """Register the run's model and gate the champion alias."""
        return register(config, trained).summary()


def preprocess(config: SpikEmoConfig, stages: Stages | None = None) -> dict[str, Any]:
    """Ingest ``config.data``, fine-tune the text encoder if ``features.text.finetune`` asks for it (or reuse
    the finished fine-tune), then extract each configured modality (text with the fine-tuned encoder)."""
    stages = stages or Stages()
    ingested = stages.ingest(config)
    manifest_path = Path(ingested["manifest"])
    summary: dict[str, Any] = {key: ingested[key] for key in ("manifest", "utterances", "rejected")}
    if config.fine_tunes_text:
        summary["text_finetune"] = stages.finetune(config, manifest_path)
    summary["modalities"] = stages.extract(finetuned_text_config(config, manifest_path), manifest_path)
    return summary


def train_and_register(
    config: SpikEmoConfig, preprocessed: dict[str, Any], stages: Stages | None = None
) -> dict[str, Any]:
    """Train and log on ``preprocess``'s output, then register; the run's summary and the registry's decision."""
    stages = stages or Stages()
    trained = stages.train(config, preprocessed)
    return {**trained.summary, **stages.register(config, trained)}


def run_experiment(config: SpikEmoConfig) -> dict[str, Any]:
    """Every stage (``spikemo train``): preprocess, then train, log and register; the summary of it all.

    Under ``torchrun`` it is one training over all ranks: rank 0 preprocesses while the others wait, then every
    rank trains its share; rank 0 alone opens the MLflow store, logs the run, fits the probe and registers the
    version. The other ranks return ``{"rank": r}``."""
    with distributed_context(config.train.device) as context:
        preprocessed = broadcast_from_main(preprocess(config) if context.is_main else None, context)
        if context.is_main:
            return train_and_register(config, preprocessed)
        data = load_prepared(config, Path(preprocessed["manifest"]), preprocessed)
        return train_on_follower_rank(config, data, context.rank)
