"""Fine-tuning the text encoder as an emotion classifier (EmoBERTa's recipe), before extraction.

The classifier reads exactly what the ``hf-text`` encoder reads under the same ``features.text.params``
(``Speaker: utterance``, the dialogue's previous and next turns nearest first within ``max_length``) and
pools it as the feature extractor does (CLS or mean). Its head (``finetune.head``) is either dropout and a
linear layer on each input alone (``utterance``; batches of inputs of similar lengths) or SpikEmo (the
config's model section) over each dialogue's pooled utterances, trained jointly with the encoder on the train
section's loss (``dialogue``; batches of whole dialogues, their inputs encoded in chunks of similar lengths;
the head's input standardisation set once from the base encoder's pooled train utterances). Only the
labelled train rows update weights; dev weighted-F1 picks the epoch and stops training early; test is
scored once, with the picked weights, at the end. AdamW (fused on CPU and CUDA) with linear warm-up and decay,
optional layer-wise lr decay and a separate head lr, gradient clipping and accumulation, frozen lower layers on
request, and ``precision`` as in training/precision.py. With ``contrastive`` set, SPCL's
supervised prototypical contrastive loss on the pooled train vectors is added to the head's loss.

Everything lives in ``<workdir>/text-encoders/<dataset>-<digest>/``, the digest covering the base model's
files, the text and fine-tuning settings (with a dialogue head, the model and loss settings too) and the
manifest's content:
    model/        the picked encoder and tokenizer (``save_pretrained``, safetensors), the head
                  (``classifier_head.safetensors``) and ``finetune.json``; ``features.text.params.model``
                  accepts this folder. Written last: its ``finetune.json`` marks a finished fine-tune.
    checkpoint/   ``last.safetensors`` after every epoch (training/checkpoint.py: weights, optimizer, schedule, RNG
                  states, selection state; no pickle) and ``best/`` (the picked weights so far): a killed run resumes
                  after its last epoch.
The run is logged to MLflow as its own run (tag ``spikemo.stage`` = ``finetune-text``). ``spikemo finetune-text``
under ``torchrun`` runs one fine-tune over all ranks (``finetune_text_encoder``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
import transformers
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from spikemo import reports, tracking
from spikemo.config import (
    FeaturesConfig,
    ModelConfig,
    PrototypicalContrastiveConfig,
    SpikEmoConfig,
    TextFinetuneConfig,
)
from spikemo.data.schema import read_manifest
from spikemo.errors import ConfigError, DataError
from spikemo.features.base import EncoderRuntime, build_encoder
from spikemo.features.text import HFTextEncoder, TextItem
from spikemo.identity import finetune_key
from spikemo.losses import PrototypicalContrastiveLoss, SpikEmoLoss, class_weights_from_counts
from spikemo.model.batch import IGNORE_INDEX, DialogueBatch, scatter_to_padded
from spikemo.model.spikemo import SpikEmo, SpikEmoOutput
from spikemo.training.checkpoint import (
    SelectionState,
    checkpoint_progress,
    load_training_checkpoint,
    save_training_checkpoint,
)
from spikemo.training.distributed import (
    DistributedContext,
    all_reduce_sum,
    average_gradients,
    broadcast_from_main,
    broadcast_module,
)
from spikemo.training.epochs import EpochPlan, run_epochs
from spikemo.training.loop import FUSED_OPTIMIZER_DEVICES, seed_everything
from spikemo.training.metrics import classification_metrics
from spikemo.training.precision import autocast
from spikemo.training.schedule import LearningRateSchedule

HEAD_FILE = "classifier_head.safetensors"
SUMMARY_FILE = "finetune.json"
LAST_CHECKPOINT = "last.safetensors"
MAX_GRAD_NORM = 1.0
BUCKET_BATCHES = 50  # batches per pool of similar-length inputs
ENCODER_CHUNK = 8  # a dialogue batch's inputs go through the encoder this many at a time, similar lengths together
STATISTICS_SAMPLE = 512  # train utterances that set a dialogue head's input standardisation
log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    model_path: str  # a folder that features.text.params.model accepts
    dev_weighted_f1: float  # the classifier's own, at the picked epoch
    test_weighted_f1: float | None  # the classifier's own, scored once; None without a labelled test split
    best_epoch: int  # 0-based
    epochs_run: int
    seconds: float  # training and evaluation time of the run that finished it
    run_id: str | None  # its MLflow run
    reused: bool = False  # True when an earlier finished fine-tune of the same inputs was found

    def summary(self) -> dict[str, Any]:
        return asdict(self)


def contrastive_loss(
    settings: PrototypicalContrastiveConfig | None, num_labels: int, dim: int
) -> PrototypicalContrastiveLoss | None:
    """The fine-tune's prototypical contrastive loss on pooled vectors of width ``dim`` (None when off)."""
    if settings is None:
        return None
    return PrototypicalContrastiveLoss(num_labels, dim, settings.memory, settings.temperature)


class UtteranceClassifier(nn.Module):
    """The text encoder, pooled as the feature extractor pools it, then dropout and a linear head."""

    def __init__(
        self,
        encoder: HFTextEncoder,
        num_labels: int,
        dropout: float,
        contrastive: PrototypicalContrastiveConfig | None = None,
    ):
        super().__init__()
        self.pooled = encoder.pooled
        self.encoder = encoder.from_model_folder(transformers.AutoModel)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.encoder.config.hidden_size, num_labels)
        self.contrastive = contrastive_loss(contrastive, num_labels, self.encoder.config.hidden_size)

    def encode(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled vectors [N, H] (fp32) of the inputs."""
        return self.pooled(self.encoder, tokens).float()

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits [N, C] of pooled vectors."""
        return self.head(self.dropout(pooled))


class DialogueClassifier(nn.Module):
    """The text encoder, pooled as the feature extractor pools it, then SpikEmo over each dialogue's utterances."""

    def __init__(
        self,
        encoder: HFTextEncoder,
        num_labels: int,
        model_config: ModelConfig,
        contrastive: PrototypicalContrastiveConfig | None = None,
    ):
        super().__init__()
        self.pooled = encoder.pooled
        self.encoder = encoder.from_model_folder(transformers.AutoModel)
        self.head = SpikEmo(model_config, {"text": self.encoder.config.hidden_size}, num_labels)
        self.contrastive = contrastive_loss(contrastive, num_labels, self.encoder.config.hidden_size)

    def encode(self, chunks: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """Pooled vectors [N, H] (fp32) of the chunks' inputs, in chunk order."""
        return torch.cat([self.pooled(self.encoder, tokens).float() for tokens in chunks])

    def forward(self, batch: DialogueBatch) -> SpikEmoOutput:
        """``batch.features["text"]`` holds the pooled vectors in the dialogues' padded layout."""
        return self.head(batch)


@dataclass
class _BatchOutput:
    logits: torch.Tensor  # [N, C] fp32, the batch's positions concatenated in order
    pooled: torch.Tensor  # [N, H] fp32, the encoder's pooled vectors of those positions
    head_loss: torch.Tensor | None  # the dialogue head's training loss (None for the utterance head)


@dataclass
class _SplitInputs:
    """One split's labelled and unlabelled utterances in manifest order, and its dialogues."""

    items: list[TextItem]
    labels: np.ndarray  # label id, -1 where unlabelled
    party: np.ndarray
    dialogues: list[np.ndarray]  # each dialogue's positions in ``items``, in turn order

    @classmethod
    def of(cls, rows: pd.DataFrame, items: list[TextItem]) -> _SplitInputs:
        order = rows.assign(_position=np.arange(len(rows))).sort_values(["dialogue_id", "turn"], kind="stable")
        return cls(
            items=items,
            labels=rows["label_id"].fillna(-1).to_numpy(dtype=np.int64),
            party=rows["party"].to_numpy(dtype=np.int64),
            dialogues=[group.to_numpy() for _, group in order.groupby("dialogue_id", sort=False)["_position"]],
        )

    @property
    def labelled(self) -> np.ndarray:
        return np.flatnonzero(self.labels >= 0)


def finetune_folder(config: SpikEmoConfig, manifest: pd.DataFrame) -> Path:
    """Where the fine-tune of these settings on this manifest lives (same inputs, same folder: ``finetune_key``)."""
    return Path(config.workdir) / "text-encoders" / finetune_key(config, manifest, _base_encoder(config).spec())


def finetuned_text_config(config: SpikEmoConfig, manifest_path: Path) -> SpikEmoConfig:
    """``config`` with a ``features.text.finetune`` replaced by the finished fine-tune's folder as
    ``features.text.params.model``; unchanged when nothing is to be fine-tuned."""
    text = config.features.text
    if not config.fine_tunes_text:
        return config
    manifest, _ = read_manifest(manifest_path)
    model = finetune_folder(config, manifest) / "model"
    if not (model / SUMMARY_FILE).is_file():
        raise ConfigError(
            f"features.text.finetune is set but {model} holds no finished fine-tune of this data and these settings; "
            "run `spikemo finetune-text` (or `spikemo preprocess`, which runs it) with the same config"
        )
    resolved = text.model_copy(update={"params": {**text.params, "model": str(model)}, "finetune": None})
    return config.model_copy(update={"features": config.features.model_copy(update={"text": resolved})})


def dialogue_head_weights(config: SpikEmoConfig, features: FeaturesConfig) -> dict[str, torch.Tensor] | None:
    """The SpikEmo head a dialogue-head fine-tune trained together with its encoder, as weights for a SpikEmo of
    ``config.model`` over the text features of that encoder (``features``, the config resolved to the fine-tune's
    folder); None when the config fine-tunes no dialogue head or trains on other modalities too."""
    finetune = config.features.text.finetune
    if finetune is None or finetune.head != "dialogue" or list(config.features.modalities) != ["text"]:
        return None
    return load_file(Path(features.text.params["model"]) / HEAD_FILE)


def finetune_text_encoder(
    config: SpikEmoConfig, manifest_path: Path, context: DistributedContext | None = None
) -> FinetuneResult:
    """Fine-tune ``features.text`` on the manifest's train split (default settings when ``finetune`` is
    unset), or return the finished fine-tune of the same inputs; resumes a killed one.

    With a ``context`` of several ranks (``torchrun``) it is one fine-tune over all of them: each rank trains on
    its share of every epoch's batches, gradients averaged over ranks; rank 0 alone writes checkpoints and the
    model folder and logs the MLflow run; every rank returns rank 0's result."""
    if config.features.text.finetune is None:
        text = config.features.text.model_copy(update={"finetune": TextFinetuneConfig()})
        config = config.model_copy(update={"features": config.features.model_copy(update={"text": text})})
    manifest, metadata = read_manifest(manifest_path)
    folder = finetune_folder(config, manifest)
    summary_path = folder / "model" / SUMMARY_FILE
    if summary_path.is_file():
        return FinetuneResult(**{**json.loads(summary_path.read_text(encoding="utf-8")), "reused": True})
    run = _FinetuneRun(config, manifest, list(metadata["labels"]), folder, context)
    return broadcast_from_main(run.execute(), run.context)


def freeze_lower_layers(encoder: nn.Module, count: int) -> None:
    """Freeze a transformer's embeddings and its ``count`` lowest layers (its longest ``ModuleList``)."""
    if not count:
        return
    layers = _transformer_layers(encoder, "freeze_layers")
    if count > len(layers):
        raise ConfigError(f"features.text.finetune.freeze_layers {count}: the encoder has only {len(layers)} layers")
    for module in [getattr(encoder, "embeddings", encoder.get_input_embeddings()), *layers[:count]]:
        module.requires_grad_(False)


def _transformer_layers(encoder: nn.Module, setting: str) -> nn.ModuleList:
    """A transformer's stack of layers: its longest ``ModuleList``."""
    layer_lists = [module for module in encoder.modules() if isinstance(module, nn.ModuleList)]
    if not layer_lists:
        raise ConfigError(f"features.text.finetune.{setting}: this encoder has no list of transformer layers")
    return max(layer_lists, key=len)


def layerwise_lr_groups(
    model: UtteranceClassifier | DialogueClassifier, lr: float, decay: float, head_lr: float | None = None
) -> list[dict[str, Any]]:
    """AdamW parameter groups of the trainable weights: the head at ``head_lr`` (default ``lr``), anything of
    the encoder above its layers at ``lr``, transformer layer i of n at ``lr * decay ** (n - i)`` (i from 0) and
    the embeddings at ``lr * decay ** (n + 1)``. The encoder's weights in one group at ``lr`` when ``decay`` is 1."""
    head = [{"params": list(model.head.parameters()), "lr": head_lr or lr}]
    trainable = [parameter for parameter in model.encoder.parameters() if parameter.requires_grad]
    if decay == 1.0:
        return [{"params": trainable, "lr": lr}, *head]
    layers = _transformer_layers(model.encoder, "layer_lr_decay")
    depth = {id(p): index + 1 for index, layer in enumerate(layers) for p in layer.parameters()}  # 1..n
    embeddings = getattr(model.encoder, "embeddings", model.encoder.get_input_embeddings())
    depth.update({id(p): 0 for p in embeddings.parameters()})
    top = len(layers) + 1
    groups: dict[int, list[nn.Parameter]] = {}
    for parameter in trainable:
        groups.setdefault(depth.get(id(parameter), top), []).append(parameter)
    return [*({"params": params, "lr": lr * decay ** (top - level)} for level, params in sorted(groups.items())), *head]


def _base_encoder(config: SpikEmoConfig) -> HFTextEncoder:
    encoder = build_encoder("text", config.features)
    if not isinstance(encoder, HFTextEncoder):
        raise ConfigError(
            f"features.text.name {config.features.text.name!r}: only 'hf-text' encoders can be fine-tuned"
        )
    return encoder


class _FinetuneRun:
    def __init__(
        self,
        config: SpikEmoConfig,
        manifest: pd.DataFrame,
        labels: list[str],
        folder: Path,
        context: DistributedContext | None = None,
    ):
        assert config.features.text.finetune is not None
        self.config = config
        self.settings = config.features.text.finetune
        self.labels = labels
        self.folder = folder
        self.checkpoints = folder / "checkpoint"
        self.encoder = _base_encoder(config)
        self.runtime: EncoderRuntime = self.encoder.runtime
        self.context = context or DistributedContext(rank=0, world_size=1, device=self.runtime.device)
        self.device = self.context.device
        items = self.encoder.build_inputs(manifest)  # context never crosses a dialogue (nor a split)
        self.splits: dict[str, _SplitInputs] = {}
        for split in ("train", "dev", "test"):
            rows = np.flatnonzero((manifest["split"] == split).to_numpy())
            self.splits[split] = _SplitInputs.of(manifest.iloc[rows], [items[row] for row in rows])
        for split in ("train", "dev"):
            if not len(self.splits[split].labelled):
                raise DataError(
                    f"fine-tuning the text encoder needs labelled {split} utterances; the manifest has none"
                )
        seed_everything(self.settings.seed)
        self.dialogue_head = self.settings.head == "dialogue"
        self.model: UtteranceClassifier | DialogueClassifier
        if self.dialogue_head:
            self.model = DialogueClassifier(self.encoder, len(labels), config.model, self.settings.contrastive)
            train = config.train
            counts = torch.bincount(
                torch.from_numpy(self.splits["train"].labels[self.splits["train"].labelled]), minlength=len(labels)
            )
            self.loss = SpikEmoLoss(
                train.loss_weights,
                len(labels),
                class_weights_from_counts(counts, train.class_weighting),
                train.label_smoothing,
            ).to(self.device)
        else:
            self.model = UtteranceClassifier(
                self.encoder, len(labels), self.settings.dropout, self.settings.contrastive
            )
        self.model.to(self.device)
        broadcast_module(self.model, self.context)
        freeze_lower_layers(self.model.encoder, self.settings.freeze_layers)
        self.autocast = functools.partial(autocast, self.settings.precision, self.device)
        if self.dialogue_head:
            self._set_head_statistics()
        accumulation = self.settings.gradient_accumulation
        total_steps = sum(
            math.ceil(len(self._training_batches(epoch)) / accumulation) for epoch in range(self.settings.epochs)
        )
        self.optimizer = torch.optim.AdamW(
            layerwise_lr_groups(self.model, self.settings.lr, self.settings.layer_lr_decay, self.settings.head_lr),
            weight_decay=self.settings.weight_decay,
            fused=self.device.type in FUSED_OPTIMIZER_DEVICES,
        )
        self.scheduler = LearningRateSchedule.linear(
            self.optimizer, round(self.settings.warmup_ratio * total_steps), total_steps
        )
        self.started = time.perf_counter()
        self.run_id: str | None = None  # its MLflow run (an interrupted run's, when resuming)
        self.earlier_seconds = 0.0  # spent by the runs this one resumes
        self.resumed = self._restore()

    def execute(self) -> FinetuneResult | None:
        """The finished fine-tune's result (None on a rank other than 0, which only trains)."""
        if not self.context.is_main:
            run_epochs(self, self._epoch_plan())
            return None
        tracking.connect(self.config)
        with self._mlflow_run(self.run_id) as run:
            self.run_id = run.info.run_id
            result = self._finish(run_epochs(self, self._epoch_plan(), tracking.log_epoch))
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        return result

    def _epoch_plan(self) -> EpochPlan:
        return EpochPlan(
            self.settings.epochs, self.settings.patience, label="fine-tune epoch", is_main=self.context.is_main
        )

    def load_last(self) -> SelectionState | None:
        return self.resumed

    def evaluate_dev(self) -> dict[str, float]:
        dev = self._evaluate("dev")
        return {f"dev_{name}": float(dev[name]) for name in ("weighted_f1", "accuracy", "loss")}

    def save_best(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.context.is_main:
            self._save_weights(self.checkpoints / "best")

    def end_epoch(self, selection: SelectionState) -> None:
        if self.context.is_main:
            self._save_checkpoint(selection)

    def _seconds(self) -> float:
        """Training and evaluation time so far, the runs this one resumes included."""
        return self.earlier_seconds + time.perf_counter() - self.started

    def _training_batches(self, epoch: int) -> list[list[np.ndarray]]:
        """Shuffled batches, each a list of position arrays into the train split: with the utterance head one array
        of similar-length inputs (a random permutation is cut into pools of ``BUCKET_BATCHES`` batches, each pool
        sorted by length and cut into batches, and the batches shuffled); with the dialogue head whole dialogues
        in random order, packed up to ``batch_size`` utterances. Over several ranks, this rank's share: every
        ``world_size``-th batch from its rank on, all ranks the same number (the last few batches left out)."""
        rng = np.random.default_rng([self.settings.seed, epoch])
        size = self.settings.batch_size
        train = self.splits["train"]
        if self.dialogue_head:
            return self._rank_share(self._dialogue_batches(train, size, rng.permutation(len(train.dialogues))))
        labelled = train.labelled
        order = labelled[rng.permutation(len(labelled))]
        batches = []
        for begin in range(0, len(order), size * BUCKET_BATCHES):
            pool = sorted(order[begin : begin + size * BUCKET_BATCHES], key=lambda position: len(train.items[position]))
            batches += [[np.asarray(pool[start : start + size])] for start in range(0, len(pool), size)]
        return self._rank_share([batches[index] for index in rng.permutation(len(batches))])

    def _rank_share(self, batches: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        world = self.context.world_size
        if len(batches) < world:
            raise DataError(f"the text fine-tune has {len(batches)} training batches for {world} ranks: use fewer")
        return batches[self.context.rank : len(batches) // world * world : world]

    @staticmethod
    def _dialogue_batches(inputs: _SplitInputs, size: int, order: np.ndarray) -> list[list[np.ndarray]]:
        """The dialogues in ``order`` packed into batches of at most ``size`` utterances (a longer one alone)."""
        batches: list[list[np.ndarray]] = []
        current: list[np.ndarray] = []
        for index in order:
            dialogue = inputs.dialogues[index]
            if current and sum(map(len, current)) + len(dialogue) > size:
                batches.append(current)
                current = []
            current.append(dialogue)
        return batches + [current] if current else batches

    def _evaluation_batches(self, split: str) -> list[list[np.ndarray]]:
        inputs, size = self.splits[split], self.runtime.batch_size
        if self.dialogue_head:
            return self._dialogue_batches(inputs, size, np.arange(len(inputs.dialogues)))
        longest_first = sorted(inputs.labelled, key=lambda position: len(inputs.items[position]), reverse=True)
        return [[np.asarray(longest_first[begin : begin + size])] for begin in range(0, len(longest_first), size)]

    def _forward(self, inputs: _SplitInputs, batch: list[np.ndarray]) -> _BatchOutput:
        """The batch's positions through the encoder and the head."""
        if not self.dialogue_head:
            tokens = self.encoder.tokenize([inputs.items[position] for position in batch[0]]).to(self.device)
            with self.autocast():
                pooled = self.model.encode(tokens)
                return _BatchOutput(logits=self.model(pooled).float(), pooled=pooled, head_loss=None)
        assert isinstance(self.model, DialogueClassifier)
        layout = self._dialogue_layout(inputs, batch)
        pooled = self._pooled(inputs, np.concatenate(batch))
        layout.features["text"] = scatter_to_padded(pooled, layout.utterance_mask)
        output = self.model(layout)
        return _BatchOutput(
            logits=output.logits[layout.utterance_mask], pooled=pooled, head_loss=self.loss(output, layout).total
        )

    def _pooled(self, inputs: _SplitInputs, positions: np.ndarray) -> torch.Tensor:
        """The dialogue classifier's pooled vectors [N, H] of ``positions``, encoded ``ENCODER_CHUNK`` at a time by
        length."""
        assert isinstance(self.model, DialogueClassifier)
        by_length = sorted(range(len(positions)), key=lambda index: len(inputs.items[positions[index]]))
        chunks = [by_length[begin : begin + ENCODER_CHUNK] for begin in range(0, len(by_length), ENCODER_CHUNK)]
        tokens = [
            self.encoder.tokenize([inputs.items[positions[index]] for index in chunk]).to(self.device)
            for chunk in chunks
        ]
        with self.autocast():
            pooled = self.model.encode(tokens)
        return pooled[torch.from_numpy(np.argsort(np.concatenate(chunks))).to(pooled.device)]

    def _dialogue_layout(self, inputs: _SplitInputs, batch: list[np.ndarray]) -> DialogueBatch:
        """The batch's dialogues padded (masks, parties, labels; ``features`` left empty)."""
        mask = torch.zeros(len(batch), max(map(len, batch)), dtype=torch.bool)
        party = torch.zeros(mask.shape, dtype=torch.long)
        labels = torch.full(mask.shape, IGNORE_INDEX, dtype=torch.long)
        for row, dialogue in enumerate(batch):
            mask[row, : len(dialogue)] = True
            party[row, : len(dialogue)] = torch.from_numpy(inputs.party[dialogue])
            labels[row, : len(dialogue)] = torch.from_numpy(
                np.where(inputs.labels[dialogue] >= 0, inputs.labels[dialogue], IGNORE_INDEX)
            )
        device = self.device
        mask = mask.to(device)
        return DialogueBatch(
            features={},
            modality_mask={"text": mask},
            utterance_mask=mask,
            party=party.to(device),
            labels=labels.to(device),
        )

    @torch.inference_mode()
    def _set_head_statistics(self) -> None:
        """The dialogue head's input standardisation from the base encoder's pooled vectors of train utterances."""
        assert isinstance(self.model, DialogueClassifier)
        train = self.splits["train"]
        sample = np.random.default_rng(self.settings.seed).permutation(len(train.items))[:STATISTICS_SAMPLE]
        self.model.eval()
        pooled = self._pooled(train, sample)
        self.model.head.set_input_statistics({"text": (pooled.mean(0), pooled.std(0))})

    def train_epoch(self, epoch: int) -> dict[str, float]:
        train = self.splits["train"]
        self.model.train()
        accumulation = self.settings.gradient_accumulation
        batches = self._training_batches(epoch)
        total, seen = 0.0, 0
        quiet = None if self.context.is_main else True  # None: no bar when stderr is not a terminal
        progress = tqdm(batches, desc=f"fine-tune epoch {epoch}", unit="batch", mininterval=1.0, disable=quiet)
        for step, batch in enumerate(progress):
            output = self._forward(train, batch)
            labels = train.labels[np.concatenate(batch)]
            labelled = labels >= 0
            loss = output.head_loss
            if loss is None:
                loss = nn.functional.cross_entropy(output.logits, torch.from_numpy(labels).to(output.logits.device))
            if self.model.contrastive is not None and self.settings.contrastive is not None:
                rows = torch.from_numpy(np.flatnonzero(labelled)).to(output.pooled.device)
                targets = torch.from_numpy(labels[labelled]).to(output.pooled.device)
                loss = loss + self.settings.contrastive.weight * self.model.contrastive(output.pooled[rows], targets)
            (loss / accumulation).backward()
            if (step + 1) % accumulation == 0 or step + 1 == len(batches):
                average_gradients(list(self.model.parameters()), self.context)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), MAX_GRAD_NORM)
                self.optimizer.step()
                self.scheduler.after_step()
                self.optimizer.zero_grad(set_to_none=True)
            total += float(loss.detach()) * int(labelled.sum())
            seen += int(labelled.sum())
            progress.set_postfix(loss=f"{total / max(seen, 1):.4f}", refresh=False)
        total, seen = all_reduce_sum(torch.tensor([total, float(seen)], dtype=torch.float64), self.context).tolist()
        return {"train_loss": total / max(seen, 1)}

    @torch.inference_mode()
    def _evaluate(self, split: str) -> dict[str, Any]:
        """The classifier's metrics and mean cross-entropy on the split's labelled utterances."""
        inputs = self.splits[split]
        self.model.eval()
        predictions = np.full(len(inputs.labels), -1, dtype=np.int64)
        total = 0.0
        for batch in self._evaluation_batches(split):
            logits = self._forward(inputs, batch).logits
            positions = np.concatenate(batch)
            labelled = inputs.labels[positions] >= 0
            target = torch.from_numpy(inputs.labels[positions][labelled]).to(logits.device)
            total += float(
                nn.functional.cross_entropy(
                    logits[torch.from_numpy(labelled).to(logits.device)], target, reduction="sum"
                )
            )
            predictions[positions] = logits.argmax(-1).cpu().numpy()
        labelled = inputs.labelled
        metrics = classification_metrics(inputs.labels[labelled], predictions[labelled], self.labels)
        metrics["loss"] = total / max(len(labelled), 1)
        return metrics

    def _save_weights(self, directory: Path) -> None:
        staging = directory.with_name(directory.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        self.model.encoder.save_pretrained(staging)
        self.encoder.tokenizer.save_pretrained(staging)
        save_file(
            {name: tensor.detach().cpu().contiguous() for name, tensor in self.model.head.state_dict().items()},
            staging / HEAD_FILE,
        )
        shutil.rmtree(directory, ignore_errors=True)
        staging.rename(directory)

    def _load_weights(self, directory: Path) -> None:
        encoder = transformers.AutoModel.from_pretrained(directory)
        self.model.encoder.load_state_dict(encoder.state_dict())
        self.model.head.load_state_dict(load_file(directory / HEAD_FILE))

    def _save_checkpoint(self, selection: SelectionState) -> None:
        progress = {"run_id": self.run_id, "seconds": self._seconds()}
        save_training_checkpoint(
            self.checkpoints / LAST_CHECKPOINT,
            self.model,
            self.optimizer,
            self.scheduler,
            selection,
            self._run_identity(),
            progress=progress,
        )

    def _run_identity(self) -> dict[str, Any]:
        return {"finetune": self.checkpoints.parent.name}  # the folder's name is the digest of what it fine-tunes

    def _restore(self) -> SelectionState | None:
        """The last checkpoint's weights, optimizer, schedule and RNG states restored, its MLflow run and time
        taken over; where it stood (None without one)."""
        last = self.checkpoints / LAST_CHECKPOINT
        if not last.is_file():
            return None
        selection = load_training_checkpoint(last, self.model, self.optimizer, self.scheduler, self._run_identity())
        progress = checkpoint_progress(last)
        self.run_id, self.earlier_seconds = progress["run_id"], progress["seconds"]
        log.info("resuming the text fine-tune after epoch %d from %s", selection.epoch, last)
        return selection

    @contextlib.contextmanager
    def _mlflow_run(self, run_id: str | None) -> Iterator[mlflow.ActiveRun]:
        """The fine-tune's own MLflow run (the interrupted one again when resuming); FAILED if the body raises."""
        if run_id is not None:
            run = mlflow.start_run(run_id=run_id)
        else:
            text = self.config.features.text
            run = mlflow.start_run(
                run_name=f"finetune-text-{self.config.data.dataset_name}",
                tags={
                    "spikemo.stage": "finetune-text",
                    "spikemo.dataset": self.config.data.dataset_name,
                    "spikemo.path.finetune_folder": str(self.folder),
                    MLFLOW_RUN_NOTE: (
                        f"Text encoder {text.params.get('model', 'minilm')} fine-tuned as an emotion classifier ("
                        f"{'SpikEmo over each dialogue' if self.dialogue_head else 'a linear head on each utterance'}) "
                        f"on {self.config.data.dataset_name} train; epoch picked on dev weighted-F1, test scored once."
                    ),
                },
            )
            mlflow.log_params(
                {
                    **{f"text.{k}": v for k, v in self.encoder.params.model_dump().items()},
                    **{f"finetune.{k}": v for k, v in self.settings.model_dump().items()},
                }
            )
        try:
            yield run
        except BaseException as error:
            mlflow.set_tag("spikemo.failure", f"{type(error).__name__}: {error}"[:5000])
            mlflow.end_run(status="FAILED")
            raise
        mlflow.end_run()

    def _finish(self, selection: SelectionState) -> FinetuneResult:
        best = self.checkpoints / "best"
        if not best.is_dir():
            raise DataError("the text fine-tune finished no epoch; nothing to save")
        # training is over: AdamW's moments (twice the trainable weights) are freed before the best weights load,
        # so the finishing phase does not raise the fine-tune's peak memory
        self.optimizer.state.clear()
        self._load_weights(best)
        scores = {"dev": self._evaluate("dev")}
        if len(self.splits["test"].labelled):
            scores["test"] = self._evaluate("test")
        for split, metrics in scores.items():
            mlflow.log_metrics(
                {f"{split}/{key}": float(metrics[key]) for key in ("weighted_f1", "macro_f1", "accuracy")},
                step=selection.best_epoch,
            )
            mlflow.log_figure(
                reports.confusion_matrix_figure(
                    metrics["confusion_matrix"], self.labels, f"fine-tuned text classifier, {split}"
                ),
                f"plots/{split}_confusion_matrix.png",
            )
        mlflow.log_metric("best_epoch", selection.best_epoch)
        model = self.folder / "model"
        result = FinetuneResult(
            model_path=str(model),
            dev_weighted_f1=float(scores["dev"]["weighted_f1"]),
            test_weighted_f1=float(scores["test"]["weighted_f1"]) if "test" in scores else None,
            best_epoch=selection.best_epoch,
            epochs_run=len(selection.history),
            seconds=round(self._seconds(), 1),
            run_id=self.run_id,
        )
        (best / SUMMARY_FILE).write_text(json.dumps(result.summary(), indent=2), encoding="utf-8")
        mlflow.log_artifacts(str(best), "text_encoder")
        shutil.rmtree(model, ignore_errors=True)
        best.rename(model)
        return result
