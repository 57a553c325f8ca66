"""Fine-tuning the text encoder on MELD or EmoryNLP (EmoBERTa's recipe): its speed and memory here, and what it buys.

``--part speed``: for each setting (encoder, max_length, past and future context turns, frozen lower layers,
fp32 or bf16 autocast) a fresh process trains ``--steps`` batches of 16 MELD train inputs (plain AdamW, after
two warm-up steps) and reports training samples/s, the inputs' mean token count and the process's peak RSS;
the estimated epoch time follows.

``--part accuracy``: ``--dataset`` (MELD or EmoryNLP) with a fixed 10% of the train dialogues as the selection split
and the dataset's dev split reported (the shared copies hold no test split). Per recipe (``--configs``, default
MPNet then MiniLM, all in one invocation): the linear probe on the frozen encoder (mean-pooled at ``--frozen-
layer``, no context), the fine-tune's wall time and peak resident memory, the fine-tuned classifier itself (with
``finetune.head: dialogue``, the SpikEmo trained with the encoder), and the linear probe and SpikEmo (the recipe's
model section, ``--seeds`` seeds) on the fine-tuned encoder's features, and each probe's weighted-F1 on its own
training utterances against the selection split (how much the features fit the utterances the encoder was trained
on).

``--part combine``: the same splits; the finished fine-tunes of ``--configs`` (run first when absent) combined
as one text feature, their vectors concatenated or averaged (all members of one width). The linear probe and
SpikEmo (the first recipe's model section, ``--seeds`` seeds) on each member's features and on each
combination, all in one invocation. Prints one JSON line per part.

    .venv/bin/python bench/finetune_text.py --part speed
    .venv/bin/python bench/finetune_text.py --part accuracy \\
        --configs configs/meld-mpnet.yaml,configs/meld-finetuned.yaml
    .venv/bin/python bench/finetune_text.py --part accuracy --dataset emorynlp \\
        --configs configs/emorynlp-mpnet.yaml
    .venv/bin/python bench/finetune_text.py --part combine \\
        --configs configs/meld-mpnet.yaml,configs/meld-mpnet-llrd.yaml
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import torch
from meld_splits import selection_resplit, write_resplit  # bench/ is the script's folder

from spikemo.config import SpikEmoConfig, load_config
from spikemo.data.ingest import ingest
from spikemo.data.schema import read_manifest
from spikemo.features.base import build_encoder
from spikemo.features.extract import extract_modality, load_features
from spikemo.training import build_dialogue_data, train_model
from spikemo.training.baseline import fit_linear_probe
from spikemo.training.precision import autocast
from spikemo.training.text_finetune import (
    UtteranceClassifier,
    finetune_text_encoder,
    finetuned_text_config,
    freeze_lower_layers,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SPEED_SETTINGS = [  # (model, max_length, context_turns, future_turns, freeze_layers, precision)
    ("minilm", 128, 2, 0, 0, "fp32"),
    ("minilm", 128, 2, 0, 0, "bf16"),
    ("mpnet", 128, 2, 1, 0, "fp32"),
    ("mpnet", 128, 2, 1, 0, "bf16"),
    ("mpnet", 128, 2, 1, 2, "bf16"),  # configs/meld-mpnet.yaml
    ("mpnet", 128, 2, 1, 6, "bf16"),
]


def speed_worker(args: argparse.Namespace) -> dict[str, Any]:
    """One setting, in this (fresh) process."""
    model_name, max_length, context_turns, future_turns, freeze_layers, precision = args.setting
    max_length, context_turns, future_turns, freeze_layers = map(
        int, (max_length, context_turns, future_turns, freeze_layers)
    )
    config = _bench_config(
        args,
        {
            "features.text.params": {
                "model": model_name,
                "context_turns": context_turns,
                "future_turns": future_turns,
                "speaker_names": True,
                "max_length": max_length,
            },
            "features.text.finetune": {"freeze_layers": freeze_layers, "precision": precision},
        },
    )
    manifest, _ = read_manifest(_ingested(config))
    train = manifest[manifest["split"] == "train"]
    encoder = build_encoder("text", config.features)
    items = encoder.build_inputs(train)
    labels = torch.from_numpy(train["label_id"].to_numpy(dtype=np.int64))
    torch.manual_seed(0)
    model = UtteranceClassifier(encoder, 7, dropout=0.1)
    freeze_lower_layers(model.encoder, freeze_layers)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-5)
    rows = np.random.default_rng(0).permutation(len(items))
    batches = [rows[i : i + args.batch_size] for i in range(0, (args.steps + 2) * args.batch_size, args.batch_size)]
    tokens_seen = 0
    started = 0.0
    for step, batch in enumerate(batches):
        if step == 2:
            started = time.perf_counter()
        tokens = encoder.tokenize([items[row] for row in batch])
        with autocast(precision, torch.device("cpu")):
            logits = model(model.encode(tokens))
        loss = torch.nn.functional.cross_entropy(logits.float(), labels[batch])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:
            tokens_seen += int(tokens["attention_mask"].sum())
    seconds = time.perf_counter() - started
    samples = args.steps * args.batch_size
    return {
        "model": model_name,
        "max_length": max_length,
        "context_turns": context_turns,
        "future_turns": future_turns,
        "freeze_layers": freeze_layers,
        "precision": precision,
        "samples_per_s": round(samples / seconds, 2),
        "mean_tokens": round(tokens_seen / samples, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "epoch_minutes_estimate": round(len(items) / (samples / seconds) / 60, 1),
        "train_utterances": len(items),
    }


def speed(args: argparse.Namespace) -> dict[str, Any]:
    results = []
    for setting in SPEED_SETTINGS:
        command = [
            sys.executable,
            __file__,
            "--part",
            "speed-worker",
            "--setting",
            *map(str, setting),
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
            "--cache",
            str(args.cache),
            "--work",
            str(args.work),
        ]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return {
        "benchmark": "finetune_text_speed",
        "threads": args.threads,
        "batch_size": args.batch_size,
        "settings": results,
    }


def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune on train less a fixed 10% of its dialogues, select on that 10%, report MELD dev; one row per
    recipe (``--configs``), all in this invocation on the same splits."""
    manifest_path, resplit, resplit_path, labels = _selection_splits(args)
    rows = []
    for path in args.configs:
        rows.append(_recipe_row(args, path, manifest_path, resplit, resplit_path, labels))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {
        "benchmark": "finetune_text_accuracy",
        "dataset": args.dataset,
        "reported_split": f"{args.dataset} dev (selection: a fixed 10% of train dialogues)",
        "threads": args.threads,
        "recipes": rows,
    }


def _selection_splits(args: argparse.Namespace) -> tuple[Path, pd.DataFrame, Path, list[str]]:
    """The dataset ingested (features do not depend on the split: context stays in its dialogue, so they are
    extracted on the ingested manifest), its resplit with the selection split, where that is written, the labels."""
    manifest_path = _ingested(_bench_config(args, {}, args.configs[0]))
    manifest, metadata = read_manifest(manifest_path)
    resplit = selection_resplit(manifest)
    resplit_path = write_resplit(
        resplit, manifest_path, Path(args.work) / f"{args.dataset}-select10" / "manifest.parquet"
    )
    return manifest_path, resplit, resplit_path, metadata["labels"]


def _recipe_row(
    args: argparse.Namespace,
    path: Path,
    manifest_path: Path,
    resplit: pd.DataFrame,
    resplit_path: Path,
    labels: list[str],
) -> dict[str, Any]:
    """Frozen probe, fine-tune (time, peak memory), the classifier, and the probe and SpikEmo on its features."""
    config = _bench_config(args, {"data.name": f"{args.dataset}-select10"}, path)
    text = config.features.text
    frozen_layer = args.frozen_layer.get(text.params["model"], -1)
    frozen_text = text.model_copy(
        update={"finetune": None, "params": {"model": text.params["model"], "pooling": "mean", "layer": frozen_layer}}
    )
    frozen_features = config.features.model_copy(update={"text": frozen_text})
    extract_modality(manifest_path, "text", frozen_features, config.cache)
    frozen_probe = _probe(resplit, load_features(resplit, "text", frozen_features, config.cache), labels)

    with PeakRSS() as memory:
        started = time.perf_counter()
        finetuned = finetune_text_encoder(config, resplit_path)
        finetune_seconds = time.perf_counter() - started
    tuned, text_features = _finetuned_features(config, manifest_path, resplit, resplit_path)
    features = {"text": text_features}
    tuned_probe = _probe(resplit, features["text"], labels)
    spikemo_scores = _spikemo_scores(tuned, resplit, features, labels, args.seeds, str(path))
    spikemo_mean = float(np.mean(spikemo_scores))
    return {
        "config": str(path),
        "text_params": text.params,
        "finetune": text.finetune.model_dump() if text.finetune else None,
        "finetune_seconds": round(finetune_seconds, 1),
        "finetune_peak_rss_gb": round(memory.peak / 2**30, 2),
        "finetune_reused": finetuned.reused,
        "finetune_epochs_run": finetuned.epochs_run,
        "frozen_layer": frozen_layer,
        "frozen_probe_weighted_f1": round(frozen_probe.test_weighted_f1, 2),
        "frozen_probe_train_minus_selection": frozen_probe.train_minus_selection,
        "finetuned_classifier_selection_weighted_f1": round(finetuned.dev_weighted_f1, 2),  # what recipes are chosen on
        "finetuned_classifier_weighted_f1": round(finetuned.test_weighted_f1, 2),
        "finetuned_probe_weighted_f1": round(tuned_probe.test_weighted_f1, 2),
        # how much better the fine-tuned features separate the utterances the encoder was trained on than held-out ones
        "finetuned_probe_train_minus_selection": tuned_probe.train_minus_selection,
        "spikemo_finetuned_weighted_f1": [round(score, 2) for score in spikemo_scores],
        "spikemo_finetuned_weighted_f1_mean": round(spikemo_mean, 2),
        "spikemo_finetuned_weighted_f1_std": round(float(np.std(spikemo_scores, ddof=1)), 2)
        if len(spikemo_scores) > 1
        else 0.0,
        "spikemo_minus_finetuned_probe": round(spikemo_mean - tuned_probe.test_weighted_f1, 2),
        "spikemo_minus_finetuned_classifier": round(spikemo_mean - finetuned.test_weighted_f1, 2),
        "spikemo_minus_frozen_probe": round(spikemo_mean - frozen_probe.test_weighted_f1, 2),
    }


def combine(args: argparse.Namespace) -> dict[str, Any]:
    """The probe and SpikEmo on each fine-tune's features and on the members concatenated and averaged."""
    manifest_path, resplit, resplit_path, labels = _selection_splits(args)
    members, tuned_configs = {}, []
    for path in args.configs:
        config = _bench_config(args, {"data.name": f"{args.dataset}-select10"}, path)
        finetune_text_encoder(config, resplit_path)
        tuned, members[str(path)] = _finetuned_features(config, manifest_path, resplit, resplit_path)
        tuned_configs.append(tuned)
    model_config = tuned_configs[0]
    vectors = [list(frame["embedding"]) for frame in members.values()]
    first = next(iter(members.values()))
    combined = {
        "concatenated": first.assign(embedding=[np.concatenate(parts) for parts in zip(*vectors)]),
        "averaged": first.assign(embedding=[np.mean(parts, axis=0, dtype=np.float32) for parts in zip(*vectors)]),
    }
    rows = []
    for name, features in {**members, **combined}.items():
        probe = _probe(resplit, features, labels)
        scores = _spikemo_scores(model_config, resplit, {"text": features}, labels, args.seeds, name)
        rows.append(
            {
                "features": name,
                "probe_weighted_f1": round(probe.test_weighted_f1, 2),
                "probe_train_minus_selection": probe.train_minus_selection,
                "spikemo_weighted_f1": [round(score, 2) for score in scores],
                "spikemo_weighted_f1_mean": round(float(np.mean(scores)), 2),
                "spikemo_minus_probe": round(float(np.mean(scores)) - probe.test_weighted_f1, 2),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    best_member = max(rows[: len(members)], key=lambda row: row["spikemo_weighted_f1_mean"])
    for row in rows[len(members) :]:
        row["spikemo_minus_best_member_spikemo"] = round(
            row["spikemo_weighted_f1_mean"] - best_member["spikemo_weighted_f1_mean"], 2
        )
    return {
        "benchmark": "finetune_text_combine",
        "dataset": args.dataset,
        "reported_split": f"{args.dataset} dev (selection: a fixed 10% of train dialogues)",
        "threads": args.threads,
        "rows": rows,
    }


def _finetuned_features(
    config: SpikEmoConfig, manifest_path: Path, resplit: pd.DataFrame, resplit_path: Path
) -> tuple[SpikEmoConfig, pd.DataFrame]:
    """The config resolved to its finished fine-tune, and that encoder's features of the resplit (extracted if
    missing)."""
    tuned = finetuned_text_config(config, resplit_path)
    extract_modality(manifest_path, "text", tuned.features, config.cache)
    return tuned, load_features(resplit, "text", tuned.features, config.cache)


def _spikemo_scores(
    config: SpikEmoConfig,
    manifest: pd.DataFrame,
    features: dict[str, pd.DataFrame],
    labels: list[str],
    seeds: int,
    name: str,
) -> list[float]:
    """SpikEmo's weighted-F1 on the reported split for seeds 0 .. seeds-1 (epoch selected on the selection split)."""
    scores = []
    for seed in range(seeds):
        seeded = config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})
        with tempfile.TemporaryDirectory() as run_dir:
            result = train_model(seeded, manifest, features, labels, Path(run_dir), resume=False)
        scores.append(result.test_metrics["weighted_f1"])
        print(
            json.dumps(
                {
                    "features": name,
                    "spikemo_seed": seed,
                    "reported_weighted_f1": result.test_metrics["weighted_f1"],
                    "best_epoch": result.best_epoch,
                }
            ),
            file=sys.stderr,
            flush=True,
        )
    return scores


class PeakRSS:
    """The process's peak resident memory while the block runs, sampled every 0.2 s."""

    def __enter__(self) -> PeakRSS:
        self.peak = 0
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self._process.memory_info().rss)
            if self._stop.wait(0.2):
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class ProbeScores:
    test_weighted_f1: float  # the reported split
    train_minus_selection: dict[
        str, float
    ]  # weighted-F1 on its own training utterances, on the selection split, the gap


def _probe(manifest: pd.DataFrame, features: pd.DataFrame, labels: list[str]) -> ProbeScores:
    probe = fit_linear_probe(build_dialogue_data(manifest, {"text": features}, len(labels)), labels)
    train, selection = probe.train_metrics["weighted_f1"], probe.dev_metrics["weighted_f1"]
    gap = {"train": round(train, 2), "selection": round(selection, 2), "gap": round(train - selection, 2)}
    return ProbeScores(float(probe.test_metrics["weighted_f1"]), gap)


def _bench_config(args: argparse.Namespace, overrides: dict[str, Any], path: Path | None = None) -> SpikEmoConfig:
    base = {
        "data.format": args.dataset,
        "data.root": str(args.data_root or SHARED_DATA / args.dataset),
        "data.name": args.dataset,
        "features.modalities": ["text"],
        "cache": str(args.cache),
        "workdir": str(args.work),
    }
    return load_config(path, {**base, **overrides})


def _ingested(config: SpikEmoConfig) -> Path:
    ingest(config.data, config.manifest_path)
    return config.manifest_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["speed", "accuracy", "combine", "speed-worker"], required=True)
    parser.add_argument(
        "--configs",
        type=lambda value: [Path(path) for path in value.split(",")],
        default=[REPO / "configs" / "meld-mpnet.yaml", REPO / "configs" / "meld-finetuned.yaml"],
        help="accuracy: comma-separated recipes, one row each (default: MPNet, then MiniLM); combine: the members",
    )
    parser.add_argument(
        "--frozen-layer",
        type=lambda value: {k: int(v) for k, v in (item.split("=") for item in value.split(","))},
        default={"minilm": 4, "mpnet": 8},
        help="accuracy: layer of the frozen-probe features per model alias",
    )
    parser.add_argument(
        "--setting",
        nargs=6,
        metavar=("MODEL", "MAX_LENGTH", "CONTEXT_TURNS", "FUTURE_TURNS", "FREEZE_LAYERS", "PRECISION"),
    )
    parser.add_argument("--steps", type=int, default=12, help="speed: timed training steps per setting")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=3, help="accuracy, combine: SpikEmo seeds on each set of features")
    parser.add_argument("--dataset", choices=["meld", "emorynlp"], default="meld")
    parser.add_argument("--data-root", type=Path, help="the dataset's folder (default ../shared/data/<dataset>)")
    parser.add_argument("--cache", type=Path, default=REPO / "feature_cache")
    parser.add_argument(
        "--work", type=Path, default=REPO / ".spikemo" / "bench", help="fine-tuned encoders go under here"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    part = {"speed": speed, "accuracy": accuracy, "combine": combine, "speed-worker": speed_worker}[args.part]
    print(json.dumps(part(args)))


if __name__ == "__main__":
    main()
