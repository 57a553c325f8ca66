"""MLflow: where runs are stored (``store``), what a training run logs (``runs``), the pyfunc model, registration
and champion gating (``registry``).

Default store (no server): ``sqlite:///<workdir>/mlflow.db`` with artifacts under ``<workdir>/mlartifacts``,
so the Model Registry works offline. ``MLFLOW_TRACKING_URI`` or ``tracking.tracking_uri`` point elsewhere.

Gating: every finished run registers a new version of ``spikemo-<dataset>``. The alias ``champion``
moves to it only if its weighted-F1 on the gating split beats the current champion's (a tie keeps the
champion); otherwise the new version gets ``challenger``. Scores and the decision are version tags.
"""

from spikemo.tracking.registry import (
    CHALLENGER,
    CHAMPION,
    INPUT_EXAMPLE,
    PREDICTION_INPUT,
    PYFUNC_MODEL_FILE,
    Registration,
    gate_champion,
    log_and_register,
    pip_requirements,
    prediction_signature,
    resolve_model_uri,
)
from spikemo.tracking.runs import (
    BaselineComparison,
    FinalMetrics,
    git_commit,
    log_baseline,
    log_epoch,
    log_evaluation,
    log_inputs,
    loggable_params,
    logged_model_name,
    metric_key,
    training_run,
)
from spikemo.tracking.store import (
    DEFAULT_UI_URL,
    LAUNCH_TRACKING_URI,
    SECRET_WORDS,
    URL_PASSWORD,
    connect,
    local_paths,
    redact,
    registered_model_name,
    run_url,
    serve_ui,
    store_lock,
    tracking_uri,
)

__all__ = [
    "BaselineComparison",
    "CHALLENGER",
    "CHAMPION",
    "DEFAULT_UI_URL",
    "FinalMetrics",
    "INPUT_EXAMPLE",
    "LAUNCH_TRACKING_URI",
    "PREDICTION_INPUT",
    "PYFUNC_MODEL_FILE",
    "Registration",
    "SECRET_WORDS",
    "URL_PASSWORD",
    "connect",
    "gate_champion",
    "git_commit",
    "local_paths",
    "log_and_register",
    "log_baseline",
    "log_epoch",
    "log_evaluation",
    "log_inputs",
    "loggable_params",
    "logged_model_name",
    "metric_key",
    "pip_requirements",
    "prediction_signature",
    "redact",
    "registered_model_name",
    "resolve_model_uri",
    "run_url",
    "serve_ui",
    "store_lock",
    "tracking_uri",
    "training_run",
]
