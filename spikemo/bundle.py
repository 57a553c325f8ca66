"""A trained model on disk: safetensors weights plus a JSON spec of everything needed to use it.

The spec records the model hyperparameters, the label map and, per modality, the encoder (name,
parameters, fingerprint, dimension) that produced its features, so prediction can rebuild identical
inputs or refuse. Nothing is unpickled when a bundle is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import BaseModel
from safetensors.torch import load_file, save_file

from spikemo.config import EncoderConfig, FeaturesConfig, ModelConfig
from spikemo.errors import DataError
from spikemo.model.ensemble import EmotionModel, build_model

WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "spec.json"


class EncoderSpec(BaseModel):
    """The encoder that produced one modality's features."""

    encoder: EncoderConfig
    fingerprint: str
    dim: int


class ModelSpec(BaseModel):
    dataset: str
    labels: list[str]
    model: ModelConfig
    features: FeaturesConfig
    encoders: dict[str, EncoderSpec]

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    @property
    def input_dims(self) -> dict[str, int]:
        return {modality: spec.dim for modality, spec in self.encoders.items()}


def save_bundle(model: EmotionModel, spec: ModelSpec, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, directory / WEIGHTS_FILE)
    (directory / SPEC_FILE).write_text(spec.model_dump_json(indent=2), encoding="utf-8")
    return directory


def load_bundle(directory: Path, device: torch.device | str = "cpu") -> tuple[EmotionModel, ModelSpec]:
    spec_path = Path(directory) / SPEC_FILE
    if not spec_path.is_file():
        raise DataError(f"{directory}: not a spikemo model bundle (no {SPEC_FILE})")
    spec = ModelSpec.model_validate(json.loads(spec_path.read_text(encoding="utf-8")))
    model = build_model(spec.model, spec.input_dims, len(spec.labels))
    model.load_state_dict(load_file(Path(directory) / WEIGHTS_FILE, device=str(device)))
    return model.to(device).eval(), spec
