"""One clip: synthesize the speech, animate the face for its length, encode H.264 + AAC into an mp4."""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikemo.data.demo.cast import CAST
from spikemo.data.demo.face import animate_face
from spikemo.data.demo.plan import PlannedUtterance
from spikemo.data.demo.speech import synthesize_speech

FFMPEG = "ffmpeg"
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
    with tempfile.TemporaryDirectory(prefix=f".{target.stem}.", dir=target.parent) as scratch:
        audio_path = Path(scratch) / "speech.wav"
        _write_wav(audio_path, samples, rate)
        partial = Path(scratch) / "clip.mp4"
        _encode(video, image_size, fps, audio_path, partial)
        os.replace(partial, target)
    return RenderedClip(target, len(samples) / rate, frames)


def _loudness_per_frame(samples: np.ndarray, frames: int) -> np.ndarray:
    """RMS of each frame's audio, scaled so that loud speech is about 1."""
    rms = np.sqrt((samples[: len(samples) // frames * frames].reshape(frames, -1) ** 2).mean(axis=1))
    peak = np.percentile(rms, 95)
    return np.clip(rms / peak, 0, 1) if peak > 0 else rms


def _write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def _encode(video: Iterator[np.ndarray], size: int, fps: int, audio_path: Path, out: Path) -> None:
    """Stream BGR frames into ffmpeg's stdin (whole frames per write) and mux them with the WAV as H.264 + AAC."""
    command = [
        FFMPEG, "-nostdin", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{size}x{size}", "-r", str(fps), "-i", "pipe:0",
        "-i", str(audio_path),
        "-map", "0:v", "-map", "1:a",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", "-threads", "1",
        "-c:a", "aac", "-b:a", "64k",
        "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
        "-movflags", "+faststart", str(out),
    ]
    with tempfile.TemporaryFile() as errors:
        encoder = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors)
        try:
            for frame in video:
                encoder.stdin.write(frame.data)
        except BrokenPipeError:
            pass  # ffmpeg stopped early; its exit code and message say why
        finally:
            encoder.stdin.close()
            code = encoder.wait()
        if code != 0:
            errors.seek(0)
            detail = errors.read().decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"ffmpeg could not encode {out.name}: {detail[-1] if detail else f'exit code {code}'}")
