"""Feature-extraction throughput: the pipeline against what a user would run instead, in the same run.

Each anchor runs on the same inputs in the same invocation, before and after the pipeline (averaged, so
load drift on a shared machine cancels):
- text (MELD's CSVs, train + dev, ~11k utterances): ``spikemo preprocess`` of text end to end (ingest,
  cache survey, encoding, Parquet writes; fresh cache) and the pipeline's encoder alone on the prepared
  inputs, against ``SentenceTransformer(packaged MiniLM).encode(texts, batch_size=64)``;
- audio (espeak-ng speech generated here, WAV): ``extract_modality`` against
  ``opensmile.Smile(eGeMAPSv02, Functionals).process_file`` on each file (opensmile reads mp4 only through
  mediainfo and ffmpeg binaries, so both sides read the same WAV files);
- visual (talking-face clips generated here, H.264 with that speech as AAC): ``extract_modality`` against
  the bare loop (decord reads the same number of sampled frames, MediaPipe FaceMesh finds the landmarks).
``<modality>.ratio`` is pipeline / anchor items/s. Also the time of a second pipeline pass on unchanged data
as a fraction of the first. Prints one JSON line.

    python bench/extract.py [--meld ../shared/data/meld] [--meld-limit N] [--clips 32]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from spikemo.config import DataConfig, FeaturesConfig, SpikEmoConfig, load_config
from spikemo.data.ingest import ingest
from spikemo.data.schema import read_manifest
from spikemo.features import build_encoder, extract_modality
from spikemo.features.hf import resolve_model_dir
from spikemo.stages import preprocess

SENTENCES = [
    "Oh my god, I cannot believe it",
    "That is the best news I have heard all year",
    "Leave me alone",
    "Fine, whatever",
]


def draw_face(mouth_open: float, brow_lift: int, size: int = 256) -> np.ndarray:
    image = np.full((size, size, 3), 200, np.uint8)
    centre = size // 2
    cv2.ellipse(image, (centre, centre), (int(size * 0.3), int(size * 0.4)), 0, 0, 360, (230, 180, 150), -1)
    for side in (-1, 1):
        cv2.circle(
            image, (centre + side * int(size * 0.12), centre - int(size * 0.08)), int(size * 0.035), (40, 40, 40), -1
        )
        brow_y = centre - int(size * 0.17) - brow_lift
        cv2.line(
            image,
            (centre + side * int(size * 0.06), brow_y),
            (centre + side * int(size * 0.18), brow_y),
            (60, 40, 30),
            3,
        )
    cv2.ellipse(
        image,
        (centre, centre + int(size * 0.17)),
        (int(size * 0.1), max(2, int(size * 0.06 * mouth_open))),
        0,
        0,
        360,
        (40, 30, 120),
        -1,
    )
    return image


def make_clips(root: Path, count: int, seconds: float = 3.0, fps: int = 25) -> dict[str, DataConfig]:
    """Talking-face mp4 clips and their speech as WAV: a manifest of each (``video`` and ``speech``)."""
    (root / "clips").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for index in range(count):
        speech = root / "clips" / f"u{index}.wav"
        subprocess.run(["espeak-ng", "-w", str(speech), SENTENCES[index % len(SENTENCES)]], check=True)
        frames = np.stack(
            [draw_face(rng.uniform(0.1, 0.9), int(rng.integers(0, 9))) for _ in range(int(seconds * fps))]
        )
        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-y",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "rgb24",
                "-s",
                "256x256",
                "-r",
                str(fps),
                "-i",
                "-",
                "-i",
                str(speech),
                "-c:v",
                "libx264",
                "-pix_fmt",
                "yuv420p",
                "-c:a",
                "aac",
                str(root / "clips" / f"u{index}.mp4"),
            ],
            input=frames.tobytes(),
            check=True,
        )
        rows.append(
            [
                index // 4,
                index % 4,
                f"S{index % 2}",
                SENTENCES[index % len(SENTENCES)],
                "neutral",
                "train",
                f"clips/u{index}",
            ]
        )
    configs = {}
    for name, suffix in (("video", ".mp4"), ("speech", ".wav")):
        with (root / f"{name}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["dialogue_id", "utterance_index", "speaker", "text", "label", "split", "media_path"])
            writer.writerows([*row[:-1], row[-1] + suffix] for row in rows)
        configs[name] = DataConfig(
            format="manifest", manifest=root / f"{name}.csv", root=root, labels=["neutral"], name=f"bench{name}"
        )
    return configs


def _rate(items: int, run: Callable[[], Any]) -> float:
    started = time.perf_counter()
    run()
    return items / (time.perf_counter() - started)


def _around(
    anchor: Callable[[], float], pipeline: Callable[[], dict[str, Any]]
) -> tuple[float, list[float], dict[str, Any]]:
    """The anchor's rate before and after the pipeline, their mean, and the pipeline's figures."""
    before = anchor()
    figures = pipeline()
    after = anchor()
    return (before + after) / 2, [round(before, 1), round(after, 1)], figures


def text_figures(config: SpikEmoConfig) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformer

    manifest_path = config.manifest_path
    ingest(config.data, manifest_path)
    manifest, _ = read_manifest(manifest_path)
    texts = manifest["text"].tolist()
    model = SentenceTransformer(str(resolve_model_dir("minilm", "bench")), device="cpu")
    model.encode(texts[:64], batch_size=64)
    encoder = build_encoder("text", config.features)
    inputs = encoder.build_inputs(manifest)
    encoder.encode(inputs[:64])

    def pipeline() -> dict[str, Any]:
        started = time.perf_counter()
        summary = preprocess(config)
        seconds = time.perf_counter() - started
        again = extract_modality(manifest_path, "text", config.features, config.cache)
        return {"seconds": seconds, "encoded": summary["modalities"]["text"]["encoded"], "rerun_s": again.seconds}

    anchor, anchor_runs, run = _around(lambda: _rate(len(texts), lambda: model.encode(texts, batch_size=64)), pipeline)
    encoding = _rate(len(inputs), lambda: encoder.encode(inputs))
    rate = run["encoded"] / run["seconds"]
    return {
        "items": len(texts),
        "encoded": run["encoded"],
        "pipeline_items_per_s": round(rate, 1),
        "encoding_items_per_s": round(encoding, 1),
        "sentence_transformers_items_per_s": round(anchor, 1),
        "sentence_transformers_before_after": anchor_runs,
        "ratio": round(rate / anchor, 3),
        "encoding_ratio": round(encoding / anchor, 3),
        "rerun_fraction": round(run["rerun_s"] / run["seconds"], 4),
    }


def media_figures(
    manifest_path: Path,
    modality: str,
    features: FeaturesConfig,
    cache: Path,
    anchor_name: str,
    anchor_one: Callable[[Path], Any],
) -> dict[str, Any]:
    manifest, metadata = read_manifest(manifest_path)
    files = [Path(metadata["root"]) / relative for relative in manifest["media_path"]]

    def pipeline() -> dict[str, Any]:
        first = extract_modality(manifest_path, modality, features, cache)
        again = extract_modality(manifest_path, modality, features, cache)
        return {"first": first, "again": again}

    anchor_one(files[0])
    anchor, anchor_runs, run = _around(
        lambda: _rate(len(files), lambda: [anchor_one(path) for path in files]), pipeline
    )
    first = run["first"]
    rate = (first.encoded + first.failed) / first.seconds
    return {
        "items": len(files),
        "encoded": first.encoded,
        "failed": first.failed,
        "pipeline_items_per_s": round(rate, 1),
        f"{anchor_name}_items_per_s": round(anchor, 1),
        f"{anchor_name}_before_after": anchor_runs,
        "ratio": round(rate / anchor, 3),
        "rerun_fraction": round(run["again"].seconds / first.seconds, 4),
    }


def opensmile_file() -> Callable[[Path], Any]:
    import opensmile

    smile = opensmile.Smile(
        feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.Functionals
    )
    return smile.process_file


def facemesh_loop(frames_per_clip: int) -> Callable[[Path], Any]:
    import decord
    from mediapipe.python.solutions import face_mesh

    mesh = face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False)

    def landmarks(path: Path) -> list[Any]:
        reader = decord.VideoReader(str(path), num_threads=1)
        indices = np.linspace(0, len(reader) - 1, frames_per_clip).astype(int).tolist()
        return [mesh.process(frame).multi_face_landmarks for frame in reader.get_batch(indices).asnumpy()]

    return landmarks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meld", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "meld")
    parser.add_argument("--meld-limit", type=int, default=None, help="First N rows of each MELD CSV (default: all).")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"benchmark": "extract", "threads": args.threads}
    with tempfile.TemporaryDirectory(prefix="spikemo-bench-") as scratch:
        work = Path(scratch)
        meld_root = args.meld
        if args.meld_limit is not None:
            meld_root = work / "meld"
            meld_root.mkdir()
            for name in ("train_sent_emo.csv", "dev_sent_emo.csv"):
                pd.read_csv(args.meld / name, dtype=str, keep_default_na=False).head(args.meld_limit).to_csv(
                    meld_root / name, index=False
                )
        config = load_config(
            None,
            {"data.format": "meld", "data.root": str(meld_root), "cache": str(work / "cache"), "workdir": str(work)},
        )
        results["text"] = text_figures(config)

        clip_features = FeaturesConfig(modalities=["text", "audio", "visual"], batch_size=8)
        manifests = {}
        for name, data in make_clips(work / "clips", args.clips).items():
            manifests[name] = work / "cache" / data.dataset_name / "manifest.parquet"
            ingest(data, manifests[name])
        results["audio"] = media_figures(
            manifests["speech"], "audio", clip_features, work / "cache", "opensmile", opensmile_file()
        )
        results["visual"] = media_figures(
            manifests["video"],
            "visual",
            clip_features,
            work / "cache",
            "facemesh_loop",
            facemesh_loop(clip_features.frames_per_clip),
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
