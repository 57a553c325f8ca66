"""What every flow shares: the config from deployment parameters, the task runner choice, run names."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect.runtime import flow_run, task_run
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from spikemo.config import SpikEmoConfig, load_config, with_overrides
from spikemo.errors import ConfigError, SpikemoError

REPO_ROOT = Path(__file__).resolve().parents[1]


def show_spikemo_progress() -> None:
    """spikemo's INFO lines (epochs, extraction counts, registry decisions) reach the flow-run logs wherever a
    flow runs (a deployment's worker process included): Prefect attaches its handlers to the ``spikemo`` logger
    (PREFECT_LOGGING_EXTRA_LOGGERS) but leaves its level to the root's WARNING. A level set by the CLI is kept.
    Outside a terminal, MLflow's artifact progress bars are off (their frames fill worker logs)."""
    logger = logging.getLogger("spikemo")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not sys.stderr.isatty():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


show_spikemo_progress()


def resolve_config(
    config_path: str | None, overrides: dict[str, Any] | None, config: dict[str, Any] | None = None
) -> SpikEmoConfig:
    """A full resolved config (as the CLI passes it), or a config file (relative to the repo) plus dotted overrides."""
    if config is not None:
        resolved = SpikEmoConfig.model_validate(config)
        return with_overrides(resolved, overrides) if overrides else resolved
    path = None
    if config_path:
        path = Path(config_path)
        if not path.is_absolute() and not path.exists():
            path = REPO_ROOT / path
    return load_config(path, overrides or {})


def config_payload(config: SpikEmoConfig) -> dict[str, Any]:
    """The config as a flow parameter (plain JSON, as deployments and the UI hold parameters); tasks take the
    resolved ``SpikEmoConfig`` itself."""
    return config.model_dump(mode="json")


def artifact_key(config: SpikEmoConfig, stage: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) from the dataset name and the stage."""
    name = "".join(ch if ch.isalnum() else "-" for ch in config.data.dataset_name.lower())
    return f"{name}-{stage}"


def _dataset_name(parameters: dict[str, Any]) -> str:
    if isinstance(parameters.get("config"), SpikEmoConfig):  # a task's resolved config
        return parameters["config"].data.dataset_name
    try:
        config = resolve_config(parameters.get("config_path"), parameters.get("overrides"), parameters.get("config"))
    except SpikemoError:
        return "unconfigured"
    return config.data.dataset_name


def flow_run_name(stage: str) -> Callable[[], str]:
    """Flow run names such as ``pipeline-demo-20261125-1830``: stage, dataset, UTC start time."""

    def name() -> str:
        return f"{stage}-{_dataset_name(flow_run.parameters or {})}-{datetime.now(UTC):%Y%m%d-%H%M%S}"

    return name


def task_run_name(stage: str) -> Callable[[], str]:
    """Task run names such as ``train-demo``: stage and dataset."""

    def name() -> str:
        return f"{stage}-{_dataset_name(task_run.parameters or {})}"

    return name


def task_runner(config: SpikEmoConfig) -> TaskRunner:
    """Threads by default; Dask (prefect-dask) when ``features.task_runner`` is ``dask``."""
    features = config.features
    workers = features.task_workers or os.cpu_count() or 1
    if features.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ConfigError(
            "features.task_runner is 'dask' but prefect-dask is not installed: pip install 'spikemo[dask]'"
        ) from None
    if features.dask_address:
        return DaskTaskRunner(address=features.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    )
