"""EmoDB: choices for ``configs/emodb.yaml`` judged without the reported speakers (a nested check).

For each reported speaker k (the test speaker of ``model_vs_baselines.py``'s fold k), speaker k is dropped; the
other seven take turns as inner test speaker, the next of them selects, the remaining five train. Every inner
fold trains each candidate: ``configs/emodb.yaml`` with the candidate's overrides (named in ``--candidates`` or
given by ``--candidate NAME:JSON``), on each ``--audio-encoder`` (default: the config's own). Per reported speaker
the summary gives the inner test speakers' mean weighted-F1 of each choice (encoder and candidate) and the choice
a nested protocol would pick for that fold, never having looked at speaker k; ``overall_choice`` is the best mean
over all eight (what the config ships: the shared speakers only). Each line printed is one inner run; the last
line is the summary.

    .venv/bin/python bench/emodb_nested_choice.py --candidates feature_gate_last,softmax_gate_last --seeds 3
    .venv/bin/python bench/emodb_nested_choice.py --candidates softmax_gate_last \\
        --audio-encoder egemaps --audio-encoder compare --audio-encoder whisper
    .venv/bin/python bench/emodb_nested_choice.py --candidates softmax_gate_last \\
        --candidate 'input_noise_0.5:{"model.input_noise": 0.5}'
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from model_vs_baselines import REPO, SHARED_DATA, VARIANTS, Fold, emodb_folds, fold_arguments, named_json

from spikemo.config import with_overrides
from spikemo.training import build_dialogue_data, train_on_dialogue_data

CANDIDATES: dict[str, dict[str, Any]] = {  # each names its gate and epoch rule, whatever the config holds
    "feature_gate_best_dev": {"model.spike_gate": "feature", "train.keep": "best_dev", "train.patience": 15},
    "feature_gate_last": {"model.spike_gate": "feature", "train.keep": "last"},
    "softmax_gate_best_dev": {"model.spike_gate": "utterance_softmax", "train.keep": "best_dev", "train.patience": 15},
    "softmax_gate_last": {"model.spike_gate": "utterance_softmax", "train.keep": "last"},
    "paper_last": {**VARIANTS["paper"], "train.keep": "last"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--candidates",
        default="feature_gate_last,softmax_gate_last",
        help=f"comma-separated subset of {list(CANDIDATES)}",
    )
    parser.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="NAME:JSON",
        help="a further candidate: a name and its overrides, e.g. 'noise:{\"model.input_noise\": 0.5}' (repeatable)",
    )
    parser.add_argument(
        "--audio-encoder",
        action="append",
        help="an audio encoder to choose among, NAME or NAME:JSON-PARAMS; repeat for several (default: the config's)",
    )
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--emodb-root", type=Path, default=SHARED_DATA / "emodb")
    parser.add_argument("--cache", type=Path, default=REPO / "feature_cache")
    parser.add_argument("--work", type=Path, default=REPO / ".spikemo" / "bench")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    named = [name for name in args.candidates.split(",") if name]
    unknown = sorted(set(named) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown candidate(s) {unknown}; choose from {list(CANDIDATES)} or give --candidate NAME:JSON")
    candidates = {name: CANDIDATES[name] for name in named} | dict(map(named_json, args.candidate))
    torch.set_num_threads(args.threads)
    encoders = args.audio_encoder or [None]
    bases = {encoder: _base_fold(args, encoder) for encoder in encoders}
    choices = [_choice(encoder, candidate, len(encoders)) for encoder in encoders for candidate in candidates]
    speakers = sorted(bases[encoders[0]].manifest["speaker"].unique())
    records = []
    for reported in speakers:
        inner = [s for s in speakers if s != reported]
        for position, inner_test in enumerate(inner):
            selecting = inner[(position + 1) % len(inner)]
            for encoder, base in bases.items():
                manifest = base.manifest[base.manifest["speaker"] != reported]
                split = np.where(
                    manifest["speaker"] == inner_test,
                    "test",
                    np.where(manifest["speaker"] == selecting, "dev", "train"),
                )
                data = build_dialogue_data(manifest.assign(split=split), base.features, len(base.labels))
                for seed in range(args.seeds):
                    for candidate in candidates:
                        config = with_overrides(base.config, {**candidates[candidate], "train.seed": seed})
                        with tempfile.TemporaryDirectory() as run_dir:
                            result = train_on_dialogue_data(config, data, base.labels, Path(run_dir), resume=False)
                        record = {
                            "reported_speaker": reported,
                            "inner_test_speaker": inner_test,
                            "seed": seed,
                            "choice": _choice(encoder, candidate, len(encoders)),
                            "inner_test_weighted_f1": round(result.test_metrics["weighted_f1"], 2),
                            "kept_epoch": result.best_epoch,
                        }
                        print(json.dumps(record), flush=True)
                        records.append(record)
    table = pd.DataFrame(records).groupby(["reported_speaker", "choice"])["inner_test_weighted_f1"].mean().unstack()
    table = table[choices]
    summary = {
        speaker: {**{choice: round(row[choice], 2) for choice in choices}, "nested_choice": row.idxmax()}
        for speaker, row in table.iterrows()
    }
    means = {choice: round(table[choice].mean(), 2) for choice in choices}
    print(
        json.dumps(
            {
                "benchmark": "emodb_nested_choice",
                "seeds": args.seeds,
                "per_reported_speaker": summary,
                "mean": means,
                "overall_choice": max(means, key=means.__getitem__),
            }
        )
    )


def _base_fold(args: argparse.Namespace, audio_encoder: str | None) -> Fold:
    """EmoDB's manifest, features and config with ``audio_encoder`` (None: the config's own)."""
    paths = {"--emodb-root": args.emodb_root, "--cache": args.cache, "--work": args.work}
    encoder = {"--emodb-audio": audio_encoder} if audio_encoder else {}
    return next(emodb_folds(fold_arguments({"--seeds": 1, **paths, **encoder})))


def _choice(encoder: str | None, candidate: str, encoders: int) -> str:
    return candidate if encoders == 1 else f"{encoder}/{candidate}"


if __name__ == "__main__":
    main()
