"""Feature extraction from a manifest into the cache, incrementally and shard by shard.

Shards are fixed slices of the manifest (rows ``[i * shard_size, (i + 1) * shard_size)``), so a flow can
plan them once and run one task per shard while others finish. Within a shard only the utterances
whose key is absent from the cache, or whose media (for text: text + context) fingerprint changed, are
encoded; each shard's rows are written as one atomic part, so a crash loses at most the shard in flight.
Decoding runs in a thread pool ahead of the encoder; per-item failures become ``failed`` rows.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from spikemo.config import FeaturesConfig
from spikemo.data.schema import read_manifest
from spikemo.errors import DataError
from spikemo.features.base import Encoder, EncoderRuntime, FeatureFailure, Modality, build_encoder
from spikemo.features.cache import FAILED, MISSING_MEDIA, OK, CacheRow, FeatureCache
from spikemo.features.text import TextEncoder
from spikemo.media import MediaError, read_audio, read_video_frames

log = logging.getLogger(__name__)
MAX_LOADED_ENCODERS = 4  # encoders kept loaded per thread by ``loaded_encoder``
_THREAD_STATE = threading.local()  # .encoders: OrderedDict[(fingerprint, runtime), Encoder] of this thread

NOT_EXTRACTED = "missing"
SILENCE_PEAK = 1e-4


@dataclass(frozen=True)
class MediaSource:
    path: Path
    start: float | None
    end: float | None


@dataclass(frozen=True)
class WorkItem:
    """One utterance to encode: its key, the fingerprint of its input and where the input comes from."""

    shard: int
    key: str
    fingerprint: str | None
    source: Any
    missing_reason: str | None = None


@dataclass(frozen=True)
class ShardPlan:
    """A shard with work left: its index (for ``shard_filter``), its size and the keys still to encode."""

    index: int
    rows: int
    pending_keys: list[str]


@dataclass
class ExtractionResult:
    modality: str
    encoder: str
    fingerprint: str
    dim: int
    cache_path: Path
    encoded: int = 0
    reused: int = 0
    failed: int = 0
    missing_media: int = 0
    seconds: float = 0.0
    failure_reasons: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder,
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "cache_path": str(self.cache_path),
            "encoded": self.encoded,
            "reused": self.reused,
            "failed": self.failed,
            "missing_media": self.missing_media,
            "seconds": round(self.seconds, 3),
            "failure_reasons": dict(self.failure_reasons),
        }


def plan_shards(manifest_path: Path, modality: Modality, features: FeaturesConfig, cache_dir: Path) -> list[ShardPlan]:
    """The shards of ``modality`` that still hold work; pass their indices to ``extract_modality``."""
    _, _, items, pending = _survey(manifest_path, modality, features, cache_dir)
    plans = []
    for shard, group in itertools.groupby(range(len(items)), key=lambda i: items[i].shard):
        rows = list(group)
        keys = [items[i].key for i in rows if pending[i]]
        if keys:
            plans.append(ShardPlan(shard, len(rows), keys))
    return plans


def extract_modality(
    manifest_path: Path,
    modality: Modality,
    features: FeaturesConfig,
    cache_dir: Path,
    shard_filter: Iterable[int] | None = None,
) -> ExtractionResult:
    """Encode what the cache lacks for ``modality`` (only the shards in ``shard_filter`` when given)."""
    started = time.perf_counter()
    encoder, cache, items, pending = _survey(manifest_path, modality, features, cache_dir)
    selected = None if shard_filter is None else set(shard_filter)
    in_scope = [i for i, item in enumerate(items) if selected is None or item.shard in selected]
    todo = [items[i] for i in in_scope if pending[i]]
    dim = cache.stored_dim() if not todo else None
    if dim is None:
        dim = encoder.dim
    result = ExtractionResult(
        modality, encoder.name, encoder.fingerprint, dim, cache.path, reused=len(in_scope) - len(todo)
    )
    if todo:
        _run(todo, encoder, cache, features, result)
    result.seconds = time.perf_counter() - started
    log.log(
        logging.INFO if todo else logging.DEBUG,  # a pass with nothing to encode is not news
        "%s %s (%s): %d encoded, %d reused, %d failed, %d without media in %.1f s",
        cache.dataset,
        modality,
        encoder.name,
        result.encoded,
        result.reused,
        result.failed,
        result.missing_media,
        result.seconds,
    )
    return result


def load_features(
    manifest: Path | pd.DataFrame, modality: Modality, features: FeaturesConfig, cache_dir: Path
) -> pd.DataFrame:
    """Cached features aligned to the manifest's rows: utterance_key, status, reason, embedding (float32 or None).

    Utterances not in the cache, or cached from different media or text, have status ``missing``.
    """
    if isinstance(manifest, pd.DataFrame):
        frame = manifest.reset_index(drop=True)
        datasets = frame["dataset"].unique()
        if len(datasets) != 1:
            raise DataError(
                f"load_features needs the rows of one dataset, got {len(datasets)}: {', '.join(map(str, datasets[:3]))}"
            )
        dataset = str(datasets[0])
    else:
        frame, metadata = read_manifest(Path(manifest))
        dataset = metadata["dataset"]
    encoder = loaded_encoder(modality, features)
    cache = FeatureCache.for_encoder(Path(cache_dir), dataset, encoder)
    expected = _expected_fingerprints(frame, encoder)
    cached = cache.latest().reindex(frame["utterance_key"])
    fresh = cached["status"].notna().to_numpy() & (
        (cached["media_fingerprint"].to_numpy() == expected)
        | (cached["media_fingerprint"].isna().to_numpy() & pd.isna(expected))
    )
    stale = cached["status"].notna().to_numpy() & ~fresh
    reason = np.where(
        stale,
        "extracted from other media or text; run `spikemo preprocess` again",
        "not extracted; run `spikemo preprocess`",
    )
    return pd.DataFrame(
        {
            "utterance_key": frame["utterance_key"].to_numpy(),
            "status": np.where(fresh, cached["status"].to_numpy(), NOT_EXTRACTED),
            "reason": np.where(fresh, cached["reason"].to_numpy(), reason),
            "embedding": [vector if ok else None for vector, ok in zip(cached["embedding"], fresh)],
        }
    )


def loaded_encoder(modality: Modality, features: FeaturesConfig) -> Encoder:
    """``build_encoder``, but the same instance (with its loaded model) again for the same fingerprint and
    runtime within a thread: the extraction tasks a flow's worker thread runs, one per shard, load the model
    once. Threads never share an instance: MediaPipe's graphs, for one, crash when two threads feed them."""
    encoder = build_encoder(modality, features)
    key = (encoder.fingerprint, encoder.runtime)
    loaded: OrderedDict[tuple[str, EncoderRuntime], Encoder] = _THREAD_STATE.__dict__.setdefault(
        "encoders", OrderedDict()
    )
    if key not in loaded:
        loaded[key] = encoder
        while len(loaded) > MAX_LOADED_ENCODERS:
            loaded.popitem(last=False)
    loaded.move_to_end(key)
    return loaded[key]


def _survey(
    manifest_path: Path, modality: Modality, features: FeaturesConfig, cache_dir: Path
) -> tuple[Encoder, FeatureCache, list[WorkItem], np.ndarray]:
    """The configured encoder, its cache, the manifest's work items and which of them are pending."""
    manifest, metadata = read_manifest(Path(manifest_path))
    encoder = loaded_encoder(modality, features)
    cache = FeatureCache.for_encoder(Path(cache_dir), metadata["dataset"], encoder)
    items = work_items(manifest, metadata, encoder, features.shard_size)
    return encoder, cache, items, _pending(items, cache)


def work_items(manifest: pd.DataFrame, metadata: dict[str, Any], encoder: Encoder, shard_size: int) -> list[WorkItem]:
    """One work item per manifest row, in row order: shard index, input fingerprint and where the input comes from."""
    shards = np.arange(len(manifest)) // shard_size
    keys = manifest["utterance_key"].tolist()
    if isinstance(encoder, TextEncoder):
        inputs = encoder.build_inputs(manifest)
        return [
            WorkItem(int(shard), key, item.fingerprint, item, None if item.text.strip() else "empty text")
            for shard, key, item in zip(shards, keys, inputs)
        ]
    root = Path(metadata["root"])
    items = []
    for shard, key, relative, start, end, fingerprint in zip(
        shards,
        keys,
        manifest["media_path"],
        manifest["media_start"],
        manifest["media_end"],
        manifest["media_fingerprint"],
    ):
        if relative is None:
            items.append(WorkItem(int(shard), key, None, None, "no media for this utterance"))
        else:
            source = MediaSource(root / relative, _seconds(start), _seconds(end))
            items.append(WorkItem(int(shard), key, fingerprint, source))
    return items


def _expected_fingerprints(manifest: pd.DataFrame, encoder: Encoder) -> np.ndarray:
    if isinstance(encoder, TextEncoder):
        return np.array([item.fingerprint for item in encoder.build_inputs(manifest)], dtype=object)
    return manifest["media_fingerprint"].to_numpy(dtype=object)


def _seconds(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _pending(items: Sequence[WorkItem], cache: FeatureCache) -> np.ndarray:
    """Per item: True when the cache has no row for its key, or one made from other input."""
    cached = cache.latest(with_embeddings=False)["media_fingerprint"].to_dict()
    return np.array([item.key not in cached or cached[item.key] != item.fingerprint for item in items], dtype=bool)


def input_decoder(encoder: Encoder, features: FeaturesConfig) -> Callable[[Any], Any] | None:
    """The function turning a work item's source into encoder input, or None when no decoding is needed."""
    if encoder.modality == "audio":

        def decode_audio(source: MediaSource) -> np.ndarray:
            samples = read_audio(source.path, features.sample_rate, source.start, source.end)
            if float(np.abs(samples).max()) < SILENCE_PEAK:
                raise FeatureFailure(f"silent audio (peak amplitude below {SILENCE_PEAK:g})")
            return samples

        return decode_audio
    if encoder.modality == "visual":
        return lambda source: read_video_frames(source.path, features.frames_per_clip, source.start, source.end)
    return None


@dataclass
class _Decoded:
    item: WorkItem
    value: Any = None
    failure: str | None = None


def _decode_stream(
    items: Sequence[WorkItem], decode: Callable[[Any], Any] | None, pool: ThreadPoolExecutor, window: int
) -> Iterator[_Decoded]:
    """Decoded items in order, with up to ``window`` decodes running ahead of the consumer."""

    def run(item: WorkItem) -> _Decoded:
        if item.missing_reason is not None:
            return _Decoded(item)
        return _Decoded(item, *decode_input(decode, item.source))

    if decode is None:
        yield from map(run, items)
        return
    queue: deque[Future[_Decoded]] = deque()
    remaining = iter(items)
    for item in itertools.islice(remaining, window):
        queue.append(pool.submit(run, item))
    while queue:
        done = queue.popleft().result()
        for item in itertools.islice(remaining, 1):
            queue.append(pool.submit(run, item))
        yield done


def _run(
    todo: list[WorkItem], encoder: Encoder, cache: FeatureCache, features: FeaturesConfig, result: ExtractionResult
) -> None:
    """Encode ``todo`` and write it to the cache part by part (each part is a unit of resumption).

    Text is encoded longest first across the whole of ``todo`` (as ``SentenceTransformer.encode`` does), so
    that each batch pads to inputs of nearly its own length; a part holds ``shard_size`` inputs. Media keep
    the manifest's order, shard by shard, decoded ahead of the encoder by ``decode_workers`` threads.
    """
    progress = tqdm(
        total=len(todo),
        desc=f"{cache.dataset}/{encoder.modality} {encoder.name}",
        unit="utt",
        mininterval=1.0,
        disable=None,
    )
    if isinstance(encoder, TextEncoder):
        ordered = sorted(todo, key=lambda item: -len(item.source))
        parts = [
            min(features.shard_size, len(ordered) - begin) for begin in range(0, len(ordered), features.shard_size)
        ]
        chunk_size = features.shard_size
    else:
        ordered = todo
        parts = [len(list(shard_items)) for _, shard_items in itertools.groupby(todo, key=lambda item: item.shard)]
        chunk_size = features.batch_size
    with ThreadPoolExecutor(max_workers=features.decode_workers) as pool, progress:
        stream = _decode_stream(ordered, input_decoder(encoder, features), pool, window=2 * features.batch_size)
        for part_size in parts:
            rows: list[CacheRow] = []
            for begin in range(0, part_size, chunk_size):
                decoded = list(itertools.islice(stream, min(chunk_size, part_size - begin)))
                rows.extend(_encode_chunk(decoded, encoder, result))
                progress.update(len(decoded))
            cache.write_part(rows, encoder, result.dim)


def encode_decoded(encoder: Encoder, inputs: list[Any]) -> list[np.ndarray | str]:
    """Encode decoded inputs: per input its vector, or why it yields none (the encoder's failure, non-finite values)."""
    if not inputs:
        return []
    batch = encoder.encode(inputs)
    outcomes: list[np.ndarray | str] = []
    for row, vector in enumerate(batch.embeddings):
        if row in batch.failures:
            outcomes.append(batch.failures[row])
        elif not np.isfinite(vector).all():
            outcomes.append("non-finite values in the embedding")
        else:
            outcomes.append(vector)
    return outcomes


def decode_input(decode: Callable[[Any], Any] | None, source: Any) -> tuple[Any, str | None]:
    """``decode(source)`` (the source itself without a decoder) and None, or None and why it cannot be decoded."""
    if decode is None:
        return source, None
    try:
        return decode(source), None
    except (MediaError, FeatureFailure) as failure:
        return None, str(failure)


def _encode_chunk(decoded: list[_Decoded], encoder: Encoder, result: ExtractionResult) -> list[CacheRow]:
    ready = [
        position
        for position, entry in enumerate(decoded)
        if entry.item.missing_reason is None and entry.failure is None
    ]
    failures = {position: entry.failure for position, entry in enumerate(decoded) if entry.failure is not None}
    vectors: dict[int, np.ndarray] = {}
    for position, outcome in zip(ready, encode_decoded(encoder, [decoded[position].value for position in ready])):
        if isinstance(outcome, str):
            failures[position] = outcome
        else:
            vectors[position] = outcome
    rows = []
    for position, entry in enumerate(decoded):
        item = entry.item
        if item.missing_reason is not None:
            result.missing_media += 1
            rows.append(CacheRow(item.key, item.fingerprint, MISSING_MEDIA, item.missing_reason))
        elif position in failures:
            result.failed += 1
            kind = failures[position].split(":", 1)[0]
            result.failure_reasons[kind] = result.failure_reasons.get(kind, 0) + 1
            rows.append(CacheRow(item.key, item.fingerprint, FAILED, failures[position]))
        else:
            result.encoded += 1
            rows.append(CacheRow(item.key, item.fingerprint, OK, embedding=vectors[position]))
    return rows
