"""Decoding with real decoders on media generated here with ffmpeg, and on EmoDB's wavs."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from spikemo.media import MediaError, read_audio, read_video_frames

EMODB_WAV = next(iter(sorted(Path("/work/shared/data/emodb/wav").glob("*.wav"))), None)


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("media")
    paths = {name: folder / f"{name}.mp4" for name in ("av", "silent_video", "long", "corrupt", "empty")}
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=160x120:rate=25:duration=3",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=3",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-shortest",
        str(paths["av"]),
    )
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=160x120:rate=25:duration=2",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        str(paths["silent_video"]),
    )
    # Four minutes: red for the first two, blue for the last two, with a tone only in the second half.
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "color=c=red:size=160x120:rate=10:duration=120",
        "-f",
        "lavfi",
        "-i",
        "color=c=blue:size=160x120:rate=10:duration=120",
        "-f",
        "lavfi",
        "-i",
        "anullsrc=r=16000:cl=mono:d=120",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=300:sample_rate=16000:duration=120",
        "-filter_complex",
        "[0:v][1:v]concat=n=2:v=1:a=0[v];[2:a][3:a]concat=n=2:v=0:a=1[a]",
        "-map",
        "[v]",
        "-map",
        "[a]",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "250",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        str(paths["long"]),
    )
    paths["corrupt"].write_bytes(paths["av"].read_bytes()[:4000])
    paths["empty"].write_bytes(b"")
    return paths


def test_video_frames_are_sampled_uniformly(clips: dict[str, Path]) -> None:
    frames = read_video_frames(clips["av"], 5)
    assert frames.shape == (5, 120, 160, 3) and frames.dtype == np.uint8
    assert len({frame.tobytes() for frame in frames}) == 5


def test_segment_of_a_long_clip_is_read_without_decoding_it_whole(clips: dict[str, Path]) -> None:
    started = time.perf_counter()
    frames = read_video_frames(clips["long"], 8, start=118.0, end=122.0)
    elapsed = time.perf_counter() - started
    red, blue = frames[..., 0].mean(axis=(1, 2)), frames[..., 2].mean(axis=(1, 2))
    assert (red[:4] > 150).all() and (blue[:4] < 100).all()
    assert (blue[4:] > 150).all() and (red[4:] < 100).all()
    assert elapsed < 5.0, f"8 frames of a 4-minute clip took {elapsed:.1f} s"


def test_audio_from_a_container_is_mono_16k_and_honours_segments(clips: dict[str, Path]) -> None:
    whole = read_audio(clips["av"], 16000)
    assert whole.dtype == np.float32 and whole.ndim == 1
    assert abs(len(whole) - 3 * 16000) < 0.05 * 3 * 16000
    segment = read_audio(clips["long"], 16000, start=119.0, end=121.0)
    assert abs(len(segment) - 32000) <= 2
    assert np.abs(segment[:15000]).max() < 1e-3 < np.abs(segment[17000:]).max()


@pytest.mark.skipif(EMODB_WAV is None, reason="EmoDB wavs not present")
def test_plain_wav_is_resampled_to_the_requested_rate() -> None:
    samples = read_audio(EMODB_WAV, 16000)
    assert samples.dtype == np.float32 and len(samples) == pytest.approx(2.0 * 16000, abs=2)
    assert np.abs(samples).max() > 0.01


@pytest.mark.parametrize(
    ("name", "reader", "expected"),
    [
        ("silent_video", "audio", "no audio track"),
        ("corrupt", "video", "cannot open video"),
        ("corrupt", "audio", "cannot decode audio"),
        ("empty", "video", "zero-length file"),
        ("missing", "audio", "file not found"),
    ],
)
def test_unusable_files_raise_media_error_with_reason(
    clips: dict[str, Path], name: str, reader: str, expected: str
) -> None:
    path = clips.get(name, clips["av"].with_name("missing.mp4"))
    with pytest.raises(MediaError, match=expected):
        if reader == "video":
            read_video_frames(path, 4)
        else:
            read_audio(path, 16000)


def test_segment_outside_the_clip_is_a_media_error(clips: dict[str, Path]) -> None:
    with pytest.raises(MediaError, match="outside"):
        read_video_frames(clips["av"], 4, start=10.0, end=12.0)
    with pytest.raises(MediaError, match="outside"):
        read_audio(clips["av"], 16000, start=10.0, end=12.0)
