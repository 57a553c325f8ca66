"""The utterance manifest and problem-row tables: their Parquet schemas, writing and reading.

Manifest, one row per accepted utterance (schema version 1):

| column | type | meaning |
| --- | --- | --- |
| utterance_key | string | ``{dataset}/{split}/{dialogue_id}/{utterance_index}``, stable across runs |
| dataset | string | dataset name |
| split | string | ``train`` / ``dev`` / ``test`` |
| dialogue_id | string | dialogue id as given by the source (MELD: ``Dialogue_ID``) |
| utterance_index | int32 | utterance id as given (gaps allowed); order within the dialogue |
| turn | int32 | 0-based position within the dialogue after sorting by ``utterance_index`` |
| speaker | string | speaker name, whitespace-normalised; a compound ("Joey and Chandler") is one party |
| speaker_id | int32 | index of ``speaker`` in the dataset's sorted speaker list (file metadata) |
| party | int32 | index of the speaker within its dialogue, in order of first appearance |
| text | string | the utterance (may be empty when media is present) |
| label | string | label name, spelled as in the configured label set |
| label_id | int32 | index of ``label`` in the label set (file metadata) |
| media_path | string, null | media file relative to the dataset root (POSIX separators), null if none |
| media_start / media_end | float64, null | segment inside a longer media file, in seconds |
| media_fingerprint | string, null | sha256 of the media file's bytes (+ segment), null if none |
| media_size / media_mtime_ns | int64, null | file size and mtime, used to reuse fingerprints on re-ingest |
| source_file / source_row | string / int32 | where the row came from (row 2 = first data row under the header) |

Problems table (``<manifest>.problems.parquet``), one row per problem found: the same key columns, the
``reason``, and the ``action`` taken: ``rejected`` (the utterance is not in the manifest) or
``media_dropped`` (it is, without its media).
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from spikemo.errors import DataError

SCHEMA_VERSION = 1
METADATA_KEY = b"spikemo"

MANIFEST_SCHEMA = pa.schema(
    [
        ("utterance_key", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("dialogue_id", pa.string()),
        ("utterance_index", pa.int32()),
        ("turn", pa.int32()),
        ("speaker", pa.string()),
        ("speaker_id", pa.int32()),
        ("party", pa.int32()),
        ("text", pa.string()),
        ("label", pa.string()),
        ("label_id", pa.int32()),
        ("media_path", pa.string()),
        ("media_start", pa.float64()),
        ("media_end", pa.float64()),
        ("media_fingerprint", pa.string()),
        ("media_size", pa.int64()),
        ("media_mtime_ns", pa.int64()),
        ("source_file", pa.string()),
        ("source_row", pa.int32()),
    ]
)

PROBLEMS_SCHEMA = (
    pa.schema(  # where a problem row points uses the manifest's columns; the index as written in the source
        [
            *(MANIFEST_SCHEMA.field(name) for name in ("dataset", "split", "dialogue_id")),
            ("utterance_index", pa.string()),
            *(MANIFEST_SCHEMA.field(name) for name in ("source_file", "source_row")),
            ("reason", pa.string()),
            ("action", pa.string()),
        ]
    )
)


def problems_path(manifest_path: Path) -> Path:
    return manifest_path.with_name(manifest_path.stem + ".problems.parquet")


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write a Parquet file via a temporary file in the same folder and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(
    manifest: pd.DataFrame,
    problems: pd.DataFrame,
    path: Path,
    *,
    dataset: str,
    labels: list[str],
    speakers: list[str],
    root: Path,
) -> None:
    metadata = {
        "schema_version": SCHEMA_VERSION,
        "dataset": dataset,
        "labels": labels,
        "speakers": speakers,
        "root": str(root.resolve()),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    table = pa.Table.from_pandas(manifest, schema=MANIFEST_SCHEMA, preserve_index=False)
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()})
    write_table_atomic(
        pa.Table.from_pandas(problems, schema=PROBLEMS_SCHEMA, preserve_index=False), problems_path(path)
    )
    write_table_atomic(table, path)


def read_manifest(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The manifest as a DataFrame and its metadata (dataset, labels, speakers, root)."""
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise DataError(f"{path}: not a spikemo manifest (no metadata); create it with `spikemo ingest`")
    return table.to_pandas(), json.loads(raw)
