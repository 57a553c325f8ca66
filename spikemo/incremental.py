"""Live scoring: the emotion of a conversation's newest turn(s) while it goes on.

A request holds one conversation so far; the answer holds the label and class probabilities of its newest turn(s).
The scorer keeps the encoders loaded and remembers every turn's encoding (keyed by exactly what the encoder read:
the text with its context window, or the media file's sha256 and segment: the manifest's media fingerprint), so
each request encodes only the turns it has not seen; the SpikEmo pass over the dialogue is recomputed from the
remembered vectors (milliseconds). A scorer answers one group of requests at a time (a lock): requests that arrive
together are encoded and scored together, and its memo, encoders (tokenizer, MediaPipe graphs) and model, shared by
every thread that calls it, are used by one thread at a time. With a ``model.causal`` model a turn's answer is
final: later turns never change it. A bidirectional model reads later turns too, so an earlier turn's label may still
change; every answer says which (``causal``, and ``final`` per turn).

Request (JSON; ``spikemo predict --incremental``, one request per line)::

    {"dialogue_id": "call-17", "newest": 1,
     "turns": [{"speaker": "Ann", "text": "Hi!"},
               {"speaker": "Bob", "text": "What now?", "media_path": "clips/17-2.mp4",
                "media_start": 3.5, "media_end": 6.0}]}

``turns`` are in order (their position is the utterance index); ``newest`` (default 1) is how many of the
last turns to answer; media paths are relative to the scorer's media root. A line that is not a valid request
is answered with ``{"line": n, "error": "..."}`` and the next one is read. Response::

    {"dialogue_id": "call-17", "causal": true, "encoded": 1, "reused": 1, "milliseconds": 12.4,
     "turns": [{"utterance_index": 1, "speaker": "Bob", "label": "anger", "final": true,
                "probabilities": {"anger": 0.61, "neutral": 0.2, ...}}]}
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from spikemo.data.ingest import file_sha256
from spikemo.errors import DataError
from spikemo.features.base import build_encoder
from spikemo.features.extract import MediaSource, decode_input, encode_decoded, input_decoder
from spikemo.features.text import TextEncoder
from spikemo.model.batch import IGNORE_INDEX
from spikemo.predict import Predictor
from spikemo.training.data import Dialogue, collate_dialogues

MEMO_SIZE = 100_000  # remembered encodings (about 1.5 KB each for a 384-d text encoder)


@dataclass
class _Waiting:
    """A request waiting for its answer (or its error)."""

    request: Any
    received: float = field(default_factory=time.perf_counter)
    answer: dict[str, Any] | None = None
    error: Exception | None = None
    done: bool = False

    def fail(self, error: Exception) -> None:
        self.error, self.done = error, True


@dataclass
class _Conversation:
    """A parsed request in a group being answered: its turns and, per modality, their encodings."""

    waiting: _Waiting
    manifest: pd.DataFrame
    newest: int
    vectors: dict[str, list[np.ndarray | None]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {"encoded": 0, "reused": 0})


class IncrementalScorer:
    """Answers requests (module docstring) with one loaded model; encodings persist across requests.

    Requests that arrive while another group is being answered wait together; the first of them to get the lock
    answers them all at once: their new turns encoded in one batch per modality, their conversations through the
    model in one padded batch (padding is masked, so each answer is the one it would get alone)."""

    def __init__(self, predictor: Predictor, media_root: Path | None = None, memo_size: int = MEMO_SIZE) -> None:
        predictor.check_encoders()
        self.predictor = predictor
        self.media_root = Path(media_root) if media_root else Path.cwd()
        self.encoders = {
            modality: build_encoder(modality, predictor.spec.features) for modality in predictor.spec.modalities
        }
        self.memo: OrderedDict[tuple[str, Any], np.ndarray | str] = OrderedDict()  # vector, or the reason it failed
        self.memo_size = memo_size
        self.lock = threading.Lock()  # held by the thread answering a group
        self.waiting: list[_Waiting] = []
        self.waiting_lock = threading.Lock()
        self.digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256 of the file

    def forget(self) -> None:
        """Drop every remembered encoding (the next request encodes all its turns)."""
        self.memo.clear()

    @property
    def causal(self) -> bool:
        return self.predictor.spec.model.causal

    def score(self, request: dict[str, Any]) -> dict[str, Any]:
        waiting = _Waiting(request)
        with self.waiting_lock:
            self.waiting.append(waiting)
        with self.lock:
            if not waiting.done:
                with self.waiting_lock:
                    group, self.waiting = self.waiting, []
                self._answer_all(group)
        if waiting.error is not None:
            raise waiting.error
        assert waiting.answer is not None
        return waiting.answer

    def score_lines(self, lines: Iterable[str]) -> Iterator[dict[str, Any]]:
        """One answer per non-empty JSON line; a line that is not a valid request is answered with
        ``{"line": n, "error": "..."}`` and the stream goes on."""
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                request = json.loads(line)
            except json.JSONDecodeError as error:
                yield {"line": number, "error": f"not JSON ({error.msg}); send one JSON object per line"}
                continue
            try:
                yield self.score(request)
            except DataError as error:
                yield {"line": number, "error": str(error)}

    def _answer_all(self, group: list[_Waiting]) -> None:
        """Answer every request of the group (a bad one gets its DataError; the others are answered)."""
        try:
            conversations = []
            for waiting in group:
                try:
                    conversations.append(_Conversation(waiting, *_request_manifest(waiting.request)))
                except DataError as error:
                    waiting.fail(error)
            for modality, encoder in self.encoders.items():
                self._encode_turns(modality, encoder, [c for c in conversations if not c.waiting.done])
            usable = []
            for conversation in conversations:
                if conversation.waiting.done:
                    continue
                if any(vector is not None for column in conversation.vectors.values() for vector in column):
                    usable.append(conversation)
                else:
                    conversation.waiting.fail(
                        DataError(
                            "no utterance has usable features for any of the model's modalities; check the input's "
                            "text and media"
                        )
                    )
            for conversation, probabilities in zip(usable, self._probabilities(usable)):
                conversation.waiting.answer = self._answer(conversation, probabilities)
                conversation.waiting.done = True
        except Exception as error:  # answered to every request of the group still waiting, not to one alone
            for waiting in group:
                if not waiting.done:
                    waiting.fail(error)

    def _answer(self, conversation: _Conversation, probabilities: np.ndarray) -> dict[str, Any]:
        labels = self.predictor.spec.labels
        manifest = conversation.manifest
        first = len(manifest) - conversation.newest
        turns = [
            {
                "utterance_index": index,
                "speaker": manifest["speaker"].iat[index],
                "label": labels[int(row.argmax())],
                "final": self.causal,
                "probabilities": {label: round(float(p), 6) for label, p in zip(labels, row)},
            }
            for index, row in enumerate(probabilities[first:], start=first)
        ]
        return {
            "dialogue_id": str(conversation.waiting.request["dialogue_id"]),
            "causal": self.causal,
            **conversation.counts,
            "milliseconds": round(1000 * (time.perf_counter() - conversation.waiting.received), 2),
            "turns": turns,
        }

    def _encode_turns(self, modality: str, encoder: Any, conversations: list[_Conversation]) -> None:
        """Each conversation's encodings for the modality, from the memo or, for every turn of the group not seen
        before, encoded now in one batch; None where a turn has none."""
        known: dict[Any, np.ndarray | str] = {}  # the group's encodings, held here: storing may evict the memo's oldest
        todo: dict[Any, Any] = {}  # key -> source
        turn_keys = []
        for conversation in conversations:
            try:
                sources, keys = self._inputs(modality, encoder, conversation.manifest)
            except DataError as error:
                conversation.waiting.fail(error)
                sources, keys = [], []
            turn_keys.append(keys)
            for source, key in zip(sources, keys):
                if key is None or key in known or key in todo:
                    continue
                if (modality, key) in self.memo:
                    self.memo.move_to_end((modality, key))
                    known[key] = self.memo[(modality, key)]
                else:
                    todo[key] = source
        if todo:
            known.update(self._encode(modality, encoder, list(todo.values()), list(todo)))
        for conversation, keys in zip(conversations, turn_keys):
            present = [key for key in keys if key is not None]
            conversation.counts["encoded"] += sum(key in todo for key in present)
            conversation.counts["reused"] += sum(key not in todo for key in present)
            conversation.vectors[modality] = [
                value if isinstance(value := known.get(key), np.ndarray) else None for key in keys
            ]

    def _inputs(self, modality: str, encoder: Any, manifest: pd.DataFrame) -> tuple[list[Any], list[Any]]:
        """What the encoder reads for each turn, and its memo key (None where the turn has nothing to read)."""
        if isinstance(encoder, TextEncoder):
            items = encoder.build_inputs(manifest)
            return items, [item.fingerprint if item.text.strip() else None for item in items]
        return self._media_sources(manifest)

    @torch.inference_mode()
    def _probabilities(self, conversations: list[_Conversation]) -> list[np.ndarray]:
        """Class probabilities [turns, classes] of each conversation: all of them through the model as one padded
        batch of dialogues, each modality masked where a turn has no encoding (as ``Predictor.predict_features``
        scores them, without the feature tables)."""
        if not conversations:
            return []
        dialogues = []
        for conversation in conversations:
            features, masks = {}, {}
            for modality, column in conversation.vectors.items():
                present = np.array([vector is not None for vector in column])
                matrix = np.zeros((len(column), self.predictor.spec.input_dims[modality]), dtype=np.float32)
                if present.any():
                    matrix[present] = np.stack([vector for vector in column if vector is not None])
                features[modality], masks[modality] = torch.from_numpy(matrix), torch.from_numpy(present)
            turns = len(conversation.manifest)
            dialogues.append(
                Dialogue(
                    features=features,
                    modality_mask=masks,
                    party=torch.from_numpy(conversation.manifest["party"].to_numpy(dtype=np.int64)),
                    labels=torch.full((turns,), IGNORE_INDEX, dtype=torch.long),
                )
            )
        model = self.predictor.model
        batch = collate_dialogues(dialogues).to(next(model.parameters()).device)
        probabilities = torch.softmax(model(batch).logits.float(), dim=-1).cpu().numpy()
        return [probabilities[row, : len(dialogue)] for row, dialogue in enumerate(dialogues)]

    def _media_sources(self, manifest: pd.DataFrame) -> tuple[list[Any], list[Any]]:
        sources, keys = [], []
        for path, start, end in zip(manifest["media_path"], manifest["media_start"], manifest["media_end"]):
            if not path:
                sources.append(None)
                keys.append(None)
                continue
            full = (self.media_root / path).resolve()
            if not full.is_relative_to(self.media_root.resolve()) or not full.is_file():
                raise DataError(f"media_path {path!r}: no such file under the media root {self.media_root}")
            sources.append(MediaSource(full, start, end))
            start, end = (float("nan") if pd.isna(time) else float(time) for time in (start, end))
            keys.append(
                self._content_digest(full) + ("" if math.isnan(start) and math.isnan(end) else f"@{start}-{end}")
            )
        return sources, keys

    def _content_digest(self, path: Path) -> str:
        """The file's sha256, as ingestion fingerprints media; hashed again only when its size or mtime changed."""
        stat = path.stat()
        identity = (str(path), stat.st_size, stat.st_mtime_ns)
        if identity not in self.digests:
            self.digests[identity] = file_sha256(path)
        return self.digests[identity]

    def _encode(self, modality: str, encoder: Any, sources: list[Any], keys: list[Any]) -> dict[Any, np.ndarray | str]:
        """Decode and encode as extraction does (a failure masks that modality for the turn); each key's outcome,
        also remembered."""
        decode = input_decoder(encoder, self.predictor.spec.features)
        inputs, ready, outcomes = [], [], {}
        for source, key in zip(sources, keys):
            value, failure = decode_input(decode, source)
            if failure is None:
                inputs.append(value)
                ready.append(key)
            else:
                outcomes[key] = failure
        dim = self.predictor.spec.input_dims[modality]
        for key, outcome in zip(ready, encode_decoded(encoder, inputs)):
            outcomes[key] = outcome if isinstance(outcome, str) else _usable(outcome, dim)
        for key, outcome in outcomes.items():
            self.memo[(modality, key)] = outcome
        while len(self.memo) > self.memo_size:
            self.memo.popitem(last=False)
        return outcomes


def _usable(embedding: np.ndarray, dim: int) -> np.ndarray | str:
    """A copy of the embedding as the model's input, or why it cannot be one (the turn is masked, as for a failed
    encoding)."""
    vector = np.array(embedding, dtype=np.float32).reshape(-1)
    if vector.size != dim:
        return f"embedding has {vector.size} values where the model expects {dim}"
    return vector if np.isfinite(vector).all() else "embedding contains NaN or inf"


def _request_manifest(request: Any) -> tuple[pd.DataFrame, int]:
    """The request's conversation as manifest rows (one dialogue, turns in order) and how many to answer."""
    if (
        not isinstance(request, dict)
        or "dialogue_id" not in request
        or not isinstance(request.get("turns"), list)
        or not request["turns"]
    ):
        raise DataError(
            'a request is {"dialogue_id": ..., "turns": [{"speaker": ..., "text": ...}, ...], "newest": 1} '
            "with at least one turn"
        )
    newest = request.get("newest", 1)
    if not isinstance(newest, int) or newest < 1:
        raise DataError(f"newest {newest!r}: give how many of the last turns to answer (1 or more)")
    columns: dict[str, list[Any]] = {name: [] for name in ("speaker", "text", "media_path", "media_start", "media_end")}
    for index, turn in enumerate(request["turns"]):
        if not isinstance(turn, dict):
            raise DataError(f"turn {index}: a turn is an object with speaker, text and optionally media_path")
        text, media_path = str(_given(turn.get("text")) or "").strip(), _given(turn.get("media_path"))
        if not (text or media_path):
            raise DataError(f"turn {index}: give its text and/or media_path")
        columns["speaker"].append(" ".join(str(_given(turn.get("speaker")) or "").split()))
        columns["text"].append(text)
        columns["media_path"].append(media_path)
        columns["media_start"].append(_seconds(turn.get("media_start"), index))
        columns["media_end"].append(_seconds(turn.get("media_end"), index))
    dialogue = str(request["dialogue_id"])
    count = len(columns["text"])
    frame = pd.DataFrame(  # one construction (assigning columns one by one copies the frame each time)
        {
            **columns,
            "utterance_key": [f"live/{dialogue}/{index}" for index in range(count)],
            "dataset": "live",
            "split": "test",
            "dialogue_id": dialogue,
            "utterance_index": np.arange(count),
            "turn": np.arange(count),
            "party": pd.factorize(np.asarray(columns["speaker"], dtype=object))[0],
            "label_id": -1,
        }
    )
    return frame, min(newest, count)


def _given(value: Any) -> Any:
    """None for an absent value (None, NaN from a DataFrame, an empty string)."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return None
    return value


def _seconds(value: Any, index: int) -> float | None:
    if _given(value) is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"turn {index}: media times are seconds, got {value!r}") from None
