"""SpikEmo variants against a linear probe, on splits never used for selection, over several seeds.

Datasets (each trained with its shipped config's model and training sections):
- ``meld``: MELD text (``--meld-config``, default configs/meld.yaml: frozen MiniLM features from the cache; a
  config with a text fine-tune reads the encoder fine-tuned on the same selection split, by
  bench/finetune_text.py or here when missing). A fixed 10% of the train dialogues selects (epoch, probe C),
  MELD's dev split is reported: the shared copy holds no test split. ``--meld-stacking half`` trains on a fixed
  half of the training dialogues; ``held_out`` trains on that half with features of an encoder fine-tuned on
  the other half only, so that no training utterance's features come from an encoder that saw its label.
- ``emodb``: EmoDB speech, speaker-independent, the audio encoder of configs/emodb.yaml or ``--emodb-audio``
  (``compare``, ``whisper``, ``whisper:{"window": "clip"}``: a name and optional JSON parameters). Each
  speaker's clips form one session (a "dialogue" of that speaker's utterances); fold k reports on speaker k,
  selects on speaker k+1 and trains on the other six; every one of the 8 folds runs every seed. Each trained
  variant is also scored on single clips (``<variant>_single_clip``: every test clip alone, no session to
  normalise over, as a caller with one utterance has it). The summary holds the encoder's extraction seconds per
  clip when this invocation encoded the clips.
- ``demo``: a generated corpus (default 400 dialogues, ~3,400 clips: 322 dev utterances select, 671 test
  utterances are reported, a standard error of about 1.7 points; 200 dialogues leave 179 and 309), all three
  modalities, its own train/dev/test.
Variants: ``ours`` (the config as shipped), ``no_spiking`` (its spiking branch removed), ``ce_only`` (its loss
reduced to cross-entropy), ``speaker_evidence`` (two rounds of speaker-chain evidence), ``text_dialogue_rnn``
(the DialogueRNN on text too), ``input_noise`` (Gaussian noise of 0.5 standard deviations on the standardised
training inputs), ``causal`` (``model.causal``: only the current and earlier turns),
``speaker_evidence_cross_fitted`` (two rounds of speaker-chain evidence fitted on out-of-fold probabilities,
``train.speaker_evidence_fit: cross_fitted``), ``no_speaker_relative`` (its speaker-relative inputs off; the
same as ``ours`` where the config leaves them off), ``no_speaker_evidence`` (likewise its speaker-chain
evidence rounds), ``paper`` (the paper-faithful model: Heaviside input encoding, softmax gate over utterances, no
speaker/position embeddings, DialogueRNN output replacing its input, no speaker evidence, tau 10, loss weights
0.4/1/0.3, Adam with L2; same sizes and schedule so the comparison isolates the design) and ``linear_probe``
(the probe every training run fits, on the inputs as the variant's model reads them); ``linear_probe_speaker_zscore``
is that probe on inputs z-scored over each speaker's utterances in each dialogue whatever the config, and
``linear_svm_speaker_zscore`` a linear SVM on those inputs (C selected likewise). Each line printed
is one run; the last line is the summary: per dataset and variant the mean ± std of the reported split's
weighted-F1 (and accuracy, and the selection split's mean), the differences of ``ours`` from the other variants
and probes, and 95% intervals of those seed means and differences from resampling the reported split's
dialogues (EmoDB: clips, a test fold being one speaker's session), every run scored on the same resamples.

    .venv/bin/python bench/model_vs_baselines.py --datasets meld,emodb,demo --seeds 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from meld_splits import selection_resplit, training_half, write_resplit  # bench/ is the script's folder
from torch.utils.data import DataLoader

from spikemo.config import ModelConfig, SpikEmoConfig, load_config, parse_override, with_overrides
from spikemo.data.demo import DemoCorpusSettings, make_demo_corpus
from spikemo.data.ingest import ingest
from spikemo.data.schema import read_manifest
from spikemo.features.extract import load_features
from spikemo.stages import preprocess
from spikemo.training import build_dialogue_data, collate_dialogues, predict, train_on_dialogue_data
from spikemo.training.baseline import fit_linear_probe
from spikemo.training.metrics import bootstrap_weights, classification_metrics, interval, weighted_scores
from spikemo.training.text_finetune import finetune_text_encoder, finetuned_text_config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
VARIANTS: dict[str, dict[str, Any]] = {
    "ours": {},
    "no_spiking": {"model.use_spiking": False},
    "ce_only": {"train.loss_weights": {"ce": 1.0, "dice": 0.0, "soft_hgr": 0.0}},
    "no_speaker_relative": {"model.speaker_relative_inputs": "off"},
    "no_speaker_evidence": {"model.speaker_evidence_rounds": 0},
    "paper": {
        "model.spike_encoding": "heaviside",
        "model.spike_gate": "utterance_softmax",
        "model.spike_speaker_context": False,
        "model.dialogue_context_residual": False,
        "model.speaker_evidence_rounds": 0,
        "model.neuron.tau": 10.0,
        "model.members": 1,  # one network, as the paper trains
        "train.loss_weights": {"ce": 0.4, "dice": 1.0, "soft_hgr": 0.3},
        "train.optimizer": "adam",
        "train.weight_decay": 1e-5,
    },
    # ideas for features of a fine-tuned encoder (--meld-config configs/meld-mpnet.yaml), judged on the selection split
    "speaker_evidence": {"model.speaker_evidence_rounds": 2},
    "text_dialogue_rnn": {"model.dialogue_context": ["text", "audio", "visual"]},
    "input_noise": {"model.input_noise": 0.5},
    "causal": {"model.causal": True},  # reads only the current and earlier turns (live scoring)
    "bf16": {"train.precision": "bf16"},  # against ``ours`` (auto: fp32 on CPU), what bf16 training changes
    # speaker evidence fitted on out-of-fold probabilities (training/cross_fit.py) rather than jointly
    "speaker_evidence_cross_fitted": {"model.speaker_evidence_rounds": 2, "train.speaker_evidence_fit": "cross_fitted"},
}
PROBE = "linear_probe"
SPEAKER_PROBE = "linear_probe_speaker_zscore"  # the probe on inputs z-scored over each speaker in each dialogue
SVM_PROBE = "linear_svm_speaker_zscore"
PROBES = (PROBE, SPEAKER_PROBE, SVM_PROBE)
SPEAKER_ZSCORES = ModelConfig(
    speaker_relative_inputs="zscore", speaker_min_utterances=1
)  # what the speaker probe reads


@dataclass
class Fold:
    """One evaluation: a manifest whose ``dev`` selects and whose ``test`` is reported."""

    manifest: pd.DataFrame
    features: dict[str, pd.DataFrame]
    labels: list[str]
    config: SpikEmoConfig
    name: str = "all"  # which evaluation split this is (EmoDB: the reported speaker)
    resample_utterances: bool = False  # bootstrap unit: the utterance (EmoDB: a test fold is one speaker session)


def meld_folds(args: argparse.Namespace) -> Iterator[Fold]:
    config = _config(args.meld_config, args, {"data.root": str(args.meld_root), "features.modalities": ["text"]})
    if config.fine_tunes_text:
        config = _with_finetuned_text_encoder(config, args)
    manifest, labels, features = _prepared(config)
    # the same selection dialogues for every seed and variant (and bench/finetune_text.py)
    manifest = selection_resplit(manifest)
    if args.meld_stacking != "all":
        manifest = training_half(manifest, "b")
    for seed in range(args.seeds):
        yield Fold(manifest, features, labels, _seeded(config, seed))


def _with_finetuned_text_encoder(config: SpikEmoConfig, args: argparse.Namespace) -> SpikEmoConfig:
    """``config`` reading the text encoder fine-tuned on the selection resplit's training dialogues (half ``a`` of
    them with ``--meld-stacking held_out``): the fine-tune bench/finetune_text.py ran, or run here when missing."""
    ingest(config.data, config.manifest_path)
    resplit, name = selection_resplit(read_manifest(config.manifest_path)[0]), "meld-select10"
    if args.meld_stacking == "held_out":
        resplit, name = training_half(resplit, "a"), "meld-select10-half-a"
    resplit_path = write_resplit(resplit, config.manifest_path, args.work / name / "manifest.parquet")
    fine_tuned_on = config.model_copy(
        update={"workdir": args.work, "data": config.data.model_copy(update={"name": "meld-select10"})}
    )
    finetune_text_encoder(fine_tuned_on, resplit_path)
    return config.model_copy(update={"features": finetuned_text_config(fine_tuned_on, resplit_path).features})


def emodb_folds(args: argparse.Namespace) -> Iterator[Fold]:
    sessions = args.work / "emodb_sessions.csv"
    table = pd.read_csv(args.emodb_root / "labels.csv", dtype={"speaker": str})
    # EmoDB's file names sort by sentence and then emotion: shuffle (fixed) so turn order carries no label
    table = table.sample(frac=1.0, random_state=0).assign(
        utterance_index=lambda t: t.groupby("speaker").cumcount(),
        dialogue_id=lambda t: (
            "speaker" + t["speaker"] + "-" + (t["utterance_index"] // (args.emodb_session_length or len(t))).astype(str)
        ),
        text="",
        split="train",
        media_path=lambda t: t["file"],
    )
    sessions.parent.mkdir(parents=True, exist_ok=True)
    table = table.assign(label=table["emotion"])
    table[["dialogue_id", "utterance_index", "speaker", "text", "label", "split", "media_path"]].to_csv(
        sessions, index=False
    )
    labels = sorted(table["emotion"].unique())
    audio = {}
    if args.emodb_audio:
        name, params = named_json(args.emodb_audio)
        audio = {"features.audio": {"name": name, "params": params}}
    config = _config(
        "emodb.yaml",
        args,
        {
            "data.format": "manifest",
            "data.manifest": str(sessions),
            "data.root": str(args.emodb_root),
            "data.labels": labels,
            **audio,
        },
    )
    manifest, labels, features = _prepared(config)
    speakers = sorted(manifest["speaker"].unique())
    for fold, test_speaker in enumerate(speakers):
        dev_speaker = speakers[(fold + 1) % len(speakers)]
        split = np.where(
            manifest["speaker"] == test_speaker, "test", np.where(manifest["speaker"] == dev_speaker, "dev", "train")
        )
        for seed in range(args.seeds):
            yield Fold(
                manifest.assign(split=split),
                features,
                labels,
                _seeded(config, seed),
                name=f"speaker{test_speaker}",
                resample_utterances=True,
            )


def named_json(item: str) -> tuple[str, dict[str, Any]]:
    """``NAME:JSON`` (or ``NAME``) as the name and its parsed object (empty without one)."""
    name, _, text = item.partition(":")
    return name, json.loads(text or "{}")


def demo_folds(args: argparse.Namespace) -> Iterator[Fold]:
    root = args.work / f"demo-{args.demo_dialogues}"
    if not (root / "train_sent_emo.csv").is_file():
        make_demo_corpus(root, DemoCorpusSettings(dialogues=args.demo_dialogues, seed=args.demo_dialogues))
    config = _config("demo.yaml", args, {"data.root": str(root), "data.name": f"demo{args.demo_dialogues}"})
    manifest, labels, features = _prepared(config)
    for seed in range(args.seeds):
        yield Fold(manifest, features, labels, _seeded(config, seed))


DATASETS: dict[str, Callable[[argparse.Namespace], Iterator[Fold]]] = {
    "meld": meld_folds,
    "emodb": emodb_folds,
    "demo": demo_folds,
}


def _seeded(config: SpikEmoConfig, seed: int) -> SpikEmoConfig:
    return config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})


def _config(name: str, args: argparse.Namespace, overrides: dict[str, Any]) -> SpikEmoConfig:
    extra = {"train.epochs": args.epochs} if args.epochs else {}
    extra.update(parse_override(item) for item in args.overrides)
    return load_config(REPO / "configs" / name, {"cache": str(args.cache), **overrides, **extra})


EXTRACTION: dict[str, Any] = {}  # per modality: the encoder and its seconds per clip, where this invocation encoded


def _prepared(config: SpikEmoConfig) -> tuple[pd.DataFrame, list[str], dict[str, pd.DataFrame]]:
    summary = preprocess(config)
    for modality, extracted in summary["modalities"].items():
        if extracted["encoded"]:
            EXTRACTION[modality] = {
                "encoder": extracted["encoder"],
                "clips": extracted["encoded"],
                "seconds_per_item": round(extracted["seconds"] / extracted["encoded"], 4),
            }
    manifest_path = Path(summary["manifest"])
    manifest, metadata = read_manifest(manifest_path)
    features = {m: load_features(manifest, m, config.features, config.cache) for m in config.features.modalities}
    return manifest, metadata["labels"], features


@dataclass
class ReportedPredictions:
    """What each run predicted on a fold's reported split, kept for the bootstrap of the summary."""

    labels: np.ndarray
    units: np.ndarray  # what a resample draws: dialogues (or utterances)
    num_classes: int
    by_run: dict[tuple[str, int], np.ndarray]  # (variant, seed) -> predicted label of each labelled utterance


def run_fold(
    dataset: str, fold: Fold, variants: list[str], predictions: dict[tuple[str, str], ReportedPredictions]
) -> list[dict[str, Any]]:
    """Every variant on one fold and seed; their reported-split predictions go into ``predictions``."""
    records = []
    seed = fold.config.train.seed
    data = build_dialogue_data(fold.manifest, fold.features, len(fold.labels))
    test = data.splits["test"]
    labelled = test.labels >= 0
    units = np.arange(int(labelled.sum())) if fold.resample_utterances else test.dialogue_index[labelled]
    reported = predictions.setdefault(
        (dataset, fold.name), ReportedPredictions(test.labels[labelled], units, len(fold.labels), {})
    )
    for probe_variant in (v for v in PROBES if v in variants and seed == 0):  # deterministic: one fit per fold
        started = time.perf_counter()
        model = fold.config.model if probe_variant == PROBE else SPEAKER_ZSCORES
        probe = fit_linear_probe(
            data, fold.labels, seed=seed, model=model, kind="svm" if probe_variant == SVM_PROBE else "logistic"
        )
        reported.by_run[(probe_variant, seed)] = probe.test_predictions
        records.append(
            _record(
                dataset,
                fold.name,
                probe_variant,
                seed,
                probe.test_metrics,
                probe.dev_metrics,
                time.perf_counter() - started,
                C=probe.C,
            )
        )
    for variant in (v for v in variants if v not in PROBES):
        config = with_overrides(fold.config, VARIANTS[variant])
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as run_dir:
            result = train_on_dialogue_data(config, data, fold.labels, Path(run_dir), resume=False)
        reported.by_run[(variant, seed)] = result.test_predictions
        records.append(
            _record(
                dataset,
                fold.name,
                variant,
                seed,
                result.test_metrics,
                result.dev_metrics,
                time.perf_counter() - started,
                best_epoch=result.best_epoch,
                epochs_run=len(result.history),
            )
        )
        if fold.resample_utterances:
            alone = single_clip_predictions(result.model, fold, test.utterance_keys[labelled])
            reported.by_run[(f"{variant}_single_clip", seed)] = alone
            scores = classification_metrics(test.labels[labelled], alone, fold.labels)
            records.append(_record(dataset, fold.name, f"{variant}_single_clip", seed, scores, result.dev_metrics, 0.0))
    return records


def single_clip_predictions(model: torch.nn.Module, fold: Fold, keys: np.ndarray) -> np.ndarray:
    """The trained model's predicted label of each test clip scored alone (its own one-clip session), in the
    order of ``keys``."""
    test_rows = fold.manifest["split"] == "test"
    alone = fold.manifest.assign(
        dialogue_id=fold.manifest["dialogue_id"].where(~test_rows, fold.manifest["utterance_key"]),
        turn=fold.manifest["turn"].where(~test_rows, 0),
    )
    clips = build_dialogue_data(alone, fold.features, len(fold.labels)).splits["test"]
    batches = DataLoader(clips, batch_size=64, collate_fn=collate_dialogues)
    _, predicted = predict(model, batches)
    by_key = dict(zip(clips.utterance_keys[clips.labels >= 0], predicted, strict=True))
    return np.array([by_key[key] for key in keys])


def _record(
    dataset: str, fold: str, variant: str, seed: int, reported: dict, selection: dict, seconds: float, **extra: Any
) -> dict[str, Any]:
    record = {
        "dataset": dataset,
        "fold": fold,
        "variant": variant,
        "seed": seed,
        "reported_weighted_f1": round(reported["weighted_f1"], 2),
        "reported_accuracy": round(reported["accuracy"], 2),
        "selection_weighted_f1": round(selection["weighted_f1"], 2),
        "seconds": round(seconds, 1),
        **extra,
    }
    print(json.dumps(record), flush=True)
    return record


def seed_mean_intervals(folds: list[ReportedPredictions], draws: int) -> dict[str, Any]:
    """95% intervals of each variant's reported weighted-F1 averaged over folds and seeds, and of ``ours``
    minus each other variant: every fold's reported units resampled (1,000 draws, seed 0), each run scored on
    the same resample, the scores averaged as the reported means are."""
    replicates: dict[str, list[np.ndarray]] = {}
    for fold in folds:
        weights = bootstrap_weights(fold.units, draws, seed=0)
        per_variant: dict[str, list[np.ndarray]] = {}
        for (variant, _), predicted in fold.by_run.items():
            per_variant.setdefault(variant, []).append(
                weighted_scores(fold.labels, predicted, weights, fold.num_classes)["weighted_f1"]
            )
        for variant, runs in per_variant.items():
            replicates.setdefault(variant, []).append(np.mean(runs, axis=0))
    means = {variant: np.mean(runs, axis=0) for variant, runs in replicates.items()}
    intervals: dict[str, Any] = {f"{variant}_ci": interval(values).as_list()[1:] for variant, values in means.items()}
    if "ours" in means:
        intervals.update(
            {
                f"ours_minus_{other}_ci": interval(means["ours"] - values).as_list()[1:]
                for other, values in means.items()
                if other != "ours"
            }
        )
    return intervals


def summarise(
    records: list[dict[str, Any]], predictions: dict[tuple[str, str], ReportedPredictions], draws: int
) -> dict[str, Any]:
    table = pd.DataFrame(records)
    summary: dict[str, Any] = {}
    for dataset, rows in table.groupby("dataset", sort=False):
        per_variant = {}
        for variant, runs in rows.groupby("variant", sort=False):
            per_variant[variant] = {
                "weighted_f1_mean": round(runs["reported_weighted_f1"].mean(), 2),
                "weighted_f1_std": round(runs["reported_weighted_f1"].std(ddof=1), 2) if len(runs) > 1 else 0.0,
                "accuracy_mean": round(runs["reported_accuracy"].mean(), 2),
                "selection_weighted_f1_mean": round(runs["selection_weighted_f1"].mean(), 2),
                "runs": len(runs),
                "seconds_mean": round(runs["seconds"].mean(), 1),
            }
        means = {variant: stats["weighted_f1_mean"] for variant, stats in per_variant.items()}
        differences = {
            f"ours_minus_{other}": round(means["ours"] - means[other], 2)
            for other in means
            if other != "ours" and "ours" in means
        }
        folds = [reported for (name, _), reported in predictions.items() if name == dataset]
        summary[dataset] = {
            "variants": per_variant,
            "differences": differences,
            "intervals_95": seed_mean_intervals(folds, draws),
        }
    return summary


def argument_parser() -> argparse.ArgumentParser:
    """This script's arguments; other benches build their folds' arguments with it (``fold_arguments``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="meld,emodb,demo", help="comma-separated subset of meld,emodb,demo")
    parser.add_argument(
        "--variants", default="ours,no_spiking,ce_only,paper,linear_probe", help=f"any of {[*VARIANTS, *PROBES]}"
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds per dataset (EmoDB: per fold)")
    parser.add_argument("--epochs", type=int, help="override each config's train.epochs")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override each config's KEY"
    )
    parser.add_argument("--demo-dialogues", type=int, default=400, help="size of the generated corpus (also its seed)")
    parser.add_argument("--meld-root", type=Path, default=SHARED_DATA / "meld")
    parser.add_argument(
        "--meld-config",
        default="meld.yaml",
        help="MELD config under configs/ (one with a text fine-tune "
        "reads the encoder fine-tuned on the same selection split, fine-tuning it when missing)",
    )
    parser.add_argument(
        "--meld-stacking",
        choices=["all", "half", "held_out"],
        default="all",
        help="with a fine-tuned text encoder: 'all' trains on every training dialogue; 'half' on half b of them (fixed "
        "halves); 'held_out' on half b with features of an encoder fine-tuned on half a only (fine-tuned here when "
        "missing)",
    )
    parser.add_argument(
        "--emodb-session-length",
        type=int,
        default=0,
        help="EmoDB clips per speaker session (0: all of a speaker's clips)",
    )
    parser.add_argument("--emodb-root", type=Path, default=SHARED_DATA / "emodb")
    parser.add_argument(
        "--emodb-audio", help="EmoDB's audio encoder instead of configs/emodb.yaml's: NAME or NAME:JSON-PARAMS"
    )
    parser.add_argument("--cache", type=Path, default=REPO / "feature_cache")
    parser.add_argument(
        "--work", type=Path, default=REPO / ".spikemo" / "bench", help="generated corpora and session lists"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--bootstrap-draws", type=int, default=1000, help="resamples behind the summary's 95%% intervals"
    )
    return parser


def fold_arguments(options: dict[str, Any]) -> argparse.Namespace:
    """This script's arguments with ``options`` (``{"--seeds": 1}``) given and its defaults elsewhere: what
    ``meld_folds``, ``emodb_folds`` and ``demo_folds`` read."""
    return argument_parser().parse_args([str(part) for option in options.items() for part in option])


def main() -> None:
    parser = argument_parser()
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    unknown = set(variants) - {*VARIANTS, *PROBES}
    if unknown:
        parser.error(f"unknown variant(s) {sorted(unknown)}; choose from {[*VARIANTS, *PROBES]}")
    records = []
    predictions: dict[tuple[str, str], ReportedPredictions] = {}
    for dataset in args.datasets.split(","):
        for fold in DATASETS[dataset](args):
            records.extend(run_fold(dataset, fold, variants, predictions))
    summary = summarise(records, predictions, args.bootstrap_draws)
    print(
        json.dumps(
            {"benchmark": "model_vs_baselines", "seeds": args.seeds, "extraction": EXTRACTION, "summary": summary}
        )
    )


if __name__ == "__main__":
    main()
