"""One training experiment: features → train/select on dev → test once → MLflow run → registry.

The train and register stages of spikemo/stages.py (``spikemo train``, the Prefect ``train`` flow) are these
functions. A run that raises is marked FAILED in MLflow and never registered. A killed run resumes from its last
checkpoint when re-run with the same config and data: its work folder is keyed by a digest of both.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import RunStatus

from spikemo import tracking
from spikemo.bundle import EncoderSpec, ModelSpec, save_bundle
from spikemo.config import FeaturesConfig, SpikEmoConfig
from spikemo.data.schema import read_manifest
from spikemo.errors import SpikemoError
from spikemo.features.extract import load_features
from spikemo.identity import training_run_key
from spikemo.predict import Predictor, evaluate_predictions
from spikemo.training import TrainResult, build_dialogue_data, train_on_dialogue_data
from spikemo.training.baseline import fit_linear_probe
from spikemo.training.data import DialogueData
from spikemo.training.loop import result_with_weights
from spikemo.training.metrics import BootstrapReport, dialogue_bootstrap
from spikemo.training.text_finetune import dialogue_head_weights, finetuned_text_config

ACTIVE_RUN_FILE = "mlflow_run_id"
RETRAINED = "retrained"  # SpikEmo trained on the extracted features
FINETUNE_HEAD = "finetune-head"  # the SpikEmo head of a dialogue-head text fine-tune, trained with its encoder
log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """A dataset ready for training: its manifest and one feature table per modality."""

    manifest_path: Path
    manifest: pd.DataFrame
    labels: list[str]
    features: dict[str, pd.DataFrame]
    encoders: dict[str, EncoderSpec]
    caches: dict[str, dict[str, Any]]
    features_config: FeaturesConfig  # what made the features (a text fine-tune resolved to its folder)


@dataclass
class TrainedRun:
    """A finished, logged MLflow run whose model bundle waits for registration."""

    run_id: str
    bundle: Path
    gating_score: float
    summary: dict[str, Any]
    baseline_gating_score: float | None = None  # the linear probe's weighted-F1 on the gating split
    model_id: str | None = None  # the MLflow logged model the run linked its final scores to


def load_prepared(config: SpikEmoConfig, manifest_path: Path, summary: dict[str, Any]) -> PreparedData:
    manifest, metadata = read_manifest(manifest_path)
    features_config = finetuned_text_config(config, manifest_path).features
    features, encoders, caches = {}, {}, {}
    for modality in config.features.modalities:
        extracted = summary["modalities"][modality]
        features[modality] = load_features(manifest, modality, features_config, config.cache)
        encoders[modality] = EncoderSpec(
            encoder=getattr(features_config, modality), fingerprint=extracted["fingerprint"], dim=extracted["dim"]
        )
        caches[modality] = {
            "path": extracted["cache_path"],
            "encoder": extracted["encoder"],
            "fingerprint": extracted["fingerprint"],
            "dim": extracted["dim"],
        }
    return PreparedData(manifest_path, manifest, metadata["labels"], features, encoders, caches, features_config)


def train_and_log(config: SpikEmoConfig, data: PreparedData) -> TrainedRun:
    """Train, select on dev, evaluate once on test, and log it all in one MLflow run (FAILED if it raises)."""
    run_dir = Path(config.workdir) / "runs" / _run_key(config, data)
    _close_interrupted_run(config, run_dir)
    with tracking.training_run(config, data.encoders) as run:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ACTIVE_RUN_FILE).write_text(run.info.run_id)
        datasets = tracking.log_inputs(data.manifest, data.manifest_path, data.caches)
        dialogue_data = build_dialogue_data(data.manifest, data.features, len(data.labels))
        retrained = train_on_dialogue_data(config, dialogue_data, data.labels, run_dir, on_epoch_end=tracking.log_epoch)
        result, source = _better_candidate(config, data, dialogue_data, retrained, run_dir)
        if "candidate_dev_weighted_f1_retrained" in source:
            mlflow.set_tag("spikemo.model_source", source["model_source"])
            mlflow.log_metrics(
                {
                    f"dev/candidate_{key.removeprefix('candidate_dev_weighted_f1_')}_weighted_f1": value
                    for key, value in source.items()
                    if key.startswith("candidate_")
                }
            )
        metrics = {"dev": result.dev_metrics, **({"test": result.test_metrics} if result.test_metrics else {})}
        logged_model = mlflow.initialize_logged_model(
            name=tracking.logged_model_name(config), source_run_id=run.info.run_id
        )
        final = tracking.FinalMetrics(result.best_epoch, logged_model.model_id, datasets)
        tracking.log_evaluation(
            result.history,
            metrics,
            data.labels,
            result.firing_rates,
            result.energy,
            result.spike_statistics_split,
            final,
        )
        mlflow.log_metric("best_epoch", result.best_epoch, step=result.best_epoch)
        probe = fit_linear_probe(dialogue_data, data.labels, seed=config.train.seed, model=config.model)
        baseline = {"dev": probe.dev_metrics, **({"test": probe.test_metrics} if probe.test_metrics else {})}
        intervals = _test_intervals(
            config, dialogue_data, result.test_predictions, probe.test_predictions, len(data.labels)
        )
        comparison = tracking.log_baseline(probe.C, baseline, metrics, final, intervals)
        mlflow.set_tag("spikemo.device", result.device)
        spec = ModelSpec(
            dataset=config.data.dataset_name,
            labels=data.labels,
            model=config.model,
            features=data.features_config,
            encoders=data.encoders,
        )
        bundle = save_bundle(result.model, spec, Path(config.workdir) / "models" / run.info.run_id)
    shutil.rmtree(run_dir, ignore_errors=True)
    test = result.test_metrics or {}
    summary = {
        "run_id": run.info.run_id,
        "best_epoch": result.best_epoch,  # 0-based, like the logged steps and the checkpoints
        "epochs_run": len(result.history),
        "early_stopped": len(result.history) < config.train.epochs,
        "device": result.device,
        **source,
        "dev_weighted_f1": result.dev_metrics["weighted_f1"],
        "test_weighted_f1": test.get("weighted_f1"),
        "test_macro_f1": test.get("macro_f1"),
        "test_accuracy": test.get("accuracy"),
        "baseline_dev_weighted_f1": probe.dev_metrics["weighted_f1"],
        "baseline_test_weighted_f1": (probe.test_metrics or {}).get("weighted_f1"),
        "beats_baseline": comparison.beats,
        "baseline_comparison": comparison.description,
        **(intervals.summary("test_") if intervals is not None else {}),
    }
    gating_split = config.tracking.gating_split
    return TrainedRun(
        run.info.run_id,
        bundle,
        metrics[gating_split]["weighted_f1"],
        summary,
        baseline[gating_split]["weighted_f1"],
        logged_model.model_id,
    )


def _better_candidate(
    config: SpikEmoConfig, data: PreparedData, dialogue_data: DialogueData, retrained: TrainResult, run_dir: Path
) -> tuple[TrainResult, dict[str, Any]]:
    """The model the run keeps, and which it is. With a dialogue-head fine-tune, the SpikEmo head trained together
    with the encoder is scored like the SpikEmo re-trained on the extracted features, and the higher dev
    weighted-F1 (the split that selects) is kept, the re-trained one on a tie; otherwise the re-trained one."""
    weights = dialogue_head_weights(config, data.features_config)
    if weights is None:
        return retrained, {"model_source": RETRAINED}
    head = result_with_weights(config, dialogue_data, data.labels, run_dir / FINETUNE_HEAD, weights, retrained)
    scores = {RETRAINED: retrained.dev_metrics["weighted_f1"], FINETUNE_HEAD: head.dev_metrics["weighted_f1"]}
    source = FINETUNE_HEAD if scores[FINETUNE_HEAD] > scores[RETRAINED] else RETRAINED
    log.info(
        "keeping the %s SpikEmo: dev weighted-F1 %.2f for the fine-tune's head, %.2f re-trained on its features",
        source,
        scores[FINETUNE_HEAD],
        scores[RETRAINED],
    )
    return (head if source == FINETUNE_HEAD else retrained), {
        "model_source": source,
        **{f"candidate_dev_weighted_f1_{name.replace('-', '_')}": score for name, score in scores.items()},
    }


def _test_intervals(
    config: SpikEmoConfig, data: DialogueData, model: np.ndarray | None, probe: np.ndarray | None, num_classes: int
) -> BootstrapReport | None:
    """95% intervals of the test scores of the model and the probe, and of their paired difference, from
    resampling whole test dialogues; None without a labelled test split."""
    if model is None or probe is None:
        return None
    test = data.splits["test"]
    labelled = test.labels >= 0
    return dialogue_bootstrap(
        test.labels[labelled],
        model,
        test.dialogue_index[labelled],
        num_classes,
        baseline_predictions=probe,
        draws=config.tracking.bootstrap_draws,
        seed=config.tracking.bootstrap_seed,
    )


def register(config: SpikEmoConfig, trained: TrainedRun) -> tracking.Registration:
    """Log the bundle as the run's pyfunc model, register a version and gate the champion alias."""
    tracking.connect(config)
    with mlflow.start_run(run_id=trained.run_id):
        registration = tracking.log_and_register(
            trained.bundle,
            config,
            trained.gating_score,
            trained.baseline_gating_score,
            trained.summary,
            champion_rescore=lambda version: rescore_champion(config, version),
            model_id=trained.model_id,
        )
        mlflow.set_tags({"spikemo.model_version": registration.version, "spikemo.alias": registration.alias})
    shutil.rmtree(trained.bundle, ignore_errors=True)  # MLflow holds the registered copy
    log.info(
        "%s v%s -> %s (gating score %.2f)",
        registration.name,
        registration.version,
        registration.alias,
        registration.score,
    )
    return registration


def rescore_champion(config: SpikEmoConfig, version: str) -> float | None:
    """The champion version's weighted-F1 on this config's data and gating split, so that gating compares
    like with like when the data changed since the champion was registered; None when it cannot be scored
    (its encoders are not available here, or its label set does not cover the data)."""
    model_uri = f"models:/{tracking.registered_model_name(config)}/{version}"
    try:
        predictor = Predictor.from_uri(model_uri)
        scores = evaluate_predictions(predictor, config.data, config.cache, config.tracking.gating_split)
    except SpikemoError as error:
        log.warning(
            "could not re-evaluate the champion %s on the new data (%s); gating uses its recorded score",
            model_uri,
            error,
        )
        return None
    return float(scores["weighted_f1"])


def train_on_follower_rank(config: SpikEmoConfig, data: PreparedData, rank: int) -> dict[str, Any]:
    """Under ``torchrun``, a rank other than 0: the same training and candidate scoring as rank 0's
    ``train_and_log`` (their collective operations pair up), without MLflow, probe or registration."""
    dialogue_data = build_dialogue_data(data.manifest, data.features, len(data.labels))
    run_dir = Path(config.workdir) / "runs" / _run_key(config, data)  # rank 0's: it writes the checkpoints
    retrained = train_on_dialogue_data(config, dialogue_data, data.labels, run_dir)
    _better_candidate(config, data, dialogue_data, retrained, run_dir)
    return {"rank": rank}


def _run_key(config: SpikEmoConfig, data: PreparedData) -> str:
    return training_run_key(
        config, data.manifest, {modality: spec.fingerprint for modality, spec in data.encoders.items()}
    )


def _close_interrupted_run(config: SpikEmoConfig, run_dir: Path) -> None:
    """An earlier attempt killed mid-training left its MLflow run RUNNING: mark it KILLED."""
    marker = run_dir / ACTIVE_RUN_FILE
    if not marker.is_file():
        return
    tracking.connect(config)
    client = MlflowClient()
    run_id = marker.read_text().strip()
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "spikemo.failure", "interrupted; training resumed in a new run")
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
    except mlflow.exceptions.MlflowException:
        pass
