"""Audio encoders' extraction cost on real speech: seconds per EmoDB clip, each encoder on a fresh cache.

``extract_modality`` (decoding, resampling, encoding, Parquet writes; the model's load included) on the same
``--clips`` EmoDB clips (a fixed random sample across speakers) for every encoder given, in one process. The
anchor, Whisper's 30-s window, runs before and after the others (averaged, so load drift on a shared machine
cancels); each encoder's ``ratio`` is its seconds per clip over the anchor's. Prints one JSON line.

By default: Whisper's shorter windows, ComParE, the two side by side and configs/emodb.yaml's own encoder.

    python bench/speech_encoders.py [--clips 96] [--threads 2] [--encoder 'whisper:{"window": 10}' ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from model_vs_baselines import named_json

from spikemo.config import EncoderConfig, FeaturesConfig, load_config
from spikemo.data.ingest import ingest
from spikemo.features import extract_modality

REPO = Path(__file__).resolve().parents[1]
ANCHOR = 'whisper:{"window": "full"}'
DEFAULT_ENCODERS = [
    'whisper:{"window": 10}',
    'whisper:{"window": 5}',
    'whisper:{"window": "clip"}',
    "compare",
    'concat:{"encoders": [{"name": "compare"}, {"name": "whisper"}]}',
]


def named_encoder(audio: EncoderConfig) -> str:
    """An audio encoder's config as ``NAME:JSON-PARAMS``."""
    return f"{audio.name}:{json.dumps(audio.params)}"


def sample_manifest(emodb_root: Path, clips: int, work: Path) -> Path:
    """An ingested manifest of ``clips`` EmoDB clips (random_state 0), one session per speaker."""
    table = pd.read_csv(emodb_root / "labels.csv", dtype={"speaker": str}).sample(n=clips, random_state=0)
    table = table.assign(
        dialogue_id="speaker" + table["speaker"],
        utterance_index=table.groupby("speaker").cumcount(),
        text="",
        label=table["emotion"],
        split="train",
        media_path=table["file"],
    )
    sessions = work / "sessions.csv"
    table[["dialogue_id", "utterance_index", "speaker", "text", "label", "split", "media_path"]].to_csv(
        sessions, index=False
    )
    config = load_config(
        REPO / "configs" / "emodb.yaml",
        {
            "data.manifest": str(sessions),
            "data.root": str(emodb_root),
            "data.labels": sorted(table["emotion"].unique()),
            "cache": str(work / "unused"),
        },
    )
    ingest(config.data, work / "manifest.parquet")
    return work / "manifest.parquet"


def seconds_per_clip(manifest: Path, item: str, clips: int, shipped: FeaturesConfig, cache: Path) -> dict[str, Any]:
    name, params = named_json(item)
    features = shipped.model_copy(update={"audio": EncoderConfig(name=name, params=params)})
    result = extract_modality(manifest, "audio", features, cache)  # its seconds include the survey and model load
    if result.encoded != clips:
        raise SystemExit(f"{item}: encoded {result.encoded} of {clips} clips ({result.failed} failed)")
    return {"s_per_clip": round(result.seconds / clips, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emodb-root", type=Path, default=REPO.parent / "shared" / "data" / "emodb")
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--encoder", action="append", help="NAME or NAME:JSON-PARAMS (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shipped = load_config(REPO / "configs" / "emodb.yaml").features
    encoders = args.encoder or list(dict.fromkeys([*DEFAULT_ENCODERS, named_encoder(shipped.audio)]))
    results: dict[str, Any] = {"benchmark": "speech_encoders", "clips": args.clips, "threads": args.threads}
    with tempfile.TemporaryDirectory(prefix="spikemo-bench-") as scratch:
        work = Path(scratch)
        manifest = sample_manifest(args.emodb_root, args.clips, work)
        before = seconds_per_clip(manifest, ANCHOR, args.clips, shipped, work / "anchor-before")
        timed = {
            item: seconds_per_clip(manifest, item, args.clips, shipped, work / f"cache{index}")
            for index, item in enumerate(encoders)
        }
        after = seconds_per_clip(manifest, ANCHOR, args.clips, shipped, work / "anchor-after")
    anchor = (before["s_per_clip"] + after["s_per_clip"]) / 2
    results["anchor"] = {ANCHOR: round(anchor, 4), "before_after": [before["s_per_clip"], after["s_per_clip"]]}
    results["encoders"] = {
        item: {**figures, "ratio": round(figures["s_per_clip"] / anchor, 3)} for item, figures in timed.items()
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
