"""Ingestion: a raw dataset becomes a validated utterance manifest plus a table of problem rows.

Every row is judged by the same rules whatever its format. A row with a problem is set aside with
one reason (``rejected``), except a missing clip of an utterance that has text: that utterance stays,
text-only, and the problem is recorded as ``media_dropped`` so evaluation sets keep their size.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spikemo.config import DataConfig
from spikemo.data.readers import SPLITS, read_dataset
from spikemo.data.schema import problems_path, read_manifest, write_manifest
from spikemo.errors import DataError

log = logging.getLogger(__name__)

REJECTED = "rejected"
MEDIA_DROPPED = "media_dropped"


@dataclass
class IngestResult:
    manifest_path: Path
    problems_path: Path
    manifest: pd.DataFrame
    problems: pd.DataFrame
    warnings: list[str]

    def summary(self) -> dict[str, Any]:
        """Per split: dialogues, utterances, rejected rows by reason, utterances whose media was dropped."""
        splits = {}
        for split in SPLITS:
            rows = self.manifest[self.manifest["split"] == split]
            problems = self.problems[self.problems["split"] == split]
            rejected = problems[problems["action"] == REJECTED]
            splits[split] = {
                "dialogues": int(rows["dialogue_id"].nunique()),
                "utterances": int(len(rows)),
                "with_media": int(rows["media_path"].notna().sum()),
                "rejected": int(len(rejected)),
                "rejected_by_reason": {
                    k: int(v) for k, v in rejected["reason"].map(reason_kind).value_counts().items()
                },
                "media_dropped": int((problems["action"] == MEDIA_DROPPED).sum()),
            }
        return {
            "manifest": str(self.manifest_path),
            "problems": str(self.problems_path),
            "utterances": int(len(self.manifest)),
            "rejected": int((self.problems["action"] == REJECTED).sum()),
            "splits": splits,
        }


def reason_kind(reason: str) -> str:
    """The reason's category: the text before any row-specific detail."""
    return reason.split(":", 1)[0]


def ingest(config: DataConfig, out: Path, require_labels: bool = True) -> IngestResult:
    """Read, validate and fingerprint a dataset; write the manifest and its problems table to ``out``.

    Without ``require_labels`` (conversations to predict) labels are optional: an absent or unknown label
    leaves the utterance unlabelled (label and label_id null) instead of rejecting it.
    """
    labels = config.label_names
    raw = read_dataset(config, require_labels)
    for warning in raw.warnings:
        log.warning(warning)
    rows = raw.rows.copy()
    reasons = pd.Series(None, index=rows.index, dtype=object)
    action = pd.Series(REJECTED, index=rows.index, dtype=object)

    def flag(mask: pd.Series, reason: str | pd.Series) -> None:
        fresh = mask & reasons.isna()
        reasons[fresh] = reason[fresh] if isinstance(reason, pd.Series) else reason

    rows["speaker"] = rows["speaker"].fillna("").astype(str).str.split().str.join(" ")
    rows["text"] = rows["text"].fillna("").astype(str).str.strip()
    flag(~rows["split"].isin(SPLITS), "unknown split: " + rows["split"].astype(str) + " (use train, dev or test)")
    index_numeric = pd.to_numeric(rows["utterance_index"].astype(str).str.strip(), errors="coerce")
    integral = index_numeric.notna() & (index_numeric == index_numeric.round())
    flag(~integral, "utterance index is not an integer: " + rows["utterance_index"].astype(str))
    flag(rows["dialogue_id"].fillna("").astype(str) == "", "empty dialogue id")
    rows["label"], known = _match_labels(rows["label"], labels)
    if require_labels:
        flag(~known, "unknown label: " + rows["label"].astype(str) + f" (expected one of {', '.join(labels)})")
    else:
        rows.loc[~known, "label"] = None
    rows["utterance_index"] = index_numeric.where(integral, -1).astype(np.int64)

    key_columns = ["split", "dialogue_id", "utterance_index"]
    candidate = reasons.isna()
    duplicated = rows[candidate].duplicated(key_columns, keep="first").reindex(rows.index, fill_value=False)
    first_row = rows[candidate].groupby(key_columns)["source_row"].transform("first").reindex(rows.index)
    flag(
        duplicated,
        "duplicated key: dialogue "
        + rows["dialogue_id"]
        + " utterance "
        + rows["utterance_index"].astype(str)
        + " first seen at row "
        + first_row.fillna(-1).astype(int).astype(str),
    )

    media = _resolve_media(rows, raw.root)
    missing = _flag_media(rows, media, flag)
    dropped = missing & reasons.isna()
    reasons[dropped] = "missing clip: " + rows.loc[dropped, "media_path"].astype(str)
    action[dropped] = MEDIA_DROPPED
    rows.loc[dropped | (media["problem"] != ""), "media_path"] = None

    problems = _problems_table(rows, raw.rows, reasons, action, config.dataset_name)
    accepted = rows[reasons.isna() | (action == MEDIA_DROPPED)].copy()
    if accepted.empty:
        first = problems["reason"].iloc[0] if len(problems) else "no rows"
        raise DataError(f"{raw.root}: no valid row to ingest (first problem: {first}); fix the input and re-run")
    manifest, speakers = _build_manifest(accepted, media, labels, config.dataset_name, raw.root, out)
    write_manifest(
        manifest, problems, out, dataset=config.dataset_name, labels=labels, speakers=speakers, root=raw.root
    )
    return IngestResult(out, problems_path(out), manifest, problems, raw.warnings)


def _flag_media(
    rows: pd.DataFrame, media: pd.DataFrame, flag: Callable[[pd.Series, str | pd.Series], None]
) -> pd.Series:
    """Flag rows whose media path escapes the root or names a directory, rows with neither text nor a clip,
    and bad segments; returns which rows name a clip that is missing."""
    has_media_path = rows["media_path"].notna()
    flag(
        has_media_path & (media["problem"] == "escapes"),
        "media path outside the dataset root: " + rows["media_path"].astype(str),
    )
    flag(
        has_media_path & (media["problem"] == "directory"),
        "media path is a directory: " + rows["media_path"].astype(str),
    )
    missing = has_media_path & (media["problem"] == "missing")
    empty_text = rows["text"] == ""
    flag(missing & empty_text, "missing clip and empty text: " + rows["media_path"].astype(str))
    flag(empty_text & ~has_media_path, "empty text and no media")
    segment_bad = rows["media_start"].notna() & rows["media_end"].notna() & (rows["media_end"] <= rows["media_start"])
    flag(segment_bad, "media_end is not after media_start")
    return missing


def _match_labels(raw: pd.Series, labels: list[str]) -> tuple[pd.Series, pd.Series]:
    """Map raw labels to the configured spelling (exact, then case-insensitive); flag the unknown ones."""
    folded = {label.casefold(): label for label in labels}
    stripped = raw.fillna("").astype(str).str.strip()
    matched = stripped.map(lambda value: value if value in labels else folded.get(value.casefold()))
    return matched.fillna(stripped), matched.notna()


def _resolve_media(rows: pd.DataFrame, root: Path) -> pd.DataFrame:
    """Per row: the absolute media path confined to ``root`` and a problem ('', escapes, missing, directory)."""
    resolved: list[Path | None] = []
    problems: list[str] = []
    for relative in rows["media_path"]:
        if relative is None or (isinstance(relative, float) and np.isnan(relative)):
            resolved.append(None)
            problems.append("")
            continue
        path = (root / str(relative).strip()).resolve()
        if not path.is_relative_to(root):
            resolved.append(None)
            problems.append("escapes")
        elif path.is_dir():
            resolved.append(None)
            problems.append("directory")
        elif not path.is_file():
            resolved.append(None)
            problems.append("missing")
        else:
            resolved.append(path)
            problems.append("")
    return pd.DataFrame({"path": resolved, "problem": problems}, index=rows.index)


def _problems_table(
    rows: pd.DataFrame, raw: pd.DataFrame, reasons: pd.Series, action: pd.Series, dataset: str
) -> pd.DataFrame:
    flagged = reasons.notna()
    table = pd.DataFrame(
        {
            "dataset": dataset,
            "split": raw.loc[flagged, "split"].astype(str),
            "dialogue_id": raw.loc[flagged, "dialogue_id"].astype(str),
            "utterance_index": raw.loc[flagged, "utterance_index"].astype(str),
            "source_file": raw.loc[flagged, "source_file"],
            "source_row": raw.loc[flagged, "source_row"].astype(np.int32),
            "reason": reasons[flagged],
            "action": action[flagged],
        }
    )
    return table.reset_index(drop=True)


def _build_manifest(
    accepted: pd.DataFrame, media: pd.DataFrame, labels: list[str], dataset: str, root: Path, out: Path
) -> tuple[pd.DataFrame, list[str]]:
    accepted["dialogue_order"] = pd.to_numeric(accepted["dialogue_id"], errors="coerce")
    accepted = accepted.sort_values(
        ["split", "dialogue_order", "dialogue_id", "utterance_index"], kind="stable", na_position="last"
    )
    speakers = sorted(accepted["speaker"].unique())
    speaker_ids = {name: i for i, name in enumerate(speakers)}
    dialogue = accepted.groupby(["split", "dialogue_id"], sort=False)
    accepted["turn"] = dialogue.cumcount()
    accepted["party"] = dialogue["speaker"].transform(
        lambda names: pd.Series(pd.factorize(names)[0], index=names.index)
    )
    paths = media.loc[accepted.index, "path"].where(accepted["media_path"].notna(), None)
    fingerprints = _fingerprint_media(paths, accepted, root, out)
    manifest = pd.DataFrame(
        {
            "utterance_key": dataset
            + "/"
            + accepted["split"]
            + "/"
            + accepted["dialogue_id"]
            + "/"
            + accepted["utterance_index"].astype(str),
            "dataset": dataset,
            "split": accepted["split"],
            "dialogue_id": accepted["dialogue_id"],
            "utterance_index": accepted["utterance_index"],
            "turn": accepted["turn"],
            "speaker": accepted["speaker"],
            "speaker_id": accepted["speaker"].map(speaker_ids),
            "party": accepted["party"],
            "text": accepted["text"],
            "label": accepted["label"],
            "label_id": accepted["label"].map({label: i for i, label in enumerate(labels)}).astype("Int32"),
            "media_path": [None if p is None else p.relative_to(root).as_posix() for p in paths],
            "media_start": accepted["media_start"],
            "media_end": accepted["media_end"],
            "media_fingerprint": fingerprints["fingerprint"],
            "media_size": fingerprints["size"],
            "media_mtime_ns": fingerprints["mtime_ns"],
            "source_file": accepted["source_file"],
            "source_row": accepted["source_row"],
        }
    )
    return manifest.reset_index(drop=True), speakers


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes: what identifies a media file's content in the manifest and the live scorer."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _fingerprint_media(paths: pd.Series, rows: pd.DataFrame, root: Path, out: Path) -> pd.DataFrame:
    """sha256 of each media file (+ segment), reusing the previous manifest's value when size and mtime match."""
    previous: dict[str, tuple[int, int, str]] = {}
    if out.is_file():
        try:
            old, _ = read_manifest(out)
            for path, size, mtime, digest in old[
                ["media_path", "media_size", "media_mtime_ns", "media_fingerprint"]
            ].itertuples(index=False):
                if path is not None and digest is not None:
                    previous[path] = (int(size), int(mtime), digest.split("@")[0])
        except (OSError, ValueError, KeyError, DataError):
            previous = {}
    unique = sorted({p for p in paths if p is not None})
    stats = {p: os.stat(p) for p in unique}
    reusable = {}
    for path in unique:
        old = previous.get(path.relative_to(root).as_posix())
        if old and old[0] == stats[path].st_size and old[1] == stats[path].st_mtime_ns:
            reusable[path] = old[2]
    todo = [p for p in unique if p not in reusable]
    with ThreadPoolExecutor(max_workers=min(4, (os.cpu_count() or 1) * 2)) as pool:
        digests = dict(zip(todo, pool.map(file_sha256, todo)))
    digests.update(reusable)
    fingerprint, size, mtime = [], [], []
    for path, start, end in zip(paths, rows["media_start"], rows["media_end"]):
        if path is None:
            fingerprint.append(None)
            size.append(None)
            mtime.append(None)
            continue
        segment = "" if np.isnan(start) and np.isnan(end) else f"@{start}-{end}"
        fingerprint.append(digests[path] + segment)
        size.append(stats[path].st_size)
        mtime.append(stats[path].st_mtime_ns)
    return pd.DataFrame(
        {"fingerprint": fingerprint, "size": pd.array(size, dtype="Int64"), "mtime_ns": pd.array(mtime, dtype="Int64")},
        index=rows.index,
    )
