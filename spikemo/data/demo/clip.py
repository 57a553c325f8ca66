"""One clip: synthesize the speech, animate the face for its length, encode H.264 + AAC into an mp4."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from spikemo.data.demo.cast import CAST
from spikemo.data.demo.face import animate_face
from spikemo.data.demo.plan import PlannedUtterance
from spikemo.data.demo.speech import synthesize_speech

AUDIO_BIT_RATE = 64_000
CHARACTERS = {character.name: character for character in CAST}
NOISE_FLOOR = 0.002  # standard deviation of the background hiss, full scale = 1


@dataclass(frozen=True)
class RenderedClip:
    path: Path
    seconds: float
    frames: int


def render_clip(utterance: PlannedUtterance, root: Path, image_size: int, fps: int) -> RenderedClip:
    """Write ``root / utterance.clip_path``: the audio shows the audio cue, the face the visual cue."""
    rng = np.random.default_rng(utterance.media_seed)
    character = CHARACTERS[utterance.speaker]
    speech = synthesize_speech(utterance.text, character, utterance.audio_cue, rng)
    rate = speech.sample_rate
    lead = np.zeros(int(rate * rng.uniform(0.1, 0.25)), dtype=np.float32)
    voiced = np.concatenate([lead, speech.samples * np.float32(rng.uniform(0.9, 1.1))])
    frames = math.ceil((len(voiced) / rate + 0.1) * fps)
    samples = np.zeros(round(frames * rate / fps), dtype=np.float32)
    samples[: len(voiced)] = voiced
    samples += rng.standard_normal(len(samples), dtype=np.float32) * np.float32(NOISE_FLOOR)
    loudness = _loudness_per_frame(samples, frames)
    video = animate_face(character, utterance.visual_cue, loudness, image_size, fps, rng)
    target = root / utterance.clip_path
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    try:
        _encode(video, image_size, fps, samples, rate, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return RenderedClip(target, len(samples) / rate, frames)


def _loudness_per_frame(samples: np.ndarray, frames: int) -> np.ndarray:
    """RMS of each frame's audio, scaled so that loud speech is about 1."""
    rms = np.sqrt((samples[: len(samples) // frames * frames].reshape(frames, -1) ** 2).mean(axis=1))
    peak = np.percentile(rms, 95)
    return np.clip(rms / peak, 0, 1) if peak > 0 else rms


def _encode(video: Iterator[np.ndarray], size: int, fps: int, samples: np.ndarray, rate: int, out: Path) -> None:
    """H.264 (BGR frames to yuv420p) and AAC (mono 16-bit) muxed into an mp4, in this process (PyAV's FFmpeg):
    one thread, bit-exact flags, no metadata, so the same inputs give the same bytes."""
    bit_exact = {"flags": "+bitexact"}
    with av.open(str(out), "w", format="mp4", options={"movflags": "+faststart", "fflags": "+bitexact"}) as container:
        picture = container.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23", **bit_exact})
        picture.width = picture.height = size
        picture.pix_fmt = "yuv420p"
        picture.codec_context.thread_count = 1
        sound = container.add_stream("aac", rate=rate, layout="mono", options=bit_exact)
        sound.bit_rate = AUDIO_BIT_RATE
        for frame in video:
            container.mux(picture.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        container.mux(picture.encode())
        pcm = av.AudioFrame.from_ndarray((np.clip(samples, -1, 1) * 32767).astype(np.int16)[None], format="s16", layout="mono")
        pcm.sample_rate, pcm.pts, pcm.time_base = rate, 0, Fraction(1, rate)  # timed, so the muxer trims the encoder's priming
        container.mux(sound.encode(pcm))
        container.mux(sound.encode())
