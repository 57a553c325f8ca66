"""Shared Hugging Face plumbing: resolving a model id or folder offline, loading it, pooling its states."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

from spikemo.errors import ConfigError
from spikemo.features.base import model_files
from spikemo.features.packaged import PACKAGED_ALIASES, packaged_model_dir


def resolve_model_dir(model: str, setting: str) -> Path:
    """A local folder for ``model``: a packaged alias (``minilm``, ``mpnet``), a directory, or a hub id already in
    the local cache."""
    if model in PACKAGED_ALIASES:
        return packaged_model_dir(model)
    candidate = Path(model).expanduser()
    if candidate.is_dir():
        return candidate.resolve()
    try:
        return Path(snapshot_download(model, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        raise ConfigError(
            f"{setting} {model!r}: not a local model folder nor a model in the local Hugging Face cache; "
            "download it where a hub is reachable (save_pretrained) and give its folder"
        ) from None


class PretrainedModelFolder:
    """For an encoder whose ``params.model`` names a Hugging Face model: the model's local folder, its parts
    loaded from it with errors that name the setting (``features.<modality>.params.model``), and the folder's
    files and ``transformers`` as what the encoder's features depend on."""

    modality: str
    params: Any
    runtime: Any

    @property
    def model_setting(self) -> str:
        return f"features.{self.modality}.params.model"

    @functools.cached_property
    def model_dir(self) -> Path:
        return resolve_model_dir(self.params.model, self.model_setting)

    def from_model_folder(self, loader: Any) -> Any:
        """``loader.from_pretrained`` on the model folder (``transformers.AutoModel``, ``AutoTokenizer``, ...)."""
        return load_pretrained(loader, self.model_dir, self.model_setting)

    def model_on_device(self) -> Any:
        """The folder's ``AutoModel`` on the runtime's device, in eval mode."""
        return self.from_model_folder(transformers.AutoModel).to(self.runtime.device).eval()

    def weight_files(self) -> dict[str, Path]:
        return model_files(self.model_dir)

    def library_versions(self) -> dict[str, str]:
        return {**super().library_versions(), "transformers": transformers.__version__}  # type: ignore[misc]


def load_pretrained(loader: Any, directory: Path, setting: str) -> Any:
    """``loader.from_pretrained(directory)`` with a one-line ConfigError when the folder is not a usable model."""
    transformers.utils.logging.disable_progress_bar()
    try:
        return loader.from_pretrained(directory)
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{setting} {directory}: cannot load with {loader.__name__} ({reason[:160]})") from None


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over time of ``states`` (batch, time, dim) where ``mask`` (batch, time) is set."""
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
