"""The feature cache: one Parquet dataset per (dataset, modality, encoder fingerprint).

Layout: ``<cache>/<dataset>/<modality>/<encoder-name>-<fingerprint[:12]>/part-<time>-<pid>-<random>.parquet``.

| column | type | meaning |
| --- | --- | --- |
| utterance_key | string | manifest key |
| media_fingerprint | string, null | what was encoded: the manifest's media fingerprint (text: hash of text + context) |
| status | string | ``ok``, ``missing_media`` or ``failed`` |
| reason | string, null | why there is no embedding |
| embedding | list<float32>, null | the vector (``dim`` values, recorded in the metadata) when ``ok`` |
| written_at | timestamp[us, UTC] | when the row was written; the latest row of a key wins |

Each part is written to a hidden temporary file and renamed into place, and its name is unique, so a
crash leaves no partial part and concurrent writers never collide. Parquet readers skip hidden files,
so pandas, pyarrow and duckdb read the folder as is. File metadata (key ``spikemo``): encoder name,
fingerprint, spec, dim, modality, dataset, library versions, creation time.

The embedding column is a variable-size list although every vector has ``dim`` values: Arrow's Parquet
reader cannot read back a fixed-size list column holding nulls (apache/arrow#35692, open in pyarrow 25).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from spikemo.data.schema import METADATA_KEY, write_table_atomic
from spikemo.features.base import Encoder

OK = "ok"
MISSING_MEDIA = "missing_media"
FAILED = "failed"
CACHE_SCHEMA_VERSION = 1
FINGERPRINT_PREFIX = 12


def cache_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            ("utterance_key", pa.string()),
            ("media_fingerprint", pa.string()),
            ("status", pa.string()),
            ("reason", pa.string()),
            ("embedding", pa.list_(pa.float32())),
            ("written_at", pa.timestamp("us", tz="UTC")),
        ]
    )


@dataclass
class CacheRow:
    utterance_key: str
    media_fingerprint: str | None
    status: str
    reason: str | None = None
    embedding: np.ndarray | None = None


@dataclass(frozen=True)
class FeatureCache:
    """The cache folder of one encoder for one dataset and modality."""

    path: Path
    dataset: str
    modality: str

    @classmethod
    def for_encoder(cls, cache_dir: Path, dataset: str, encoder: Encoder) -> FeatureCache:
        folder = (
            Path(cache_dir) / dataset / encoder.modality / f"{encoder.name}-{encoder.fingerprint[:FINGERPRINT_PREFIX]}"
        )
        return cls(folder, dataset, encoder.modality)

    def parts(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return sorted(path for path in self.path.glob("part-*.parquet"))

    def stored_dim(self) -> int | None:
        """The embedding size recorded by an existing part, without reading its rows."""
        for part in self.parts():
            metadata = pq.read_schema(part).metadata or {}
            if METADATA_KEY in metadata:
                return int(json.loads(metadata[METADATA_KEY])["dim"])
        return None

    def latest(self, with_embeddings: bool = True) -> pd.DataFrame:
        """The latest row per utterance key (all columns but ``written_at``), indexed by key."""
        columns = ["utterance_key", "media_fingerprint", "status", "reason"] + (
            ["embedding"] if with_embeddings else []
        )
        parts = self.parts()
        if not parts:
            return pd.DataFrame(columns=columns).set_index("utterance_key")
        table = ds.dataset([str(part) for part in parts], format="parquet").to_table(columns=columns + ["written_at"])
        table = table.take(pc.sort_indices(table, [("written_at", "ascending")]))
        frame = table.drop_columns(["written_at"]).to_pandas()
        if with_embeddings:
            frame["embedding"] = [
                None if value is None else np.asarray(value, dtype=np.float32) for value in frame["embedding"]
            ]
        return frame.drop_duplicates("utterance_key", keep="last").set_index("utterance_key")

    def write_part(self, rows: list[CacheRow], encoder: Encoder, dim: int) -> Path:
        """Write rows as a new part, atomically, under a name no other writer can pick."""
        schema = cache_schema(dim).with_metadata({METADATA_KEY: json.dumps(self._metadata(encoder, dim)).encode()})
        present = np.array([row.embedding is not None for row in rows], dtype=bool)
        vectors = [
            np.asarray(row.embedding, dtype=np.float32).reshape(dim) for row in rows if row.embedding is not None
        ]
        offsets = np.concatenate([[0], np.cumsum(present * dim)]).astype(np.int32)
        flat = pa.array(np.concatenate(vectors) if vectors else np.zeros(0, np.float32), type=pa.float32())
        embedding_column = pa.ListArray.from_arrays(pa.array(offsets), flat, mask=pa.array(~present))
        now = datetime.now(UTC)
        table = pa.Table.from_arrays(
            [
                pa.array([row.utterance_key for row in rows], pa.string()),
                pa.array([row.media_fingerprint for row in rows], pa.string()),
                pa.array([row.status for row in rows], pa.string()),
                pa.array([row.reason for row in rows], pa.string()),
                embedding_column,
                pa.array([now] * len(rows), pa.timestamp("us", tz="UTC")),
            ],
            schema=schema,
        )
        path = self.path / f"part-{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}.parquet"
        write_table_atomic(table, path)
        return path

    def _metadata(self, encoder: Encoder, dim: int) -> dict[str, Any]:
        return {
            "schema_version": CACHE_SCHEMA_VERSION,
            "dataset": self.dataset,
            "modality": self.modality,
            "encoder": encoder.name,
            "fingerprint": encoder.fingerprint,
            "spec": encoder.spec(),
            "dim": dim,
            "library_versions": encoder.library_versions(),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
