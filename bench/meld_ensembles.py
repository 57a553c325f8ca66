"""Averaged predictions on MELD's fine-tuned text features: SpikEmo's seeds, and SpikEmo over two fine-tunes,
each against the same average of linear probes.

For every ``--configs`` entry (a MELD config with a text fine-tune, read as bench/model_vs_baselines.py reads
``--meld-config``: the encoder fine-tuned on the fixed selection resplit), SpikEmo (``ours``) is trained with
``--seeds`` seeds and the linear probe is fitted once; every run's class probabilities on the selection split
(a fixed 10% of MELD's train dialogues) and on the reported split (MELD dev) are kept. Rows, weighted-F1:
each single run (seed mean); each config's seed ensemble (probabilities averaged over seeds); with two or more
configs, the ensemble over every config and seed against the probes of every config averaged. 95% intervals of
each ensemble's reported score and of ensemble − probe ensemble: MELD dev dialogues resampled 1,000 times.
Prints one JSON line per run, then a summary line.

    .venv/bin/python bench/meld_ensembles.py --configs meld-mpnet.yaml,../.spikemo/bench/meld-mpnet-seed1.yaml --seeds 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from model_vs_baselines import REPO, SHARED_DATA, fold_arguments, meld_folds  # bench/ is the script's folder
from torch.utils.data import DataLoader

from spikemo.model.batch import IGNORE_INDEX
from spikemo.model.spikemo import SpikEmo
from spikemo.training import build_dialogue_data, train_on_dialogue_data
from spikemo.training.baseline import fit_linear_probe
from spikemo.training.data import DialogueDataset, LengthBucketBatchSampler, collate_dialogues
from spikemo.training.metrics import bootstrap_weights, interval, weighted_scores

SPLITS = {"selection": "dev", "reported": "test"}  # the bench's names -> the resplit manifest's


@torch.no_grad()
def class_probabilities(model: SpikEmo, dataset: DialogueDataset, num_classes: int) -> np.ndarray:
    """Softmax outputs for the labelled utterances of ``dataset`` in storage order (as ``test_predictions``)."""
    model.eval()
    batches = list(LengthBucketBatchSampler(dataset.dialogue_lengths, 16, shuffle=False))
    placed = np.zeros((len(dataset.labels), num_classes))
    device = next(model.parameters()).device
    for indices, batch in zip(batches, DataLoader(dataset, batch_sampler=batches, collate_fn=collate_dialogues)):
        batch = batch.to(device)
        probabilities = torch.softmax(model(batch).logits.float(), dim=-1).cpu()
        placed[dataset.labelled_rows(indices)] = probabilities[batch.labels != IGNORE_INDEX].numpy()
    return placed[dataset.labels >= 0]


def scores(labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return weighted_scores(labels, probabilities.argmax(axis=1), weights, probabilities.shape[1])["weighted_f1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs", required=True, help="comma-separated MELD configs under configs/ (each with a text fine-tune)"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--meld-root", type=Path, default=SHARED_DATA / "meld")
    parser.add_argument("--cache", type=Path, default=REPO / "feature_cache")
    parser.add_argument("--work", type=Path, default=REPO / ".spikemo" / "bench")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bootstrap-draws", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs: dict[
        tuple[str, str], list[dict[str, np.ndarray]]
    ] = {}  # (config, "ours" | "probe") -> per run: split -> probabilities
    labels: dict[str, np.ndarray] = {}
    units = None
    for name in args.configs.split(","):
        options = {
            "--meld-config": name,
            "--meld-root": args.meld_root,
            "--seeds": args.seeds,
            "--cache": args.cache,
            "--work": args.work,
        }
        for fold in meld_folds(fold_arguments(options)):
            seed = fold.config.train.seed
            data = build_dialogue_data(fold.manifest, fold.features, len(fold.labels))
            labels = {split: data.splits[key].labels[data.splits[key].labels >= 0] for split, key in SPLITS.items()}
            reported = data.splits["test"]
            units = reported.dialogue_index[reported.labels >= 0]
            if seed == 0:
                probe = fit_linear_probe(data, fold.labels, seed=seed)
                runs.setdefault((name, "probe"), []).append(
                    {split: probe.probabilities[key] for split, key in SPLITS.items()}
                )
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as run_dir:
                result = train_on_dialogue_data(fold.config, data, fold.labels, Path(run_dir), resume=False)
            run = {
                split: class_probabilities(result.model, data.splits[key], len(fold.labels))
                for split, key in SPLITS.items()
            }
            runs.setdefault((name, "ours"), []).append(run)
            single = {
                split: round(float(scores(labels[split], run[split], np.ones((1, len(labels[split]))))[0]), 2)
                for split in SPLITS
            }
            agreement = float(
                (run["reported"].argmax(axis=1) == result.test_predictions).mean()
            )  # against the training run's own scoring
            print(
                json.dumps(
                    {
                        "config": name,
                        "variant": "ours",
                        "seed": seed,
                        **single,
                        "agreement_with_training_scoring": round(agreement, 4),
                        "seconds": round(time.perf_counter() - started, 1),
                    }
                ),
                flush=True,
            )
    resamples = bootstrap_weights(units, args.bootstrap_draws, seed=0)
    as_is = np.ones((1, len(labels["selection"])))

    def averaged(members: list[dict[str, np.ndarray]], split: str) -> np.ndarray:
        return np.mean([member[split] for member in members], axis=0)

    def row(members: list[dict[str, np.ndarray]], probes: list[dict[str, np.ndarray]]) -> dict[str, object]:
        ensemble = scores(labels["reported"], averaged(members, "reported"), resamples)
        probe = scores(labels["reported"], averaged(probes, "reported"), resamples)
        single = np.mean([scores(labels["reported"], member["reported"], resamples) for member in members], axis=0)
        return {
            "members": len(members),
            "single_run_mean": round(float(single[0]), 2),
            "ensemble_selection": round(
                float(scores(labels["selection"], averaged(members, "selection"), as_is)[0]), 2
            ),
            "ensemble_reported": interval(ensemble).as_list(),
            "probe_selection": round(float(scores(labels["selection"], averaged(probes, "selection"), as_is)[0]), 2),
            "probe_reported": interval(probe).as_list(),
            "ensemble_minus_probe": interval(ensemble - probe).as_list(),
            "ensemble_minus_single_run_mean": interval(ensemble - single).as_list(),
        }

    configs = args.configs.split(",")
    summary = {name: row(runs[(name, "ours")], runs[(name, "probe")]) for name in configs}
    if len(configs) > 1:
        summary["all_configs"] = row(
            [run for name in configs for run in runs[(name, "ours")]],
            [run for name in configs for run in runs[(name, "probe")]],
        )
    print(json.dumps({"benchmark": "meld_ensembles", "seeds": args.seeds, "summary": summary}))


if __name__ == "__main__":
    main()
