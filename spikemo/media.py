"""Decoding media in memory: sampled video frames and mono audio at a fixed rate. Nothing model-specific.

Video frames are read with decord, which seeks to the sampled frames instead of decoding the whole
clip; a segment (``start``/``end`` in seconds) restricts sampling to part of a longer file. Audio
in containers is decoded and resampled by PyAV (FFmpeg's decoders and resampler: 5 ms for a 3 s demo
clip where decord's ``AudioReader`` took 13, holding the GIL throughout), plain audio files by
soundfile with torchaudio resampling.

Every way a file can be unusable (missing, empty, corrupt, no audio or video stream, segment outside
the file) raises ``MediaError`` with a short reason that feature extraction records per item.
"""

from __future__ import annotations

import re
from pathlib import Path

import av
import cv2  # noqa: F401  (cv2 must load before decord: decord bundles an old zlib that breaks cv2's PNG reader)
import decord
import numpy as np
import soundfile
import torch
import torchaudio

_DECORD_PREFIX = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")
PLAIN_AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".aiff", ".aif"})


class MediaError(Exception):
    """A media item cannot be decoded; the message is the reason recorded for it."""


def read_video_frames(path: Path, num_frames: int, start: float | None = None, end: float | None = None) -> np.ndarray:
    """``num_frames`` RGB frames (uint8, shape ``(k, H, W, 3)``) sampled uniformly over the clip or segment.

    Each frame is the centre of one of ``num_frames`` equal spans; a segment shorter than ``num_frames``
    frames repeats frames.
    """
    _require_file(path)
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except (RuntimeError, decord.DECORDError) as exc:
        raise MediaError(f"cannot open video: {_first_line(exc)}") from None
    total = len(reader)
    if total == 0:
        raise MediaError("video stream has no frames")
    fps = reader.get_avg_fps() or 25.0
    first, last = _segment_frames(total, fps, start, end)
    spans = np.linspace(first, last, num_frames + 1)
    indices = np.clip(((spans[:-1] + spans[1:]) / 2).astype(np.int64), first, last - 1)
    try:
        return reader.get_batch(indices.tolist()).asnumpy()
    except (RuntimeError, decord.DECORDError) as exc:
        raise MediaError(f"cannot decode video frames: {_first_line(exc)}") from None


def read_audio(path: Path, sample_rate: int, start: float | None = None, end: float | None = None) -> np.ndarray:
    """Mono float32 samples at ``sample_rate``, optionally restricted to a segment in seconds."""
    _require_file(path)
    if path.suffix.lower() in PLAIN_AUDIO_SUFFIXES:
        samples = _read_plain_audio(path, sample_rate)
    else:
        samples = _read_container_audio(path, sample_rate)
    if start is not None or end is not None:
        first = int(round((start or 0.0) * sample_rate))
        last = len(samples) if end is None else min(len(samples), int(round(end * sample_rate)))
        if first >= last:
            raise MediaError(f"segment {start}-{end} s lies outside the audio ({len(samples) / sample_rate:.2f} s)")
        samples = samples[first:last]
    if len(samples) == 0:
        raise MediaError("audio stream has no samples")
    return np.ascontiguousarray(samples, dtype=np.float32)


def _read_container_audio(path: Path, sample_rate: int) -> np.ndarray:
    """The first audio stream, every decoded sample (a container's stated duration can be short)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaError("no audio track")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            frames = [
                out for frame in container.decode(container.streams.audio[0]) for out in resampler.resample(frame)
            ]
            frames += resampler.resample(None)
    except av.FFmpegError as exc:
        raise MediaError(f"cannot decode audio: {exc.strerror or exc}") from None
    return np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames]) if frames else np.zeros(0, np.float32)


def _read_plain_audio(path: Path, sample_rate: int) -> np.ndarray:
    try:
        samples, source_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise MediaError(f"cannot decode audio: {_first_line(exc)}") from None
    mono = samples.mean(axis=1)
    if source_rate == sample_rate or len(mono) == 0:
        return mono
    return torchaudio.functional.resample(torch.from_numpy(mono), source_rate, sample_rate).numpy()


def _segment_frames(total: int, fps: float, start: float | None, end: float | None) -> tuple[int, int]:
    """Frame range ``[first, last)`` of a segment, checked against the clip's length."""
    first = 0 if start is None else int(np.floor(start * fps))
    last = total if end is None else min(total, int(np.ceil(end * fps)))
    if first >= last:
        raise MediaError(f"segment {start}-{end} s lies outside the video ({total / fps:.2f} s)")
    return first, last


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise MediaError(f"file not found: {path}")
    if path.stat().st_size == 0:
        raise MediaError(f"zero-length file: {path}")


def _first_line(exc: BaseException) -> str:
    """The first line of a decoder's error without decord's ``[time] source.cc:line:`` prefix."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    return _DECORD_PREFIX.sub("", text.splitlines()[0])[:200]
