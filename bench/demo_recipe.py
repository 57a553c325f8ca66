"""How the demo corpus is rendered and encoded, chosen on a selection corpus: a generated corpus with its own
seed (never the demo's) and the demo's proportions. Per video frame rate: the time to render the corpus and
to extract its text and visual features. Per audio encoder: the time to extract the audio, then the demo
config's SpikEmo (3 seeds) and the linear probe on all three modalities, and a probe on the audio alone, on
the selection corpus's dev split (which picks the recipe) and test split (which picks nothing). The anchors,
measured in the same invocation, are the first frame rate and the first audio encoder listed. Prints one
JSON line.

    python bench/demo_recipe.py [--dialogues 150] [--seed 7] [--fps 10,5] [--audio egemaps,logmel,prosody] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flows.demo import DEMO_RUN_CORPUS
from spikemo.config import SpikEmoConfig, load_config
from spikemo.data.demo import DemoCorpusSettings, make_demo_corpus
from spikemo.experiment import load_prepared
from spikemo.stages import preprocess
from spikemo.training import build_dialogue_data, train_on_dialogue_data
from spikemo.training.baseline import fit_linear_probe

REPO = Path(__file__).resolve().parents[1]


def render(root: Path, args: argparse.Namespace, fps: int) -> float:
    settings = DemoCorpusSettings(
        dialogues=args.dialogues,
        seed=args.seed,
        split_fractions=DEMO_RUN_CORPUS["split_fractions"],
        fps=fps,
        overwrite=True,
    )
    started = time.perf_counter()
    make_demo_corpus(root, settings)
    return time.perf_counter() - started


def dev_and_test(metrics_dev: dict[str, float], metrics_test: dict[str, float]) -> list[float]:
    return [round(metrics_dev["weighted_f1"], 2), round(metrics_test["weighted_f1"], 2)]


def score_audio_encoder(config: SpikEmoConfig, seeds: int) -> dict[str, Any]:
    """Extraction seconds per modality (cached modalities read ~0), probes and SpikEmo, [dev, test] weighted-F1."""
    summary = preprocess(config)
    data = load_prepared(config, Path(summary["manifest"]), summary)
    dialogues = build_dialogue_data(data.manifest, data.features, len(data.labels))
    audio_only = build_dialogue_data(data.manifest, {"audio": data.features["audio"]}, len(data.labels))
    probe = fit_linear_probe(dialogues, data.labels)
    audio_probe = fit_linear_probe(audio_only, data.labels)
    spikemo = []
    for seed in range(seeds):
        seeded = config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})
        with tempfile.TemporaryDirectory() as run_dir:
            result = train_on_dialogue_data(seeded, dialogues, data.labels, Path(run_dir), resume=False)
        spikemo.append(dev_and_test(result.dev_metrics, result.test_metrics))
    mean = np.mean(spikemo, axis=0)
    probe_scores = dev_and_test(probe.dev_metrics, probe.test_metrics)
    return {
        "extract_seconds": {
            modality: round(extracted["seconds"], 1) for modality, extracted in summary["modalities"].items()
        },
        "audio_dim": int(data.encoders["audio"].dim),
        "spikemo": spikemo,
        "spikemo_mean": mean.round(2).tolist(),
        "spikemo_std": np.std(spikemo, axis=0).round(2).tolist(),
        "probe": probe_scores,
        "spikemo_minus_probe": (mean - probe_scores).round(2).tolist(),
        "audio_only_probe": dev_and_test(audio_probe.dev_metrics, audio_probe.test_metrics),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=DEMO_RUN_CORPUS["dialogues"])
    parser.add_argument("--seed", type=int, default=7, help="the selection corpus's seed (the demo's own is 0)")
    parser.add_argument("--fps", default="10,5", help="frame rates, the first is the anchor")
    parser.add_argument("--audio", default="egemaps,logmel,prosody", help="audio encoders, the first is the anchor")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as each of the demo's two extraction workers
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="spikemo-demo-recipe-") as scratch:
        for fps in (int(value) for value in args.fps.split(",")):
            root = Path(scratch) / f"corpus-{fps}fps"
            render_seconds = render(root, args, fps)
            for audio in args.audio.split(","):
                config = load_config(
                    REPO / "configs" / "demo.yaml",
                    {
                        "data.root": str(root),
                        "data.name": f"selection-{fps}fps",
                        "cache": f"{scratch}/cache",
                        "workdir": f"{scratch}/work",
                        "features.audio.name": audio,
                    },
                )
                rows.append(
                    {
                        "fps": fps,
                        "audio": audio,
                        "render_seconds": round(render_seconds, 1),
                        **score_audio_encoder(config, args.seeds),
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    anchor = rows[0]
    for row in rows:
        row["render_over_anchor"] = round(row["render_seconds"] / anchor["render_seconds"], 3)
        same_fps_anchor = next(r for r in rows if r["fps"] == row["fps"])
        row["audio_seconds_over_anchor"] = round(
            row["extract_seconds"]["audio"] / same_fps_anchor["extract_seconds"]["audio"], 3
        )
        row["spikemo_minus_anchor"] = (np.array(row["spikemo_mean"]) - anchor["spikemo_mean"]).round(2).tolist()
    print(
        json.dumps(
            {
                "benchmark": "demo_recipe",
                "dialogues": args.dialogues,
                "corpus_seed": args.seed,
                "seeds": args.seeds,
                "scores": "weighted-F1 [dev, test] of the selection corpus",
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
