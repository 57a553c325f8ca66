"""Audio encoders: a mono waveform at ``features.sample_rate`` to one vector per utterance."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import opensmile
import torch
import torchaudio
import transformers
from pydantic import Field, ValidationInfo, field_validator

from spikemo.errors import ConfigError
from spikemo.features.base import EncodedBatch, Encoder, EncoderParams, FeatureFailure, batches, per_item, register_encoder
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
        if len(samples) <= self.params.n_fft // 2:  # the spectrogram's reflection padding needs more
            raise FeatureFailure(f"audio too short: {len(samples)} samples, the log-mel spectrogram needs more than {self.params.n_fft // 2}")
        log_mel = torch.log(self._melspec(torch.from_numpy(samples)) + 1e-6)
        return torch.cat([log_mel.mean(dim=-1), log_mel.std(dim=-1, correction=0)]).numpy()

    def encode(self, inputs: Sequence[np.ndarray]) -> EncodedBatch:
        return per_item(inputs, self.dim, self._encode_one)


class ProsodyParams(LogMelParams):
    frame_seconds: float = Field(0.02, gt=0, le=0.1, description="Hop of the pitch and loudness contours.")
    min_pitch: float = Field(50.0, gt=0, description="Lowest pitch searched, Hz.")
    max_pitch: float = Field(500.0, gt=0, description="Highest pitch searched, Hz.")
    voicing_threshold: float = Field(0.1, gt=0, lt=1, description="A frame is voiced when its RMS exceeds this share of the clip's loudest frame.")

    @field_validator("max_pitch")
    @classmethod
    def _above_min_pitch(cls, max_pitch: float, info: ValidationInfo) -> float:
        if max_pitch <= info.data.get("min_pitch", 0.0):
            raise ValueError("must be above min_pitch")
        return max_pitch


PROSODY_STATISTICS = (
    *(f"log_pitch_{stat}" for stat in ("mean", "std", "p10", "p50", "p90")),
    *(f"log_rms_{stat}" for stat in ("mean", "std", "p10", "p50", "p90")),
    "pitch_movement",
    "voiced_share",
    "voiced_runs_per_second",
    "seconds",
)


@register_encoder
class ProsodyEncoder(LogMelEncoder):
    """Log-mel statistics plus the prosody eGeMAPS summarises (pitch level and range, loudness, voicing,
    tempo): a YIN pitch contour and frame energies (librosa), a few times cheaper than openSMILE."""

    name = "prosody"
    Params = ProsodyParams
    params: ProsodyParams

    @property
    def dim(self) -> int:
        return super().dim + len(PROSODY_STATISTICS)

    def library_versions(self) -> dict[str, str]:
        return {**super().library_versions(), "librosa": librosa.__version__}

    @torch.inference_mode()
    def _encode_one(self, samples: np.ndarray) -> np.ndarray:
        return np.concatenate([super()._encode_one(samples), self._prosody(samples)])

    def _prosody(self, samples: np.ndarray) -> np.ndarray:
        """``PROSODY_STATISTICS`` over the voiced frames (those louder than ``voicing_threshold`` of the peak)."""
        p, rate = self.params, self.runtime.sample_rate
        hop = max(1, round(rate * p.frame_seconds))
        window = 1 << math.ceil(math.log2(2 * rate / p.min_pitch))  # YIN needs two periods of the lowest pitch
        pitch = librosa.yin(samples, fmin=p.min_pitch, fmax=p.max_pitch, sr=rate, frame_length=window, hop_length=hop)
        rms = librosa.feature.rms(y=samples, frame_length=2 * hop, hop_length=hop)[0]  # the same centred frames
        voiced = rms > p.voicing_threshold * rms.max()
        log_pitch = np.log(pitch[voiced])
        log_rms = np.log(rms[voiced] + 1e-5)
        runs = np.count_nonzero(np.diff(voiced.astype(np.int8), prepend=0) == 1)
        seconds = len(samples) / rate
        return np.array(
            [
                *_spread(log_pitch),
                *_spread(log_rms),
                np.abs(np.diff(log_pitch)).mean() if len(log_pitch) > 1 else 0.0,
                voiced.mean(),
                runs / seconds,
                seconds,
            ],
            dtype=np.float32,
        )


def _spread(values: np.ndarray) -> list[float]:
    """Mean, standard deviation and the 10th, 50th and 90th percentiles (zeros when there is no value)."""
    if len(values) == 0:
        return [0.0] * 5
    return [values.mean(), values.std(), *np.percentile(values, [10, 50, 90])]


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
