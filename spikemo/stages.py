"""The pipeline's stages, in order: ingest → text fine-tune (when configured) → extract → train → register.

The CLI, the Prefect flows and ``spikemo demo`` run these stages; each takes the config resolved once by its
command or flow run. ``preprocess`` runs the first three; ``spikemo.experiment.run_experiment`` the rest
(calling ``preprocess`` first). The Prefect preprocess flow runs the same stage functions as separate tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spikemo.config import SpikEmoConfig
from spikemo.data.ingest import ingest
from spikemo.features.extract import extract_modality
from spikemo.training.text_finetune import finetune_text_encoder, finetuned_text_config


def finetune_stage(config: SpikEmoConfig, manifest_path: Path) -> tuple[dict[str, Any] | None, SpikEmoConfig]:
    """The text fine-tune's summary (None when the config fine-tunes nothing) and the config whose text encoder
    is the fine-tuned one, which extraction then uses."""
    if not config.fine_tunes_text:
        return None, config
    summary = finetune_text_encoder(config, manifest_path).summary()
    return summary, finetuned_text_config(config, manifest_path)


def preprocess(config: SpikEmoConfig) -> dict[str, Any]:
    """Ingest ``config.data`` to ``<cache>/<dataset>/manifest.parquet``, fine-tune the text encoder if
    ``features.text.finetune`` asks for it (or reuse the finished fine-tune), then extract each configured
    modality."""
    manifest_path = config.manifest_path
    ingested = ingest(config.data, manifest_path)
    summary: dict[str, Any] = {
        "manifest": str(manifest_path),
        "utterances": int(len(ingested.manifest)),
        "rejected": ingested.summary()["rejected"],
    }
    finetune_summary, config = finetune_stage(config, manifest_path)
    if finetune_summary is not None:
        summary["text_finetune"] = finetune_summary
    summary["modalities"] = {
        modality: extract_modality(manifest_path, modality, config.features, config.cache).summary()
        for modality in config.features.modalities
    }
    return summary
