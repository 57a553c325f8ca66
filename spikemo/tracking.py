"""MLflow: where runs are stored, what a training run logs, the pyfunc model, registration and gating.

Default store (no server): ``sqlite:///<workdir>/mlflow.db`` with artifacts under ``<workdir>/mlartifacts``,
so the Model Registry works offline. ``MLFLOW_TRACKING_URI`` or ``tracking.tracking_uri`` point elsewhere.

Gating: every finished run registers a new version of ``spikemo-<dataset>``. The alias ``champion``
moves to it only if its weighted-F1 on the gating split beats the current champion's (a tie keeps the
champion); otherwise the new version gets ``challenger``. Scores and the decision are version tags.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import re
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_RUN_NOTE, MLFLOW_SOURCE_NAME

from spikemo import reports
from spikemo.bundle import SPEC_FILE, EncoderSpec, ModelSpec
from spikemo.config import SpikEmoConfig
from spikemo.errors import ConfigError
from spikemo.servers import run_until_stopped
from spikemo.training.metrics import BootstrapReport

CHAMPION = "champion"
CHALLENGER = "challenger"
PYFUNC_MODEL_FILE = Path(__file__).with_name("pyfunc_model.py")
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


def loggable_params(config: SpikEmoConfig) -> dict[str, str]:
    """Flattened config without secrets, unset values and this machine's paths; the registered model name as
    it will be registered."""
    params = {}
    flat = {**config.flat(), "tracking.registered_model": registered_model_name(config)}
    paths = local_paths(config)
    for key, value in flat.items():
        if SECRET_WORDS.search(key) or value is None or key in paths:
            continue
        text = json.dumps(value) if isinstance(value, (list, dict)) else str(redact(value))
        params[key] = text[:6000]
    return params


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextmanager
def training_run(config: SpikEmoConfig, encoders: dict[str, EncoderSpec]) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run that logs the resolved config on start and ends FAILED if the body raises.

    Besides spikemo's tags it sets MLflow's standard ones: the git commit and source (shown in the run
    list) and a run description (``mlflow.note.content``, the run page's Description)."""
    connect(config)
    commit = git_commit()
    model = config.model
    variant = (
        "paper-faithful spiking branch"
        if model.spike_encoding == "heaviside"
        else "spiking branch with direct encoding"
    )
    description = (
        f"SpikEmo on {config.data.dataset_name} ({', '.join(config.features.modalities)}): "
        f"{variant if model.use_spiking else 'no spiking branch'}, width {model.model_dim}, T {model.timesteps}; "
        f"trained on train, epoch selected on dev weighted-F1, scored once on test; a linear probe on the same "
        f"features is logged as baseline_*."
    )
    tags = {
        "spikemo.dataset": config.data.dataset_name,
        "spikemo.git_commit": commit,
        "spikemo.host_python": platform.python_version(),
        MLFLOW_GIT_COMMIT: commit,
        MLFLOW_SOURCE_NAME: "spikemo train",
        MLFLOW_RUN_NOTE: description,
        **{
            f"spikemo.encoder.{modality}": f"{spec.encoder.name} {spec.fingerprint[:12]}"
            for modality, spec in encoders.items()
        },
        **{f"spikemo.path.{key}": str(value) for key, value in local_paths(config).items()},
    }
    run = mlflow.start_run(run_name=f"{config.data.dataset_name}-{'-'.join(config.features.modalities)}", tags=tags)
    try:
        mlflow.log_params(loggable_params(config))
        config_yaml = json.loads(config.model_dump_json())
        config_yaml["tracking"]["tracking_uri"] = redact(config_yaml["tracking"]["tracking_uri"])
        mlflow.log_dict(config_yaml, "config/resolved_config.yaml")
        yield run
    except BaseException as error:
        mlflow.set_tag("spikemo.failure", f"{type(error).__name__}: {error}"[:5000])
        mlflow.end_run(status=RunStatus.to_string(RunStatus.FAILED))
        raise
    mlflow.end_run(status=RunStatus.to_string(RunStatus.FINISHED))


def metric_key(name: str) -> str:
    """An epoch metric's MLflow name, grouped by split (the UI groups charts by what precedes the '/'):
    ``train_loss_ce`` -> ``train/loss_ce``, ``lr`` -> ``train/lr``, ``dev_weighted_f1`` -> ``dev/weighted_f1``,
    ``firing_rate.<layers>`` -> ``dev/firing_rate.<layers>`` (measured on dev)."""
    if name == "lr":
        return "train/lr"
    if name.startswith("firing_rate."):
        return f"dev/{name}"
    split, _, rest = name.partition("_")
    return f"{split}/{rest}" if split in ("train", "dev") and rest else name


def _final_metrics(split: str, scores: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """A split's final scores as MLflow metrics: ``test/weighted_f1``; on dev ``dev/selected_weighted_f1``,
    beside the per-epoch ``dev/weighted_f1`` curve; ``prefix`` for another model's (``test/baseline_…``)."""
    selected = "selected_" if split == "dev" else ""
    return {
        f"{split}/{prefix}{selected}{name}": float(value)
        for name, value in scores.items()
        if isinstance(value, (int, float))
    }


def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
    """One epoch's metrics at step ``epoch`` (the step is the epoch, so ``epoch`` itself is not logged)."""
    mlflow.log_metrics({metric_key(key): float(value) for key, value in metrics.items() if key != "epoch"}, step=epoch)


def log_inputs(
    manifest: pd.DataFrame, manifest_path: Path, caches: dict[str, dict[str, Any]]
) -> dict[str, mlflow.data.Dataset]:
    """The manifest and each feature cache as MLflow datasets (digest, rows, label distribution); returns
    each split's dataset, so that final scores can name the data they were measured on."""
    dataset = str(manifest["dataset"].iloc[0])
    label_counts = manifest.groupby(["split", "label"]).size()
    splits = {}
    with warnings.catch_warnings():
        # a local path reads as two kinds of MLflow dataset source; MLflow picks the right one but warns each time
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        for split, rows in manifest.groupby("split"):
            frame = rows[["utterance_key", "speaker", "label", "media_fingerprint"]].reset_index(drop=True)
            source = mlflow.data.from_pandas(
                frame, source=str(manifest_path), targets="label", name=f"{dataset}-{split}"
            )
            mlflow.log_input(source, context=str(split), tags={"labels": json.dumps(label_counts[split].to_dict())})
            splits[str(split)] = source
        for modality, cache in caches.items():
            frame = pd.DataFrame({"utterance_key": manifest["utterance_key"], "modality": modality})
            source = mlflow.data.from_pandas(
                frame,
                source=str(cache["path"]),
                name=f"{dataset}-{modality}-{cache['encoder']}",
                digest=cache["fingerprint"][:32],
            )
            mlflow.log_input(source, context="features", tags={"encoder": cache["encoder"], "dim": str(cache["dim"])})
    return splits


def logged_model_name(config: SpikEmoConfig) -> str:
    return f"spikemo-{config.data.dataset_name}-{'-'.join(config.features.modalities)}"


@dataclass
class FinalMetrics:
    """Where a run's final scores go: the selected epoch's step, the logged model that the run will register
    (``model_id``, from ``mlflow.initialize_logged_model``), and each split's MLflow dataset."""

    step: int
    model_id: str
    datasets: dict[str, mlflow.data.Dataset]

    def log(self, metrics: dict[str, float], split: str) -> None:
        mlflow.log_metrics(metrics, step=self.step, model_id=self.model_id, dataset=self.datasets.get(split))


def log_evaluation(
    history: list[dict[str, Any]],
    metrics: dict[str, dict[str, Any]],
    labels: list[str],
    firing_rates: dict[str, float],
    energy: dict[str, float],
    spike_statistics_split: str,
    final: FinalMetrics,
) -> None:
    """Final metrics per split (through ``final``: at the selected epoch's step, linked to the logged model
    and to the split's dataset), plots and reports as artifacts."""
    for split, scores in metrics.items():
        final.log(_final_metrics(split, scores), split)
        mlflow.log_figure(
            reports.confusion_matrix_figure(scores["confusion_matrix"], labels, f"{split} confusion matrix"),
            f"plots/{split}_confusion_matrix.png",
        )
        mlflow.log_table(reports.per_class_table(scores["per_class"]), f"reports/{split}_per_class.json")
    if history:
        mlflow.log_figure(reports.learning_curves_figure(history), "plots/learning_curves.png")
    if firing_rates:
        figure = reports.firing_rates_figure(firing_rates, spike_statistics_split)
        mlflow.log_figure(figure, "plots/firing_rates.png")
        rates = {f"{spike_statistics_split}/firing_rate.{name}": rate for name, rate in firing_rates.items()}
        final.log(rates, spike_statistics_split)
    if energy:
        constants = {key for key in energy if key.startswith("pj_per_")}  # the energy model's costs, not results
        mlflow.log_params({f"energy.{key}": energy[key] for key in constants})
        measured = {
            f"{spike_statistics_split}/{key}": float(value) for key, value in energy.items() if key not in constants
        }
        final.log(measured, spike_statistics_split)
    mlflow.log_dict({str(i): label for i, label in enumerate(labels)}, "label_map.json")


@dataclass
class BaselineComparison:
    split: str  # test when the run has one, else dev
    beats: bool  # the model's weighted-F1 on that split is strictly higher than the probe's
    description: str
    verdict: str | None = None  # on test: better / worse / no significant difference (paired bootstrap)


def log_baseline(
    C: float,
    baseline: dict[str, dict[str, Any]],
    model: dict[str, dict[str, Any]],
    final: FinalMetrics,
    intervals: BootstrapReport | None = None,
) -> BaselineComparison:
    """The linear probe's scores as ``baseline_<split>_*`` metrics beside the model's, and tags saying whether
    the model beats it on the reported split (test, else dev). With the test bootstrap ``intervals``, every
    test score's 95% interval (``test/weighted_f1_ci_low`` …), the paired difference model - probe
    (``test/minus_baseline_weighted_f1`` …) and the verdict (tag ``spikemo.verdict_vs_baseline``)."""
    mlflow.log_param("baseline.C", C)
    for split, scores in baseline.items():
        final.log(_final_metrics(split, scores, "baseline_"), split)
    split = "test" if "test" in baseline and "test" in model else "dev"
    ours, probe = model[split]["weighted_f1"], baseline[split]["weighted_f1"]
    description = f"{split} weighted-F1 {ours:.2f} vs linear probe {probe:.2f} ({ours - probe:+.2f})"
    verdict = None
    if intervals is not None and split == "test" and intervals.difference is not None:
        final.log(_interval_metrics(intervals), "test")
        verdict = intervals.verdict
        gap = intervals.difference["weighted_f1"]
        description = (
            f"test weighted-F1 {intervals.scores['weighted_f1']} vs linear probe {intervals.baseline['weighted_f1']}: "
            f"difference {gap}, {verdict} (95% intervals, {intervals.draws} dialogue resamples)"
        )
        mlflow.set_tag("spikemo.verdict_vs_baseline", verdict)
    comparison = BaselineComparison(split=split, beats=ours > probe, description=description, verdict=verdict)
    mlflow.set_tags(
        {"spikemo.beats_baseline": str(comparison.beats).lower(), "spikemo.baseline_comparison": comparison.description}
    )
    return comparison


def _interval_metrics(intervals: BootstrapReport) -> dict[str, float]:
    metrics = {}
    groups = {
        "": intervals.scores,
        "baseline_": intervals.baseline or {},
        "minus_baseline_": intervals.difference or {},
    }
    for prefix, scores in groups.items():
        for name, interval in scores.items():
            if prefix == "minus_baseline_":
                metrics[f"test/{prefix}{name}"] = interval.value
            metrics[f"test/{prefix}{name}_ci_low"] = interval.low
            metrics[f"test/{prefix}{name}_ci_high"] = interval.high
    return metrics


PREDICTION_INPUT = Schema(
    [
        ColSpec("string", "dialogue_id"),
        ColSpec("long", "utterance_index"),
        ColSpec("string", "speaker"),
        ColSpec("string", "text"),
        ColSpec("string", "media_path", required=False),
        ColSpec("double", "media_start", required=False),
        ColSpec("double", "media_end", required=False),
    ]
)


def prediction_signature(labels: list[str]) -> ModelSignature:
    outputs = [ColSpec("string", "dialogue_id"), ColSpec("long", "utterance_index"), ColSpec("string", "label")]
    outputs += [ColSpec("double", f"prob_{label}") for label in labels]
    params = ParamSchema([ParamSpec("media_root", "string", ""), ParamSpec("newest", "long", 0)])
    return ModelSignature(inputs=PREDICTION_INPUT, outputs=Schema(outputs), params=params)


def pip_requirements() -> list[str]:
    """Exact pins of what the pyfunc imports, read from the installed spikemo's metadata (no inference)."""
    pinned = [
        requirement.split(";")[0].strip()
        for requirement in metadata.requires("spikemo") or []
        if "extra ==" not in requirement
    ]
    return [requirement for requirement in pinned if requirement]


@dataclass
class Registration:
    name: str
    version: str
    alias: str
    score: float
    champion_score: float | None
    model_uri: str

    def summary(self) -> dict[str, Any]:
        return {
            "registered_model": self.name,
            "model_version": self.version,
            "alias": self.alias,
            "model_uri": self.model_uri,
            "gating_score": self.score,
            "previous_champion_score": self.champion_score,
        }


INPUT_EXAMPLE = pd.DataFrame(
    {
        "dialogue_id": ["0", "0"],
        "utterance_index": [0, 1],
        "speaker": ["Monica", "Chandler"],
        "text": ["You're late again!", "Sorry, the traffic was unbelievable."],
    }
)


@contextmanager
def _spikemo_warnings_only() -> Iterator[None]:
    logger = logging.getLogger("spikemo")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def log_and_register(
    bundle: Path,
    config: SpikEmoConfig,
    gating_score: float,
    baseline_score: float | None = None,
    summary: dict[str, Any] | None = None,
    champion_rescore: Callable[[str], float | None] | None = None,
    model_id: str | None = None,
) -> Registration:
    """Log a saved bundle as the active run's pyfunc model, register a version and apply champion gating.

    The logged model (``model_id``: the one the run initialised and linked its final scores to, see
    ``FinalMetrics``) is named after the dataset and modalities and gets an input example; the version gets
    a description from ``summary`` (the run's JSON summary). With ``tracking.require_beating_baseline``, a version
    whose gating score does not beat ``baseline_score`` (its own linear probe's on the same split) is never
    champion. ``champion_rescore(version)`` re-scores the current champion on the new run's data (see
    ``gate_champion``)."""
    name = registered_model_name(config)
    summary = summary or {}
    labels = ModelSpec.model_validate_json((bundle / SPEC_FILE).read_text(encoding="utf-8")).labels
    with _spikemo_warnings_only():  # MLflow predicts the input example: its extraction lines are not news
        info = mlflow.pyfunc.log_model(
            name=logged_model_name(config),
            model_id=model_id,
            input_example=INPUT_EXAMPLE,
            step=-1,  # link no per-epoch metric: the final ones were linked through model_id when logged
            python_model=str(PYFUNC_MODEL_FILE),
            artifacts={"bundle": str(bundle)},
            code_paths=[str(Path(__file__).parent)],
            signature=prediction_signature(labels),
            pip_requirements=pip_requirements(),
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    client = MlflowClient()
    required_baseline = baseline_score if config.tracking.require_beating_baseline else None
    with store_lock(tracking_uri(config)):
        alias, champion_score = gate_champion(
            client, name, version, gating_score, config.tracking.gating_split, required_baseline, champion_rescore
        )
    decision = client.get_model_version(name, version).tags.get("gating_decision", "")
    client.update_model_version(name, version, description=_version_description(config, summary, alias, decision))
    return Registration(name, version, alias, gating_score, champion_score, f"models:/{name}/{version}")


def _version_description(config: SpikEmoConfig, summary: dict[str, Any], alias: str, decision: str) -> str:
    def score(key: str) -> str:
        value = summary.get(key)
        return "n/a" if value is None else f"{value:.2f}"

    verdict = f"; against the probe: {reports.verdict_line(summary)}" if summary.get("verdict_vs_baseline") else ""
    return (
        f"SpikEmo on {config.data.dataset_name} ({', '.join(config.features.modalities)}){_source_note(summary)}. "
        f"Test weighted-F1 {reports.score_with_interval(summary, 'test_weighted_f1')} (linear probe "
        f"{reports.score_with_interval(summary, 'baseline_test_weighted_f1')}{verdict}; "
        "95% intervals over test dialogues), "
        f"dev {score('dev_weighted_f1')}, accuracy {score('test_accuracy')}; "
        f"best epoch {summary.get('best_epoch', 'n/a')} "
        f"of {summary.get('epochs_run', 'n/a')}. Alias {alias}: {decision}."
    )


def _source_note(summary: dict[str, Any]) -> str:
    """Which candidate the run kept, where it had two (see ``experiment``)."""
    if "candidate_dev_weighted_f1_finetune_head" not in summary:
        return ""
    kept = "the text fine-tune's own SpikEmo head" if summary["model_source"] == "finetune-head" else "re-trained"
    return (
        f", {kept} (dev weighted-F1: fine-tune's head {summary['candidate_dev_weighted_f1_finetune_head']:.2f}, "
        f"re-trained {summary['candidate_dev_weighted_f1_retrained']:.2f})"
    )


def gate_champion(
    client: MlflowClient,
    name: str,
    version: str,
    score: float,
    split: str,
    baseline_score: float | None = None,
    champion_rescore: Callable[[str], float | None] | None = None,
) -> tuple[str, float | None]:
    """Move ``champion`` to ``version`` if ``score`` beats the champion's (and ``baseline_score``, when given);
    otherwise mark it ``challenger``.

    The champion's score is ``champion_rescore(champion_version)`` — the champion re-evaluated on the same
    data as ``score`` — when that is given and succeeds, else the score recorded when it was registered.
    Both, and which one decided, are version tags."""
    score_tag = f"gating_{split}_weighted_f1"
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    champion_score = None
    if champion is not None and str(champion.version) != str(version):
        recorded = champion.tags.get(score_tag)
        champion_score = float(recorded) if recorded is not None else float("-inf")
        rescored = champion_rescore(str(champion.version)) if champion_rescore is not None else None
        client.set_model_version_tag(name, version, "gating_champion_recorded_score", f"{champion_score:.6f}")
        source = f"recorded when v{champion.version} was registered"
        if rescored is not None:
            champion_score = rescored
            source = f"v{champion.version} re-evaluated on this version's {split} data"
        client.set_model_version_tag(name, version, "gating_champion_score_source", source)
    beats_baseline = baseline_score is None or score > baseline_score
    promote = beats_baseline and (champion_score is None or score > champion_score)
    client.set_model_version_tag(name, version, score_tag, f"{score:.6f}")
    client.set_model_version_tag(
        name, version, "gating_champion_score", "none" if champion_score is None else f"{champion_score:.6f}"
    )
    if not beats_baseline:
        decision = f"not promoted: {score:.4f} <= its linear probe {baseline_score:.4f}"
    elif champion_score is None:
        decision = "promoted: no champion yet"
    elif promote:
        decision = f"promoted: {score:.4f} > champion v{champion.version} {champion_score:.4f}"
    else:
        decision = f"kept champion v{champion.version}: {score:.4f} <= {champion_score:.4f}"
    client.set_model_version_tag(
        name, version, "gating_decision", decision
    )  # before the alias: a concurrent gate sees it
    client.set_registered_model_alias(name, CHAMPION if promote else CHALLENGER, version)
    if promote:
        since = int(champion.version) if champion is not None else 0
        rival = _better_promoted_version(client, name, version, since, score, score_tag)
        if rival is not None:  # a concurrent gate promoted a better version and this one overwrote its alias
            client.set_registered_model_alias(name, CHAMPION, rival)
            client.set_registered_model_alias(name, CHALLENGER, version)
            client.set_model_version_tag(
                name,
                version,
                "gating_decision",
                f"{decision}; ceded to v{rival}, promoted concurrently with a higher score",
            )
            return CHALLENGER, champion_score
    return (CHAMPION if promote else CHALLENGER), champion_score


def _better_promoted_version(
    client: MlflowClient, name: str, version: str, since: int, score: float, score_tag: str
) -> str | None:
    """The best version after ``since`` (the champion this gate compared with), other than ``version``, that a gate
    promoted with a score above ``score``: promoted while this gate ran. None if there is none."""
    best: tuple[float, str] | None = None
    for other in client.search_model_versions(f"name = '{name}'"):
        recorded = other.tags.get(score_tag)
        concurrent = int(other.version) > since and str(other.version) != str(version)
        if not concurrent or recorded is None or not other.tags.get("gating_decision", "").startswith("promoted"):
            continue
        if float(recorded) > score and (best is None or float(recorded) > best[0]):
            best = (float(recorded), str(other.version))
    return best[1] if best else None


def resolve_model_uri(uri: str) -> str:
    """Check that a ``models:/name@alias`` or ``models:/name/version`` URI exists; one-line error if not."""
    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", uri)
    if not match:
        return uri
    name, alias, version = match.groups()
    client = MlflowClient()
    try:
        if alias:
            client.get_model_version_by_alias(name, alias)
        else:
            client.get_model_version(name, version)
    except MlflowException:
        what = f"alias {alias!r}" if alias else f"version {version}"
        raise ConfigError(
            f"{uri}: no registered model {name!r} with {what} in {mlflow.get_tracking_uri()}; "
            "list models with the MLflow UI (`spikemo ui`) or check --workdir / MLFLOW_TRACKING_URI"
        ) from None
    return uri


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
