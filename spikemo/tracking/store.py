"""Where runs are stored: the tracking URI, connecting (and creating) the store, its lock, the MLflow UI."""

from __future__ import annotations

import fcntl
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from spikemo.config import SpikEmoConfig
from spikemo.servers import run_until_stopped

SECRET_WORDS = re.compile(r"(token|secret|password|passwd|api[_-]?key|credential)", re.IGNORECASE)
URL_PASSWORD = re.compile(r"(?<=://)([^:/@]+):([^@/]+)@")
# The user's store as the process was launched: mlflow.set_tracking_uri() writes this variable too, so
# reading it later would pin every config to whichever store was connected first.
LAUNCH_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri(config: SpikEmoConfig) -> str:
    if config.tracking.tracking_uri:
        return config.tracking.tracking_uri
    if LAUNCH_TRACKING_URI:
        return LAUNCH_TRACKING_URI
    return f"sqlite:///{(config.workdir / 'mlflow.db').resolve()}"


def registered_model_name(config: SpikEmoConfig) -> str:
    return config.tracking.registered_model or f"spikemo-{config.data.dataset_name}"


def connect(config: SpikEmoConfig) -> MlflowClient:
    """Point MLflow at the configured store and make sure the experiment exists."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = tracking_uri(config)
    artifacts = None
    if not (config.tracking.tracking_uri or LAUNCH_TRACKING_URI):
        artifacts = (config.workdir / "mlartifacts").resolve().as_uri()
        database = Path(uri.removeprefix("sqlite:///"))
        with store_lock(uri):  # two processes creating one store would both migrate its tables
            if not database.exists():  # create the store here so that even its Default experiment stays in the workdir
                database.parent.mkdir(parents=True, exist_ok=True)
                SqlAlchemyStore(uri, artifacts).engine.dispose()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    if client.get_experiment_by_name(config.tracking.experiment) is None:
        try:
            client.create_experiment(config.tracking.experiment, artifact_location=artifacts)
        except MlflowException:
            if client.get_experiment_by_name(config.tracking.experiment) is None:
                raise
    mlflow.set_experiment(config.tracking.experiment)
    return client


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Across processes, one at a time on a local sqlite store (an exclusive lock on ``<database>.lock`` beside it):
    creating the store, champion gating. A tracking server's store gets no lock; ``gate_champion`` re-checks."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock = Path(uri.removeprefix("sqlite:///")).with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def redact(value: Any) -> Any:
    """Hide passwords inside URLs (``postgresql://user:pw@host``) before anything is logged."""
    if isinstance(value, str):
        return URL_PASSWORD.sub(lambda match: f"{match.group(1)}:***@", value)
    return value


def local_paths(config: SpikEmoConfig) -> dict[str, Path]:
    """The config's paths on this machine (logged as tags, not as parameters of the model)."""
    paths = {
        "workdir": config.workdir,
        "cache": config.cache,
        "data.root": config.data.root,
        "data.manifest": config.data.manifest,
    }
    return {key: path for key, path in paths.items() if path is not None}


DEFAULT_UI_URL = "http://127.0.0.1:5000"  # where `spikemo ui` serves


def run_url(config: SpikEmoConfig, run_id: str) -> str:
    """Where a run opens in the MLflow UI: ``tracking.ui_url``, else a tracking server's own URL, else
    ``spikemo ui``'s default address."""
    uri = tracking_uri(config)
    base = config.tracking.ui_url or (uri if uri.startswith("http") else DEFAULT_UI_URL)
    base = base.rstrip("/")
    experiment = MlflowClient(uri).get_run(run_id).info.experiment_id
    return f"{base}/#/experiments/{experiment}/runs/{run_id}"


def serve_ui(config: SpikEmoConfig, host: str, port: int) -> dict[str, Any]:
    """Run ``mlflow ui`` over the configured store until interrupted; bound to ``host`` (127.0.0.1 by default)."""
    uri = tracking_uri(config)
    url = f"http://{host}:{port}"
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if uri == f"sqlite:///{(config.workdir / 'mlflow.db').resolve()}":
        command += ["--default-artifact-root", (config.workdir / "mlartifacts").resolve().as_uri()]
    print(f"MLflow UI for {redact(uri)} at {url} (Ctrl-C or SIGTERM stops it)", file=sys.stderr)
    run_until_stopped(command)
    return {"command": "ui", "url": url, "tracking_uri": redact(uri)}
