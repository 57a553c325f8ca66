"""Training SpikEmo: AdamW with warm-up and a cosine or plateau schedule, gradient clipping, an optional
moving average of the weights, early stopping and model selection on DEV weighted-F1, resumable checkpoints.

The test split never influences training or selection: it is evaluated once, after training, with the
weights selected on dev. Under ``torchrun`` the model is wrapped in DistributedDataParallel, each rank
trains on its share of the dialogues, evaluation predictions are all-reduced, and only rank 0 writes
checkpoints and calls ``on_epoch_end``. The epoch loop itself (selection, early stopping, checkpoint order) is
training/epochs.py's, shared with the text fine-tune.
"""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Adam, AdamW
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader
from tqdm import tqdm

from spikemo.config import SpikEmoConfig
from spikemo.errors import DataError, SpikemoError
from spikemo.identity import checkpoint_identity
from spikemo.losses import SpikEmoLoss, class_weights_from_counts
from spikemo.model.ensemble import EmotionModel, build_model
from spikemo.model.snn_stats import SpikeMonitor
from spikemo.training.checkpoint import (
    SelectionState,
    load_model_checkpoint,
    load_training_checkpoint,
    save_model_checkpoint,
    save_training_checkpoint,
)
from spikemo.training.data import (
    DialogueData,
    DialogueDataset,
    LengthBucketBatchSampler,
    collate_dialogues,
)
from spikemo.training.distributed import (
    DistributedContext,
    all_reduce_min,
    all_reduce_sum,
    barrier,
    distributed_context,
    gather_predictions,
)
from spikemo.training.epochs import SELECTION_KEY, EpochCallback, EpochPlan, run_epochs
from spikemo.training.evaluation import LossTally, predict
from spikemo.training.metrics import classification_metrics, firing_rates_by_group
from spikemo.training.precision import autocast
from spikemo.training.schedule import LearningRateSchedule

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.safetensors"
BEST_CHECKPOINT_PATTERN = "best-epoch{epoch:04d}.safetensors"
FUSED_OPTIMIZER_DEVICES = ("cpu", "cuda")  # where torch has fused Adam/AdamW kernels


class NonFiniteLossError(SpikemoError):
    """The training loss became NaN or infinite; the run cannot continue."""

    exit_code = 4


@dataclass
class TrainResult:
    model: EmotionModel  # on the training device, in eval mode, with the weights selected on dev
    history: list[dict[str, float]]
    best_epoch: int  # 0-based
    dev_metrics: dict[str, Any]
    test_metrics: dict[str, Any] | None  # None when the manifest has no test split
    input_dims: dict[str, int]
    label_names: list[str]
    firing_rates: dict[str, float]  # SpikeMonitor on test (dev without one); empty if not spiking or rank > 0
    energy: dict[str, float]
    spike_statistics_split: str  # the split firing_rates and energy were measured on
    checkpoint_path: Path  # best-epochNNNN.safetensors: selected weights + spec (epoch, dims, labels, model config)
    device: str
    test_predictions: np.ndarray | None = None  # predicted label of each labelled test utterance, in storage order


def train_once(
    config: SpikEmoConfig,
    data: DialogueData,
    label_names: list[str],
    run_dir: Path,
    on_epoch_end: EpochCallback | None = None,
    resume: bool = True,
) -> TrainResult:
    """One SpikEmo trained on dialogue data (``training.recipe.train_on_dialogue_data``'s contract), every layer
    trained jointly."""
    if config.model.members > 1:
        raise ValueError("train_once trains one network; train_on_dialogue_data trains a seed ensemble's members")
    for split in ("train", "dev"):
        if split not in data.splits:
            raise DataError(f"the manifest has no {split!r} split; training needs train and dev (selection uses dev)")
    if not (data.splits["dev"].labels >= 0).any():
        raise DataError("the dev split has no labelled utterance; model selection needs dev labels")
    with distributed_context(config.train.device) as context:
        run = _TrainingRun(config, data, label_names, Path(run_dir), context, resume)
        return run.execute(on_epoch_end)


def result_with_weights(
    config: SpikEmoConfig,
    data: DialogueData,
    label_names: list[str],
    run_dir: Path,
    weights: dict[str, torch.Tensor],
    trained: TrainResult,
) -> TrainResult:
    """The result of a model assembled after training (``weights`` for ``config``'s model, e.g. a trained model
    with a layer fitted on top): written as the selected checkpoint of ``trained``'s best epoch in
    ``run_dir/checkpoints``, then dev and test scored as after any training, with ``trained``'s history."""
    with distributed_context(config.train.device) as context:
        return _TrainingRun(config, data, label_names, Path(run_dir), context).finish_with_weights(weights, trained)


class _TrainingRun:
    def __init__(
        self,
        config: SpikEmoConfig,
        data: DialogueData,
        label_names: list[str],
        run_dir: Path,
        context: DistributedContext,
        resume: bool = False,
    ) -> None:
        self.config = config
        self.resume = resume  # continue after the last checkpoint in run_dir, if there is one
        self.train_config = config.train
        self.data = data
        self.label_names = list(label_names)
        self.context = context
        self.checkpoint_dir = run_dir / "checkpoints"
        seed_everything(self.train_config.seed)
        self.model = build_model(config.model, data.input_dims, len(label_names))
        self.model.set_input_statistics(data.splits["train"].feature_statistics())
        self.model.to(context.device)
        self.network: torch.nn.Module = (
            DistributedDataParallel(
                self.model, device_ids=[context.device.index] if context.device.type == "cuda" else None
            )
            if context.is_distributed
            else self.model
        )
        train_set = data.splits["train"]
        class_weights = class_weights_from_counts(
            train_set.label_counts(len(label_names)), self.train_config.class_weighting
        )
        self.loss = SpikEmoLoss(
            self.train_config.loss_weights, len(label_names), class_weights, self.train_config.label_smoothing
        ).to(context.device)
        self.loss_terms = [name for name, weight in self.train_config.loss_weights.model_dump().items() if weight > 0]
        optimizer_class = AdamW if self.train_config.optimizer == "adamw" else Adam
        decay = self.train_config.ema_decay
        self.averaged = AveragedModel(self.model, multi_avg_fn=ema_update(decay), use_buffers=True) if decay else None
        self.optimizer = optimizer_class(
            self.model.parameters(),
            lr=self.train_config.lr,
            weight_decay=self.train_config.weight_decay,
            fused=context.device.type
            in FUSED_OPTIMIZER_DEVICES,  # one kernel for all parameters: 0.2x the step time on CPU
        )
        self.train_sampler = LengthBucketBatchSampler(
            train_set.dialogue_lengths,
            self.train_config.batch_dialogues,
            shuffle=True,
            seed=self.train_config.seed,
            num_replicas=context.world_size,
            rank=context.rank,
        )
        self.train_loader = DataLoader(train_set, batch_sampler=self.train_sampler, collate_fn=collate_dialogues)
        self.scheduler = LearningRateSchedule.for_training(self.optimizer, self.train_config, len(self.train_sampler))

    def execute(self, on_epoch_end: EpochCallback | None) -> TrainResult:
        plan = EpochPlan(
            self.train_config.epochs,
            self.train_config.patience,
            keep_last=self.train_config.keep == "last",
            is_main=self.context.is_main,
        )
        return self._finish(run_epochs(self, plan, on_epoch_end))

    def finish_with_weights(self, weights: dict[str, torch.Tensor], trained: TrainResult) -> TrainResult:
        """``result_with_weights``: the weights kept as ``trained``'s best epoch, then scored like a finished run."""
        self.model.load_state_dict(weights)
        dev_scores = self._evaluate_split(self.model, self.data.splits["dev"], monitor_spikes=False)[0]
        if self.context.is_main:
            spec = self._best_spec(trained.best_epoch, {SELECTION_KEY: float(dev_scores["weighted_f1"])})
            save_model_checkpoint(self._best_path(trained.best_epoch), self.model, spec)
        selection = SelectionState(
            epoch=len(trained.history) - 1,
            best_epoch=trained.best_epoch,
            best_score=trained.dev_metrics["weighted_f1"],
            epochs_without_improvement=0,
            history=trained.history,
        )
        return self._finish(selection)

    def load_last(self) -> SelectionState | None:
        last = self.checkpoint_dir / LAST_CHECKPOINT
        if not (self.resume and last.is_file()):
            return None
        selection = load_training_checkpoint(
            last, self.model, self.optimizer, self.scheduler, self._run_identity(), self.averaged
        )
        if self.context.is_main:
            log.info("resuming after epoch %d from %s", selection.epoch, last)
        return selection

    def evaluate_dev(self) -> dict[str, float]:
        scores, _, firing_rates, _ = self._evaluate_split(
            self._selected_model(), self.data.splits["dev"], monitor_spikes=True
        )
        metrics = {f"dev_{name}": float(scores[name]) for name in ("loss", "weighted_f1", "macro_f1", "accuracy")}
        metrics.update({f"firing_rate.{group}": rate for group, rate in firing_rates_by_group(firing_rates).items()})
        return metrics

    def save_best(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.context.is_main:
            save_model_checkpoint(self._best_path(epoch), self._selected_model(), self._best_spec(epoch, metrics))

    def end_epoch(self, selection: SelectionState) -> None:
        """The plateau schedule follows dev; the last checkpoint, then the best-weight files it no longer names."""
        self.scheduler.after_epoch(selection.history[-1][SELECTION_KEY])
        if self.context.is_main:
            save_training_checkpoint(
                self.checkpoint_dir / LAST_CHECKPOINT,
                self.model,
                self.optimizer,
                self.scheduler,
                selection,
                self._run_identity(),
                self.averaged,
            )
            self._remove_unselected_best(selection.best_epoch)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.network.train()
        self.train_sampler.set_epoch(epoch)
        device = self.context.device
        # per loss: [sum of batch values, number of batches]; "total" first, then each enabled term unweighted,
        # then each weighted
        sums = torch.zeros(1 + 2 * len(self.loss_terms), 2, dtype=torch.float64)
        progress = tqdm(
            self.train_loader,
            desc=f"epoch {epoch} of 0-{self.train_config.epochs - 1}",
            file=sys.stderr,
            leave=False,
            disable=None if self.context.is_main else True,  # None: no bar when stderr is not a terminal
        )
        for step, batch in enumerate(progress):
            batch = batch.to(device, non_blocking=True)
            with autocast(self.train_config.precision, device):
                output = self.network(batch)
            breakdown = self.loss(output, batch)
            self._require_finite(breakdown.total, breakdown.terms, epoch, step)
            self.optimizer.zero_grad(set_to_none=True)
            breakdown.total.backward()
            if self.train_config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train_config.grad_clip)
            self.optimizer.step()
            self.scheduler.after_step()
            if self.averaged is not None:
                self.averaged.update_parameters(self.model)
            values = [
                breakdown.total,
                *(breakdown.terms.get(name) for name in self.loss_terms),
                *(breakdown.weighted_terms.get(name) for name in self.loss_terms),
            ]
            for row, value in enumerate(values):
                if value is not None:
                    sums[row] += torch.tensor([value.item(), 1.0], dtype=torch.float64)
            progress.set_postfix(loss=f"{breakdown.total.item():.4f}")
        sums = all_reduce_sum(sums, self.context)
        means = (sums[:, 0] / sums[:, 1].clamp(min=1)).tolist()
        metrics = {"train_loss": means[0], "lr": float(self.optimizer.param_groups[0]["lr"])}
        terms = len(self.loss_terms)
        for i, name in enumerate(self.loss_terms):
            if sums[1 + i, 1] > 0:
                metrics[f"train_loss_{name}"] = means[1 + i]
                metrics[f"train_weighted_loss_{name}"] = means[1 + terms + i]
        return metrics

    def _require_finite(self, total: torch.Tensor, terms: dict[str, torch.Tensor], epoch: int, step: int) -> None:
        finite = torch.tensor([float(torch.isfinite(total.detach()).item())])
        if all_reduce_min(finite, self.context).item() == 1.0:
            return
        shown = ", ".join(f"{name}={value.item():.4g}" for name, value in terms.items())
        raise NonFiniteLossError(
            f"epoch {epoch}, step {step}: training loss is not finite on some rank (this rank: "
            f"total={total.item():.4g}, {shown}); lower train.lr or check the features for extreme values"
        )

    def _selected_model(self) -> EmotionModel:
        """What is evaluated, selected and kept: the moving average of the weights, or the weights themselves."""
        return self.averaged.module if self.averaged is not None else self.model

    def _evaluate_split(
        self, model: EmotionModel, dataset: DialogueDataset, monitor_spikes: bool
    ) -> tuple[dict[str, Any], np.ndarray, dict[str, float], dict[str, float]]:
        """Metrics over the whole split, the predicted label of each labelled utterance (storage order) and, if
        asked and the model spikes, SpikeMonitor's firing rates and energy estimate (empty dicts otherwise).

        Ranks predict their share of the batches and the predictions are all-reduced. A monitored pass runs
        on rank 0 alone, over the whole split, so its statistics are exact; they exist on rank 0 only.
        """
        monitored = monitor_spikes and model.config.use_spiking
        sharded = not (monitored and self.context.is_distributed)
        sampler = LengthBucketBatchSampler(
            dataset.dialogue_lengths,
            self.train_config.batch_dialogues,
            shuffle=False,
            num_replicas=self.context.world_size if sharded else 1,
            rank=self.context.rank if sharded else 0,
        )
        batches = list(sampler) if sharded or self.context.is_main else []
        loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate_dialogues)
        rows = dataset.labelled_rows([index for batch in batches for index in batch])
        firing_rates: dict[str, float] = {}
        energy: dict[str, float] = {}
        tally = LossTally(lambda output, batch: self.loss(output, batch).total)
        if monitored:
            with SpikeMonitor(model) as monitor:
                _, predictions = predict(model, loader, tally)
            if batches:
                firing_rates, energy = monitor.firing_rates(), monitor.energy()
        else:
            _, predictions = predict(model, loader, tally)
        everywhere = gather_predictions(rows, predictions, len(dataset.labels), self.context)
        labelled = dataset.labels >= 0
        metrics = classification_metrics(dataset.labels[labelled], everywhere[labelled], self.label_names)
        loss_sums = torch.tensor([tally.total, float(tally.count)], dtype=torch.float64)
        if sharded:
            loss_sums = all_reduce_sum(loss_sums, self.context)
        metrics["loss"] = float(loss_sums[0] / loss_sums[1].clamp(min=1))
        return metrics, everywhere[labelled], firing_rates, energy

    def _best_path(self, epoch: int) -> Path:
        return self.checkpoint_dir / BEST_CHECKPOINT_PATTERN.format(epoch=epoch)

    def _remove_unselected_best(self, best_epoch: int) -> None:
        """Best-weight files other than the one the last checkpoint names (older bests, or one written by
        an attempt killed before its last checkpoint) are removed only once that last checkpoint exists."""
        keep = self._best_path(best_epoch)
        for path in self.checkpoint_dir.glob(BEST_CHECKPOINT_PATTERN.replace("{epoch:04d}", "*")):
            if path != keep:
                path.unlink(missing_ok=True)

    def _finish(self, selection: SelectionState) -> TrainResult:
        if selection.best_epoch < 0:
            raise DataError(f"{self.checkpoint_dir}: no epoch was completed, so there is no model to select")
        best_path = self._best_path(selection.best_epoch)
        best_weights = _read_best_weights(best_path, self.context)
        self.model.load_state_dict(best_weights)
        test_set = self.data.splits.get("test")
        has_test = test_set is not None and bool((test_set.labels >= 0).any())
        dev_metrics, _, firing_rates, energy = self._evaluate_split(
            self.model, self.data.splits["dev"], monitor_spikes=not has_test
        )
        test_metrics = test_predictions = None
        if has_test:
            test_metrics, test_predictions, firing_rates, energy = self._evaluate_split(
                self.model, test_set, monitor_spikes=True
            )
        self.model.eval()
        return TrainResult(
            model=self.model,
            history=selection.history,
            best_epoch=selection.best_epoch,
            dev_metrics=dev_metrics,
            test_metrics=test_metrics,
            input_dims=dict(self.data.input_dims),
            label_names=self.label_names,
            firing_rates=firing_rates,
            energy=energy,
            spike_statistics_split="test" if has_test else "dev",
            checkpoint_path=best_path,
            device=str(self.context.device),
            test_predictions=test_predictions,
        )

    def _best_spec(self, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "dev_weighted_f1": metrics[SELECTION_KEY],
            "input_dims": self.data.input_dims,
            "label_names": self.label_names,
            "model": self.config.model.model_dump(mode="json"),
        }

    def _run_identity(self) -> dict[str, Any]:
        return checkpoint_identity(self.config, self.data.splits, self.label_names, self.data.input_dims)


def _read_best_weights(path: Path, context: DistributedContext) -> dict[str, torch.Tensor]:
    """The selected weights; rank 0 wrote them, so other ranks wait for it before reading."""
    barrier(context)
    weights, _ = load_model_checkpoint(path)
    return weights


def ema_update(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """Exponential moving average (for ``AveragedModel(multi_avg_fn=...)``) whose decay warms up as
    min(decay, (1 + n) / (10 + n)) after n updates, so that the average follows the weights closely early on
    instead of clinging to the initialisation."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        step_decay = min(decay, (1 + float(updates)) / (10 + float(updates)))
        torch._foreach_lerp_(averaged, current, 1 - step_decay)

    return update


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
