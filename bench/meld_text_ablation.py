"""Text-only MELD ablation: SpikEmo variants against a logistic regression on the same frozen features.

Train on MELD train, select the epoch on dev weighted-F1, report dev (the shared copy of MELD has no test
split). Features: the default MiniLM text encoder from the feature cache (extracted when missing).
Prints one JSON line per variant and a final summary line.

    .venv/bin/python bench/meld_text_ablation.py --root ../shared/data/meld --epochs 20
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from spikemo.config import load_config
from spikemo.data.schema import read_manifest
from spikemo.features.extract import load_features, preprocess
from spikemo.training import train_model
from spikemo.training.metrics import classification_metrics

SMALL_MODEL = {
    "model.model_dim": 64,
    "model.timesteps": 4,
    "model.spikformer_heads": 4,
    "model.fusion_layers": 2,
    "model.fusion_hidden": 256,
    "train.batch_dialogues": 32,
    "train.lr": 1e-3,
    "train.patience": 4,
}
VARIANTS = {
    "full": {},
    "no_spiking": {"model.use_spiking": False},
    "ce_only": {"train.loss_weights.ce": 1.0, "train.loss_weights.dice": 0.0, "train.loss_weights.soft_hgr": 0.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/meld"))
    parser.add_argument("--cache", type=Path, default=Path("feature_cache"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    base = {"cache": str(args.cache), "data.format": "meld", "data.root": str(args.root), "features.modalities": ["text"]}
    config = load_config(None, base)
    manifest_path = Path(preprocess(config)["manifest"])
    manifest, metadata = read_manifest(manifest_path)
    text = load_features(manifest, "text", config.features, config.cache)
    labels = metadata["labels"]
    results = {}

    started = time.perf_counter()
    features = np.stack(text["embedding"].to_numpy())
    split, label_ids = manifest["split"].to_numpy(), manifest["label_id"].to_numpy()
    classifier = LogisticRegression(max_iter=3000).fit(features[split == "train"], label_ids[split == "train"])
    scores = classification_metrics(label_ids[split == "dev"], classifier.predict(features[split == "dev"]), labels)
    results["logistic_regression"] = _report("logistic_regression", scores, time.perf_counter() - started)

    for name, overrides in VARIANTS.items():
        started = time.perf_counter()
        variant = load_config(None, {**base, **SMALL_MODEL, **overrides, "train.epochs": args.epochs})
        with tempfile.TemporaryDirectory() as run_dir:
            result = train_model(variant, manifest, {"text": text}, labels, Path(run_dir))
        results[name] = _report(name, result.dev_metrics, time.perf_counter() - started, result.best_epoch + 1, len(result.history))
    print(json.dumps({"benchmark": "meld_text_ablation", "epochs": args.epochs, "model": SMALL_MODEL,
                      "dev_weighted_f1": {name: r["dev_weighted_f1"] for name, r in results.items()}}))


def _report(name: str, scores: dict, seconds: float, best_epoch: int | None = None, epochs_run: int | None = None) -> dict:
    report = {
        "variant": name,
        "dev_weighted_f1": round(scores["weighted_f1"], 2),
        "dev_macro_f1": round(scores["macro_f1"], 2),
        "dev_accuracy": round(scores["accuracy"], 2),
        "best_epoch": best_epoch,
        "epochs_run": epochs_run,
        "seconds": round(seconds, 1),
    }
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()
