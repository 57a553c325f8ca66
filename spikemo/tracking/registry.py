"""The Model Registry: the pyfunc logged from code, its signature, registration and champion gating."""

from __future__ import annotations

import logging
import re
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
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from spikemo import reports
from spikemo.bundle import SPEC_FILE, ModelSpec
from spikemo.config import SpikEmoConfig
from spikemo.errors import ConfigError
from spikemo.tracking.runs import logged_model_name
from spikemo.tracking.store import registered_model_name, store_lock, tracking_uri

CHAMPION = "champion"
CHALLENGER = "challenger"
PYFUNC_MODEL_FILE = Path(__file__).parents[1] / "pyfunc_model.py"
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
def _quiet_model_logging() -> Iterator[None]:
    """spikemo's warnings only (MLflow predicts the input example: its extraction lines are not news), and no
    MLflow warning that a model has no example (a model without text gets none on purpose; its signature stays)."""
    logger = logging.getLogger("spikemo")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*An input example was not provided", category=UserWarning)
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
    ``FinalMetrics``) is named after the dataset and modalities and, if it reads text, gets an input example; the
    version gets a description from ``summary`` (the run's JSON summary). With ``tracking.require_beating_baseline``,
    a version whose gating score does not beat ``baseline_score`` (its own linear probe's on the same split) is never
    champion. ``champion_rescore(version)`` re-scores the current champion on the new run's data (see
    ``gate_champion``)."""
    name = registered_model_name(config)
    summary = summary or {}
    labels = ModelSpec.model_validate_json((bundle / SPEC_FILE).read_text(encoding="utf-8")).labels
    with _quiet_model_logging():
        info = mlflow.pyfunc.log_model(
            name=logged_model_name(config),
            model_id=model_id,
            # the example is text only, which a model without text cannot score
            input_example=INPUT_EXAMPLE if "text" in config.features.modalities else None,
            step=-1,  # link no per-epoch metric: the final ones were linked through model_id when logged
            python_model=str(PYFUNC_MODEL_FILE),
            artifacts={"bundle": str(bundle)},
            code_paths=[str(PYFUNC_MODEL_FILE.parent)],  # the spikemo package
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
        f"95% intervals over test {summary.get('test_interval_unit', 'dialogue')}s), "
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
