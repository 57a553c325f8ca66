"""Batch scoring: predict every utterance of a dataset with a registered model, written as Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from flows.common import flow_run_name, resolve_config, task_run_name
from spikemo.config import SpikEmoConfig
from spikemo.predict import Predictor, newest_turns, write_predictions
from spikemo.tracking import connect


@task(name="score-dataset", task_run_name=task_run_name("score"), retries=1, cache_policy=NONE)
def score_task(model_uri: str, config: SpikEmoConfig, out: str, newest: int = 0) -> dict[str, Any]:
    connect(config)
    predictor = Predictor.from_uri(model_uri)
    predictions = predictor.predict_dataset(config.data, config.cache)
    if newest > 0:  # conversations so far: the label of each one's newest turn(s)
        predictions = newest_turns(predictions, newest)
    return write_predictions(predictions, Path(out))


@flow(name="spikemo-score", flow_run_name=flow_run_name("score"), log_prints=True)
def score_flow(
    model_uri: str,
    out: str,
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    newest: int = 0,
) -> dict[str, Any]:
    """Score a dataset; with ``newest`` n > 0 each dialogue is a conversation so far and only its n newest
    turns are written."""
    resolved = resolve_config(config_path, overrides, config)
    if not out.endswith(".parquet"):
        out = f"{out}.parquet"
    return score_task(model_uri, resolved, out, newest)
