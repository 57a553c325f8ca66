"""The preprocess flow: ``spikemo.stages.preprocess`` with each stage a task: ingest → [text encoder fine-tune] →
one extraction task per modality and shard → Parquet feature cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.futures import wait

from flows.common import artifact_key, config_payload, flow_run_name, resolve_config, task_run_name, task_runner
from spikemo.config import SpikEmoConfig
from spikemo.data.ingest import ingest, reason_kind
from spikemo.features.extract import extract_modality, plan_shards
from spikemo.stages import Stages, preprocess
from spikemo.training.text_finetune import finetune_text_encoder


@task(name="ingest", task_run_name=task_run_name("ingest"), retries=1, cache_policy=NONE)
def ingest_task(config: SpikEmoConfig) -> dict[str, Any]:
    result = ingest(config.data, config.manifest_path)
    summary = result.summary()
    summary["problems_by_reason"] = (
        result.problems.assign(kind=result.problems["reason"].map(reason_kind))
        .groupby(["action", "kind"])
        .size()
        .reset_index(name="rows")
        .to_dict("records")
    )
    get_run_logger().info("ingested %d utterances (%d rejected)", summary["utterances"], summary["rejected"])
    return summary


@task(name="finetune-text", task_run_name=task_run_name("finetune-text"), retries=1, cache_policy=NONE)
def finetune_text_task(config: SpikEmoConfig, manifest: str) -> dict[str, Any]:
    """Fine-tune the text encoder, or reuse the finished fine-tune of the same settings and data (its folder is
    keyed by their digest, as the feature caches are by the encoder's fingerprint); a retry resumes it."""
    result = finetune_text_encoder(config, Path(manifest))
    get_run_logger().info(
        "text encoder %s: %s (dev weighted-F1 %.2f)",
        "reused" if result.reused else "fine-tuned",
        result.model_path,
        result.dev_weighted_f1,
    )
    return result.summary()


@task(name="plan-shards", task_run_name="plan-{modality}-shards", cache_policy=NONE)
def plan_task(manifest: str, modality: str, config: SpikEmoConfig) -> list[dict[str, Any]]:
    plans = plan_shards(Path(manifest), modality, config.features, config.cache)
    return [{"index": plan.index, "rows": plan.rows, "pending": len(plan.pending_keys)} for plan in plans]


@task(
    name="extract-shard",
    task_run_name="extract-{modality}-shard-{shard}",
    retries=2,
    retry_delay_seconds=10,
    cache_policy=NONE,
)
def extract_shard_task(manifest: str, modality: str, shard: int, config: SpikEmoConfig) -> dict[str, Any]:
    return extract_modality(Path(manifest), modality, config.features, config.cache, shard_filter=[shard]).summary()


@task(name="summarise-cache", task_run_name="summarise-{modality}-cache", cache_policy=NONE)
def summarise_task(
    manifest: str, modality: str, config: SpikEmoConfig, shard_results: list[dict[str, Any]]
) -> dict[str, Any]:
    """The modality's cache after this run: encoded here, reused from earlier runs, failed."""
    final = extract_modality(Path(manifest), modality, config.features, config.cache).summary()
    final["encoded"] = sum(result["encoded"] for result in shard_results)
    final["failed"] = sum(result["failed"] for result in shard_results)
    final["missing_media"] = sum(result["missing_media"] for result in shard_results)
    final["reused"] -= final["encoded"] + final["failed"] + final["missing_media"]
    return final


@flow(name="spikemo-extract", flow_run_name=flow_run_name("extract"), log_prints=True)
def extract_flow(config: dict[str, Any], manifest: str) -> dict[str, dict[str, Any]]:
    """Every configured modality, one task per shard with work left, run by the configured task runner."""
    resolved = SpikEmoConfig.model_validate(config)
    summaries = {}
    for modality in resolved.features.modalities:
        plans = plan_task(manifest, modality, resolved)
        futures = [extract_shard_task.submit(manifest, modality, plan["index"], resolved) for plan in plans]
        wait(futures)
        summaries[modality] = summarise_task(manifest, modality, resolved, [future.result() for future in futures])
    return summaries


class TaskStages(Stages):
    """The preprocessing stages as this flow's tasks; extraction as a subflow on the configured task runner."""

    def __init__(self) -> None:
        self.ingested: dict[str, Any] = {}  # the ingest task's summary, for the flow's artifact

    def ingest(self, config: SpikEmoConfig) -> dict[str, Any]:
        self.ingested = ingest_task(config)
        return self.ingested

    def finetune(self, config: SpikEmoConfig, manifest_path: Path) -> dict[str, Any]:
        return finetune_text_task(config, str(manifest_path))

    def extract(self, config: SpikEmoConfig, manifest_path: Path) -> dict[str, dict[str, Any]]:
        run_extraction = extract_flow.with_options(task_runner=task_runner(config))
        return run_extraction(config_payload(config), str(manifest_path))


@flow(name="spikemo-preprocess", flow_run_name=flow_run_name("preprocess"), log_prints=True)
def preprocess_flow(
    config_path: str | None = None, overrides: dict[str, Any] | None = None, config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Ingest a dataset and extract its features; a summary artifact lists counts and rejected rows."""
    resolved = resolve_config(config_path, overrides, config)
    stages = TaskStages()
    summary = preprocess(resolved, stages)
    create_markdown_artifact(
        key=artifact_key(resolved, "preprocess"),
        markdown=_markdown(resolved, stages.ingested, summary["modalities"]),
        description="spikemo preprocess summary",
    )
    return summary


def _markdown(config: SpikEmoConfig, ingested: dict[str, Any], modalities: dict[str, dict[str, Any]]) -> str:
    splits = pd.DataFrame(ingested["splits"]).T[["dialogues", "utterances", "with_media", "rejected", "media_dropped"]]
    caches = pd.DataFrame(modalities).T[
        ["encoder", "dim", "encoded", "reused", "failed", "missing_media", "cache_path"]
    ]
    problems = pd.DataFrame(ingested["problems_by_reason"] or [{"action": "-", "kind": "none", "rows": 0}])
    return "\n\n".join(
        [
            f"# {config.data.dataset_name}: preprocessing",
            f"Manifest: `{ingested['manifest']}`; problems table: `{ingested['problems']}`",
            "## Utterances per split",
            splits.to_markdown(),
            "## Rejected / media-dropped rows by reason",
            problems.to_markdown(index=False),
            "## Feature caches",
            caches.to_markdown(),
        ]
    )
