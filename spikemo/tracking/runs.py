"""What a training run logs: its params and tags, per-epoch and final metrics, inputs, the baseline beside it."""

from __future__ import annotations

import json
import platform
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import RunStatus
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_RUN_NOTE, MLFLOW_SOURCE_NAME

from spikemo import reports
from spikemo.bundle import EncoderSpec
from spikemo.config import SpikEmoConfig
from spikemo.reports import BootstrapReport
from spikemo.tracking.store import SECRET_WORDS, connect, local_paths, redact, registered_model_name


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
            cwd=Path(__file__).parents[1],
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
            f"difference {gap}, {verdict} (95% intervals, {intervals.draws} {intervals.unit} resamples)"
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
