"""Peak memory and time of extracting audio + visual features from a 4-minute clip, next to a 5-second one.

Each clip gets its own fresh process (peak RSS does not mix) that ingests a one-utterance manifest and runs
``extract_modality`` for audio (eGeMAPS) and visual (face mesh, 8 sampled frames). Video is decoded only at
the sampled frames; audio is decoded whole, so its memory grows with the clip's length (16 kHz float32 ≈
3.8 MB per minute). Prints one JSON line.

    python bench/long_clip_memory.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

MEASURE = """
import json, resource, sys, time
from pathlib import Path
from spikemo.config import DataConfig, FeaturesConfig
from spikemo.data.ingest import ingest
from spikemo.features.extract import extract_modality
root = Path(sys.argv[1])
started = time.perf_counter()
ingest(DataConfig(format="manifest", manifest=root / "clip.csv", labels=["neutral"]), root / "manifest.parquet")
features = FeaturesConfig(modalities=["audio", "visual"], frames_per_clip=8)
outcome = {
    m: extract_modality(root / "manifest.parquet", m, features, root / "cache").summary()["failure_reasons"]
    for m in ("audio", "visual")
}
print(json.dumps({
    "seconds": time.perf_counter() - started,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "failures": outcome,
}))
"""


def make_clip(path: Path, seconds: int) -> None:
    subprocess.run(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc=size=320x240:rate=25:duration={seconds}",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=220:duration={seconds}",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
            str(path),
        ],
        check=True,
    )


def measure(seconds: int, scratch: Path) -> dict:
    root = scratch / f"clip{seconds}"
    root.mkdir()
    make_clip(root / "clip.mp4", seconds)
    pd.DataFrame(
        [
            {
                "dialogue_id": "d",
                "utterance_index": 0,
                "speaker": "A",
                "text": "",
                "label": "neutral",
                "split": "test",
                "media_path": "clip.mp4",
            }
        ]
    ).to_csv(root / "clip.csv", index=False)
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-c", MEASURE, str(root)], capture_output=True, text=True, check=True)
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    return {
        "clip_seconds": seconds,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "extract_seconds": round(result["seconds"], 1),
        "peak_rss_mb": round(result["peak_rss_mb"]),
        "failures": result["failures"],
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        short, long = measure(5, Path(scratch)), measure(240, Path(scratch))
    print(
        json.dumps(
            {
                "benchmark": "long_clip_memory",
                "short": short,
                "long": long,
                "peak_rss_ratio": round(long["peak_rss_mb"] / short["peak_rss_mb"], 2),
                "time_ratio": round(long["extract_seconds"] / short["extract_seconds"], 2),
                "bench_process_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        )
    )


if __name__ == "__main__":
    main()
