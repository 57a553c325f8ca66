"""Dialogue datasets built from the manifest and the per-modality feature tables, and their batching.

One dataset item is one dialogue (utterances ordered by ``turn``); ``collate_dialogues`` pads a list of
dialogues into a ``DialogueBatch``; ``LengthBucketBatchSampler`` groups dialogues of similar length so that
padding stays small, and shards them across distributed ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from spikemo.errors import DataError
from spikemo.model.batch import IGNORE_INDEX, DialogueBatch

STATUS_OK = "ok"
MANIFEST_COLUMNS = ("utterance_key", "split", "dialogue_id", "turn", "party", "label_id")
FEATURE_COLUMNS = ("utterance_key", "status", "embedding")


@dataclass(frozen=True)
class Dialogue:
    """One dialogue's utterances in turn order: features [L, D_m], presence masks [L], party and labels [L]."""

    features: dict[str, torch.Tensor]
    modality_mask: dict[str, torch.Tensor]
    party: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class DialogueDataset(Dataset[Dialogue]):
    """The dialogues of one split; utterance rows are stored contiguously, dialogue by dialogue."""

    def __init__(
        self,
        split: str,
        utterance_keys: np.ndarray,
        dialogue_offsets: np.ndarray,
        features: dict[str, np.ndarray],
        modality_mask: dict[str, np.ndarray],
        party: np.ndarray,
        labels: np.ndarray,
    ) -> None:
        self.split = split
        self.utterance_keys = utterance_keys
        self.dialogue_offsets = dialogue_offsets
        self._features = {modality: torch.from_numpy(matrix) for modality, matrix in features.items()}
        self._modality_mask = {modality: torch.from_numpy(mask) for modality, mask in modality_mask.items()}
        self._party = torch.from_numpy(party)
        self._labels = torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.dialogue_offsets) - 1

    def __getitem__(self, index: int) -> Dialogue:
        rows = slice(int(self.dialogue_offsets[index]), int(self.dialogue_offsets[index + 1]))
        return Dialogue(
            features={modality: matrix[rows] for modality, matrix in self._features.items()},
            modality_mask={modality: mask[rows] for modality, mask in self._modality_mask.items()},
            party=self._party[rows],
            labels=self._labels[rows],
        )

    def feature_statistics(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per modality, mean and standard deviation of each feature over the utterances that have it."""
        statistics = {}
        for modality, matrix in self._features.items():
            present = matrix[self._modality_mask[modality]]
            if len(present) < 2:
                statistics[modality] = (torch.zeros(matrix.shape[1]), torch.ones(matrix.shape[1]))
            else:
                statistics[modality] = (present.mean(dim=0), present.std(dim=0))
        return statistics

    @property
    def features(self) -> dict[str, np.ndarray]:
        """Modality -> ``[utterances, D]`` in storage order, zeros where the modality is absent."""
        return {modality: matrix.numpy() for modality, matrix in self._features.items()}

    @property
    def modality_mask(self) -> dict[str, np.ndarray]:
        """Modality -> ``[utterances]`` bool, True where its features exist."""
        return {modality: mask.numpy() for modality, mask in self._modality_mask.items()}

    @property
    def dialogue_lengths(self) -> np.ndarray:
        return np.diff(self.dialogue_offsets)

    @property
    def labels(self) -> np.ndarray:
        """Label id of every utterance in storage order (``IGNORE_INDEX`` where unlabelled)."""
        return self._labels.numpy()

    @property
    def dialogue_index(self) -> np.ndarray:
        """The dialogue (0..len-1) of every utterance in storage order: the unit a bootstrap resamples."""
        return np.repeat(np.arange(len(self)), self.dialogue_lengths)

    def label_counts(self, num_classes: int) -> torch.Tensor:
        """How many labelled utterances each class has (``[num_classes]``)."""
        labels = self._labels[self._labels != IGNORE_INDEX]
        return torch.bincount(labels, minlength=num_classes)

    def subset(self, dialogue_indices: Sequence[int]) -> DialogueDataset:
        """A dataset of these dialogues only, in the order given."""
        flat = self._rows(dialogue_indices)
        lengths = self.dialogue_lengths[np.asarray(dialogue_indices, dtype=np.int64)]
        return DialogueDataset(
            split=self.split,
            utterance_keys=self.utterance_keys[flat],
            dialogue_offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
            features={modality: matrix[flat] for modality, matrix in self.features.items()},
            modality_mask={modality: mask[flat] for modality, mask in self.modality_mask.items()},
            party=self._party.numpy()[flat],
            labels=self.labels[flat],
        )

    @property
    def party(self) -> np.ndarray:
        """Speaker index within its dialogue of every utterance, in storage order."""
        return self._party.numpy()

    def with_features(self, features: dict[str, np.ndarray]) -> DialogueDataset:
        """The same dialogues with other feature matrices (one row per utterance, storage order)."""
        return DialogueDataset(
            self.split,
            self.utterance_keys,
            self.dialogue_offsets,
            features,
            self.modality_mask,
            self.party,
            self.labels,
        )

    def labelled_rows(self, dialogue_indices: Sequence[int]) -> np.ndarray:
        """Storage rows of the labelled utterances of these dialogues, in the order a batch of them yields."""
        flat = self._rows(dialogue_indices)
        return flat[self.labels[flat] != IGNORE_INDEX]

    def _rows(self, dialogue_indices: Sequence[int]) -> np.ndarray:
        """Storage rows of these dialogues' utterances, dialogue after dialogue."""
        rows = [np.arange(self.dialogue_offsets[i], self.dialogue_offsets[i + 1]) for i in dialogue_indices]
        return np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class DialogueData:
    """Every split's dataset and the embedding size of each modality."""

    splits: dict[str, DialogueDataset]
    input_dims: dict[str, int]

    @property
    def modalities(self) -> list[str]:
        return list(self.input_dims)

    def without_test(self) -> DialogueData:
        """The same data without its test split, for trainings whose result is scored on test once, later."""
        return DialogueData({name: split for name, split in self.splits.items() if name != "test"}, self.input_dims)


def build_dialogue_data(
    manifest: pd.DataFrame,
    features: Mapping[str, pd.DataFrame],
    num_classes: int,
    input_dims: Mapping[str, int] | None = None,
) -> DialogueData:
    """Validate the feature tables against the manifest and build one ``DialogueDataset`` per split.

    ``input_dims`` (a trained model's, for prediction) fixes each modality's embedding size; then a
    modality may have no usable embedding at all (it is masked everywhere). Without it the size is the
    most common one among the modality's embeddings. Raises ``DataError`` naming the modality and
    utterance key for a missing feature row, an embedding with NaN/inf values, or one of the wrong size.
    """
    _require_columns(manifest, MANIFEST_COLUMNS, "manifest")
    if not features:
        raise DataError("no feature tables given: extract at least one modality before training")
    if manifest.empty:
        raise DataError("the manifest has no utterances")
    ordered = manifest.sort_values(["split", "dialogue_id", "turn"], kind="stable").reset_index(drop=True)
    keys = ordered["utterance_key"].to_numpy()
    labels = _label_ids(ordered, num_classes)

    matrices: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    for modality, table in features.items():
        expected_dim = None if input_dims is None else input_dims[modality]
        matrices[modality], masks[modality] = _modality_matrix(modality, table, keys, expected_dim)

    splits: dict[str, DialogueDataset] = {}
    for split, rows in ordered.groupby("split", sort=False).indices.items():
        rows = np.sort(rows)
        dialogue_ids = ordered["dialogue_id"].to_numpy()[rows]
        starts = np.flatnonzero(np.r_[True, dialogue_ids[1:] != dialogue_ids[:-1]])
        splits[str(split)] = DialogueDataset(
            split=str(split),
            utterance_keys=keys[rows],
            dialogue_offsets=np.r_[starts, len(rows)].astype(np.int64),
            features={modality: matrix[rows] for modality, matrix in matrices.items()},
            modality_mask={modality: mask[rows] for modality, mask in masks.items()},
            party=ordered["party"].to_numpy(dtype=np.int64)[rows],
            labels=labels[rows],
        )
    return DialogueData(splits=splits, input_dims={modality: matrix.shape[1] for modality, matrix in matrices.items()})


def _require_columns(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise DataError(f"{what} lacks column(s) {', '.join(missing)}")


def _label_ids(manifest: pd.DataFrame, num_classes: int) -> np.ndarray:
    raw = pd.to_numeric(manifest["label_id"], errors="coerce")
    labels = raw.fillna(IGNORE_INDEX).astype(np.int64).to_numpy()
    labels[labels < 0] = IGNORE_INDEX
    out_of_range = np.flatnonzero(labels >= num_classes)
    if out_of_range.size:
        row = out_of_range[0]
        raise DataError(
            f"utterance {manifest['utterance_key'].iloc[row]}: label_id {labels[row]} is outside the "
            f"{num_classes} configured labels; re-ingest with the label set used for training"
        )
    return labels


def _modality_matrix(
    modality: str, table: pd.DataFrame, keys: np.ndarray, expected_dim: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of ``modality`` in the order of ``keys`` (zeros where absent) and the presence mask."""
    _require_columns(table, FEATURE_COLUMNS, f"feature table {modality!r}")
    by_key = table.drop_duplicates("utterance_key", keep="last").set_index("utterance_key")
    missing = pd.Index(keys).difference(by_key.index)
    if len(missing):
        raise DataError(
            f"modality {modality!r}: no feature row for utterance {missing[0]} ({len(missing)} missing); "
            "re-run feature extraction for this manifest"
        )
    aligned = by_key.loc[keys]
    present = (aligned["status"] == STATUS_OK).to_numpy()
    embeddings = aligned["embedding"].to_numpy()
    for key, embedding in zip(keys[present], embeddings[present]):
        if embedding is None:
            raise DataError(f"modality {modality!r}, utterance {key}: status is ok but the embedding is empty")
    if expected_dim is None and not present.any():
        raise DataError(f"modality {modality!r}: no utterance has a usable embedding; drop the modality or re-extract")

    sizes = np.array([np.size(embedding) for embedding in embeddings[present]], dtype=np.int64)
    dim = expected_dim if expected_dim is not None else int(np.bincount(sizes).argmax())
    wrong = np.flatnonzero(sizes != dim)
    if wrong.size:
        key = keys[present][wrong[0]]
        expected = "the model expects" if expected_dim is not None else "the modality's embeddings have"
        raise DataError(
            f"modality {modality!r}, utterance {key}: embedding has {sizes[wrong[0]]} values where "
            f"{expected} {dim}; re-extract it with one encoder"
        )
    matrix = np.zeros((len(keys), dim), dtype=np.float32)
    if present.any():
        matrix[present] = np.stack(
            [np.asarray(embedding, dtype=np.float32).reshape(dim) for embedding in embeddings[present]]
        )
    non_finite = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if non_finite.size:
        raise DataError(
            f"modality {modality!r}, utterance {keys[non_finite[0]]}: embedding contains NaN or inf "
            f"({non_finite.size} such utterance(s)); re-extract the features"
        )
    return matrix, present


def collate_dialogues(dialogues: Sequence[Dialogue]) -> DialogueBatch:
    """Pad dialogues to the longest one; padding has masks False, party 0 and label ``IGNORE_INDEX``."""
    batch_size = len(dialogues)
    max_len = max(len(dialogue) for dialogue in dialogues)
    modalities = list(dialogues[0].features)
    features = {
        modality: torch.zeros(batch_size, max_len, dialogues[0].features[modality].shape[1], dtype=torch.float32)
        for modality in modalities
    }
    modality_mask = {modality: torch.zeros(batch_size, max_len, dtype=torch.bool) for modality in modalities}
    utterance_mask = torch.zeros(batch_size, max_len, dtype=torch.bool)
    party = torch.zeros(batch_size, max_len, dtype=torch.long)
    labels = torch.full((batch_size, max_len), IGNORE_INDEX, dtype=torch.long)
    for row, dialogue in enumerate(dialogues):
        length = len(dialogue)
        for modality in modalities:
            features[modality][row, :length] = dialogue.features[modality]
            modality_mask[modality][row, :length] = dialogue.modality_mask[modality]
        utterance_mask[row, :length] = True
        party[row, :length] = dialogue.party
        labels[row, :length] = dialogue.labels
    return DialogueBatch(
        features=features,
        modality_mask=modality_mask,
        utterance_mask=utterance_mask,
        party=party,
        labels=labels,
    )


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Batches of dialogue indices with similar lengths, for one rank of ``num_replicas``.

    Training (``shuffle=True``): a ``DistributedSampler`` deals each rank an equal share of the shuffled
    dialogues (so every rank runs the same number of steps); the share is cut into pools of
    ``bucket_batches`` batches, each pool sorted by length and split into batches, and the batch order is
    shuffled. Call ``set_epoch`` before each epoch. Evaluation (``shuffle=False``): every dialogue exactly
    once, sorted by length, batches dealt round-robin to the ranks.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        bucket_batches: int = 50,
    ) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.bucket_batches = bucket_batches
        self.epoch = 0
        self._dealer = (
            DistributedSampler(range(len(self.lengths)), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
            if shuffle
            else None
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self._dealer is not None:
            self._dealer.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._training_batches() if self.shuffle else self._evaluation_batches())

    def __len__(self) -> int:
        if self._dealer is not None:
            return math.ceil(len(self._dealer) / self.batch_size)
        total = math.ceil(len(self.lengths) / self.batch_size)
        return len(range(self.rank, total, self.num_replicas))

    def _training_batches(self) -> list[list[int]]:
        indices = np.fromiter(iter(self._dealer), dtype=np.int64)
        pool_size = self.batch_size * self.bucket_batches
        batches: list[list[int]] = []
        for start in range(0, len(indices), pool_size):
            pool = indices[start : start + pool_size]
            pool = pool[np.argsort(-self.lengths[pool], kind="stable")]
            batches.extend(pool[i : i + self.batch_size].tolist() for i in range(0, len(pool), self.batch_size))
        order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        return [batches[i] for i in order.tolist()]

    def _evaluation_batches(self) -> list[list[int]]:
        indices = np.argsort(-self.lengths, kind="stable")
        batches = [indices[i : i + self.batch_size].tolist() for i in range(0, len(indices), self.batch_size)]
        return batches[self.rank :: self.num_replicas]
