"""Time per demo clip: `render_clip` as shipped (in-process PyAV encoding) against the same clips encoded by an
`ffmpeg` process per clip (x264 veryfast + AAC, what piping frames to the ffmpeg program costs), same speech,
frames and audio, one process, the anchor timed before and after. Prints one JSON line.

    .venv/bin/python bench/demo_render.py [--clips 40] [--fps 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import soundfile

from spikemo.data.demo import DemoCorpusSettings, plan_demo_corpus
from spikemo.data.demo import clip as demo_clip


def encode_with_ffmpeg_process(
    video: Iterator[np.ndarray], samples: np.ndarray, rate: int, size: int, fps: int, out: Path
) -> None:
    audio = out.with_suffix(".wav")
    soundfile.write(str(audio), np.clip(samples, -1, 1), rate, subtype="PCM_16")
    command = [
        "ffmpeg",
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "bgr24",
        "-s",
        f"{size}x{size}",
        "-r",
        str(fps),
        "-i",
        "pipe:0",
        "-i",
        str(audio),
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-crf",
        "23",
        "-pix_fmt",
        "yuv420p",
        "-threads",
        "1",
        "-c:a",
        "aac",
        "-b:a",
        "64k",
        "-f",
        "mp4",
        str(out),
    ]
    encoder = subprocess.Popen(command, stdin=subprocess.PIPE)
    for frame in video:
        encoder.stdin.write(frame.data)
    encoder.stdin.close()
    if encoder.wait() != 0:
        raise RuntimeError(f"ffmpeg failed on {out.name}")
    audio.unlink()


def seconds_per_clip(plan: list, fps: int, size: int) -> float:
    with tempfile.TemporaryDirectory(prefix="spikemo-render-bench-") as scratch:
        started = time.perf_counter()
        for utterance in plan:
            demo_clip.render_clip(utterance, Path(scratch), size, fps)
        return (time.perf_counter() - started) / len(plan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--fps", type=int, default=DemoCorpusSettings().fps)
    args = parser.parse_args()
    cv2.setNumThreads(1)  # as in the corpus's render workers
    settings = DemoCorpusSettings(dialogues=max(3, args.clips // 8 + 1))
    plan = plan_demo_corpus(settings)[: args.clips]

    def anchor() -> float:
        with mock.patch.object(demo_clip, "_encode", encode_with_ffmpeg_process):
            return seconds_per_clip(plan, args.fps, settings.image_size)

    before = anchor()
    shipped = seconds_per_clip(plan, args.fps, settings.image_size)
    after = anchor()
    ffmpeg_process = (before + after) / 2
    print(
        json.dumps(
            {
                "benchmark": "demo_render",
                "clips": len(plan),
                "fps": args.fps,
                "image_size": settings.image_size,
                "in_process_ms_per_clip": round(shipped * 1000, 1),
                "ffmpeg_process_ms_per_clip": round(ffmpeg_process * 1000, 1),
                "ffmpeg_process_before_after_ms": [round(before * 1000, 1), round(after * 1000, 1)],
                "in_process_over_ffmpeg_process": round(shipped / ffmpeg_process, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
