"""Feature-extraction throughput: the pipeline next to the bare encoder, and the cost of a re-run.

For MELD text (the real CSVs) and for talking-face clips generated here (H.264 + AAC, espeak-ng speech),
per modality: items/s of ``extract_modality`` into a fresh cache, items/s of the encoder alone on inputs
decoded beforehand (same encoder settings, model already loaded; timed before and after the pipeline and
averaged), their ratio, and the time of a second
``extract_modality`` on unchanged data as a fraction of the first. Prints one JSON line.

    python bench/extract.py [--meld /work/shared/data/meld] [--meld-limit N] [--clips 16]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from spikemo.config import DataConfig, FeaturesConfig
from spikemo.data.ingest import ingest
from spikemo.data.schema import read_manifest
from spikemo.features import build_encoder, extract_modality
from spikemo.features.extract import input_decoder, work_items

SENTENCES = ["Oh my god, I cannot believe it", "That is the best news I have heard all year", "Leave me alone", "Fine, whatever"]


def draw_face(mouth_open: float, brow_lift: int, size: int = 256) -> np.ndarray:
    image = np.full((size, size, 3), 200, np.uint8)
    centre = size // 2
    cv2.ellipse(image, (centre, centre), (int(size * 0.3), int(size * 0.4)), 0, 0, 360, (230, 180, 150), -1)
    for side in (-1, 1):
        cv2.circle(image, (centre + side * int(size * 0.12), centre - int(size * 0.08)), int(size * 0.035), (40, 40, 40), -1)
        brow_y = centre - int(size * 0.17) - brow_lift
        cv2.line(image, (centre + side * int(size * 0.06), brow_y), (centre + side * int(size * 0.18), brow_y), (60, 40, 30), 3)
    cv2.ellipse(image, (centre, centre + int(size * 0.17)), (int(size * 0.1), max(2, int(size * 0.06 * mouth_open))), 0, 0, 360, (40, 30, 120), -1)
    return image


def make_clips(root: Path, count: int, seconds: float = 3.0, fps: int = 25) -> DataConfig:
    (root / "clips").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for index in range(count):
        speech = root / "clips" / f"u{index}.wav"
        subprocess.run(["espeak-ng", "-w", str(speech), SENTENCES[index % len(SENTENCES)]], check=True)
        frames = np.stack([draw_face(rng.uniform(0.1, 0.9), int(rng.integers(0, 9))) for _ in range(int(seconds * fps))])
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "256x256", "-r", str(fps), "-i", "-",
             "-i", str(speech), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(root / "clips" / f"u{index}.mp4")],
            input=frames.tobytes(),
            check=True,
        )
        speech.unlink()
        rows.append([index // 4, index % 4, f"S{index % 2}", SENTENCES[index % len(SENTENCES)], "neutral", "train", f"clips/u{index}.mp4"])
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dialogue_id", "utterance_index", "speaker", "text", "label", "split", "media_path"])
        writer.writerows(rows)
    return DataConfig(format="manifest", manifest=root / "manifest.csv", root=root, labels=["neutral"], name="benchclips")


def bare_encoder_rate(manifest_path: Path, modality: str, features: FeaturesConfig) -> float:
    """Items/s of the encoder alone, on inputs prepared before the clock starts, model loaded."""
    manifest, metadata = read_manifest(manifest_path)
    encoder = build_encoder(modality, features)
    items = work_items(manifest, metadata, encoder, features.shard_size)
    decode = input_decoder(encoder, features)
    inputs = [item.source if decode is None else decode(item.source) for item in items]
    encoder.encode(inputs[: min(4, len(inputs))])
    chunk = features.shard_size if modality == "text" else features.batch_size
    started = time.perf_counter()
    for begin in range(0, len(inputs), chunk):
        encoder.encode(inputs[begin : begin + chunk])
    return len(inputs) / (time.perf_counter() - started)


def measure(manifest_path: Path, modality: str, features: FeaturesConfig, cache: Path) -> dict[str, Any]:
    """The bare encoder is timed before and after the pipeline and averaged, so load drift on a shared machine cancels."""
    bare_before = bare_encoder_rate(manifest_path, modality, features)
    first = extract_modality(manifest_path, modality, features, cache)
    again = extract_modality(manifest_path, modality, features, cache)
    bare_after = bare_encoder_rate(manifest_path, modality, features)
    bare = (bare_before + bare_after) / 2
    pipeline = first.encoded / first.seconds
    return {
        "items": first.encoded + first.failed + first.missing_media,
        "encoded": first.encoded,
        "failed": first.failed,
        "encoder": first.encoder,
        "dim": first.dim,
        "pipeline_items_per_s": round(pipeline, 1),
        "bare_encoder_items_per_s": round(bare, 1),
        "bare_before_after_items_per_s": [round(bare_before, 1), round(bare_after, 1)],
        "pipeline_over_bare": round(pipeline / bare, 3),
        "first_run_s": round(first.seconds, 3),
        "rerun_s": round(again.seconds, 3),
        "rerun_fraction": round(again.seconds / first.seconds, 4),
        "rerun_encoded": again.encoded,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meld", type=Path, default=Path("/work/shared/data/meld"))
    parser.add_argument("--meld-limit", type=int, default=None, help="First N rows of each MELD CSV (default: all).")
    parser.add_argument("--clips", type=int, default=16)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="spikemo-bench-") as scratch:
        work = Path(scratch)
        meld_root = args.meld
        if args.meld_limit is not None:
            meld_root = work / "meld"
            meld_root.mkdir()
            for name in ("train_sent_emo.csv", "dev_sent_emo.csv"):
                pd.read_csv(args.meld / name, dtype=str, keep_default_na=False).head(args.meld_limit).to_csv(meld_root / name, index=False)
        meld_manifest = work / "cache" / "meld" / "manifest.parquet"
        ingest(DataConfig(format="meld", root=meld_root), meld_manifest)
        results["meld_text"] = measure(meld_manifest, "text", FeaturesConfig(), work / "cache")

        clips_manifest = work / "cache" / "benchclips" / "manifest.parquet"
        ingest(make_clips(work / "clips", args.clips), clips_manifest)
        clip_features = FeaturesConfig(modalities=["text", "audio", "visual"], batch_size=8)
        for modality in ("audio", "visual"):
            results[f"clips_{modality}"] = measure(clips_manifest, modality, clip_features, work / "cache")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
