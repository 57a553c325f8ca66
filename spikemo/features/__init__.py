"""Feature extraction: encoders registered by name, the Parquet feature cache, and the extraction runs.

Importing the package registers every encoder (``hf-text``; ``egemaps``, ``logmel``, ``prosody``, ``hf-audio``;
``facemesh``, ``hf-image``).
"""

from spikemo.features import audio, text, visual
from spikemo.features.base import ENCODERS, EncodedBatch, Encoder, EncoderRuntime, FeatureFailure, build_encoder
from spikemo.features.cache import FAILED, MISSING_MEDIA, OK, FeatureCache
from spikemo.features.extract import (
    NOT_EXTRACTED,
    ExtractionResult,
    ShardPlan,
    extract_modality,
    load_features,
    plan_shards,
)

__all__ = [
    "ENCODERS",
    "FAILED",
    "MISSING_MEDIA",
    "NOT_EXTRACTED",
    "OK",
    "EncodedBatch",
    "Encoder",
    "EncoderRuntime",
    "ExtractionResult",
    "FeatureCache",
    "FeatureFailure",
    "ShardPlan",
    "audio",
    "build_encoder",
    "extract_modality",
    "load_features",
    "plan_shards",
    "text",
    "visual",
]
