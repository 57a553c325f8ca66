"""The encoder interface and the registry of encoders by name.

An encoder turns a batch of decoded inputs of one modality (texts, mono waveforms or sampled frames)
into fixed-size float32 vectors. It is identified by a fingerprint: a sha256 over its name, its
validated parameters, the decoding settings it depends on and the sha256 of every weight file it
loads. The fingerprint names the feature cache, so a change to any of these starts a fresh cache.
Models load lazily, on the first ``encode`` or ``dim``, so that planning and cache reads stay cheap.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from spikemo.config import EncoderConfig, FeaturesConfig
from spikemo.errors import ConfigError

Modality = Literal["text", "audio", "visual"]


class EncoderParams(BaseModel):
    """Base of each encoder's parameter model (``features.<modality>.params`` in the config)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


@dataclass(frozen=True)
class EncoderRuntime:
    """Settings shared by all encoders of a run: where to compute and how inputs were decoded."""

    device: torch.device
    batch_size: int
    sample_rate: int
    frames_per_clip: int

    @classmethod
    def from_config(cls, features: FeaturesConfig) -> EncoderRuntime:
        if features.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("features.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
        use_cuda = features.device == "cuda" or (features.device == "auto" and torch.cuda.is_available())
        return cls(
            device=torch.device("cuda" if use_cuda else "cpu"),
            batch_size=features.batch_size,
            sample_rate=features.sample_rate,
            frames_per_clip=features.frames_per_clip,
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA, nothing on CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


class FeatureFailure(Exception):
    """An item decoded but yields no features (no face, silent audio); the message is the reason."""


@dataclass
class EncodedBatch:
    """Vectors for a batch, row-aligned with its inputs; rows listed in ``failures`` hold no meaning."""

    embeddings: np.ndarray
    failures: dict[int, str] = field(default_factory=dict)


class Encoder(ABC):
    """One feature extractor. Subclasses set ``name``, ``modality``, ``Params`` and implement the rest."""

    name: ClassVar[str]
    modality: ClassVar[Modality]
    Params: ClassVar[type[EncoderParams]] = EncoderParams

    def __init__(self, params: EncoderParams, runtime: EncoderRuntime) -> None:
        self.params = params
        self.runtime = runtime

    @property
    @abstractmethod
    def dim(self) -> int:
        """Size of one output vector."""

    @abstractmethod
    def encode(self, inputs: Sequence[Any]) -> EncodedBatch:
        """Encode a batch of decoded inputs (any length; the encoder splits it as it needs)."""

    def decoding(self) -> dict[str, Any]:
        """Decoding settings the output depends on (part of the fingerprint)."""
        return {}

    def weight_files(self) -> dict[str, Path]:
        """Files whose bytes determine the output (weights, configs, tokenizers), by a location-free label."""
        return {}

    def library_versions(self) -> dict[str, str]:
        """Versions of the libraries doing the work, recorded in the cache metadata."""
        return {"torch": torch.__version__}

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "params": self.params.model_dump(mode="json"),
            "decoding": self.decoding(),
            "weights": {label: file_sha256(path) for label, path in sorted(self.weight_files().items())},
        }

    @functools.cached_property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.spec(), sort_keys=True).encode()).hexdigest()


ENCODERS: dict[str, type[Encoder]] = {}


def register_encoder(cls: type[Encoder]) -> type[Encoder]:
    ENCODERS[cls.name] = cls
    return cls


def build_encoder(modality: Modality, features: FeaturesConfig) -> Encoder:
    """The encoder configured for ``modality`` (``features.<modality>``), with validated parameters."""
    return encoder_from_config(
        modality, getattr(features, modality), EncoderRuntime.from_config(features), f"features.{modality}"
    )


def encoder_from_config(modality: Modality, chosen: EncoderConfig, runtime: EncoderRuntime, where: str) -> Encoder:
    """The registered ``modality`` encoder ``chosen`` names, its parameters validated; errors name ``where``."""
    cls = ENCODERS.get(chosen.name)
    if cls is None or cls.modality != modality:
        known = ", ".join(sorted(name for name, enc in ENCODERS.items() if enc.modality == modality))
        raise ConfigError(
            f"{where}.name {chosen.name!r} is not a registered {modality} encoder; choose one of: {known}"
        )
    try:
        params = cls.Params.model_validate(chosen.params)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{where}.params.{field}: {first['msg']} (encoder {chosen.name})") from None
    return cls(params, runtime)


def file_sha256(path: Path) -> str:
    stat = path.stat()
    return _cached_sha256(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _cached_sha256(path: Path, size: int, mtime_ns: int) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def model_files(directory: Path) -> dict[str, Path]:
    """Every file of a model directory that can change its output, by relative path (docs and hidden files excluded)."""
    files = {}
    for path in directory.rglob("*"):
        relative = path.relative_to(directory)
        if path.is_file() and path.suffix != ".md" and not any(part.startswith(".") for part in relative.parts):
            files[relative.as_posix()] = path
    return files


def batches(count: int, size: int, order: Sequence[int] | None = None) -> Iterator[list[int]]:
    """Index lists of at most ``size``, following ``order`` (default 0..count-1)."""
    indices = list(range(count)) if order is None else list(order)
    for begin in range(0, count, size):
        yield indices[begin : begin + size]


def per_item(inputs: Sequence[Any], dim: int, encode_one: Callable[[Any], np.ndarray]) -> EncodedBatch:
    """Encode item by item, recording a ``FeatureFailure`` as that item's failure."""
    embeddings = np.zeros((len(inputs), dim), dtype=np.float32)
    failures: dict[int, str] = {}
    for index, item in enumerate(inputs):
        try:
            embeddings[index] = encode_one(item)
        except FeatureFailure as failure:
            failures[index] = str(failure)
    return EncodedBatch(embeddings, failures)
