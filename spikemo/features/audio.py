"""Audio encoders: a mono waveform at ``features.sample_rate`` to one vector per utterance."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import opensmile
import torch
import torchaudio
import transformers
from pydantic import Field

from spikemo.errors import ConfigError
from spikemo.features.base import EncodedBatch, Encoder, EncoderParams, batches, per_item, register_encoder
from spikemo.features.hf import PretrainedModelFolder, masked_mean


class AudioEncoder(Encoder):
    modality = "audio"

    def decoding(self) -> dict[str, Any]:
        return {"sample_rate": self.runtime.sample_rate}


@register_encoder
class EgemapsEncoder(AudioEncoder):
    """openSMILE eGeMAPSv02 functionals (88 values), computed from decoded samples."""

    name = "egemaps"

    @functools.cached_property
    def _smile(self) -> opensmile.Smile:
        return opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.Functionals)

    @property
    def dim(self) -> int:
        return len(self._smile.feature_names)

    def weight_files(self) -> dict[str, Path]:
        return {"eGeMAPSv02.conf": Path(self._smile.config_path)}

    def library_versions(self) -> dict[str, str]:
        return {"opensmile": opensmile.__version__}

    def encode(self, inputs: Sequence[np.ndarray]) -> EncodedBatch:
        rate = self.runtime.sample_rate
        return per_item(inputs, self.dim, lambda samples: self._smile.process_signal(samples, rate).to_numpy()[0])


class LogMelParams(EncoderParams):
    n_mels: int = Field(64, ge=8)
    n_fft: int = Field(400, ge=64)
    hop_length: int = Field(160, ge=16)


@register_encoder
class LogMelEncoder(AudioEncoder):
    """Mean and standard deviation over time of a log-mel spectrogram (torchaudio)."""

    name = "logmel"
    Params = LogMelParams
    params: LogMelParams

    @functools.cached_property
    def _melspec(self) -> torchaudio.transforms.MelSpectrogram:
        p = self.params
        return torchaudio.transforms.MelSpectrogram(self.runtime.sample_rate, n_fft=p.n_fft, hop_length=p.hop_length, n_mels=p.n_mels)

    @property
    def dim(self) -> int:
        return 2 * self.params.n_mels

    def library_versions(self) -> dict[str, str]:
        return {**super().library_versions(), "torchaudio": torchaudio.__version__}

    @torch.inference_mode()
    def _encode_one(self, samples: np.ndarray) -> np.ndarray:
        log_mel = torch.log(self._melspec(torch.from_numpy(samples)) + 1e-6)
        return torch.cat([log_mel.mean(dim=-1), log_mel.std(dim=-1, correction=0)]).numpy()

    def encode(self, inputs: Sequence[np.ndarray]) -> EncodedBatch:
        return per_item(inputs, self.dim, self._encode_one)


class HFAudioParams(EncoderParams):
    model: str = Field(..., description="Hugging Face audio model folder or cached id (wav2vec2, HuBERT, WavLM).")
    layer: int = Field(-1, description="Hidden-state layer to pool (-1 = last).")
    max_seconds: float = Field(30.0, gt=0, description="Longer utterances are cut to their first max_seconds.")


@register_encoder
class HFAudioEncoder(PretrainedModelFolder, AudioEncoder):
    """Any Hugging Face speech model (AutoModel + AutoFeatureExtractor), hidden states mean-pooled over time."""

    name = "hf-audio"
    Params = HFAudioParams
    params: HFAudioParams

    @functools.cached_property
    def _loaded(self) -> tuple[Any, Any]:
        extractor = self.from_model_folder(transformers.AutoFeatureExtractor)
        expected = getattr(extractor, "sampling_rate", self.runtime.sample_rate)
        if expected != self.runtime.sample_rate:
            raise ConfigError(f"{self.model_setting} {self.model_dir} expects {expected} Hz audio; set features.sample_rate={expected}")
        return extractor, self.model_on_device()

    @property
    def dim(self) -> int:
        return int(self._loaded[1].config.hidden_size)

    @torch.inference_mode()
    def encode(self, inputs: Sequence[np.ndarray]) -> EncodedBatch:
        extractor, model = self._loaded
        limit = int(self.params.max_seconds * self.runtime.sample_rate)
        clips = [samples[:limit] for samples in inputs]
        out = np.zeros((len(clips), self.dim), dtype=np.float32)
        longest_first = sorted(range(len(clips)), key=lambda i: len(clips[i]), reverse=True)
        for chunk in batches(len(clips), self.runtime.batch_size, longest_first):
            lengths = torch.tensor([len(clips[i]) for i in chunk])
            features = extractor(
                [clips[i] for i in chunk], sampling_rate=self.runtime.sample_rate, padding=True, return_tensors="pt"
            ).to(self.runtime.device)
            with self.runtime.autocast():
                hidden = model(**features, output_hidden_states=True).hidden_states[self.params.layer]
            frames = hidden.shape[1]
            valid = torch.ceil(frames * lengths / lengths.max()).long().clamp(1, frames).to(hidden.device)
            mask = torch.arange(frames, device=hidden.device)[None, :] < valid[:, None]
            out[chunk] = masked_mean(hidden.float(), mask).cpu().numpy()
        return EncodedBatch(out)
