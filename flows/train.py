"""The train flow: train → evaluate → log (one MLflow run) → register with champion gating."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from flows.common import (
    artifact_key,
    config_payload,
    flow_run_name,
    resolve_config,
    task_run_name,
)
from spikemo import tracking
from spikemo.config import SpikEmoConfig
from spikemo.data.schema import read_manifest
from spikemo.experiment import TrainedRun
from spikemo.identity import stable_digest, training_cache_key
from spikemo.stages import Stages, preprocess, train_and_register


def _training_inputs(context: Any, parameters: dict[str, Any]) -> str:
    """Same config, manifest content, encoders, library code and MLflow store → the finished run is reused, not
    retrained (a run in another store, for example another MLFLOW_TRACKING_URI, cannot be registered here)."""
    manifest, _ = read_manifest(Path(parameters["preprocessed"]["manifest"]))
    encoders = {m: s["fingerprint"] for m, s in parameters["preprocessed"]["modalities"].items()}
    config = parameters["config"]
    return training_cache_key(config_payload(config), manifest, encoders, tracking.tracking_uri(config))


@task(name="extract-missing", task_run_name=task_run_name("extract-missing"), retries=1, cache_policy=NONE)
def extract_missing_task(config: SpikEmoConfig) -> dict[str, Any]:
    return preprocess(config)


@task(
    name="train-evaluate-log",
    task_run_name=task_run_name("train"),
    cache_key_fn=_training_inputs,
    persist_result=True,
    result_serializer="json",
)
def train_task(config: SpikEmoConfig, preprocessed: dict[str, Any]) -> dict[str, Any]:
    trained = Stages().train(config, preprocessed)
    get_run_logger().info("MLflow run %s: dev weighted-F1 %.2f", trained.run_id, trained.summary["dev_weighted_f1"])
    return _payload(trained)


@task(
    name="register",
    task_run_name=task_run_name("register"),
    cache_key_fn=lambda context, parameters: stable_digest("register", parameters["trained"]["run_id"]),
    persist_result=True,
    result_serializer="json",
)
def register_task(config: SpikEmoConfig, trained: dict[str, Any]) -> dict[str, Any]:
    return Stages().register(config, _trained_run(trained))  # register() logs the registry decision


class TaskStages(Stages):
    """The train and register stages as this flow's tasks (their results persisted as JSON)."""

    def __init__(self, force: bool) -> None:
        self.force = force  # retrain even when the training task's inputs are unchanged

    def train(self, config: SpikEmoConfig, preprocessed: dict[str, Any]) -> TrainedRun:
        return _trained_run(train_task.with_options(refresh_cache=self.force)(config, preprocessed))

    def register(self, config: SpikEmoConfig, trained: TrainedRun) -> dict[str, Any]:
        return register_task(config, _payload(trained))


def _payload(trained: TrainedRun) -> dict[str, Any]:
    """A trained run as a task's JSON result or parameter."""
    return {**asdict(trained), "bundle": str(trained.bundle)}


def _trained_run(payload: dict[str, Any]) -> TrainedRun:
    return TrainedRun(**{**payload, "bundle": Path(payload["bundle"])})


@flow(name="spikemo-train", flow_run_name=flow_run_name("train"), log_prints=True)
def train_flow(
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    preprocessed: dict[str, Any] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Train and register; without ``preprocessed`` it first extracts whatever the cache lacks."""
    resolved = resolve_config(config_path, overrides, config)
    preprocessed = preprocessed or extract_missing_task(resolved)
    summary = train_and_register(resolved, preprocessed, TaskStages(force))
    create_markdown_artifact(
        key=artifact_key(resolved, "train"), markdown=_markdown(resolved, summary), description="spikemo training run"
    )
    return summary


def _markdown(config: SpikEmoConfig, summary: dict[str, Any]) -> str:
    metrics = pd.DataFrame(
        [
            {"metric": key, "value": summary[key]}
            for key in (
                "dev_weighted_f1",
                "test_weighted_f1",
                "test_macro_f1",
                "test_accuracy",
                "baseline_dev_weighted_f1",
                "baseline_test_weighted_f1",
                "epochs_run",
                "best_epoch",
                "early_stopped",
            )
            if summary.get(key) is not None
        ]
    )
    link = tracking.run_url(config, summary["run_id"])
    return "\n\n".join(
        [
            f"# {config.data.dataset_name}: SpikEmo training",
            f"MLflow run: [{summary['run_id']}]({link}) · model `{summary['model_uri']}` "
            f"→ alias **{summary['alias']}**",
            metrics.to_markdown(index=False, floatfmt=".2f"),
        ]
    )
