"""The resolved configuration: pydantic sections loaded from YAML, overridable from the command line.

One ``SpikEmoConfig`` object travels through every stage; later stages log it to MLflow as is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from spikemo.errors import ConfigError

MELD_LABELS = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
EMORYNLP_LABELS = ["Neutral", "Joyful", "Peaceful", "Powerful", "Scared", "Mad", "Sad"]
MODALITIES = ("text", "audio", "visual")
DEFAULT_WORKDIR = ".spikemo"
DEFAULT_CACHE = "feature_cache"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    """Which dataset to ingest and how to read it."""

    format: Literal["meld", "emorynlp", "manifest"] = "meld"
    root: Path | None = Field(None, description="Dataset root; media paths are resolved and confined here.")
    manifest: Path | None = Field(None, description="Generic manifest file (CSV, JSONL or Parquet).")
    name: str | None = Field(None, description="Dataset name used in keys and registry names; default from format.")
    labels: list[str] | None = Field(None, description="Label set in id order; default from format.")

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, labels: list[str] | None) -> list[str] | None:
        if labels is not None and len(set(labels)) != len(labels):
            raise ValueError("labels must be unique")
        return labels

    @property
    def dataset_name(self) -> str:
        if self.name:
            return self.name
        if self.format == "manifest" and self.manifest is not None:
            return self.manifest.stem
        return self.format

    @property
    def label_names(self) -> list[str]:
        if self.labels:
            return list(self.labels)
        if self.format == "meld":
            return list(MELD_LABELS)
        if self.format == "emorynlp":
            return list(EMORYNLP_LABELS)
        raise ConfigError("data.labels is required for --format manifest: list the label set in the config")


class EncoderConfig(Section):
    """One encoder, chosen by registered name, with its own parameters."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class FeaturesConfig(Section):
    modalities: list[Literal["text", "audio", "visual"]] = Field(default_factory=lambda: ["text"])
    text: EncoderConfig = EncoderConfig(name="hf-text", params={"model": "minilm", "pooling": "mean"})
    audio: EncoderConfig = EncoderConfig(name="egemaps")
    visual: EncoderConfig = EncoderConfig(name="facemesh")
    frames_per_clip: int = Field(8, ge=1)
    sample_rate: int = Field(16000, ge=8000)
    shard_size: int = Field(256, ge=1, description="Utterances per cache shard (unit of resumption and of flow tasks).")
    batch_size: int = Field(64, ge=1)
    decode_workers: int = Field(2, ge=1, description="Threads decoding media ahead of the encoder.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    task_runner: Literal["threads", "dask"] = Field("threads", description="Prefect task runner of the extraction flow.")
    task_workers: int | None = Field(None, ge=1, description="Concurrent extraction tasks (default: CPU count).")
    dask_address: str | None = Field(None, description="Existing Dask scheduler (tcp://host:8786); default: a local cluster.")

    @field_validator("modalities")
    @classmethod
    def _modalities_non_empty(cls, modalities: list[str]) -> list[str]:
        if not modalities:
            raise ValueError("at least one modality is required")
        return list(dict.fromkeys(modalities))


class ModelConfig(Section):
    """SpikEmo hyperparameters; defaults are the released MELD script's."""

    model_dim: int = 256
    timesteps: int = Field(32, ge=1)
    tau: float = 10.0
    v_threshold: float = 1.0
    spikformer_depth: int = 2
    spikformer_heads: int = 8
    mlp_ratio: int = 4
    fusion_layers: int = 6
    fusion_heads: int = 4
    fusion_hidden: int = 1024
    dropout: float = 0.1
    use_spiking: bool = True
    dialogue_context: list[Literal["text", "audio", "visual"]] = Field(default_factory=lambda: ["audio", "visual"])
    compile_neurons: bool = Field(False, description="torch.compile each LIF neuron (fuses its time loop; first call compiles).")


class LossWeights(Section):
    ce: float = Field(0.4, ge=0)
    dice: float = Field(1.0, ge=0)
    soft_hgr: float = Field(0.3, ge=0)


class TrainConfig(Section):
    epochs: int = Field(100, ge=1)
    batch_dialogues: int = Field(64, ge=1)
    lr: float = 1e-4
    weight_decay: float = 1e-5
    lr_plateau_factor: float = Field(0.5, gt=0, lt=1, description="ReduceLROnPlateau factor on dev weighted-F1.")
    lr_plateau_patience: int = Field(3, ge=0, description="Epochs without dev improvement before the LR drops.")
    loss_weights: LossWeights = LossWeights()
    patience: int = Field(10, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"


class TrackingConfig(Section):
    tracking_uri: str | None = Field(None, description="Default: MLFLOW_TRACKING_URI, else sqlite in the workdir.")
    experiment: str = "spikemo"
    registered_model: str | None = Field(None, description="Default: spikemo-<dataset>.")
    gating_split: Literal["dev", "test"] = "dev"


class SpikEmoConfig(Section):
    workdir: Path = Field(default_factory=lambda: Path(os.environ.get("SPIKEMO_HOME", DEFAULT_WORKDIR)))
    cache: Path = Path(DEFAULT_CACHE)
    data: DataConfig = DataConfig()
    features: FeaturesConfig = FeaturesConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()

    def flat(self) -> dict[str, Any]:
        """Dotted-key view (``train.lr``) for logging as parameters."""
        return _flatten(self.model_dump(mode="json"))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    node[leaf] = value


def parse_override(assignment: str) -> tuple[str, Any]:
    """``train.lr=3e-4`` -> ("train.lr", 0.0003); the value is read as YAML."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {assignment!r} is not KEY=VALUE (e.g. train.epochs=5)")
    return key.strip(), yaml.safe_load(raw)


def load_config(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> SpikEmoConfig:
    """Defaults, then the YAML file, then dotted overrides (command-line flags last)."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found; pass an existing YAML file to --config") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config file must be a YAML mapping of sections")
        tree = loaded or {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, dotted, value)
    try:
        return SpikEmoConfig.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        source = f"{path}: " if path is not None else ""
        raise ConfigError(f"{source}config key {where!r}: {first['msg']}") from None
