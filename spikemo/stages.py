"""The pipeline's stages, in order: ingest → text fine-tune (when configured) → extract → train → register.

The CLI, the Prefect flows and ``spikemo demo`` run these stages; each takes the config resolved once by its
command or flow run. ``preprocess`` runs the first three, in this process (``PreprocessStages``) or each as a
Prefect task (the preprocess flow hands its own ``PreprocessStages``); ``spikemo.experiment.run_experiment`` runs
the rest, calling ``preprocess`` first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spikemo.config import SpikEmoConfig
from spikemo.data.ingest import ingest
from spikemo.features.extract import extract_modality
from spikemo.training.text_finetune import finetune_text_encoder, finetuned_text_config


class PreprocessStages:
    """How each preprocessing stage is carried out: here, in this process, one after the other."""

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


def preprocess(config: SpikEmoConfig, stages: PreprocessStages | None = None) -> dict[str, Any]:
    """Ingest ``config.data``, fine-tune the text encoder if ``features.text.finetune`` asks for it (or reuse
    the finished fine-tune), then extract each configured modality (text with the fine-tuned encoder)."""
    stages = stages or PreprocessStages()
    ingested = stages.ingest(config)
    manifest_path = Path(ingested["manifest"])
    summary: dict[str, Any] = {key: ingested[key] for key in ("manifest", "utterances", "rejected")}
    if config.fine_tunes_text:
        summary["text_finetune"] = stages.finetune(config, manifest_path)
    summary["modalities"] = stages.extract(finetuned_text_config(config, manifest_path), manifest_path)
    return summary
