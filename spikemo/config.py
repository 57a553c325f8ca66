"""The resolved configuration: pydantic sections loaded from YAML, overridable from the command line.

One ``SpikEmoConfig`` object travels through every stage; later stages log it to MLflow as is.
Every key with its default and meaning: ``docs/configuration.md``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
    root: Path | None = Field(None, description="Dataset root directory.")
    manifest: Path | None = Field(None, description="Generic manifest file (CSV, JSONL or Parquet).")
    name: str | None = Field(None, description="Dataset name (default: from format).")
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


class PrototypicalContrastiveConfig(Section):
    """SPCL's supervised prototypical contrastive loss on the fine-tune's pooled utterance vectors."""

    weight: float = Field(0.5, gt=0, description="Its weight, added to the head's loss.")
    temperature: float = Field(0.1, gt=0, description="Softmax temperature over cosine similarities.")
    memory: int = Field(64, ge=1, description="Recent train vectors kept per class; their mean is its prototype.")


class TextFinetuneConfig(Section):
    """Fine-tuning the text encoder as an emotion classifier on train before extraction (EmoBERTa's recipe)."""

    head: Literal["utterance", "dialogue"] = Field("utterance", description="Classifier head: utterance | dialogue.")
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(16, ge=1)
    gradient_accumulation: int = Field(1, ge=1, description="Batches per optimizer step.")
    lr: float = Field(3e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of optimizer steps in linear warm-up.")
    head_lr: float | None = Field(None, gt=0, description="Head learning rate (default: lr).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before the utterance head.")
    freeze_layers: int = Field(0, ge=0, description="Lowest transformer layers frozen, with the embeddings.")
    layer_lr_decay: float = Field(1.0, gt=0, le=1, description="Layer-wise lr decay factor (1: none).")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="Autocast: auto | fp32 | bf16.")
    patience: int = Field(2, ge=1, description="Early-stopping patience (epochs).")
    seed: int = 0
    contrastive: PrototypicalContrastiveConfig | None = Field(
        None, description="SPCL's prototypical contrastive loss beside the head's (null: off)."
    )


class TextEncoderConfig(EncoderConfig):
    name: str = "hf-text"
    finetune: TextFinetuneConfig | None = Field(None, description="Fine-tune before extraction (null: off).")


class FeaturesConfig(Section):
    modalities: list[Literal["text", "audio", "visual"]] = Field(default_factory=lambda: ["text"])
    text: TextEncoderConfig = TextEncoderConfig(name="hf-text", params={"model": "minilm", "pooling": "mean"})
    audio: EncoderConfig = EncoderConfig(name="egemaps")
    visual: EncoderConfig = EncoderConfig(name="facemesh")
    frames_per_clip: int = Field(8, ge=1)
    sample_rate: int = Field(16000, ge=8000)
    shard_size: int = Field(256, ge=1, description="Utterances per cache shard.")
    batch_size: int = Field(64, ge=1)
    decode_workers: int = Field(2, ge=1, description="Media-decoding threads.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    task_runner: Literal["threads", "dask"] = Field("threads", description="Extraction task runner: threads | dask.")
    task_workers: int | None = Field(None, ge=1, description="Concurrent extraction tasks (default: CPU count).")
    dask_address: str | None = Field(None, description="Dask scheduler address (default: local cluster).")

    @field_validator("modalities")
    @classmethod
    def _modalities_non_empty(cls, modalities: list[str]) -> list[str]:
        if not modalities:
            raise ValueError("at least one modality is required")
        return list(dict.fromkeys(modalities))


class NeuronConfig(Section):
    """The spiking neuron, its surrogate gradient and its reset, as spikingjelly structures them."""

    kind: Literal["lif", "plif", "if"] = Field("lif", description="Neuron: lif | plif | if.")
    tau: float = Field(2.0, gt=1.0, description="Membrane time constant (plif: initial).")
    v_threshold: float = Field(1.0, gt=0)
    v_reset: float | None = Field(0.0, description="Reset potential (null: soft reset).")
    surrogate: Literal["atan", "sigmoid", "piecewise_quadratic"] = "atan"
    detach_reset: bool = True


class ModelConfig(Section):
    """SpikEmo hyperparameters (ours by default; the paper's: ``configs/meld-paper.yaml``)."""

    model_dim: int = 128
    timesteps: int = Field(4, ge=1)
    neuron: NeuronConfig = NeuronConfig()
    spike_encoding: Literal["direct", "heaviside"] = Field("direct", description="Spike encoding: direct | heaviside.")
    spike_gate: Literal["feature", "utterance_softmax"] = Field(
        "feature", description="Spiking gate: feature | utterance_softmax."
    )
    spike_speaker_context: bool = Field(True, description="Speaker and turn embeddings in the Spikformer input.")
    spikformer_depth: int = Field(1, ge=1)
    spikformer_heads: int = 4
    mlp_ratio: int = 4
    fusion_layers: int = 2
    fusion_heads: int = 4
    fusion_hidden: int = 256
    dropout: float = Field(0.2, ge=0, lt=1)
    use_spiking: bool = True
    dialogue_context: list[Literal["text", "audio", "visual"]] = Field(default_factory=lambda: ["audio", "visual"])
    dialogue_context_residual: bool = Field(True, description="DialogueRNN output added to its input (h + RNN(h)).")
    speaker_relative_inputs: Literal["off", "centred", "zscore"] = Field(
        "off", description="Per-speaker normalisation: off | centred | zscore."
    )
    speaker_evidence_rounds: int = Field(0, ge=0, description="Speaker-chain evidence rounds (0: off).")
    causal: bool = Field(False, description="Read only current and earlier turns (live scoring).")
    speaker_min_utterances: int = Field(2, ge=1, description="Fewest utterances for a speaker's own statistics.")
    input_noise: float = Field(0.0, ge=0, description="Training input noise std (0: off).")
    members: int = Field(1, ge=1, description="Networks trained apart, class probabilities averaged (1: one).")
    compile_neurons: bool = Field(False, description="torch.compile each LIF neuron.")

    @field_validator("speaker_relative_inputs", mode="before")
    @classmethod
    def _boolean_means_centred(cls, mode: object) -> object:
        return ("centred" if mode else "off") if isinstance(mode, bool) else mode


class LossWeights(Section):
    ce: float = Field(1.0, ge=0)
    dice: float = Field(0.5, ge=0)
    soft_hgr: float = Field(0.1, ge=0)


class TrainConfig(Section):
    epochs: int = Field(40, ge=1)
    batch_dialogues: int = Field(16, ge=1)
    optimizer: Literal["adamw", "adam"] = Field("adamw", description="Optimizer: adamw | adam.")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_epochs: float = Field(1.0, ge=0, description="Linear learning-rate warm-up (epochs).")
    lr_schedule: Literal["cosine", "plateau"] = Field("cosine", description="LR schedule: cosine | plateau.")
    lr_plateau_factor: float = Field(0.5, gt=0, lt=1, description="Plateau schedule's LR factor.")
    lr_plateau_patience: int = Field(3, ge=0, description="Plateau schedule's patience (epochs).")
    grad_clip: float | None = Field(1.0, gt=0, description="Gradient-norm clip (null: none).")
    ema_decay: float | None = Field(0.99, gt=0, lt=1, description="Weight EMA decay (null: raw weights).")
    class_weighting: Literal["none", "balanced", "sqrt_balanced"] = Field(
        "none", description="Cross-entropy class weights: none | balanced | sqrt_balanced."
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Cross-entropy label smoothing.")
    loss_weights: LossWeights = LossWeights()
    patience: int = Field(8, ge=1, description="Early-stopping patience (epochs).")
    keep: Literal["best_dev", "last"] = Field("best_dev", description="Weights kept: best_dev | last.")
    speaker_evidence_fit: Literal["joint", "cross_fitted"] = Field(
        "joint", description="Speaker-evidence fitting: joint | cross_fitted."
    )
    speaker_evidence_folds: int = Field(5, ge=2, description="Folds for cross_fitted evidence.")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="Forward autocast: auto | fp32 | bf16.")


class TrackingConfig(Section):
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default: env or workdir sqlite).")
    experiment: str = "spikemo"
    registered_model: str | None = Field(None, description="Registered model name (default: spikemo-<dataset>).")
    ui_url: str | None = Field(None, description="MLflow UI address for artifact links.")
    gating_split: Literal["dev"] = Field("dev", description="Split deciding the champion (dev only).")
    require_beating_baseline: bool = Field(False, description="Champion must also beat its linear probe.")
    bootstrap_draws: int = Field(1000, ge=100, description="Bootstrap resamples per 95% interval.")
    bootstrap_seed: int = 0

    @field_validator("gating_split", mode="before")
    @classmethod
    def _never_gate_on_test(cls, split: str) -> str:
        if split == "test":
            raise ValueError("gating on test would select models on the split that reports them; use dev")
        return split


class SpikEmoConfig(Section):
    workdir: Path = Field(default_factory=lambda: Path(os.environ.get("SPIKEMO_HOME", DEFAULT_WORKDIR)))
    cache: Path = Path(DEFAULT_CACHE)
    data: DataConfig = DataConfig()
    features: FeaturesConfig = FeaturesConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _causal_text_reads_no_future(self) -> SpikEmoConfig:
        if self.model.causal and self.features.text.params.get("future_turns"):
            raise ValueError("model.causal reads no later turn: set features.text.params.future_turns to 0")
        return self

    @model_validator(mode="after")
    def _cross_fitted_evidence_needs_an_unseen_encoder(self) -> SpikEmoConfig:
        cross_fitted = self.model.speaker_evidence_rounds and self.train.speaker_evidence_fit == "cross_fitted"
        if self.fine_tunes_text and cross_fitted:
            raise ValueError(
                "train.speaker_evidence_fit cross_fitted is not out-of-fold over a text encoder fine-tuned on every "
                "training label: set it to joint, or drop features.text.finetune"
            )
        return self

    @model_validator(mode="after")
    def _ensemble_has_no_single_finetune_head(self) -> SpikEmoConfig:
        finetune = self.features.text.finetune
        if self.model.members > 1 and self.fine_tunes_text and finetune is not None and finetune.head == "dialogue":
            raise ValueError(
                "model.members > 1 averages networks trained apart, but a dialogue-head fine-tune trains one "
                "SpikEmo head: set model.members to 1, or features.text.finetune.head to utterance"
            )
        return self

    @property
    def fine_tunes_text(self) -> bool:
        """Whether the pipeline fine-tunes the text encoder before extraction (a ``finetune`` section, text used)."""
        return self.features.text.finetune is not None and "text" in self.features.modalities

    @property
    def manifest_path(self) -> Path:
        """Where ingestion writes this dataset's manifest: ``<cache>/<dataset>/manifest.parquet``."""
        return Path(self.cache) / self.data.dataset_name / "manifest.parquet"

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
    """Defaults, then the YAML file (over the files it ``extends``), then dotted overrides (command-line flags last)."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        tree = _read_config_file(path, ())
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, dotted, value)
    return _validated(tree, f"{path}: " if path is not None else "")


def _read_config_file(path: Path, extending: tuple[Path, ...]) -> dict[str, Any]:
    """A config file's tree merged over the tree of the file its ``extends`` key names (a path relative to
    it, itself possibly extending another): mappings merge key by key, any other value replaces."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        named_by = f" (named by {extending[-1]}'s extends)" if extending else ""
        raise ConfigError(f"{path}: config file not found{named_by}; pass an existing YAML file to --config") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config file must be a YAML mapping of sections")
    tree = loaded or {}
    base = tree.pop("extends", None)
    if base is None:
        return tree
    base_path = (path.parent / str(base)).resolve()
    if base_path in extending or base_path == path.resolve():
        raise ConfigError(f"{path}: extends {base} makes a cycle; a config may not extend itself, directly or not")
    return _merged(_read_config_file(base_path, (*extending, path.resolve())), tree)


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (
            _merged(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def with_overrides(config: SpikEmoConfig, overrides: dict[str, Any]) -> SpikEmoConfig:
    """``config`` with dotted overrides applied on top; unlike command-line flags, a None value sets the key
    to null (``train.ema_decay: None`` turns the moving average off) rather than leaving it as it was."""
    tree = config.model_dump(mode="json")
    for dotted, value in overrides.items():
        _set_dotted(tree, dotted, value)
    return _validated(tree, "")


def _validated(tree: dict[str, Any], source: str) -> SpikEmoConfig:
    try:
        return SpikEmoConfig.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        if not where:  # a check across sections
            raise ConfigError(f"{source}{first['msg'].removeprefix('Value error, ')}") from None
        raise ConfigError(f"{source}config key {where!r}: {first['msg']}") from None
