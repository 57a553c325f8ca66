"""The whole DAG: preprocess (ingest → [text fine-tune] → extraction) then train (train → evaluate → log → register).

The ``retrain`` deployment runs this flow on a schedule: extraction encodes only new or changed
utterances, and training reruns only when the data, the encoders or the config changed.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import config_payload, flow_run_name, resolve_config
from flows.preprocess import preprocess_flow
from flows.train import train_flow


@flow(name="spikemo-pipeline", flow_run_name=flow_run_name("pipeline"), log_prints=True)
def pipeline_flow(
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    force_retrain: bool = False,
) -> dict[str, Any]:
    resolved = resolve_config(config_path, overrides, config)
    payload = config_payload(resolved)
    preprocessed = preprocess_flow(config=payload)
    trained = train_flow(config=payload, preprocessed=preprocessed, force=force_retrain)
    return {"preprocess": preprocessed, "train": trained}
